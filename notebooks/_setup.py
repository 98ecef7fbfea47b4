"""The first import of every notebook: `import _setup` makes `workbench` importable and keeps the run offline.

Why a file and not a cell: the same few lines were copied into four notebooks, and a copy drifts.
Jupyter, JupyterLab, Voila, papermill (with ``cwd=`` the notebook's folder, as the tests run it) and
nbmake all start the kernel in the notebook's own folder, and a kernel puts its working folder on
``sys.path``, so ``import _setup`` finds this file beside the notebook.

Which `workbench` a notebook gets:

* run from a checkout (this file in ``<checkout>/notebooks/``), the checkout's own package: an editable
  install already points there (nothing to do); otherwise the checkout goes first on ``sys.path``, so a
  notebook runs the code of the commit it came with, even when another copy is installed;
* anywhere else (a notebook copied out of the checkout, with this file beside it), the installed one.

Runs started from the notebook (the worker process of a run) inherit the kernel's ``sys.path``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the bundled models and data are on disk: never reach the Hub

#: The checkout this notebook belongs to, or None when the notebook was copied out of it.
CHECKOUT: Path | None = next((p for p in Path(__file__).resolve().parents[:2]
                              if (p / "workbench" / "__init__.py").is_file()), None)


def _checkout_first() -> None:
    """Put CHECKOUT first on sys.path unless `workbench` already comes from it (an editable install)."""
    if CHECKOUT is None or "workbench" in sys.modules or str(CHECKOUT) in sys.path:
        return
    spec = importlib.util.find_spec("workbench")  # finds without importing
    if spec is not None and spec.origin and Path(spec.origin).resolve().is_relative_to(CHECKOUT):
        return
    sys.path.insert(0, str(CHECKOUT))


_checkout_first()

try:
    import workbench  # noqa: F401  (checks now, with a message that says what to do)
except ImportError as error:
    if error.name != "workbench":  # workbench was found, one of its dependencies was not: show that error
        raise
    raise ImportError("workbench is not installed and this notebook is not in a checkout's notebooks/ folder: "
                      "run `pip install -e .` in the checkout (or `make lab`), or open the notebook from there") from error
