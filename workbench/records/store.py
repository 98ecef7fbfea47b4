"""The run store: every run keeps its record on disk, so runs can be compared later.

Layout (one folder per run under a runs folder, ``./runs`` by default, as TensorBoard does)::

    runs/
      20261128-134501-lora-r8-ab12/
        run.json      config, status, message, parameter counts, memory, timing,
                      summary numbers and the environment (versions, device, threads, host,
                      start and end time)
        history.csv   the curve: step, train_loss, lr, eval_loss, eval_accuracy
        samples.jsonl a language model's run: a few prompts and its answers at each evaluation

A run id starts with the local time, so sorting ids by name sorts them by when they
started; a short label says what the run was and four random hex digits keep two runs
started in the same second apart.

Why two files: the curve is a table and reads naturally as CSV (in a spreadsheet, in
pandas), while everything else is a nested record, which reads naturally as JSON.  Both
are written atomically (``workbench.util.fileio``), the curve first and the record second, so
an interrupted run - Ctrl-C, a crash, a closed notebook - leaves the last checkpoint whole.

``save_run`` may be called as often as the engine likes during a run: a file whose
content has not changed since this process last wrote it is not written again, so a
checkpoint costs only the file that changed.

The table of runs (``runs()``: one row per run) is built by ``workbench.records.table``,
whose names this module re-exports.

Loading is forgiving: a damaged run (a ``run.json`` that is not JSON or lacks fields, a
``history.csv`` that cannot be read as numbers) is skipped with a warning that names the
file and the reason, and every other run still loads.  A ``run.json`` whose
``history.csv`` is missing loads with an empty curve and a warning: the measurements in
the record are still worth seeing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import typing
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.engine import labels
from workbench.engine.config import HISTORY_COLUMNS, ParamCounts, RunConfig, RunResult, Timing
from workbench.engine.memory import MemoryBreakdown
from workbench.engine.provenance import now as _now
from workbench.util.fileio import atomic_write_text
# The table of runs is built in its own module; its names stay importable from here.
from workbench.records.table import (ADAPTER_FOLDER, LORA_COLUMNS, MEMORY_FIELDS, RUN_COLUMNS, _created, _last,
                                     _memory_to_dict, _steps_done, last_answer, runs_table, summary_row)

class _DefaultRoot(os.PathLike):
    """The run store's default folder, decided each time it is used (``os.fspath``, ``Path(...)``, ``str``).

    ``runs/`` at the top of the checkout the package runs from when the working folder is
    inside that checkout, else ``runs`` under the working folder.  Why: a notebook's working
    folder is ``notebooks/``, and the panel (``../runs``), the CLI (run from the top) and the
    README's code run in a notebook must store into, and list, one and the same folder."""

    def __fspath__(self) -> str:
        checkout = Path(__file__).resolve().parents[2]
        here = Path.cwd().resolve()
        if (checkout / "pyproject.toml").is_file() and (checkout / "notebooks").is_dir() and (
                here == checkout or checkout in here.parents):
            return str(checkout / "runs")
        return "runs"

    def __str__(self) -> str:
        return self.__fspath__()

    def __repr__(self) -> str:
        return f"DEFAULT_ROOT({self.__fspath__()!r})"


DEFAULT_ROOT = _DefaultRoot()
RUN_FILE = "run.json"
HISTORY_FILE = "history.csv"
SAMPLES_FILE = "samples.jsonl"  # a language model's run: prompts and its answers at each evaluation
FORMAT_VERSION = 1

# The statuses RunResult allows, read from its annotation so that the two never drift apart.
STATUSES: tuple[str, ...] = typing.get_args(typing.get_type_hints(RunResult)["status"])

# A run.json without these is not a run record.
REQUIRED_FIELDS: tuple[str, ...] = ("config", "status", "params")



_RUN_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunStoreError(ValueError):
    """A stored run could not be read: the message names the file and what is wrong with it."""


class RunStoreWarning(UserWarning):
    """A stored run was skipped (or loaded without its curve) because a file is damaged."""


# --------------------------------------------------------------------------- run ids


def new_run_id(config: RunConfig, when: datetime | None = None) -> str:
    """A sortable, unique id: ``<YYYYMMDD-HHMMSS>-<label>-<4 random hex digits>``.

    The label is ``workbench.engine.labels.id_label``: the settings' slug ('lora-r8') or
    the run's own name made safe for a folder name.

    The time prefix makes ``sorted(ids)`` chronological; 16 random bits make two runs of
    the same kind started in the same second collide with probability 1/65536, and
    ``save_run`` draws again if the folder is taken.
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"new_run_id needs a RunConfig, got {type(config).__name__}")
    when = when or _now()
    return f"{when:%Y%m%d-%H%M%S}-{labels.id_label(config)}-{secrets.token_hex(2)}"


def _check_run_id(run_id: str) -> str:
    """A run id becomes a folder name: refuse anything that could point elsewhere."""
    if not isinstance(run_id, str) or not _RUN_ID_OK.match(run_id) or ".." in run_id:
        raise ValueError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' only "
            "(no path separators, no '..'), e.g. '20261128-134501-lora-r8-ab12'"
        )
    return run_id


# --------------------------------------------------------------------------- saving


def _finite_or_none(x: Any) -> Any:
    """JSON has no NaN or infinity: store them as null (read back as NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite_or_none(v) for v in x]
    return x


def _record(result: RunResult) -> dict[str, Any]:
    """The content of run.json.  ``summary`` repeats numbers that the curve already holds,
    so that the record alone (``cat``, ``jq``) answers 'how did it go?'; loading ignores it
    and recomputes from the curve, which stays the one source of truth."""
    env = dict(result.environment)
    return _finite_or_none(
        {
            "format": FORMAT_VERSION,
            "run_id": result.run_id,
            "label": result.config.label(),
            "created": env.get("started"),
            "status": result.status,
            "message": result.message,
            "config": result.config.to_dict(),
            "params": {"trainable": int(result.params.trainable), "total": int(result.params.total)},
            "memory": _memory_to_dict(result.memory),
            "memory_estimate": _memory_to_dict(result.memory_estimate),
            "timing": dataclasses.asdict(result.timing) if result.timing is not None else None,
            "summary": {
                "steps_done": _steps_done(result.history),
                "trainable_share": result.params.share,
                "final_loss": result.final_loss,
                "eval_loss": _last(result.history, "eval_loss"),
                "eval_accuracy": result.eval_accuracy,
            },
            "environment": env,
        }
    )


def _history_csv(history: pd.DataFrame) -> str:
    """The curve as CSV text: the standard columns first, any extra ones after them.

    Floats are written with full precision so that a load gives back the same numbers."""
    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"RunResult.history must be a pandas DataFrame, got {type(history).__name__}")
    cols = [c for c in HISTORY_COLUMNS if c in history.columns]
    cols += [c for c in history.columns if c not in HISTORY_COLUMNS]
    frame = history.reindex(columns=cols) if cols else pd.DataFrame(columns=list(HISTORY_COLUMNS))
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


# path -> (sha256 of the text, mtime_ns, size) of the file as this process last wrote it.
_written: dict[str, tuple[str, int, int]] = {}


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` atomically unless this process already wrote exactly that to ``path``
    and the file is still as it left it (same modification time and size)."""
    key = str(path.resolve())
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    try:
        st = path.stat()
        if _written.get(key) == (digest, st.st_mtime_ns, st.st_size):
            return
    except OSError:
        pass  # missing: write it
    atomic_write_text(path, text)
    st = path.stat()
    _written[key] = (digest, st.st_mtime_ns, st.st_size)


def save_run(result: RunResult, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """Write (or update) ``<root>/<run_id>/run.json`` and ``history.csv``; return the folder.

    A result without a run id gets a fresh one (see ``new_run_id``); ``result.path`` is set
    to the folder; ``result.environment`` gets ``started`` on the first save and ``ended``
    once the status is no longer "running".  Call it again and again during a run to
    checkpoint: the curve is written before the record, both atomically, and unchanged
    files are skipped.
    """
    if not isinstance(result, RunResult):
        raise TypeError(f"save_run needs a RunResult, got {type(result).__name__}")
    if result.status not in STATUSES:
        raise ValueError(f"unknown run status {result.status!r}; allowed: {', '.join(STATUSES)}")
    root = Path(root)
    if not result.run_id:
        run_id = new_run_id(result.config)
        while (root / run_id).exists():  # a 1-in-65536 collision: draw again
            run_id = new_run_id(result.config)
        result.run_id = run_id
    folder = root / _check_run_id(result.run_id)
    now = _now().isoformat(timespec="milliseconds")
    result.environment.setdefault("started", now)
    if result.status != "running":
        result.environment.setdefault("ended", now)
    # Build both texts before writing either, so a bad field fails before anything changes.
    history_text = _history_csv(result.history)
    record_text = json.dumps(_record(result), indent=2, allow_nan=False, default=str) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    _write_if_changed(folder / HISTORY_FILE, history_text)
    if result.samples:
        _write_if_changed(folder / SAMPLES_FILE,
                          "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in result.samples))
    _write_if_changed(folder / RUN_FILE, record_text)
    result.path = str(folder)
    return folder


# --------------------------------------------------------------------------- loading


def _read_record(file: Path) -> dict[str, Any]:
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise RunStoreError(f"{file}: cannot be read ({e.strerror or e})") from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RunStoreError(f"{file}: not UTF-8 text (byte {e.start}); the file is damaged") from e
    except json.JSONDecodeError as e:
        raise RunStoreError(f"{file}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
    if not isinstance(data, dict):
        raise RunStoreError(f"{file}: expected a JSON object, found {type(data).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise RunStoreError(f"{file}: missing field(s) {', '.join(missing)}")
    return data


def _nan_if_none(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _parse_timing(file: Path, d: Any) -> Timing | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise RunStoreError(f"{file}: 'timing' must be an object, found {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(Timing) if f.name in d or f.default is dataclasses.MISSING]
    missing = [n for n in names if n not in d]
    if missing:
        raise RunStoreError(f"{file}: 'timing' lacks {', '.join(missing)}")
    try:
        return Timing(**{n: _nan_if_none(d[n]) for n in names})
    except (TypeError, ValueError) as e:
        raise RunStoreError(f"{file}: 'timing' has a value that is not a number ({e})") from e


def _parse_memory(file: Path, d: Any) -> MemoryBreakdown | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise RunStoreError(f"{file}: 'memory' must be an object, found {type(d).__name__}")
    try:
        return MemoryBreakdown.from_dict(d)
    except (TypeError, ValueError, KeyError) as e:
        raise RunStoreError(f"{file}: 'memory' is not a valid memory breakdown ({e})") from e


def _read_history(file: Path) -> pd.DataFrame:
    """The curve, every column numeric; raises RunStoreError on anything else."""
    try:
        frame = pd.read_csv(file)
    except pd.errors.EmptyDataError as e:
        raise RunStoreError(f"{file}: empty file (not even a header)") from e
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise RunStoreError(f"{file}: not a readable CSV ({str(e).splitlines()[0]})") from e
    if "step" not in frame.columns or "train_loss" not in frame.columns:
        raise RunStoreError(
            f"{file}: header lacks 'step' and/or 'train_loss' (found {', '.join(map(str, frame.columns))})"
        )
    for col in frame.columns:
        converted = pd.to_numeric(frame[col], errors="coerce")
        bad = converted.isna() & frame[col].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0]) + 2  # +1 for the header, +1 to count from 1
            raise RunStoreError(f"{file}: column {col!r} has a non-number at line {row}")
        frame[col] = converted
    for col in HISTORY_COLUMNS:  # a curve saved before any evaluation may lack eval columns
        if col not in frame.columns:
            frame[col] = float("nan")
    if frame["step"].notna().all():
        frame["step"] = frame["step"].astype("int64")
    return frame


def _empty_history() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64" if c == "step" else "float64") for c in HISTORY_COLUMNS})


def load_run(path: str | os.PathLike) -> RunResult:
    """Read one run from its folder (or from its run.json).

    Raises ``RunStoreError`` (a ValueError naming the file) when run.json or history.csv is
    damaged.  A missing history.csv gives an empty curve and a ``RunStoreWarning``.
    """
    path = Path(path)
    folder, file = (path.parent, path) if path.name == RUN_FILE else (path, path / RUN_FILE)
    if not file.exists():
        raise FileNotFoundError(f"no run record at {file}")
    data = _read_record(file)
    cfg, params = data["config"], data["params"]
    if not isinstance(cfg, dict):
        raise RunStoreError(f"{file}: 'config' must be an object, found {type(cfg).__name__}")
    if not isinstance(params, dict) or not {"trainable", "total"} <= params.keys():
        raise RunStoreError(f"{file}: 'params' must be an object with 'trainable' and 'total'")
    if data["status"] not in STATUSES:
        raise RunStoreError(f"{file}: unknown status {data['status']!r} (allowed: {', '.join(STATUSES)})")
    try:
        config = RunConfig.from_dict(cfg)
        counts = ParamCounts(trainable=int(params["trainable"]), total=int(params["total"]))
    except (TypeError, ValueError) as e:
        raise RunStoreError(f"{file}: bad 'config' or 'params' ({e})") from e
    history_file = folder / HISTORY_FILE
    if history_file.exists():
        history = _read_history(history_file)
    else:
        warnings.warn(f"{history_file}: missing; loading the run with an empty curve", RunStoreWarning, stacklevel=2)
        history = _empty_history()
    env = data.get("environment") or {}
    if not isinstance(env, dict):
        raise RunStoreError(f"{file}: 'environment' must be an object, found {type(env).__name__}")
    return RunResult(
        config=config,
        status=data["status"],
        history=history,
        params=counts,
        memory=_parse_memory(file, data.get("memory")),
        memory_estimate=_parse_memory(file, data.get("memory_estimate")),
        timing=_parse_timing(file, data.get("timing")),  # type: ignore[arg-type]
        message=str(data.get("message") or ""),
        run_id=str(data.get("run_id") or folder.name),
        path=str(folder),
        environment=env,
        samples=_read_samples(folder / SAMPLES_FILE),
    )


def _read_samples(file: Path) -> list[dict[str, Any]]:
    """A run's stored answers (none when the file is absent; a damaged line is skipped with a warning)."""
    if not file.exists():
        return []
    samples = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            samples.append(json.loads(line))
        except json.JSONDecodeError as e:
            warnings.warn(f"{file}, line {lineno}: not JSON ({e.msg}); that sample is skipped",
                          RunStoreWarning, stacklevel=3)
    return samples


def _run_folders(root: Path) -> list[Path]:
    """Folders under ``root`` that hold a run.json.  A folder with only a history.csv is a
    run interrupted during its very first save: warn.  Anything else (TensorBoard event
    folders share ./runs by default, hidden folders) is none of our business: ignore."""
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (sub / RUN_FILE).is_file():
            found.append(sub)
        elif (sub / HISTORY_FILE).is_file():
            warnings.warn(f"{sub / RUN_FILE}: missing (only a curve was saved); run skipped", RunStoreWarning, stacklevel=3)
    return found


def load_runs(root: str | os.PathLike = DEFAULT_ROOT) -> list[RunResult]:
    """Every readable run under ``root``, oldest first; damaged ones are skipped with a warning."""
    results = []
    for folder in _run_folders(Path(root)):
        try:
            results.append(load_run(folder))
        except (RunStoreError, OSError) as e:
            warnings.warn(f"{e}; run skipped", RunStoreWarning, stacklevel=2)
    results.sort(key=lambda r: (_created(r) or datetime.max, r.run_id))
    return results


def runs(root: str | os.PathLike = DEFAULT_ROOT) -> pd.DataFrame:
    """One row per stored run under ``root``, oldest first (see ``RUN_COLUMNS``).

    An empty or missing folder gives an empty table with the same columns."""
    return runs_table(load_runs(root))


def delete_run(run_id: str, root: str | os.PathLike = DEFAULT_ROOT) -> None:
    """Remove one run's folder.  Refuses ids that are not plain folder names and folders
    that hold no run.json, so a typo cannot delete anything else."""
    folder = Path(root) / _check_run_id(run_id)
    if not folder.is_dir():
        raise FileNotFoundError(f"no run {run_id!r} under {Path(root)}")
    if not (folder / RUN_FILE).exists() and not (folder / HISTORY_FILE).exists():
        raise ValueError(f"{folder} holds no {RUN_FILE} or {HISTORY_FILE}: not a run folder, left alone")
    shutil.rmtree(folder)
    for key in [k for k in _written if Path(k).parent == folder.resolve()]:
        del _written[key]
