"""Sweeps on Ray (``run_sweep(..., backend="ray")``), on a local Ray instance of 2 CPUs.

One instance serves the whole module (Ray takes seconds to start); the sweeps are tiny
models from configs (the "tiny" preset), one CPU thread per run so that a run's sums are
the same wherever it trains.  What is checked: the same curves as a local sweep, the
records in the store and the runs table, the CLI, a worker killed mid-run (failed, with
its reason and its curve so far, the rest of the sweep unharmed, no retry), and the
errors (backend, address, a store the workers cannot see, Ray missing).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

import workbench as wb
from workbench.engine.events import RunSink
from workbench.engine.ray_sweep import BACKENDS, RayUnavailable, run_sweep_on_ray, task_resources
from workbench.records.recording import check_store_visible, run_sweep
from workbench.records.store import load_run
from workbench.ui.cli import main

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs for the module; its address (HOST:PORT)."""
    if ray.is_initialized():
        ray.shutdown()
    for attempt in range(3):  # on a loaded machine Ray's 30 s wait for its raylet can run out: try again
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20)
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception ("timed out during startup")
            ray.shutdown()
            if attempt == 2:
                raise
    # The sinks defined here travel to the workers, which cannot import this file: send them by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def tiny(**kw) -> wb.RunConfig:
    return wb.preset("tiny", **({"threads": 1, "steps": 4, "eval_every": 2} | kw))


def curves(results) -> list[list[float]]:
    return [r.history["train_loss"].tolist() for r in results]


class KillWorkerAt(RunSink):
    """In the run's Ray worker: SIGKILL that very process at a step of the run named ``name``
    (as the kernel's out-of-memory killer would)."""

    def __init__(self, name: str, step: int) -> None:
        self.name, self.step, self.armed = name, step, False

    def on_start(self, result) -> None:
        self.armed = result.config.name == self.name

    def on_step(self, info) -> None:
        if self.armed and info.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def test_a_ray_sweep_gives_the_local_sweeps_curves_and_records(cluster, tmp_path):
    configs = [tiny(rank=1, alpha=2), tiny(method="head", lr=1e-3)]
    local = run_sweep(configs, runs_dir=tmp_path / "local", progress=False)
    finished = []
    on_ray = run_sweep(configs, runs_dir=tmp_path / "ray", progress=False, backend="ray",
                       on_run=lambda i, r: finished.append((i, r.status)))
    # The configs' order, each run once, and the same sums on a Ray worker as here.
    assert [r.config for r in on_ray] == configs
    assert sorted(finished) == [(0, "completed"), (1, "completed")]
    assert curves(on_ray) == curves(local)
    for here, there in zip(local, on_ray):
        assert there.history["eval_loss"].dropna().tolist() == here.history["eval_loss"].dropna().tolist()
        assert there.environment["threads"] == 1
    # In the store, as a local sweep's: the table, the records, the LoRA run's adapter.
    table = wb.runs(tmp_path / "ray")
    assert sorted(table["label"]) == sorted(c.label() for c in configs)
    assert set(table["status"]) == {"completed"} and set(table["steps_done"]) == {4}
    for r in on_ray:
        assert Path(r.path).parent == (tmp_path / "ray").resolve()
        stored = load_run(r.path)
        assert stored.history["train_loss"].tolist() == r.history["train_loss"].tolist()
    assert (Path(on_ray[0].path) / "adapter").is_dir()


def test_a_run_store_the_workers_cannot_see_is_refused(cluster, tmp_path):
    missing = str(tmp_path / "not-mounted" / "runs")
    with pytest.raises(FileNotFoundError, match=r"does not exist on the Ray node .*every node sees at the same path"):
        run_sweep_on_ray([tiny()], progress=False, worker_check=functools.partial(check_store_visible, missing))
    assert not (tmp_path / "not-mounted").exists()


def test_a_worker_killed_mid_run_fails_that_run_and_the_sweep_goes_on(cluster, tmp_path):
    twin = tiny(rank=2, alpha=4, steps=6)
    configs = [twin, replace(twin, name="doomed")]  # the same run: the doomed one's curve must be the twin's
    results = run_sweep(configs, runs_dir=tmp_path, progress=False, backend="ray", sinks=[KillWorkerAt("doomed", 3)])
    healthy, doomed = results
    assert healthy.status == "completed" and len(healthy.history) == 6
    assert doomed.status == "failed"
    assert doomed.message.startswith("the Ray worker running this run died after 3 of 6 steps (WorkerCrashedError")
    # Not retried: one record per run, the doomed one under the id it had from its start.
    table = wb.runs(tmp_path).set_index("label")
    assert sorted(table.index) == sorted([twin.label(), "doomed"])
    stored = load_run(doomed.path)
    assert stored.run_id == doomed.run_id and stored.status == "failed" and stored.message == doomed.message
    # Nothing recorded is lost: the curve to step 3, with step 2's evaluation, equals the twin's.
    assert stored.history["step"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(stored.history[["step", "train_loss", "lr", "eval_loss"]],
                                  healthy.history[["step", "train_loss", "lr", "eval_loss"]].head(3),
                                  check_dtype=False)
    assert stored.history["eval_loss"].notna().tolist() == [False, True, False]


class TouchAt(RunSink):
    """In the run's worker: create the file ``path`` at step ``step`` (a sign to the test)."""

    def __init__(self, path: str, step: int) -> None:
        self.path, self.step = path, step

    def on_step(self, info) -> None:
        if info.step == self.step:
            Path(self.path).touch()


def test_stop_ends_the_runs_in_flight_as_stopped_with_their_records(cluster, tmp_path):
    import threading
    import time

    sign = tmp_path / "reached-step-3"
    stop = threading.Event()

    def stop_when_signed() -> None:
        while not sign.exists():
            time.sleep(0.1)
        stop.set()

    threading.Thread(target=stop_when_signed, daemon=True).start()
    endless = tiny(steps=100_000, eval_every=0)
    (result,) = run_sweep([endless], runs_dir=tmp_path / "runs", progress=False, backend="ray", stop=stop,
                          sinks=[TouchAt(str(sign), 3)])
    assert result.status == "stopped"
    done = len(result.history)
    assert done >= 3 and result.message == f"stopped with the sweep after {done} of 100000 steps"
    stored = load_run(result.path)
    assert (stored.status, stored.message) == ("stopped", result.message)
    assert stored.history["step"].tolist() == list(range(1, done + 1))


def test_the_cli_joins_the_cluster_by_its_address_and_leaves_it_running(cluster, tmp_path):
    """The README's cluster command, from a second process: `sweep --backend ray --address HEAD:PORT`."""
    out = subprocess.run([sys.executable, "-m", "workbench", "sweep", "--preset", "tiny", "--ranks", "2", "--with-head",
                          "--steps", "2", "--eval-every", "0", "--threads", "1", "--runs-dir", str(tmp_path / "runs"),
                          "--out", str(tmp_path / "rep"), "--quiet", "--backend", "ray", "--address", cluster],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "LoRA r=2 (query,value): completed" in out.stdout
    csv = pd.read_csv(tmp_path / "rep" / "runs.csv")
    assert list(csv["method"]) == ["lora", "head"]  # the report in the configs' order
    table = wb.runs(tmp_path / "runs")
    assert sorted(table["method"]) == ["head", "lora"] and set(table["status"]) == {"completed"}
    assert ray.cluster_resources()["CPU"] == 2  # the cluster is still up, and this process still in it


def test_unknown_backends_are_refused_with_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown sweep backend 'dask'; backends: 'local', 'ray'"):
        run_sweep([tiny()], runs_dir=tmp_path, backend="dask")
    assert BACKENDS == ("local", "ray")
    with pytest.raises(ValueError, match="address 'head:6379' is a Ray cluster's: it needs backend='ray'"):
        run_sweep([tiny()], runs_dir=tmp_path, address="head:6379")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("address", ["head-node", "head:port", "head:0", ""])
def test_malformed_addresses_are_refused(address, tmp_path):
    with pytest.raises(ValueError, match="HOST:PORT"):
        run_sweep([tiny()], runs_dir=tmp_path, backend="ray", address=address, progress=False)


def test_an_address_where_nothing_answers_is_refused_at_once(tmp_path, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"no Ray cluster answers at 127.0.0.1:{port} .*ray start --head"):
        run_sweep([tiny()], runs_dir=tmp_path, backend="ray", address=f"127.0.0.1:{port}", progress=False)
    argv = ["sweep", "--preset", "tiny", "--ranks", "1", "--runs-dir", str(tmp_path / "runs"), "--quiet",
            "--backend", "ray", "--address", f"127.0.0.1:{port}"]
    assert main(argv) == 2
    assert f"error: no Ray cluster answers at 127.0.0.1:{port}" in capsys.readouterr().err


def test_an_address_other_than_the_connected_clusters_is_refused(cluster, tmp_path):
    with socket.socket() as other:  # something answers there, but it is not the cluster this process is in
        other.bind(("127.0.0.1", 0))
        other.listen()
        address = f"127.0.0.1:{other.getsockname()[1]}"
        with pytest.raises(ValueError, match=f"already connected to the Ray cluster at {cluster}, not {address}"):
            run_sweep([tiny()], runs_dir=tmp_path, backend="ray", address=address, progress=False)


def test_what_a_task_asks_for_and_runs_no_node_could_take(cluster, tmp_path):
    assert task_resources(tiny(), cluster_gpus=0) == {"num_cpus": 1, "num_gpus": 0}
    assert task_resources(tiny(threads=None), cluster_gpus=0) == {"num_cpus": 1, "num_gpus": 0}
    assert task_resources(tiny(threads=2, device="cuda"), cluster_gpus=0) == {"num_cpus": 2, "num_gpus": 1}
    assert task_resources(tiny(), cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 1}  # 'auto': CUDA when present
    assert task_resources(tiny(device="cpu"), cluster_gpus=8) == {"num_cpus": 1, "num_gpus": 0}
    with pytest.raises(ValueError, match="asks for 3 CPU threads, and the largest node of the Ray cluster has 2 CPUs"):
        run_sweep([tiny(threads=3)], runs_dir=tmp_path, backend="ray", progress=False)
    with pytest.raises(ValueError, match="asks for device 'cuda', and the Ray cluster has no GPU"):
        run_sweep_on_ray([replace(tiny(), device="cuda")], progress=False)
    with pytest.raises(ValueError, match="on_step is not available with backend 'ray'"):
        run_sweep([tiny()], runs_dir=tmp_path, backend="ray", on_step=print, progress=False)


def test_without_ray_the_message_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as where it is not installed
    with pytest.raises(RayUnavailable, match="pip install ray"):
        run_sweep([tiny()], runs_dir=tmp_path, backend="ray", progress=False)
