"""The widget view (``workbench.ui.panel.Workbench`` and its tabs) driven as a user does.

Outside a kernel ``button.click()`` runs the handlers synchronously and setting a
widget's ``value`` fires its observers, so the view is tested in plain pytest.
"""

from __future__ import annotations

import base64
import re
import time

from workbench.engine.config import PRESETS
from panel_helpers import KINDS, PNG_MAGIC, PRESET, make_panel, pngs, table_rows


def test_the_view_shows_the_state_and_names_settings_as_the_config(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    assert tuple(panel.targets) == KINDS
    assert {k for k, b in panel.targets.items() if b.value} == {"query", "value"}
    assert [panel.rank.description, panel.alpha.description, panel.layer_range.description, panel.lr.description] == \
        ["rank", "alpha", "layers", "lr"]
    assert [b.description for b in (panel.train_button, panel.stop_button, panel.export_button)] == \
        ["Train", "Stop", "Export"]
    assert panel.layer_range.value == (0, 1) and panel.rank.max == 32  # min(in, out) of tiny-bert's layers
    assert "No runs yet shown" in panel.table.value and panel.message_text.startswith("Ready.")
    # state -> widgets
    panel.state.update(rank=2, method="head")
    assert panel.rank.value == 2 and panel.method.value == "head" and panel.lr.value == "0.001"
    assert panel.rank.disabled and panel.targets["query"].disabled


def test_widgets_set_the_state(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    state = panel.state
    panel.rank.value = 4
    assert state.choices.rank == 4 and "1,090 of" in panel.readout.value
    panel.targets["key"].value = True
    panel.targets["value"].value = False
    assert state.choices.targets == ("query", "key") and panel.targets["key"].icon == "check"
    panel.layer_range.value = (1, 1)
    assert state.layers() == (1,)
    panel.variant.value = "dora"
    assert state.config().lora.dora
    panel.method.value = "full"
    assert state.choices.method == "full" and panel.lr.value == "5e-05" and "5e-05" in panel.lr_note.value
    assert panel.rank.disabled and panel.alpha.disabled and not panel.lr.disabled
    panel.method.value = "lora"
    assert float(panel.lr.value) == PRESETS[PRESET]["lr"] and not panel.rank.disabled
    panel.lr.value = "0.0010"  # typed: read as the number, the text left as typed
    assert state.choices.lr == 0.001 and panel.lr.value == "0.0010"


def test_bad_input_in_a_widget_stays_as_typed_and_is_refused(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    panel.alpha.value = "-5"
    panel.steps.value = "0"
    assert (panel.alpha.value, panel.steps.value) == ("-5", "0")
    assert (panel.state.choices.alpha, panel.state.choices.steps) == (-5.0, 0)
    assert "alpha must be a positive number, got -5.0" in panel.readout.value
    panel.train_button.click()
    assert "Cannot train with these settings: alpha must be a positive number, got -5.0" in panel.message_text
    assert "Traceback" not in panel.message.value and table_rows(panel) == 0
    panel.alpha.value = "16"
    panel.train_button.click()
    assert "steps must be a positive integer, got 0" in panel.message_text
    for typed, said in [("abc", "lr (learning rate) must be a number with a decimal point, e.g. 0.001 or 1e-3; "
                                "got 'abc', which is not a number"),
                        ("0,001", "got '0,001', which has a decimal comma: type 0.001 if that is what you mean"),
                        ("", "lr (learning rate) is empty"),
                        ("0", "lr (learning rate) must be a positive number, got 0.0")]:
        panel.lr.value = typed
        assert panel.lr.value == typed and panel.state.choices.lr == (typed if typed != "0" else 0.0)
        assert said in panel.readout.value.replace("&#x27;", "'")
        panel.train_button.click()
        assert said in panel.message_text and panel.state.message.kind == "error"
    panel.lr.value = "0.001"
    for kind in panel.targets:
        panel.targets[kind].value = False
    panel.steps.value = "6"
    panel.train_button.click()
    assert "LoRA needs at least one target layer" in panel.message_text
    assert not (tmp_path / "runs").exists()


def test_train_click_trains_and_the_view_shows_it(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    panel.rank.value = 4
    panel.train_button.click()
    run = panel.last_result
    assert run is not None and run.status == "completed", panel.message_text
    live = pngs(panel.live_plot)
    assert len(live) == 1 and live[0].startswith(PNG_MAGIC)
    assert table_rows(panel) == 1 and f"{run.params.trainable:,}" in panel.table.value
    assert "LoRA r=4 (query,value)" in panel.table.value
    compare = pngs(panel.compare_plots)
    assert len(compare) == 4 and all(p.startswith(PNG_MAGIC) for p in compare)
    assert panel.run_checks[run.run_id].value and panel.state.selected == (run.run_id,)
    assert panel.message_text.startswith("Finished, but it did not learn")
    assert panel.progress.value == panel.progress.max == run.config.steps
    assert not panel.train_button.disabled and panel.stop_button.disabled and not panel.rank.disabled
    # The comparison list drives the figures and the export.
    panel.run_checks[run.run_id].value = False
    assert panel.state.selected == () and pngs(panel.compare_plots) == []
    panel.export_button.click()
    assert "Nothing to export" in panel.message_text
    panel.select_all_button.click()
    assert panel.run_checks[run.run_id].value and len(pngs(panel.compare_plots)) == 4
    panel.export_button.click()
    assert panel.last_export is not None and (panel.last_export / "runs.csv").is_file()
    assert panel.message_text.startswith("Wrote")
    # The download link carries the zip itself: decoded, it is the file written.
    data = re.search(r"href='data:application/zip;base64,([^']+)'", panel.download.value).group(1)
    assert base64.b64decode(data) == panel.last_bundle.read_bytes()


def test_stop_button_ends_a_background_run(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers, background=True)
    panel.steps.value = "100000"
    panel.train_button.click()
    deadline = time.monotonic() + 120
    while panel.progress.value < 1 and panel.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert panel.running and panel.progress.value >= 1, panel.message_text
    # While it trains, only Stop makes sense.
    assert panel.train_button.disabled and panel.method.disabled and panel.rank.disabled
    assert panel.targets["query"].disabled and not panel.stop_button.disabled
    panel.stop_button.click()
    assert panel.stop_button.disabled  # clicked once is enough
    result = panel.wait(timeout=120)
    assert result is not None and result.status == "stopped", panel.message_text
    assert panel.message_text.startswith("Stopped")
    assert table_rows(panel) == 1 and "stopped" in panel.table.value
    assert not panel.train_button.disabled and panel.stop_button.disabled
