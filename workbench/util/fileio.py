"""Atomic file writes: a reader never sees half a file, and a crash never eats the old one.

Each write goes to a temporary file in the same folder, is flushed to disk, and is then
renamed over the target (``os.replace`` is atomic on POSIX and Windows).

``mkstemp`` creates the temporary file with mode 0600 (private), and a rename keeps the
mode, so before the rename the file gets the mode a plain ``open(path, "w")`` would have
given it: ``0o666 & ~umask`` (0644 under the usual umask 022).  On a shared workshop
server the reports and runs can then be read by others and by a web server.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from workbench.util import procfs


def current_umask() -> int:
    """The process's umask.

    Linux shows it in /proc/self/status; elsewhere reading it means setting it and setting
    it straight back (a moment in which another thread's new file would get umask 022).
    """
    mask = procfs.umask()
    if mask is not None:
        return mask
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 without the umask's bits."""
    return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
