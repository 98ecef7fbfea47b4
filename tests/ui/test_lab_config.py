"""JupyterLab's pre-save hook (workbench/ui/lab_config.py): the tracked panel notebook is saved as committed.

Defect: after Run All, autosave wrote the panel's outputs, execution counts, widget state and
the kernel's language details into notebooks/workbench.ipynb, so git showed it changed and a
pull conflicted.  Here the hook gets the notebook as JupyterLab sends it after a run, and what
it leaves must be the committed file byte for byte (the browser test does the same through a
real JupyterLab).
"""

from __future__ import annotations

import copy
import json
import sys

import nbformat
from traitlets.config.loader import PyFileConfigLoader

from workbench.ui import lab_config
from panel_helpers import ROOT

NOTEBOOK = ROOT / "notebooks" / "workbench.ipynb"


def _as_run(nb: dict) -> dict:
    """The notebook as JupyterLab saves it after Run All: outputs, counts, widget state, language details."""
    ran = copy.deepcopy(nb)
    for i, cell in enumerate(c for c in ran["cells"] if c["cell_type"] == "code"):
        cell["execution_count"] = i + 1
        cell["outputs"] = [{"output_type": "display_data", "metadata": {},
                            "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2,
                                                                                  "version_minor": 0}}}]
        cell["metadata"]["execution"] = {"iopub.status.busy": "2026-12-07T04:00:00.000Z"}
    ran["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2}}
    ran["metadata"]["language_info"] = {"name": "python", "version": "3.11.2", "mimetype": "text/x-python",
                                        "codemirror_mode": {"name": "ipython", "version": 3}}
    return ran


def test_the_panel_notebook_after_a_run_is_saved_as_committed():
    text = NOTEBOOK.read_text(encoding="utf-8")
    committed = json.loads(text)
    assert lab_config.wants_clean(committed)  # the tracked notebook carries the marker
    model = {"type": "notebook", "content": nbformat.from_dict(_as_run(committed))}
    assert model["content"] != committed
    lab_config.keep_clean(model=model, path="notebooks/workbench.ipynb", contents_manager=None)
    assert nbformat.writes(model["content"]) + "\n" == text


def test_an_edit_to_a_cell_is_kept_and_unmarked_notebooks_are_left_alone():
    committed = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    ran = _as_run(committed)
    code = next(c for c in ran["cells"] if c["cell_type"] == "code")
    code["source"] = 'preset = "tiny"\n'
    model = {"type": "notebook", "content": ran}
    lab_config.keep_clean(model=model, path="x.ipynb")
    assert code["source"] == 'preset = "tiny"\n' and code["outputs"] == [] and code["execution_count"] is None
    other = _as_run(committed)
    del other["metadata"]["workbench"]
    before = copy.deepcopy(other)
    lab_config.keep_clean(model={"type": "notebook", "content": other}, path="mine.ipynb")
    assert other == before  # a notebook without the marker keeps its outputs
    lab_config.keep_clean(model={"type": "file", "content": "text"}, path="a.txt")  # files pass untouched


def test_jupyter_reads_the_file_as_a_config_that_sets_the_hook():
    config = PyFileConfigLoader(lab_config.__file__.rsplit("/", 1)[1],
                                path=str(ROOT / "workbench" / "ui")).load_config()
    hook = config.ContentsManager.pre_save_hook
    assert callable(hook) and hook.__name__ == "keep_clean"
    manager = config.ServerApp.contents_manager_class
    assert manager.__name__ == "CleanOnOpenContentsManager"


def test_the_notebook_reaches_the_browser_with_the_details_its_kernel_will_write(tmp_path):
    """Defect: opened in JupyterLab, the tracked notebook was marked changed before anything was
    done, because the kernel wrote its language details (version, lexer...) over the committed
    ``{"name": "python"}``.  The server now hands it out with exactly what ipykernel on this
    Python reports, and the file on disk stays as committed."""
    import asyncio

    from ipykernel.ipkernel import IPythonKernel
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

    committed = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert committed["metadata"]["language_info"] == {"name": "python"}  # no machine's version in git
    (tmp_path / "workbench.ipynb").write_text(NOTEBOOK.read_text(encoding="utf-8"), encoding="utf-8")
    other = copy.deepcopy(committed)
    del other["metadata"]["workbench"]
    (tmp_path / "mine.ipynb").write_text(json.dumps(other), encoding="utf-8")

    manager = lab_config.clean_contents_manager(AsyncLargeFileManager)(root_dir=str(tmp_path))
    opened = asyncio.run(manager.get("workbench.ipynb"))
    assert opened["content"]["metadata"]["language_info"] == IPythonKernel.language_info
    assert opened["content"]["metadata"]["language_info"]["version"] == sys.version.split()[0]
    assert asyncio.run(manager.get("mine.ipynb"))["content"]["metadata"]["language_info"] == {"name": "python"}
    listing = asyncio.run(manager.get("", content=True))  # folders and listings pass through
    assert {m["name"] for m in listing["content"]} == {"workbench.ipynb", "mine.ipynb"}
    assert (tmp_path / "workbench.ipynb").read_text(encoding="utf-8") == NOTEBOOK.read_text(encoding="utf-8")
