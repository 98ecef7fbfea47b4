"""Runs in an experiment tracker: every run also logged to MLflow, when the user asks for it.

The project's own run store (``workbench.records.store``) stays the offline default; a
team that keeps its runs in MLflow asks for a copy there, as the ``transformers``
Trainer's ``report_to="mlflow"`` does:

* ``wb.train(cfg, track="mlflow")``, ``track: mlflow`` in a recipe, ``--track mlflow`` on
  the command line, or the environment variable ``MLFLOW_TRACKING_URI`` set (the Trainer's
  habit: set, it means "log there"); ``track=False`` turns it off whatever is set.
* Where: ``MLFLOW_TRACKING_URI`` (a server ``http://host:port``, ``sqlite:///mlflow.db``, a
  folder ``file:///...``: MLflow 3 keeps its file store only with ``MLFLOW_ALLOW_FILE_STORE=true``),
  else MLflow's own default; the experiment
  ``MLFLOW_EXPERIMENT_NAME``, else "lora-workbench".

What a run becomes there (``MlflowSink``, a listener on the run's edges like the store's):
every setting as a parameter (LoRA's as ``lora.rank``, ...), the curve as step metrics
(each column of the history at the steps it has a value), the outcome (``status``,
``outcome`` and the run store's id as tags, the summary numbers as metrics), and as
artifacts the run's record files, its figures (loss curve, memory) and a LoRA run's
adapter.  The MLflow run is opened when the run starts, so the tracker shows it while it
trains (evaluations are logged as they come), and closed as FINISHED, KILLED (stopped)
or FAILED.

A tracker that cannot be reached never costs the run: the sink checks a server before
the run starts (a few seconds at most), and any error later is caught; the run completes
in the store, its record says ``environment["tracker"]["error"]`` and a
``TrackerWarning`` says the tracker was unreachable.
"""

from __future__ import annotations

import math
import os
import socket
import tempfile
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.engine.config import RunConfig, RunResult
from workbench.engine.events import RunSink
from workbench.engine.recipes import TRACKERS

__all__ = ["MlflowSink", "MlflowEachRun", "TrackerWarning", "tracker_for", "DEFAULT_EXPERIMENT", "flat_params"]

DEFAULT_EXPERIMENT = "lora-workbench"
CONNECT_TIMEOUT_S = 3.0  # how long a tracking server may take to accept a connection before it counts as down
_MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "diverged": "FAILED", "failed": "FAILED"}


class TrackerWarning(UserWarning):
    """The tracker could not be reached or refused a call; the run went on in the run store."""


def tracker_for(track: str | bool | None) -> str | None:
    """Which tracker a run logs to: ``track`` when given (False: none), else mlflow when
    ``MLFLOW_TRACKING_URI`` is set, else none."""
    if track is False:
        return None
    if track is None or track is True:
        return "mlflow" if os.environ.get("MLFLOW_TRACKING_URI") or track is True else None
    if track not in TRACKERS:
        raise ValueError(f"track must be one of {', '.join(repr(t) for t in TRACKERS)}, None (MLflow when "
                         f"MLFLOW_TRACKING_URI is set) or False (none), got {track!r}")
    return track


def flat_params(config: RunConfig) -> dict[str, str]:
    """Every setting of a run as MLflow parameters: ``lora.rank``, ``steps``, ... (text; None as 'None')."""
    out: dict[str, str] = {}
    for key, value in config.to_dict().items():
        if key == "lora":
            out.update({f"lora.{k}": _param(v) for k, v in value.items()})
        else:
            out[key] = _param(value)
    return out


def _param(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _server_problem(uri: str) -> str | None:
    """For an http(s) tracking URI: None when its host accepts a connection, else why not."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as e:
        return f"{parsed.hostname}:{port} did not accept a connection ({e.strerror or e})"


@dataclass
class MlflowSink(RunSink):
    """Logs a run to MLflow as it goes (see the module's docstring); never fails the run."""

    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else MLflow's default
    experiment: str | None = None  # None: MLFLOW_EXPERIMENT_NAME, else DEFAULT_EXPERIMENT
    client: Any = field(default=None, repr=False)
    mlflow_run_id: str | None = None
    error: str | None = None
    info: dict = field(default_factory=dict)  # what the run's record says of the tracker (environment["tracker"])
    _logged_steps: int = 0

    # ---- the run's edges -----------------------------------------------------------------------

    def on_start(self, result: RunResult) -> None:
        self._guard(result, self._open, result)
        self._note(result)

    def on_eval(self, result: RunResult) -> None:
        self._note(result)
        self._guard(result, self._log_curve, result)

    def on_finish(self, result: RunResult, model: Any) -> None:
        if self.mlflow_run_id is None and self.error is None:  # a run that failed before it started
            self._guard(result, self._open, result)
        self._guard(result, self._close, result)
        if self._note(result) and result.path:
            from workbench.records.store import save_run

            save_run(result, Path(result.path).parent)  # the store wrote the record before this sink's last word

    def _note(self, result: RunResult) -> bool:
        """Put where the run went (or why not) into the run's record; True when that changed it.

        (A run trained in a worker process gets the worker's environment copied over at each
        event, so the note is put back each time.)"""
        if not self.info or result.environment.get("tracker") == self.info:
            return False
        result.environment["tracker"] = dict(self.info)
        return True

    # ---- what is logged ------------------------------------------------------------------------

    def _open(self, result: RunResult) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        if uri is not None:
            problem = _server_problem(uri)
            if problem is not None:
                raise ConnectionError(problem)
        self.client = MlflowClient(tracking_uri=uri)
        self.tracking_uri = self.client._tracking_client.tracking_uri
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=result.config.label(),
                                     tags={"workbench.method": result.config.method,
                                           "workbench.model": result.config.model})
        self.mlflow_run_id = run.info.run_id
        params = [Param(k, v) for k, v in flat_params(result.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.mlflow_run_id, params=params[i:i + 100])
        self.info = {"kind": "mlflow", "uri": self.tracking_uri, "experiment": name, "run_id": self.mlflow_run_id}

    def _log_curve(self, result: RunResult) -> None:
        """The history's rows not yet logged, each column a metric at its step."""
        from mlflow.entities import Metric

        if self.mlflow_run_id is None:
            return
        rows = result.history.iloc[self._logged_steps:]
        metrics = []
        stamp = int(pd.Timestamp.now().timestamp() * 1000)
        for row in rows.itertuples(index=False):
            d = row._asdict()
            step = int(d.pop("step"))
            metrics += [Metric(k, float(v), stamp, step) for k, v in d.items()
                        if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.mlflow_run_id, metrics=metrics[i:i + 1000])
        self._logged_steps = len(result.history)

    def _close(self, result: RunResult) -> None:
        from workbench.engine.outcome import run_outcome

        if self.mlflow_run_id is None:
            return
        self._log_curve(result)
        outcome = run_outcome(result)
        tags = {"workbench.run_id": result.run_id, "workbench.status": result.status,
                "workbench.outcome": outcome.verdict, "workbench.label": result.config.label()}
        if result.message:
            tags["workbench.message"] = result.message[:5000]
        for key, value in tags.items():
            self.client.set_tag(self.mlflow_run_id, key, value)
        summary = {"final_train_loss": result.final_loss, "trainable_params": result.params.trainable,
                   "total_params": result.params.total}
        if result.timing is not None:
            summary |= {"seconds_per_step": result.timing.seconds_per_step,
                        "total_seconds": result.timing.total_seconds}
        if result.memory is not None and result.memory.peak is not None:
            summary["peak_bytes"] = result.memory.peak
        for key, value in summary.items():
            if value is not None and math.isfinite(float(value)):
                self.client.log_metric(self.mlflow_run_id, key, float(value))
        self._log_files(result)
        self.client.set_terminated(self.mlflow_run_id, status=_MLFLOW_STATUS.get(result.status, "FINISHED"))

    def _log_files(self, result: RunResult) -> None:
        """The record files and the adapter (from the run store's folder) and the figures."""
        from workbench.viz.memory_figures import memory_breakdown
        from workbench.viz.output import save_figure
        from workbench.viz.run_figures import loss_curves

        if result.path and Path(result.path).is_dir():
            folder = Path(result.path)
            for f in sorted(p for p in folder.iterdir() if p.is_file()):
                self.client.log_artifact(self.mlflow_run_id, str(f), artifact_path="run")
            if (folder / "adapter").is_dir():
                self.client.log_artifacts(self.mlflow_run_id, str(folder / "adapter"), artifact_path="adapter")
        with tempfile.TemporaryDirectory() as tmp:
            figures = {"loss_curve": lambda: loss_curves([result], eval=True)}
            if result.memory is not None:
                figures["memory"] = lambda: memory_breakdown([result])
            for name, make in figures.items():
                for path in save_figure(make(), Path(tmp) / name, formats=("png",)):
                    self.client.log_artifact(self.mlflow_run_id, str(path), artifact_path="figures")

    # ---- never fail the run --------------------------------------------------------------------

    def _guard(self, result: RunResult, call: Any, *args: Any) -> None:
        """Call, unless the tracker already failed; a failure is noted and warned about, never raised."""
        if self.error is not None:
            return
        try:
            call(*args)
        except ImportError as e:
            self._fail(result, f"MLflow is not installed ({e}); pip install 'lora-workbench[track]' or 'mlflow'")
        except Exception as e:  # noqa: BLE001 - any tracker error: the run goes on
            where = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default"
            self._fail(result, f"the MLflow tracker at {where} was unreachable or refused the run "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:600] if str(e) else ''}); the run goes "
                               "on and is kept in the run store only")

    def _fail(self, result: RunResult, message: str) -> None:
        self.error = message
        self.info = {"kind": "mlflow", **self.info, "error": message}
        warnings.warn(message, TrackerWarning, stacklevel=3)
        if self.client is not None and self.mlflow_run_id is not None:
            try:  # the server may be back: close the run there rather than leave it "running"
                self.client.set_terminated(self.mlflow_run_id, status="FAILED")
            except Exception:  # noqa: BLE001
                pass


@dataclass
class MlflowEachRun(RunSink):
    """A fresh ``MlflowSink`` for each run a sweep trains: one sink object is handed to every
    run of a sweep (and pickled to every Ray task), while an MLflow run is one training run.

    Where to log is read here, when the sweep starts, so a Ray worker whose environment
    lacks ``MLFLOW_TRACKING_URI`` still logs where the caller asked."""

    tracking_uri: str | None = None
    experiment: str | None = None
    current: MlflowSink | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.tracking_uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.experiment = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None

    def _sink(self) -> MlflowSink:
        if self.current is None:
            self.current = MlflowSink(tracking_uri=self.tracking_uri, experiment=self.experiment)
        return self.current

    def on_start(self, result: RunResult) -> None:
        self.current = None  # a new run: a new MLflow run
        self._sink().on_start(result)

    def on_eval(self, result: RunResult) -> None:
        self._sink().on_eval(result)

    def on_finish(self, result: RunResult, model: Any) -> None:
        try:
            self._sink().on_finish(result, model)  # also a run whose worker died before it started
        finally:
            self.current = None
