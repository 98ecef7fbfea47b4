"""JupyterLab's configuration for the workbench (``make lab`` passes ``--config=workbench/ui/lab_config.py``).

Why: ``notebooks/workbench.ipynb`` is tracked in git and holds only a panel.  After Run All,
JupyterLab's autosave wrote its outputs (the widget views, execution counts, the widget
state and the kernel's language details) into the file, so the file showed as changed and
an attendee's ``git pull`` of a fix conflicted with it.  The outputs of a widget panel are
worth nothing once the kernel is gone, so a notebook whose metadata says
``"workbench": {"save_outputs": false}`` is saved without them: what reaches the disk is the
notebook as committed, plus any edit made to its cells' text.

Only the standard library is used, on purpose: Jupyter loads this file by path (``--config``)
in the server process, which must not pay for importing ``workbench`` (and torch).  The
hook is a plain function, so the tests call it on a notebook as Jupyter's contents manager
hands it over (``keep_clean(model=..., path=..., contents_manager=...)``).
"""

from __future__ import annotations

from typing import Any

#: The notebook metadata key whose ``save_outputs: false`` asks for saving without outputs.
MARKER = "workbench"
#: Cell metadata JupyterLab adds while running (timings, scroll state), not part of the notebook.
RUNTIME_CELL_KEYS = ("execution", "scrolled", "collapsed")


def wants_clean(nb: Any) -> bool:
    """The notebook asks to be saved without outputs (its metadata says so)."""
    meta = (nb or {}).get("metadata", {}) if isinstance(nb, dict) else {}
    return isinstance(meta.get(MARKER), dict) and meta[MARKER].get("save_outputs") is False


def strip_outputs(nb: dict) -> dict:
    """``nb`` (a notebook as a dict) without what running it added, in place; returned.

    Code cells lose their outputs and execution counts, every cell the run-time keys of its
    metadata (``RUNTIME_CELL_KEYS``); the notebook loses the widget state and keeps only
    the name of its language (the rest is filled in by whichever kernel ran it)."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        meta = cell.get("metadata", {})
        for key in RUNTIME_CELL_KEYS:
            meta.pop(key, None)
    meta = nb.setdefault("metadata", {})
    meta.pop("widgets", None)
    language = meta.get("language_info")
    if isinstance(language, dict) and "name" in language:
        meta["language_info"] = {"name": language["name"]}
    return nb


def keep_clean(model: dict, path: str = "", contents_manager: Any = None, **kwargs: Any) -> None:
    """Jupyter's pre-save hook: a notebook marked ``save_outputs: false`` is saved without its outputs."""
    if model.get("type") == "notebook" and wants_clean(model.get("content")):
        strip_outputs(model["content"])


if "get_config" in globals():  # read by Jupyter as a config file (``--config=``), not imported
    c = get_config()  # noqa: F821 - defined by traitlets' config loader
    c.ContentsManager.pre_save_hook = keep_clean


__all__ = ["MARKER", "RUNTIME_CELL_KEYS", "keep_clean", "strip_outputs", "wants_clean"]
