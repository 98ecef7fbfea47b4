"""Issue 21, the panel's second pass: time you can read, QLoRA that explains itself, problems at the field.

Fake runs (no training) drive the panel through the edges a real run has, so each check
is about what the panel shows: the evaluating phase, the time split, the weights beside
the peak, a bad value marked at its box with Train off, the task switch, Try it's verdicts.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from workbench.engine.config import Timing
from workbench.engine.events import StepInfo
from workbench.lora.config import LoRAConfig
from workbench.lora.quantize import nf4_bits_per_weight
from workbench.records import store
from workbench.ui.run_facts import QLORA_CPU_WHY
from panel_helpers import ROOT, fake_run, make_panel, make_state, tiny_config


def _phased_train(seen: list):
    """A train function that reports like the loop: step 1, the evaluation after step 2, step 2; then ends."""

    def train(cfg, on_step=None, sinks=(), **kwargs):
        history = []
        (phases,) = sinks
        for step in (1, 2):
            if step == 2:
                phases.on_eval_start(2, 2, 20)
                seen.append("evaluated")
            history.append({"step": step, "train_loss": 0.7 - 0.2 * step, "lr": cfg.lr})
            on_step(StepInfo(step, 2, 0.7 - 0.2 * step, cfg.lr, 0.1 * step, history=list(history)))
        run = fake_run(cfg, [0.5, 0.3], 0.9)
        run.timing = Timing(0.05, 1000.0, 36.4, eval_seconds=9.1, train_seconds=21.3, load_seconds=1.2)
        return run

    return train


def test_an_evaluation_is_shown_as_a_phase_and_the_time_says_what_it_counts(tmp_path, tiny_layers):
    seen: list = []
    panel = make_panel(tmp_path, tiny_layers, train=_phased_train(seen))
    s = panel.state
    shown: list[tuple[str, str, str]] = []
    s.subscribe(lambda event: shown.append((s.phase, panel.progress_text.value, s.message.text))
                if event == "message" and s.phase == "evaluating" else None)
    assert s.start() is True
    # While it evaluated: the progress text and the message said so, with the prompts and the step.
    assert shown and shown[0][1] == "evaluating 20 held-out prompts, step 2…"
    assert shown[0][2] == "Step 2 of 2: evaluating 20 held-out prompts (the final evaluation answers every prompt)…"
    # The done message: the total, and what it is made of (measured apart; the rest is between the steps).
    assert ("took 36.4 s: 21.3 s training (0.050 s/step), 9.1 s evaluating, 1.2 s loading, 4.8 s between steps"
            in s.message.text)
    assert s.phase == "" and panel.progress_text.value.startswith("2 / 2")


def test_a_bad_value_is_marked_at_its_box_train_is_off_with_the_reason_and_fixing_it_clears_it(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers)
    s = panel.state
    assert not panel.train_button.disabled and panel.train_tab.train_reason.value == ""
    panel.lr.value = "0,001"
    assert "2px solid" in panel.lr.layout.border and panel.train_button.disabled
    assert "Train is off until this is fixed: lr (learning rate)" in panel.train_tab.train_reason.value
    assert s.start() is False and s.message.kind == "error"  # a script pressing Train anyway is refused
    panel.lr.value = "0.001"
    assert panel.lr.layout.border == "" and not panel.train_button.disabled
    assert s.message.kind == "info" and s.message.text.startswith("Fixed")  # the red message does not outlive it
    # Rank 0 typed into the slider's box reaches the state as 0 and is refused (not made 1).
    panel.rank.value = 0
    assert s.choices.rank == 0 and s.problem_field() == "rank" and panel.train_button.disabled
    assert "rank must be a positive integer, got 0" in panel.train_tab.train_reason.value
    panel.rank.value = 4
    # lr = 10: trains if asked, but is flagged before the run.
    panel.lr.value = "10"
    assert not panel.train_button.disabled
    assert "lr = 10 is 10,000 x the 0.001 LoRA starts at" in panel.lr_note.value


def test_switching_task_clears_the_other_task_s_live_curve(tmp_path, tiny_layers):
    panel = make_panel(tmp_path, tiny_layers, train=_phased_train([]))
    assert panel.state.start() is True and panel.live_plot.outputs  # the run's curve is shown
    panel.task.value = "causal-lm"
    assert panel.live_plot.outputs == () and panel.progress_text.value == "" and panel.state.live_history is None


def test_qlora_weights_stand_beside_the_peak_with_why_the_peak_rises_on_a_cpu(tmp_path, tiny_layers):
    from workbench.engine.memory import MemoryBreakdown
    from workbench.ui.settings import quantized_weight_bytes

    state = make_state(tmp_path, tiny_layers)
    state.update(quantize="nf4")
    # tiny-bert's block linears: 2 blocks x (4 of 32x32 + 32x64 + 64x32) = 16,384 weights.
    floats, quantized, n = quantized_weight_bytes("nf4", state.model)
    assert (n, floats) == (16_384, 4 * 16_384) and quantized == pytest.approx(16_384 * nf4_bits_per_weight() / 8)
    base = state.model.base_parameters
    from workbench.util.units import format_bytes

    assert (f"the weights: about {format_bytes(4 * base)} in fp32 -> {format_bytes(4 * base - 4 * n + quantized)}"
            in state.readout().detail)
    run = fake_run(tiny_config(lora=LoRAConfig(), quantize="nf4"), [0.69, 0.2], 0.97)
    run.memory = MemoryBreakdown(weights=44_100_000, gradients=10, optimizer=20, activations=30, peak=789_800_000,
                                 peak_kind="own process VmHWM")
    run.environment["device"] = "cpu"
    text, kind, _ = state.verdict(run)
    assert "peak 789.8 MB (own process VmHWM), weights 44.1 MB (NF4 base)" in text and QLORA_CPU_WHY in text
    store.save_run(run, state.runs_dir)
    state.refresh()
    row = state.table().iloc[0]
    assert (row["peak"], row["weights"], row["time"]) == ("789.8 MB", "44.1 MB", "7.5 s")
    panel = make_panel(tmp_path, tiny_layers)
    assert QLORA_CPU_WHY in panel.table.value.replace("&#x27;", "'")


def test_try_it_says_a_run_did_not_learn_and_answers_over_training_are_marked(tmp_path, tiny_layers):
    from workbench.engine.config import preset
    from workbench.ui.try_it import Answer, Answers

    run = fake_run(preset("generate"), [3.0, 3.5], float("nan"))
    run.history["eval_exact_match"] = [math.nan, 0.0]
    run.samples = [{"step": 2, "prompt": "Statement: A.\nQuestion:", "reference": " Is A?", "answer": " Is A?"},
                   {"step": 2, "prompt": "Statement: B.\nQuestion:", "reference": " Was B?", "answer": " no"}]
    store.save_run(run, tmp_path / "runs")
    panel = make_panel(tmp_path, tiny_layers)
    panel.task.value = "causal-lm"
    s = panel.state
    assert s.outcome(s.results[0]).verdict == "did not learn"
    s.tryit.answers = Answers("Statement: A.\nQuestion:", "Is A?", Answer("base model", "", None, False),
                              Answer("r=8", "", run.run_id, False))
    panel.try_tab.show_answers()
    assert "[did not learn]" in panel.answers.value and "(nothing: its first line is empty)" in panel.answers.value
    assert "Is A? ✓" in panel.samples.value and "no ✗" in panel.samples.value


@pytest.mark.slow
def test_the_panel_imports_no_test_benchmark_or_cluster_package():
    """The light attendee install has none of them: starting the panel and training must import none.

    Some libraries the panel needs import what they find installed (pandas takes pyarrow
    when it is there), so what the libraries load on their own is the baseline: the panel
    and a run must add none of these to it.  (Run by hand on the light install itself, the
    panel started and trained with none of them present; see issue 21's report.)"""
    code = ("import sys, tempfile\n"
            "heavy = ('ray', 'playwright', 'pyarrow', 'trl', 'pytest', 'nbmake', 'papermill', 'datasets', 'mlflow',\n"
            "         'optuna', 'benchmarks')\n"
            "import pandas, torch, transformers, ipywidgets, matplotlib, peft  # what the panel stands on\n"
            "baseline = {m for m in heavy if m in sys.modules}\n"
            "from workbench.ui.panel import Workbench\n"
            "d = tempfile.mkdtemp()\n"
            "p = Workbench(model='tiny-bert', preset='tiny', runs_dir=d + '/r', reports_dir=d + '/p', background=False)\n"
            "p.state.update(steps=2)\n"
            "p.train_button.click()\n"
            "assert p.state.last_result is not None and p.state.last_result.status == 'completed', p.message_text\n"
            "print(sorted(m for m in heavy if m in sys.modules and m not in baseline))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_committed_notebook_is_stored_as_jupyter_writes_it():
    """Defect: JupyterLab marked notebooks/workbench.ipynb changed on open (it dropped a trailing empty
    string) and autosave rewrote it, so an attendee's git pull conflicted.  Stored as nbformat writes it,
    opening it changes nothing; and it carries no outputs to be rewritten."""
    import nbformat

    path = ROOT / "notebooks" / "workbench.ipynb"
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    assert nbformat.writes(nb) + "\n" == text
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert not any(isinstance(c.source, list) for c in nb.cells)
    # The Run All instruction is for JupyterLab only: Voila (body[data-voila]) hides it (the browser test sees it).
    assert ('<span class="workbench-lab-only">In JupyterLab, run all cells' in nb.cells[0].source
            and "body[data-voila] .workbench-lab-only { display: none; }" in nb.cells[0].source)


def test_the_panel_and_the_api_store_runs_in_one_folder(tmp_path, monkeypatch):
    """Defect: the README's code, run in a notebook (working folder notebooks/), stored its runs in
    notebooks/runs/, which the panel (``runs_dir = "../runs"``) never listed.  Now the API's default
    store is the checkout's runs/ from anywhere inside the checkout, and ./runs outside it."""
    import inspect
    import json
    import os
    from pathlib import Path

    import workbench as wb

    nb = json.loads((ROOT / "notebooks" / "workbench.ipynb").read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    assert 'runs_dir = "../runs"' in "".join(params["source"])  # what the panel lists, relative to notebooks/
    default = inspect.signature(wb.train).parameters["runs_dir"].default
    assert default is store.DEFAULT_ROOT and inspect.signature(wb.runs).parameters["root"].default is default
    monkeypatch.chdir(ROOT / "notebooks")
    assert Path(default) == (ROOT / "notebooks" / "../runs").resolve() == ROOT / "runs"
    monkeypatch.chdir(ROOT)
    assert os.fspath(default) == str(ROOT / "runs")
    monkeypatch.chdir(tmp_path)  # outside the checkout: under the working folder, as before
    assert os.fspath(default) == "runs" and Path(default).resolve() == tmp_path / "runs"


@pytest.mark.slow  # a fresh process importing bitsandbytes (a few seconds)
def test_qlora_why_holds_bitsandbytes_kernels_bring_the_compiler_modules_and_dequantize():
    """What QLORA_CPU_WHY says, checked: an NF4 layer's first use imports torch._dynamo (PyTorch's compiler
    modules) into a process that had not loaded it, and its output is that of the dequantized float weight."""
    code = ("import sys, torch\n"
            "from workbench.lora.quantize import quantize_layer, dequantize_weight\n"
            "before = 'torch._dynamo' in sys.modules\n"
            "torch.manual_seed(0); layer = torch.nn.Linear(64, 32)\n"
            "q = quantize_layer(layer, 'nf4'); x = torch.randn(4, 64)\n"
            "y = q(x); w = dequantize_weight(q)\n"
            "ref = x @ w.T + layer.bias\n"
            "print(before, 'torch._dynamo' in sys.modules, bool(torch.allclose(y, ref, atol=1e-5)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True"], out.stdout
    assert "compiler modules" in QLORA_CPU_WHY and "turns the codes back into float weights" in QLORA_CPU_WHY


def _fast_train(steps: int, stop_at: int | None = None):
    """A train function whose steps take 2 ms each; with ``stop_at`` the run ends there, stopped."""

    def train(cfg, on_step=None, sinks=(), **kwargs):
        history = []
        last = stop_at or steps
        for step in range(1, last + 1):
            time.sleep(0.002)
            history.append({"step": step, "train_loss": 1.0 / step, "lr": cfg.lr})
            on_step(StepInfo(step, steps, 1.0 / step, cfg.lr, 0.002 * step, history=list(history)))
        run = fake_run(cfg, [1.0 / s for s in range(1, last + 1)], 0.9,
                       status="stopped" if stop_at else "completed")
        return run

    return train


@pytest.mark.parametrize("stop_at", [None, 297])
def test_the_bar_moves_a_few_times_a_second_and_ends_at_the_last_step(tmp_path, tiny_layers, stop_at):
    # Each move is a message to the browser, which paints on the CPUs the run trains on (train_tab's
    # PROGRESS_MIN_INTERVAL_S): 300 steps of 2 ms move it at the first step, about 2 or 3 times
    # more, and at the end, whether the run completed or stopped between two moves.
    from workbench.ui.train_tab import PROGRESS_MIN_INTERVAL_S

    panel = make_panel(tmp_path, tiny_layers, train=_fast_train(300, stop_at))
    panel.steps.value = "300"  # the bar's length
    labels: list[str] = []
    panel.progress_text.observe(lambda change: labels.append(change["new"]), names="value")
    start = time.monotonic()
    assert panel.state.start() is True
    took = time.monotonic() - start
    moves = [t for t in labels if "/ 300" in t and not t.startswith("0 /")]
    assert moves[0].startswith("1 / 300, loss 1.0000")
    last = stop_at or 300
    assert moves[-1].startswith(f"{last} / 300, loss {1.0 / last:.4f}") and panel.progress.value == last
    assert len(moves) <= took / PROGRESS_MIN_INTERVAL_S + 3, (len(moves), took)
