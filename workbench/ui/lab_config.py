"""JupyterLab's configuration for the workbench (``make lab`` passes ``--config=workbench/ui/lab_config.py``).

Why: ``notebooks/workbench.ipynb`` is tracked in git and holds only a panel.  After Run All,
JupyterLab's autosave wrote its outputs (the widget views, execution counts, the widget
state and the kernel's language details) into the file, so the file showed as changed and
an attendee's ``git pull`` of a fix conflicted with it.  The outputs of a widget panel are
worth nothing once the kernel is gone, so a notebook whose metadata says
``"workbench": {"save_outputs": false}`` is saved without them: what reaches the disk is the
notebook as committed, plus any edit made to its cells' text.

Opening it must not mark it changed either.  When the kernel connects, JupyterLab writes the
kernel's language details (``language_info``: Python's version, lexer, mimetype...) into the
notebook's metadata, and a value that differs from the one loaded marks the notebook changed
before the attendee has done anything.  The committed file keeps only the language's name
(the version differs from machine to machine), so the server hands such a notebook to the
browser with the details this server's Python kernel will report (``with_kernel_language``):
the kernel then writes what is already there, and the notebook stays unchanged.  The kernel is
the checkout's ``python3``, the same interpreter as the server (``make lab`` runs both from
``.venv``).

Nothing from ``workbench`` (and so no torch) is imported, on purpose: Jupyter loads this file by
path (``--config``) in the server process.  The hooks are plain functions, so the tests call them
on a notebook as Jupyter's contents manager hands it over (``keep_clean(model=..., path=...,
contents_manager=...)``).
"""

from __future__ import annotations

import sys
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


def kernel_language_info() -> dict:
    """The ``language_info`` an IPython kernel on this interpreter reports (ipykernel's own table).

    Read from ipykernel itself, so a newer ipykernel's details are the ones handed out; the
    table written here is the one ipykernel 6-7 reports, for a server without ipykernel."""
    try:
        from ipykernel.ipkernel import IPythonKernel

        return dict(IPythonKernel.language_info)
    except ImportError:
        return {"name": "python", "version": sys.version.split()[0], "mimetype": "text/x-python",
                "codemirror_mode": {"name": "ipython", "version": sys.version_info[0]},
                "pygments_lexer": "ipython3", "nbconvert_exporter": "python", "file_extension": ".py"}


def with_kernel_language(model: dict) -> dict:
    """A notebook model on its way to the browser, its language details completed; returned.

    Only a notebook that asks to be kept clean (``wants_clean``), whose saved language is
    Python and whose kernel is the default ``python3``, is touched: its ``language_info`` becomes
    what that kernel will report, so JupyterLab finds nothing to change when the kernel connects."""
    nb = model.get("content") if model.get("type") == "notebook" else None
    if not wants_clean(nb):
        return model
    meta = nb.setdefault("metadata", {})
    language = meta.get("language_info") or {"name": "python"}
    if language.get("name") == "python" and meta.get("kernelspec", {}).get("name", "python3") == "python3":
        meta["language_info"] = kernel_language_info()
    return model


def clean_contents_manager(base: type) -> type:
    """``base`` (Jupyter's contents manager class) handing notebooks out through ``with_kernel_language``."""

    class CleanOnOpenContentsManager(base):  # type: ignore[misc, valid-type]
        async def get(self, path: str, content: bool = True, **kwargs: Any) -> dict:
            return with_kernel_language(await super().get(path, content=content, **kwargs))

    return CleanOnOpenContentsManager


def keep_clean(model: dict, path: str = "", contents_manager: Any = None, **kwargs: Any) -> None:
    """Jupyter's pre-save hook: a notebook marked ``save_outputs: false`` is saved without its outputs."""
    if model.get("type") == "notebook" and wants_clean(model.get("content")):
        strip_outputs(model["content"])


if "get_config" in globals():  # read by Jupyter as a config file (``--config=``), not imported
    c = get_config()  # noqa: F821 - defined by traitlets' config loader
    from jupyter_server.services.contents.largefilemanager import AsyncLargeFileManager

    c.ServerApp.contents_manager_class = clean_contents_manager(AsyncLargeFileManager)
    c.ContentsManager.pre_save_hook = keep_clean


__all__ = ["MARKER", "RUNTIME_CELL_KEYS", "clean_contents_manager", "keep_clean", "kernel_language_info",
           "strip_outputs", "wants_clean", "with_kernel_language"]
