"""Runs in MLflow: a real tracking server (SQLite backend) and a file store, read back with MLflow's client.

The server is started by the test on 127.0.0.1 (a free port) and stopped by it; starting one
takes tens of seconds on a loaded 2-core machine, so that test is ``slow``.  The file store
and the unreachable server need no server and run in the quick suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

import workbench as wb  # noqa: E402
from workbench.engine.config import preset  # noqa: E402
from workbench.engine.sweep import sweep_configs  # noqa: E402
from workbench.records.tracking import DEFAULT_EXPERIMENT, TrackerWarning, flat_params, tracker_for  # noqa: E402
from workbench.ui.cli import build_parser, track_from_args  # noqa: E402

CFG = dict(steps=3, eval_every=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracked_run(tmp_path: Path, uri: str, track: str | None = None):
    """A tiny run with MLFLOW_TRACKING_URI set, as a user sets it (that alone turns tracking on)."""
    return _with_env(uri, lambda: wb.train(preset("tiny", **CFG), runs_dir=tmp_path / "runs", progress=False,
                                           fresh_process=False, track=track))


def _with_env(uri: str, call):
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        return call()
    finally:
        if old is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def check_read_back(uri: str, result) -> None:
    """What MLflow's own client reads back equals what the run measured and was asked to do."""
    client = MlflowClient(uri)
    info = result.environment["tracker"]
    assert info["uri"] == uri and info["experiment"] == DEFAULT_EXPERIMENT and "error" not in info
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params == flat_params(result.config)
    assert run.data.params["lora.rank"] == str(result.config.lora.rank) and run.data.params["steps"] == "3"
    assert run.data.tags["workbench.run_id"] == result.run_id
    assert run.data.tags["workbench.status"] == "completed"
    history = [(m.step, m.value) for m in client.get_metric_history(info["run_id"], "train_loss")]
    assert sorted(history) == [(int(s), float(v)) for s, v in zip(result.history["step"], result.history["train_loss"])]
    evals = result.history.dropna(subset=["eval_loss"])
    assert sorted((m.step, m.value) for m in client.get_metric_history(info["run_id"], "eval_loss")) == \
        [(int(s), float(v)) for s, v in zip(evals["step"], evals["eval_loss"])]
    assert run.data.metrics["trainable_params"] == result.params.trainable
    files = {a.path for folder in ("run", "adapter", "figures") for a in client.list_artifacts(info["run_id"], folder)}
    assert {"run/run.json", "run/history.csv", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
            "figures/loss_curve.png", "figures/memory.png"} <= files
    stored = json.loads((Path(result.path) / "run.json").read_text())
    assert stored["environment"]["tracker"] == info  # the run store says where the run went


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` with an SQLite backend on a free port of 127.0.0.1, stopped after this module's tests
    (one server for them all: it takes tens of seconds to start)."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400  # a loaded 2-core machine took 2 minutes to start one
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group this test started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_a_run_is_read_back_from_a_real_tracking_server(tmp_path, mlflow_server):
    result = tracked_run(tmp_path, mlflow_server)  # MLFLOW_TRACKING_URI set: tracked without asking
    assert result.status == "completed", result.message
    check_read_back(mlflow_server, result)


def tracked_sweep(tmp_path: Path, uri: str, track: str | None = None):
    """A sweep of two tiny runs (ranks 1 and 2) with MLFLOW_TRACKING_URI set."""
    configs = sweep_configs(preset("tiny", **CFG), ranks=(1, 2), with_full=False, with_head=False)
    return _with_env(uri, lambda: wb.run_sweep(configs, runs_dir=tmp_path / "runs", progress=False,
                                               fresh_process=False, track=track))


def check_sweep_read_back(uri: str, results) -> None:
    """Each run of the sweep is an MLflow run of its own, with its own settings and curve."""
    assert [r.status for r in results] == ["completed", "completed"]
    for result in results:
        check_read_back(uri, result)
    ids = [r.environment["tracker"]["run_id"] for r in results]
    assert len(set(ids)) == 2
    ranks = [MlflowClient(uri).get_run(i).data.params["lora.rank"] for i in ids]
    assert ranks == ["1", "2"]


@pytest.mark.slow
def test_a_sweep_is_read_back_from_a_real_tracking_server(tmp_path, mlflow_server):
    check_sweep_read_back(mlflow_server, tracked_sweep(tmp_path, mlflow_server))


def test_a_sweep_logs_each_run_to_a_file_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    check_sweep_read_back(uri, tracked_sweep(tmp_path, uri, track="mlflow"))


def test_a_run_is_read_back_from_a_file_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store only on request
    uri = (tmp_path / "mlruns").as_uri()
    result = tracked_run(tmp_path, uri, track="mlflow")
    assert result.status == "completed", result.message
    check_read_back(uri, result)


def test_a_tracker_that_is_down_costs_the_run_nothing(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.warns(TrackerWarning, match=r"the MLflow tracker at http://127\.0\.0\.1:\d+ was unreachable"):
        result = tracked_run(tmp_path, uri)
    assert result.status == "completed"
    stored = wb.load_runs(tmp_path / "runs")
    assert [r.run_id for r in stored] == [result.run_id]
    error = json.loads((Path(result.path) / "run.json").read_text())["environment"]["tracker"]["error"]
    assert "did not accept a connection" in error and "kept in the run store only" in error


def test_who_asks_for_a_tracker(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (tracker_for(None), tracker_for("mlflow"), tracker_for(False)) == (None, "mlflow", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example")
    assert (tracker_for(None), tracker_for(False)) == ("mlflow", None)
    with pytest.raises(ValueError, match="track must be one of 'mlflow', None .* or False .*, got 'wandb'"):
        tracker_for("wandb")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("track: mlflow\nmodel: tiny-bert\n")
    assert track_from_args(build_parser().parse_args(["train", str(recipe)])) == "mlflow"
    assert track_from_args(build_parser().parse_args(["train", "--track", "mlflow"])) == "mlflow"
    assert track_from_args(build_parser().parse_args(["train"])) is None
