"""Every notebook runs top to bottom headless (papermill, a real kernel) on the tiny preset.

Each notebook has a cell tagged ``parameters``; the test injects the tiny preset and
temporary run and report folders, so a notebook finishes in seconds and leaves nothing
in the repository.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {"workbench.ipynb", "01_lora_from_scratch.ipynb"} <= {p.name for p in NOTEBOOKS}


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
