"""The panel's run control and run list with real runs (``workbench.ui.run_control``, ``run_list``).

The run lifecycle on the "tiny" preset (tiny-bert: a few seconds per run): a run is
trained, stored and shown; an engine error is a message; the comparison selection,
export, a reloaded store, Stop, and a diverged run.  The run store on disk is the
reference for what happened.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from workbench.engine.outcome import run_outcome
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import lora_layers
from workbench.records import store
from workbench.ui.state import PanelState
from panel_helpers import HEAD, MODEL, PRESET, engine_count, make_state, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_layers):
    """A state over a fresh run store, one LoRA run made with start(), and the events it sent."""
    root = tmp_path_factory.mktemp("panel")
    state = make_state(root, tiny_layers)
    events: list[str] = []
    state.subscribe(events.append)
    state.update(rank=4, alpha=8, targets=("query", "value", "FFN out"))
    estimate = state.parameter_estimate()
    events.clear()
    assert state.start() is True
    return state, estimate, events


def test_a_run_is_trained_stored_and_shown(trained):
    state, estimate, events = trained
    stored = store.load_runs(state.runs_dir)
    assert len(stored) == 1 and stored[0].status == "completed", state.message.text
    run = stored[0]
    # "FFN out" (output.dense) needs a regex: a bare "output.dense" would also pick attention.output.dense.
    assert run.config == tiny_config(lora=LoRAConfig(rank=4, alpha=8.0, targets=run.config.lora.targets),
                                     name="LoRA r=4 (query,value,FFN out)")
    _, model = engine_count(run.config)
    assert set(lora_layers(model)) == {f"bert.encoder.layer.{i}.{path}" for i in (0, 1) for path in
                                       ("attention.self.query", "attention.self.value", "output.dense")}
    # The readout before the run is what the engine counted on the real model.
    assert (run.params.trainable, run.params.total) == (estimate.trainable, estimate.total)
    assert run.params.trainable == 2 * 4 * 2 * (32 + 32) + 2 * 4 * (64 + 32) + HEAD
    assert state.last_result.run_id == run.run_id and not state.running
    # Six steps of a randomly initialised tiny model learn nothing: the run completes, and the
    # panel says it did not learn (a warning, not a green "Done"), with the measured time.
    outcome = run_outcome(run)
    assert outcome.verdict == "did not learn" and state.message.kind == "warn"
    assert state.message.text.startswith(f"Finished, but it {outcome.sentence}. (LoRA r=4 (query,value,FFN out)")
    t = run.timing
    assert (f"took {t.total_seconds:.1f} s: {t.train_seconds:.1f} s training ({t.seconds_per_step:.3f} s/step), "
            f"{t.eval_seconds:.1f} s evaluating") in state.message.text
    # The lifecycle as subscribers saw it: running, a progress event per step and one as each of the two
    # evaluations (steps 3 and 6) begins, the final curve, the runs, done.
    assert events[:2] == ["running", "live"] and events.count("progress") == run.config.steps + 2
    assert events[-4:] == ["live", "runs", "running", "message"]
    assert state.selected == (run.run_id,) and [r.run_id for r in state.selected_results()] == [run.run_id]
    row = state.table().iloc[0]
    assert (row["run"], row["rank"], row["alpha"], row["targets"], row["steps"], row["status"], row["outcome"]) == \
        ("LoRA r=4 (query,value,FFN out)", "4", "8", "query,value,FFN out", "6/6", "completed", "did not learn")
    assert row["trainable"] == f"{estimate.trainable:,}" and row["run id"] == run.run_id
    assert list(state.runs_frame["run_id"]) == [run.run_id]


def test_an_engine_error_is_a_message_and_keeps_the_runs(trained):
    state, _, _ = trained
    before = [r.run_id for r in state.results]

    def broken(*args, **kwargs):
        raise RuntimeError("the data file is unreadable")

    again = PanelState(model=MODEL, preset=PRESET, runs_dir=state.runs_dir, background=False, layers=state.model,
                       train=broken)
    assert again.start() is True  # it started, and failed
    assert again.message.text == "RuntimeError: the data file is unreadable" and again.message.kind == "error"
    assert again.last_result is None and again.live_history is None and not again.running
    assert [r.run_id for r in again.results] == before == [r.run_id for r in store.load_runs(state.runs_dir)]


def test_selection_keeps_choices_and_adds_new_runs(trained):
    state, _, _ = trained
    first = state.results[0].run_id
    state.select(())
    assert state.selected_results() == []
    assert state.export() is None and state.message.text.startswith("Nothing to export")
    with pytest.raises(ValueError, match="unknown run id.s. 'nope'; the runs are: " + first):
        state.select(["nope"])
    state.update(method="head")
    state.start()
    assert state.last_result.status == "completed" and state.last_result.config.method == "head"
    # The deselected run stays deselected; the new one is selected.
    assert state.selected == (state.last_result.run_id,)
    row = state.table().iloc[-1]
    assert (row["method"], row["rank"], row["alpha"], row["targets"]) == ("head", "–", "–", "–")
    state.select([r.run_id for r in state.results])
    assert [r.run_id for r in state.selected_results()] == [r.run_id for r in state.results]


def test_export_writes_the_selected_runs(trained):
    state, _, _ = trained
    state.select([state.results[0].run_id])
    folder = state.export()
    assert folder is not None and folder == state.last_export and folder.parent == state.reports_dir
    names = {p.name for p in folder.iterdir()}
    for fig in ("loss_curves", "params_vs_rank", "memory_breakdown", "accuracy_vs_params"):
        assert {f"{fig}.png", f"{fig}.svg"} <= names
    assert {"runs.csv", "runs.md"} <= names
    assert f"{folder.name}.zip" in names and state.last_bundle == folder / f"{folder.name}.zip"
    assert state.message.text.startswith(f"Wrote {len(names) - 1} files (1 run(s)")
    assert state.message.details.startswith(f"The report's folder: {folder}.")
    csv = pd.read_csv(folder / "runs.csv")
    assert list(csv["run"]) == [state.results[0].config.label()]
    assert list(csv["run id"]) == [state.results[0].run_id] and list(csv["lr"]) == [state.results[0].config.lr]
    assert state.export() != folder  # a second export the same second gets its own folder


def test_a_new_state_shows_the_stored_runs_and_skips_damaged_ones(trained, tiny_layers):
    state, _, _ = trained
    again = make_state(state.runs_dir.parent, tiny_layers)
    assert [r.run_id for r in again.results] == [r.run_id for r in store.load_runs(state.runs_dir)]
    assert set(again.selected) == {r.run_id for r in again.results} and len(again.table()) == len(again.results)
    damaged = state.runs_dir / "zz-damaged"
    damaged.mkdir()
    (damaged / "run.json").write_text("{ not json")
    try:
        again.refresh()
        assert again.message.kind == "warn" and again.message.text.startswith("1 damaged run file(s)")
        assert "zz-damaged" in again.message.text and len(again.results) == len(state.results)
    finally:
        (damaged / "run.json").unlink()
        damaged.rmdir()


def test_stop_ends_a_background_run_as_stopped(tmp_path, tiny_layers):
    state = make_state(tmp_path, tiny_layers, background=True)
    state.stop()
    assert state.message.text == "Nothing is training."
    state.update(steps=100_000)  # far more than the test will wait for
    assert state.start() is True
    deadline = time.monotonic() + 120
    while state.step is None and state.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.running and state.step is not None, state.message.text
    assert state.start() is False and state.message.text.startswith("A run is already going")
    state.stop()
    assert state.stopping and state.message.text.startswith("Stopping")
    result = state.wait(timeout=120)
    assert result is not None and result.status == "stopped", state.message.text
    assert [r.status for r in store.load_runs(state.runs_dir)] == ["stopped"]
    assert 1 <= store.runs(state.runs_dir)["steps_done"].iloc[0] < 100_000
    assert state.message.text.startswith("Stopped") and state.message.kind == "warn"
    assert not state.running and not state.stopping and state.table().iloc[0]["status"] == "stopped"


def test_a_diverged_run_suggests_a_lower_learning_rate(tmp_path, tiny_layers):
    """lr = 1e30 (a typo's worth of zeros): the first step blows the weights up, step 2's loss is NaN."""
    state = make_state(tmp_path, tiny_layers)
    state.update(lr=1e30)
    assert state.problem() is None  # a positive number: allowed; the run shows what it does
    state.start()
    assert state.last_result is not None and state.last_result.status == "diverged", state.message.text
    assert state.message.kind == "error"
    assert "lower learning rate" in state.message.text and "1e+29" in state.message.text
    assert [r.status for r in store.load_runs(state.runs_dir)] == ["diverged"]
    assert state.table().iloc[0]["status"] == "diverged"
