"""Every notebook runs top to bottom headless (papermill, a real kernel) on the tiny preset.

Each notebook has a cell tagged ``parameters``; the test injects the tiny preset and
temporary run and report folders, so a notebook finishes in seconds and leaves nothing
in the repository.  ``self_test=True`` makes each lesson notebook assert what its text
states (its exercises run too).  Claims that hold only for the defaults (the bundled
MiniLM, 150 steps) are asserted under ``preset == "default"``: the opt-in test
``test_lesson_notebook_claims_at_defaults`` (``WORKBENCH_NOTEBOOKS_AT_DEFAULTS=1``, tens of
minutes on 2 cores) runs the lesson notebooks at their defaults to check them; with
``WORKBENCH_NOTEBOOK_TIMES=<file.json>`` it also records each notebook's printed run time there
(``workbench.lessons.run_times`` turns the records into docs/workshop.md's table).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {"workbench.ipynb", "01_lora_from_scratch.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.slow  # each notebook runs the real bundled models (tiny preset): minutes in all
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless(path, tmp_path, monkeypatch):
    import nbformat
    import papermill

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    nb = nbformat.read(path, as_version=4)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), f"{path.name} has no parameters cell"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name} is stored with outputs"
    out = tmp_path / path.name
    papermill.execute_notebook(
        str(path), str(out), cwd=str(path.parent), kernel_name="python3", progress_bar=False,
        parameters={"preset": "tiny", "model": "tiny-bert", "runs_dir": str(tmp_path / "runs"),
                    "reports_dir": str(tmp_path / "reports"), "self_test": True},
    )
    executed = nbformat.read(out, as_version=4)
    errors = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_every_notebook_sets_up_through_the_one_helper():
    """One setup helper (notebooks/_setup.py), no copy of a sys.path bootstrap in any notebook."""
    import nbformat

    for path in NOTEBOOKS:
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "import _setup" in code, f"{path.name} does not import the setup helper"
        assert "sys.path" not in code, f"{path.name} changes sys.path itself"


def test_setup_helper_finds_this_checkout_or_the_installed_package(tmp_path):
    """From notebooks/ the helper gives this checkout's workbench, offline; copied elsewhere, the installed one."""
    import shutil
    import subprocess
    import sys

    probe = "import os, _setup, workbench; print(os.environ['HF_HUB_OFFLINE'], _setup.CHECKOUT, workbench.__file__)"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "PYTHONPATH")}
    here = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "notebooks", env=env, capture_output=True,
                          text=True, timeout=120, check=True).stdout.split()
    assert here[:2] == ["1", str(ROOT)] and Path(here[2]).resolve() == ROOT / "workbench" / "__init__.py"
    shutil.copy(ROOT / "notebooks" / "_setup.py", tmp_path / "_setup.py")
    away = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=True).stdout.split()
    assert away[:2] == ["1", "None"]  # no checkout above it: whatever workbench is installed (here the editable one)


LESSONS = [p for p in NOTEBOOKS if p.name[:2].isdigit()]


def test_every_lesson_has_a_goal_takeaways_and_exercises():
    import nbformat

    for path in LESSONS:
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "**Goal.**" in text and "**Time" in text, f"{path.name}: no goal or time in the introduction"
        assert re.search(r"^## (\d+\. )?Takeaways$", text, re.M), f"{path.name}: no Takeaways cell"
        assert 2 <= text.count("<details><summary>Answer</summary>") <= 3, f"{path.name}: 2 or 3 exercises with hidden answers"
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "self_test" in code and "ran in {clock.text()}" in code, f"{path.name}: no self-test or measured run time"


def test_lesson_text_has_no_escape_accidents_and_no_tracker_words():
    """A LaTeX command written in a Python string without r'' loses its backslash (``\\top`` becomes a tab,
    ``\\frac`` a form feed): the formula renders broken.  And teaching text speaks of the lesson, not of
    the project's tracker."""
    import nbformat

    for path in NOTEBOOKS:
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type != "markdown":
                continue
            bad = sorted({repr(ch) for ch in cell.source if ord(ch) < 32 and ch != "\n"})
            assert not bad, f"{path.name} cell {i}: control characters {bad} (a lost backslash?)"
            assert not re.search(r"\bissues?\b|\bthe issue's\b", cell.source, re.I), f"{path.name} cell {i}: tracker words"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("WORKBENCH_NOTEBOOKS_AT_DEFAULTS") != "1",
                    reason="opt-in: tens of minutes on 2 cores (set WORKBENCH_NOTEBOOKS_AT_DEFAULTS=1)")
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_notebook_claims_at_defaults(path, tmp_path, monkeypatch):
    """The lesson at its defaults, with the claims its text makes about the defaults asserted."""
    import nbformat
    import papermill

    from workbench.lessons import run_times

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    out = tmp_path / path.name
    load_before = run_times.load_average()
    papermill.execute_notebook(
        str(path), str(out), cwd=str(path.parent), kernel_name="python3", progress_bar=False,
        parameters={"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports"), "self_test": True},
    )
    executed = nbformat.read(out, as_version=4)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert any("self-test passed" in o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    if os.environ.get("WORKBENCH_NOTEBOOK_TIMES"):  # docs/workshop.md's run-time table is made from these records
        import datetime

        run_times.record(os.environ["WORKBENCH_NOTEBOOK_TIMES"], path.stem, executed, load_before,
                         run_times.load_average(), datetime.date.today().isoformat())


@pytest.mark.slow
def test_learning_vs_forgetting_notebook_on_the_bundled_model(tmp_path, monkeypatch):
    """Notebook 07 on the real story-lm at the generative preset (250 steps), with the claims its
    text makes about the defaults asserted, on a smaller grid than its defaults: LoRA r = 1 and 8,
    full fine-tuning at 3e-4, seed 0 (five runs with the exercises, about 1.5 min on 2 quiet
    cores; the default grid, ranks 1, 8, 64, two full fine-tuning learning rates, two seeds,
    runs in ``test_lesson_notebook_claims_at_defaults``)."""
    import nbformat
    import papermill

    path = ROOT / "notebooks" / "07_learning_vs_forgetting.ipynb"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    out = tmp_path / path.name
    papermill.execute_notebook(
        str(path), str(out), cwd=str(path.parent), kernel_name="python3", progress_bar=False,
        parameters={"ranks": [1, 8], "seeds": [0], "full_lrs": [3e-4], "runs_dir": str(tmp_path / "runs"),
                    "self_test": True},
    )
    executed = nbformat.read(out, as_version=4)
    texts = [o.get("text", "") for c in executed.cells for o in c.get("outputs", [])]
    assert any("self-test passed" in t for t in texts)
