"""What the panel's tabs share: a figure or a text as a widget output, a download link, colours, styles.

Images go into ``Output`` widgets by assigning ``Output.outputs`` (a PNG per figure),
which works in a browser and also outside a kernel, so tests can drive the panel in
plain pytest.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Callable

from workbench.util.units import MB

PLOT_DPI = 90
# The message line's colour per kind of message.
COLORS = {"info": "#1f4e79", "ok": "#1e6b30", "warn": "#8a5a00", "error": "#a4161a"}
# Try it's answers side by side, and a run's answers over training (the Runs tab).
ANSWER_CSS = """<style>
.workbench-answers { display: flex; gap: 8px; flex-wrap: wrap; font-size: 12px; }
.workbench-answer { flex: 1 1 240px; border: 1px solid #ccc; border-radius: 4px; padding: 4px 6px; min-width: 200px; }
.workbench-answer .who { font-weight: bold; color: #1f4e79; }
.workbench-answer pre { white-space: pre-wrap; word-break: normal; overflow-wrap: break-word; margin: 3px 0;
                        font-size: 13px; line-height: 1.35; background: #f7f7f7; padding: 3px; }
.workbench-answer small { display: block; line-height: 1.3; }
.workbench-answer.right pre { background: #e6f4ea; } .workbench-answer.wrong pre { background: #fdecea; }
table.workbench-samples { border-collapse: collapse; font-size: 11px; width: 100%; }
table.workbench-samples th, table.workbench-samples td { padding: 2px 4px; text-align: left; vertical-align: top;
                                                         border-bottom: 1px solid #eee; white-space: pre-wrap; }
</style>"""


def png_output(fig: Any, dpi: int = PLOT_DPI) -> dict[str, Any]:
    """One display_data output holding a figure as PNG (what Output.outputs takes)."""
    from workbench.viz.output import figure_to_png_bytes

    png = figure_to_png_bytes(fig, dpi=dpi)
    title = fig.axes[0].get_title() if fig.axes else "figure"
    return {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"<Figure: {title}>"},
        "metadata": {},
    }


def text_output(text: str) -> dict[str, Any]:
    return {"output_type": "display_data", "data": {"text/plain": text}, "metadata": {}}


def download_link(path: Path, text: str | None = None) -> str:
    """An HTML link that downloads the file ``path`` from the page itself (a base64 data URI).

    It needs no server route, so it works alike in JupyterLab and in Voila (whose server
    serves no files outside the notebook's folder); it suits files of a few MB, as a
    report with its adapters is.
    """
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    size = Path(path).stat().st_size
    label = html.escape(text or f"Download {Path(path).name}")
    return (f"<a download='{html.escape(Path(path).name)}' href='data:application/zip;base64,{data}' "
            f"class='workbench-download' style='font-weight:bold;color:#1a5fb4;text-decoration:underline'>"
            f"{label}</a> <small>({size / MB:.2f} MB)</small>")


def number_text(value: Any) -> str:
    """A number as its text box shows it (a text kept as typed is shown as typed)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def safely(say: Callable[[str, str], None], action: Callable[..., Any], *args: Any) -> None:
    """Do what a click asks; an error becomes a message in the panel (``say``), never a traceback."""
    try:
        action(*args)
    except Exception as e:  # noqa: BLE001 - the panel must say it, not raise
        say(f"{type(e).__name__}: {e}", "error")


# Waits (up to 20 s) for the panel to be drawn, then scrolls its top into view once; after a tab switch that
# leaves blank page below the panel (its top scrolled away), scrolls its top into view again.
SCROLL_JS = """
(function () {
  const style = document.createElement('style');
  style.textContent = '.workbench-live img { max-width: 100%; height: auto; }';
  document.head.appendChild(style);
  let tries = 0;
  const timer = setInterval(function () {
    const panels = document.querySelectorAll('.workbench-panel');
    const panel = panels[panels.length - 1];
    if (panel && panel.getBoundingClientRect().height > 100) {
      clearInterval(timer);
      setTimeout(function () { panel.scrollIntoView({block: 'start'}); }, 300);
      // Leaving a tall tab (Runs) for a short one left the page scrolled past the panel's end (JupyterLab
      // lets a notebook scroll past its last cell): blank below, the panel's top above. Bring it back.
      if (!panel.dataset.workbenchTabs) {
        panel.dataset.workbenchTabs = '1';
        panel.addEventListener('click', function (event) {
          if (!event.target.closest('.lm-TabBar-tab')) { return; }
          setTimeout(function () {
            const box = panel.getBoundingClientRect();
            if (box.top < 0 && box.bottom < window.innerHeight - 40) { panel.scrollIntoView({block: 'start'}); }
          }, 150);
        });
      }
    } else if (++tries > 100) {
      clearInterval(timer);
    }
  }, 200);
})();
"""


__all__ = ["ANSWER_CSS", "COLORS", "PLOT_DPI", "SCROLL_JS", "download_link", "number_text", "png_output", "safely",
           "text_output"]
