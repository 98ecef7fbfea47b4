"""One build step on top of pyproject.toml: the bundled task goes into the package.

The task lives at the top of the repository (``data/``), outside the ``workbench``
package, so a plain wheel would not carry it and an installed workbench could not find it.
``build_py`` therefore copies ``data/README.md``, ``data/make_task.py`` and
``data/who_acts/*`` into the built package as ``workbench/_data/``, where
``workbench.engine.bundled.bundled_data_dir()`` looks when the package does not sit in a
checkout.  An editable install skips the copy: it runs from the checkout and reads
``data/`` itself.  (``MANIFEST.in`` puts ``data/`` into a source distribution, so a wheel
built from one carries the task too.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
PACKAGED = Path("workbench") / "_data"  # inside the built package


def bundled_files() -> list[Path]:
    """The files of ``data/`` the package carries, relative to ``data/``."""
    folders = ("who_acts", "story_lm", "skill")  # the classification task, the language model, its task
    absent = [str(DATA / f) for f in folders if not (DATA / f).is_dir()]
    if absent:
        raise FileNotFoundError(f"the bundled data is incomplete; missing: {absent}")
    files = [Path("README.md"), Path("make_task.py"), Path("make_story_lm.py"), Path("make_skill.py")]
    for folder in folders:
        files += sorted(p.relative_to(DATA) for p in (DATA / folder).iterdir() if p.is_file())
    missing = [str(DATA / f) for f in files if not (DATA / f).is_file()]
    if missing:
        raise FileNotFoundError(f"the bundled data is incomplete; missing: {missing}")
    return files


class BuildWithData(build_py):
    """``build_py`` plus a copy of the bundled task into ``<build>/workbench/_data``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for rel in bundled_files():
            target = Path(self.build_lib) / PACKAGED / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(DATA / rel, target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """Name the copied files too, so install and record steps account for them."""
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs += [str(Path(self.build_lib) / PACKAGED / rel) for rel in bundled_files()]
        return outputs


setup(cmdclass={"build_py": BuildWithData})
