"""The panel's Compare and Export tabs: what the ticked runs show side by side, and what they write.

* **Compare**: the four comparison figures of the ticked runs;
* **Export**: writes the report and offers it, with the runs' adapters, as one zip to
  download (a data link: it works in JupyterLab and Voila alike).
"""

from __future__ import annotations

import html

import ipywidgets as widgets

from workbench.ui.markup import download_link, png_output, text_output
from workbench.ui.state import PanelState


class CompareTab:
    """The comparison figures of the ticked runs (``compare_plots``, an Output; also ``page``)."""

    def __init__(self, state: PanelState) -> None:
        self.state = state
        self.compare_plots = widgets.Output()
        self.page = self.compare_plots

    def show(self) -> None:
        from workbench.viz.output import comparison_figures

        chosen = self.state.selected_results()
        if not chosen:
            text = ("Tick runs under 'Runs' to compare them." if self.state.results
                    else "Train a run to see comparisons.")
            self.compare_plots.outputs = (text_output(text),)
            return
        self.compare_plots.outputs = tuple(png_output(fig) for fig in comparison_figures(chosen).values())


class ExportTab:
    """``export_button`` writes the ticked runs' report; ``download`` then offers its zip (``page``: the tab)."""

    def __init__(self, state: PanelState) -> None:
        self.state = state
        self.export_button = widgets.Button(description="Export", icon="download",
                                            tooltip="write the comparison figures and the table of the ticked runs, "
                                                    "and offer them with the adapters as one zip")
        self.download = widgets.HTML()
        self.page = widgets.VBox([
            widgets.HTML("<small>Export writes the four figures (PNG, SVG) and the runs table (CSV, Markdown) of "
                         "the ticked runs to the reports folder, and one zip with them and each LoRA run's adapter "
                         "(PEFT's format) to download here.</small>"),
            self.export_button,
            self.download,
        ])
        self.export_button.on_click(lambda _b: self.export())

    def export(self) -> None:
        """Export (the state says how it went) and offer the zip as a download link."""
        folder = self.state.export()
        if folder is None or self.state.last_bundle is None:
            return
        try:
            self.download.value = download_link(self.state.last_bundle, "Download the report and adapters (zip)")
        except OSError as e:
            self.download.value = f"<i>The zip could not be read back: {html.escape(str(e))}</i>"

    def enable(self) -> None:
        """No export while a run trains."""
        self.export_button.disabled = self.state.running


__all__ = ["CompareTab", "ExportTab"]
