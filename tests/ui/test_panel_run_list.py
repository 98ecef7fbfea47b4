"""Honest outcomes, runs told apart, hide / delete, exports (``workbench.ui.run_list``).

On runs written straight into a store (no training needed): a run that did not learn is
said so; runs are named by what sets them apart; hiding, selecting and deleting (with a
confirmation); exported files get the user's umask; the header's measured run times.
"""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.engine.config import PRESETS
from workbench.engine.outcome import run_outcome
from workbench.lora.config import LoRAConfig
from workbench.records import store
from workbench.ui.state import PanelState
from panel_helpers import PRESET, bundled_chance, fake_run, make_state, table_rows, tiny_config


def test_the_verdict_flags_a_rising_loss_and_chance_accuracy():
    from workbench.engine.outcome import Chance, eval_chance

    cfg = tiny_config(lr=10.0)
    rose = run_outcome(fake_run(cfg, [0.69, 5.0, 24.3], 0.9), chance=0.5)
    assert rose.verdict == "did not learn" and not rose.ok
    assert rose.sentence == "did not learn: loss rose from 0.69 to 24.3; try a lower learning rate than 10"
    # Chance is the majority label's share of the eval set, read from the run's own data.
    chance = eval_chance(tiny_config())
    assert chance.n == PRESETS[PRESET]["max_eval_examples"] and chance.accuracy == bundled_chance(chance.n)
    # Within two binomial standard errors of chance is chance; above it, the run learned.
    c = Chance(0.5, 500)
    assert c.margin == pytest.approx(2 * (0.25 / 500) ** 0.5)
    at = run_outcome(fake_run(tiny_config(), [0.69, 0.68], 0.514), chance=c)
    assert at.verdict == "did not learn" and "51.4% is no better than chance (50.0%" in at.sentence
    assert run_outcome(fake_run(tiny_config(), [0.69, 0.1], 0.5 + c.margin + 0.001), chance=c).ok
    # A flat loss (within 1 %) is not a rise; statuses other than completed speak for themselves.
    assert run_outcome(fake_run(tiny_config(), [0.6931, 0.6932], 0.99), chance=c).ok
    diverged = run_outcome(fake_run(cfg, [0.69, 7.5], float("nan"), "diverged", "the loss exploded"), chance=c)
    assert (diverged.verdict, diverged.sentence) == ("diverged", "diverged: the loss exploded")


def test_a_learned_run_is_done_and_says_where_its_adapter_is(tmp_path):
    from workbench.engine.outcome import Outcome

    run = fake_run(tiny_config(), [0.69, 0.2], 0.97)
    run.path = str(tmp_path / "run")
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    text, kind, details = PanelState.verdict(run, Outcome("learned", "learned"))
    assert kind == "ok" and text.startswith("Done: LoRA r=8 (query,value): final loss 0.2000, validation accuracy 97.0%")
    # A record from before the time was split says what its one number counts.
    assert "took 7.5 s from start to end (0.050 s/step)" in text
    folder = tmp_path / "run" / "adapter"
    # The folder and how to load it fold away (details), so the message stays short.
    assert str(folder) not in text
    assert f'wb.load_adapter(model, "{folder}")' in details and f'PeftModel.from_pretrained(base_model, "{folder}")' in details
    text, kind, details = PanelState.verdict(run, Outcome("did not learn", "did not learn: loss rose from 0.69 to 24.3"))
    assert kind == "warn" and text.startswith("Finished, but it did not learn: loss rose from 0.69 to 24.3.")
    assert details == ""
    # Measured apart: the message says what each part of the time counts; the rest is between the steps.
    from workbench.engine.config import Timing

    run.timing = Timing(0.05, 1000.0, 36.4, eval_seconds=9.1, train_seconds=21.3, load_seconds=1.2)
    text, _, _ = PanelState.verdict(run, Outcome("learned", "learned"))
    assert "took 36.4 s: 21.3 s training (0.050 s/step), 9.1 s evaluating, 1.2 s loading, 4.8 s between steps" in text
    # A record from before loading was measured: the rest is not called loading alone.
    run.timing = Timing(0.05, 1000.0, 36.4, eval_seconds=9.1, train_seconds=21.3)
    text, _, _ = PanelState.verdict(run, Outcome("learned", "learned"))
    assert "took 36.4 s: 21.3 s training (0.050 s/step), 9.1 s evaluating, 6.0 s loading and between steps" in text


def test_typed_numbers_are_read_or_refused_never_rewritten(tmp_path, tiny_layers):
    from workbench.ui.typed import number_problem, read_number

    assert [read_number(t, float) for t in ("0.001", " 1e-3 ", "5", ".5", "-2")] == [0.001, 0.001, 5.0, 0.5, -2.0]
    assert [read_number(t, int) for t in ("150", "+3", "-1")] == [150, 3, -1]
    assert [read_number(t, float) for t in ("0,001", "abc", "", "1,000.5")] == ["0,001", "abc", "", "1,000.5"]
    assert [read_number(t, int) for t in ("1.5", "1e3", "1,000")] == ["1.5", "1e3", "1,000"]
    assert "type 0.001 if that is what you mean" in number_problem("lr", "0,001")
    assert number_problem("steps", "1,000") == "steps must be a whole number, e.g. 150; got '1,000'"
    state = make_state(tmp_path, tiny_layers)
    for typed in ("0,001", "abc", "0"):
        state.update(lr=typed)
        calls = []
        state.train = lambda *a, **k: calls.append(a)
        assert state.start() is False and calls == [] and state.message.kind == "error"
        assert "lr (learning rate)" in state.message.text and "Learning rate" in state.lr_note()
    assert "Learning rate 0 as typed; LoRA starts at 0.001" in state.lr_note()
    state.update(lr="0.01", steps="3")
    assert state.config() == tiny_config(lr=0.01, steps=3)


def test_labels_name_what_differs_between_runs():
    from workbench.engine.labels import distinct_labels

    a, b = tiny_config(lr=1e-3), tiny_config(lr=1e-2)
    assert distinct_labels([a, b]) == ["LoRA r=8 (query,value) · lr=0.001", "LoRA r=8 (query,value) · lr=0.01"]
    c = tiny_config(lr=1e-2, seed=3, lora=LoRAConfig(alpha=32.0))
    assert distinct_labels([a, c]) == ["LoRA r=8 (query,value) · lr=0.001 alpha=16 seed=0",
                                       "LoRA r=8 (query,value) · lr=0.01 alpha=32 seed=3"]
    # LoRA settings are compared among LoRA runs only; the same settings twice are numbered.
    full = tiny_config(method="full")
    assert distinct_labels([a, full]) == ["LoRA r=8 (query,value)", "full fine-tuning"]
    assert distinct_labels([a, a]) == ["LoRA r=8 (query,value) #1", "LoRA r=8 (query,value) #2"]


@pytest.fixture
def stored(tmp_path, tiny_layers):
    """A state over a store holding three runs: lr 1e-3 and 1e-2 (learned) and lr 10 (did not learn)."""
    runs = [fake_run(tiny_config(lr=lr), losses, acc, minute=i) for i, (lr, losses, acc) in
            enumerate([(1e-3, [0.69, 0.3], 1.0), (1e-2, [0.69, 0.2], 1.0), (10.0, [0.69, 24.3], 0.5)])]
    for r in runs:
        folder = store.save_run(r, tmp_path / "runs")
        if r.config.lr < 1:
            (folder / "adapter").mkdir()
            (folder / "adapter" / "adapter_config.json").write_text('{"r": 8}')
    return make_state(tmp_path, tiny_layers), [r.run_id for r in runs]


def test_runs_are_told_apart_in_the_table_export_and_legends(stored):
    from workbench.viz.run_figures import loss_curves

    state, ids = stored
    table = state.table()
    # Named by what differs; what all share is said once.
    assert list(table["run"]) == [f"lr={lr}" for lr in ("0.001", "0.01", "10")]
    assert state.shared_text() == "all runs: LoRA, r=8, targets query,value"
    assert list(table["outcome"]) == ["learned", "learned", "did not learn"]
    assert list(table["eval accuracy"]) == ["100.0%", "100.0%", "50.0%"] and list(table["run id"]) == ids
    assert list(table["lr"]) == ["0.001", "0.01", "10"] and list(table["seed"]) == ["0"] * 3
    legend = [t.get_text() for t in loss_curves(state.selected_results()).axes[0].get_legend().get_texts()]
    assert legend == list(table["run"][:2]) + [table["run"][2] + " [did not learn]"]
    state.select(ids[:2])
    folder = state.export()
    csv = pd.read_csv(folder / "runs.csv")  # a file on its own: each run's whole label and what differs
    assert list(csv["run"]) == [f"LoRA r=8 (query,value) · lr={lr}" for lr in ("0.001", "0.01")]
    assert list(csv["run id"]) == ids[:2]
    assert list(csv["lr"]) == [1e-3, 1e-2] and list(csv["val. accuracy (%)"]) == [100.0, 100.0]
    for col in ("rank", "alpha", "targets", "steps", "batch_size", "seed", "outcome", "adapter folder"):
        assert col in csv.columns
    assert "Adapters: lr=0.001: " in state.message.details and str(folder) not in state.message.text
    assert "wb.load_adapter(model, folder)" in state.message.details
    # The zip is named after its report, and its tables point at the adapters inside it, not at the server.
    import zipfile

    assert state.last_bundle == folder / f"{folder.name}.zip"
    with zipfile.ZipFile(state.last_bundle) as z:
        inside = pd.read_csv(z.open("runs.csv"))
        assert list(inside["adapter folder"]) == [f"adapters/{i}" for i in ids[:2]]
        assert f"adapters/{ids[0]}/adapter_config.json" in z.namelist()
        assert str(state.runs_dir) not in z.read("runs.md").decode()


def test_hide_select_and_delete_with_confirmation(stored):
    state, ids = stored
    state.select_none()
    assert state.selected == ()
    state.select_all()
    assert state.selected == tuple(ids)
    state.hide([ids[2]])
    assert [r.run_id for r in state.visible_results()] == ids[:2] and state.selected == tuple(ids[:2])
    assert list(state.table()["run id"]) == ids[:2]
    assert (state.runs_dir / ids[2]).is_dir()  # hidden, not deleted
    state.show_hidden()
    assert len(state.table()) == 3
    state.request_delete([ids[0]])
    assert state.pending_delete == (ids[0],) and "Yes, delete" in state.message.text
    assert (state.runs_dir / ids[0]).is_dir()  # nothing happens before the confirmation
    state.cancel_delete()
    assert state.pending_delete == () and (state.runs_dir / ids[0]).is_dir()
    state.request_delete([ids[0]])
    assert state.confirm_delete() == [ids[0]]
    assert not (state.runs_dir / ids[0]).exists() and [r.run_id for r in state.results] == ids[1:]
    assert [r.run_id for r in store.load_runs(state.runs_dir)] == ids[1:]
    with pytest.raises(ValueError, match="unknown run id"):
        state.request_delete([ids[0]])


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_exported_files_get_the_users_umask(stored, umask):
    import os
    import stat
    import zipfile

    state, ids = stored
    old = os.umask(umask)
    try:
        state.select(ids[:2])
        folder = state.export()
    finally:
        os.umask(old)
    files = [p for p in folder.iterdir() if p.is_file()]
    assert len(files) == 11  # 4 figures x 2 formats, the table twice, the zip
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o666 & ~umask}
    with zipfile.ZipFile(state.last_bundle) as z:
        names = set(z.namelist())
    assert {"runs.csv", "runs.md", "loss_curves.png", "README.txt"} <= names
    assert {f"adapters/{i}/adapter_config.json" for i in ids[:2]} <= names


def test_the_view_hides_and_deletes_with_confirmation(stored):
    from workbench.ui.panel import Workbench

    state, ids = stored
    panel = Workbench(state=state)
    assert list(panel.run_checks) == ids and all(b.value for b in panel.run_checks.values())
    assert "[did not learn]" in panel.run_checks[ids[2]].description
    assert "lr=10" in panel.run_checks[ids[2]].description
    panel.select_none_button.click()
    assert state.selected == () and not any(b.value for b in panel.run_checks.values())
    panel.run_checks[ids[2]].value = True
    panel.hide_button.click()
    assert list(panel.run_checks) == ids[:2] and table_rows(panel) == 2
    panel.show_hidden_button.click()
    assert list(panel.run_checks) == ids
    panel.run_checks[ids[1]].value = True
    panel.delete_button.click()
    assert panel.confirm_box.layout.display == "flex" and (state.runs_dir / ids[1]).is_dir()
    panel.confirm_delete_button.click()
    assert panel.confirm_box.layout.display == "none" and not (state.runs_dir / ids[1]).exists()
    assert list(panel.run_checks) == [ids[0], ids[2]] and table_rows(panel) == 2


def test_the_header_gives_measured_run_times(stored):
    from workbench.ui.panel import Workbench

    state, ids = stored
    # fake_run: total_seconds 7.5, 8.5 and 9.5 for runs of the tiny preset's 6 steps
    assert state.timing_note() == "Runs of 6 steps took 7.5–9.5 s here from Train to done (3 measured)."
    panel = Workbench(state=state)
    assert "Runs of 6 steps took 7.5–9.5 s here from Train to done (3 measured)." in panel.header.value


def test_the_header_splits_run_times_into_what_each_part_counts(stored):
    from workbench.engine.config import Timing

    state, ids = stored
    runs = [r for r in state.results if r.run_id in ids]
    for i, r in enumerate(runs):  # totals 7.5, 8.5, 9.5 s (fake_run), parts measured apart
        r.timing = Timing(0.05, 1000.0, r.timing.total_seconds, eval_seconds=1.0 + i, train_seconds=4.0 + i,
                          load_seconds=1.25 + i / 2)
    assert state.timing_note() == ("Runs of 6 steps took 7.5–9.5 s here from Train to done: 4.0–6.0 s training, "
                                   "1.0–3.0 s evaluating, 1.2–2.2 s loading, the rest between steps (3 measured).")
    runs[0].timing = Timing(0.05, 1000.0, runs[0].timing.total_seconds, eval_seconds=1.0, train_seconds=4.0)
    assert state.timing_note().endswith("evaluating, the rest loading and between steps (3 measured).")
