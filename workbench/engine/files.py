"""Reading data files: text, rows and lines, with every error naming the file and what is allowed.

Every reader of the engine's data (the classification task's ``workbench.engine.data``, the
generative task's ``workbench.engine.sft``, the held-out text a language model's forgetting
is measured on) opens its files here, so that a file a new user gives falls through to no
error of Python's own: a file that is not UTF-8, or that is empty, or that holds something
other than records, ends in a ``DataError`` (a ``ValueError``) saying which file, what is
wrong, and what the file may hold.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["DataError", "FILE_SUFFIXES", "SPLIT_ALIASES", "RECORD_FILES", "looks_like_path", "read_text",
           "read_rows", "json_lines", "read_lines", "split_file", "has_split"]

FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
# Names a folder's evaluation file may carry, tried in this order.
SPLIT_ALIASES = {
    "train": ("train",),
    "validation": ("validation", "dev", "valid", "val", "eval"),
    "test": ("test",),
}

# What a data file may hold, said in the errors about one that holds nothing readable.
RECORD_FILES = ("accepted: a UTF-8 .csv or .tsv file with a header line, a .jsonl file with one JSON object per "
                "line, or a .json file holding a list of objects")


class DataError(ValueError):
    """A data source could not be read as texts and labels; the message says why."""


def read_text(path: Path, allowed: str = RECORD_FILES) -> str:
    """The whole of a UTF-8 text file (a byte-order mark at its start is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}: "
                        f"{e.reason}); save it as UTF-8 ({allowed})") from None


def read_lines(path: str | Path, allowed: str = "a UTF-8 text file, one text per line") -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; a file with none is refused."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"no such file: {path} ({allowed})")
    lines = [ln.strip() for ln in read_text(path, allowed).split("\n")]  # not splitlines: see read_rows
    texts = [ln for ln in lines if ln]
    if not texts:
        raise DataError(f"{path} holds no text ({allowed})")
    return texts


def looks_like_path(source: str) -> bool:
    """A string is meant as a local path if it exists, ends like a data file, or starts
    like a path; anything else is taken to be a Hugging Face datasets name."""
    return (
        os.path.exists(source)
        or source.lower().endswith(FILE_SUFFIXES)
        or source.startswith(("/", "./", "../", "~"))
    )


def read_rows(path: Path, allowed: str = RECORD_FILES) -> list[dict[str, Any]]:
    """Rows of a .csv / .tsv / .jsonl / .json file as dicts keyed by column name.

    ``allowed`` says, in the errors about an empty file or one that is not UTF-8, what the
    file should hold (the caller knows which records it accepts).

    TSV files are read as GLUE writes them: tab-separated, no quoting (a ``"`` inside a
    sentence is an ordinary character). CSV files use standard CSV quoting.
    """
    suffix = path.suffix.lower()
    text = read_text(path, allowed)
    if not text.strip():
        raise DataError(f"{path} is empty: it holds no rows ({allowed})")
    if suffix in (".csv", ".tsv"):
        # newline="": only \n, \r\n and \r end a line (str.splitlines would also split on
        # characters such as U+2028 that may sit inside a text).
        lines = io.StringIO(text, newline="")
        if suffix == ".tsv":
            reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(lines)
        try:
            rows = list(reader)
        except csv.Error as e:  # a NUL byte, a field past csv's size limit, ...
            raise DataError(f"{path}, line {reader.line_num + 1}: not readable as {suffix[1:].upper()} ({e}); "
                            f"{allowed}") from None
        if not rows:
            raise DataError(f"{path} has a header line ({', '.join(reader.fieldnames or [])}) "
                            "but no rows")
        return rows
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None  # not one JSON document: read it as JSON lines below
        if isinstance(obj, list):
            rows = obj
        elif isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
            lengths = {len(v) for v in obj.values()}
            if len(lengths) != 1:
                raise DataError(f"{path}: the column lists have different lengths {sorted(lengths)}")
            keys = list(obj)
            rows = [dict(zip(keys, vals)) for vals in zip(*obj.values())]
        elif isinstance(obj, dict) and isinstance(obj.get("data"), list):
            rows = obj["data"]
        elif obj is None:
            rows = json_lines(path, text)
        else:
            raise DataError(
                f"{path}: a .json file must hold a list of records, a dict of equally long "
                "column lists, {\"data\": [records]}, or one JSON record per line"
            )
    elif suffix == ".jsonl":
        rows = json_lines(path, text)
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; accepted: {', '.join(FILE_SUFFIXES)}")
    if not rows:
        raise DataError(f"{path} is empty: it holds no rows ({allowed})")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i + 1} is a {type(row).__name__}, not an object "
                            "with named fields")
    return rows


def json_lines(path: Path, text: str) -> list[dict[str, Any]]:
    """One JSON value per non-blank line of ``text`` (read from ``path``, which errors name)."""
    rows = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines: see above
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {lineno}: not valid JSON ({err.msg})") from None
    return rows


def has_split(folder: Path, split: str) -> bool:
    """Whether a folder holds a file for ``split`` (then an error reading it is the file's, not a missing split)."""
    return folder.is_dir() and any((folder / f"{stem}{suffix}").is_file()
                                   for stem in SPLIT_ALIASES.get(split, (split,)) for suffix in FILE_SUFFIXES)


def split_file(folder: Path, split: str) -> Path:
    """The file for ``split`` in a folder: e.g. validation -> validation.jsonl or dev.tsv."""
    names = SPLIT_ALIASES.get(split, (split,))
    for stem in names:
        for suffix in FILE_SUFFIXES:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    present = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in FILE_SUFFIXES)
    raise DataError(
        f"{folder} has no file for split {split!r} (looked for {', '.join(names)} with "
        f"suffix {', '.join(FILE_SUFFIXES)}). Data files present: {', '.join(present) or 'none'}"
    )
