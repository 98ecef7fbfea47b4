"""A sweep on a Ray cluster: each run of the sweep is one Ray task.

``run_sweep(configs, backend="ray")`` (``workbench.engine.sweep``) comes here.  Each
config becomes a task that runs the same ``workbench.engine.launch.train`` as a local
sweep, on whichever node Ray gives it, with the sinks the caller passed (the run store's
``StoreSink`` among them, writing to a folder every node must see).  Results come back in
the configs' order, as a local sweep's do; the progress bar and ``on_run`` follow the runs
as they *finish*, in whatever order that is.

What a task asks Ray for (``task_resources``): ``num_cpus`` = the CPU threads the run
trains with (``RunConfig.threads``; unset: 1, and the task sets torch to that many threads,
so that two runs on one node do not fight over the same cores), and ``num_gpus=1`` when the
config wants CUDA (``device="cuda"``, or "auto" on a cluster that has GPUs).

A worker that dies mid-run (killed for memory, a lost node, a SIGKILL): the run's record
cannot be finished by the dead process, so it is finished here.  Each task reports its
run's edges to a small actor (the board, ``_board_class``) as they happen: the start (once
the store has named the run), every step's row, and every evaluation's result *before* the
store checkpoints it.
What the board holds is therefore never less than what the store holds, and when the task
is lost the run is marked "failed" with the reason and its curve so far, through the same
sinks (here, in the calling process), and the sweep goes on with the other runs.

Tasks are not retried (``max_retries=0``).  Ray's default (3 retries on a worker's death)
would start the run again from step 0, under a new run id, leaving the first attempt's
record behind as "running" for ever; and a run that died for lack of memory would most
likely die again, costing its time several times over.  A failure is shown as it happened;
rerunning that config is the user's call.

An error *raised* by a run (a bad target name, an exception in a sink) is not a lost
worker: as in a local sweep, it ends the sweep - the runs not started are cancelled, the
workers of those in flight are ended and their records finished here as "stopped", with
their curves so far - and the error is raised here as itself.  ``stop`` and Ctrl-C stop a
sweep the same way, and it returns the runs that ended (a second Ctrl-C leaves at once).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import threading
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import pandas as pd

from workbench.engine.config import HISTORY_COLUMNS, RunConfig, RunResult, Timing, validate
from workbench.engine.events import RunSink, SinkGroup, StepInfo
from workbench.util.units import MIB

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BACKENDS", "run_sweep_on_ray", "ray_session", "check_backend", "check_address", "task_resources",
           "RayUnavailable"]

BACKENDS = ("local", "ray")
# The object store of a Ray instance started here: results are small (a curve, a record);
# a model comes back only with keep_model.  Ray's minimum is 75 MB.
LOCAL_OBJECT_STORE_BYTES = 200 * MIB
# How long to wait for something to answer at a cluster's address before calling it unreachable
# (ray.init itself retries for minutes).
CONNECT_TIMEOUT_S = 5.0
POLL_S = 0.5  # how often the sweep looks at ``stop`` while it waits for runs


class RayUnavailable(ImportError):
    """Ray is not installed."""


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sweep backend {backend!r}; backends: {', '.join(map(repr, BACKENDS))}")
    return backend


def import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable("backend 'ray' needs Ray, which is not installed here: pip install ray "
                             f"(this project's requirements.txt pins the version) ({e})") from e
    return ray


# --------------------------------------------------------------------------- connecting


def _split_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' (or 'ray://HOST:PORT', Ray Client's) -> (host, port); anything else is refused."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"address must be the Ray head's 'HOST:PORT' (e.g. 'head-node:6379'), got {address!r}")
    text = address.strip().removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} is not 'HOST:PORT' (e.g. 'head-node:6379', the address "
                         "`ray start --head` prints), nor 'auto'")
    return host.strip("[]"), int(port)


def check_address(address: str) -> None:
    """Refuse a malformed address, and one where nothing answers, within seconds.

    ``ray.init(address=...)`` on an address where no head runs keeps retrying for minutes; a
    TCP connection tells at once whether anything listens there.  'auto' (the cluster this
    machine belongs to, or ``RAY_ADDRESS``) is left to Ray.
    """
    if address == "auto":
        return
    host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address} ({e.strerror or type(e).__name__}): start its "
                              f"head there with `ray start --head --port={port}`, or check the address it "
                              "printed") from None


def _same_place(a: str, b: str) -> bool:
    """Whether two 'HOST:PORT' addresses name the same host and port (names resolved)."""
    try:
        (ha, pa), (hb, pb) = _split_address(a), _split_address(b)
        return pa == pb and socket.gethostbyname(ha) == socket.gethostbyname(hb)
    except (ValueError, OSError):
        return False


def _local_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Ray, connected: to ``address``'s cluster, or to a local instance started for the sweep.

    * Ray already initialised in this process (a notebook, a test fixture): used as it is, and
      left as it is; an ``address`` must then name the cluster it is connected to.
    * ``address`` given: connect, and disconnect at the end; the cluster keeps running.
    * neither: start a Ray instance on this machine sized to it (its CPUs; Ray finds the GPUs)
      with no dashboard and a small object store, and shut it down at the end.
    """
    if address is not None:
        check_address(address)
    ray = import_ray()
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "auto") and not _same_place(address, current):
            raise ValueError(f"this process is already connected to the Ray cluster at {current}, not {address}: "
                             "call ray.shutdown() first, or leave address unset to use that one")
        yield ray
        return
    if address is None:
        # "local": a new instance of its own, never one found through Ray's note of the machine's last
        # cluster (/tmp/ray/ray_current_cluster), which outlives a head stopped without `ray stop`.
        ray.init(address="local", num_cpus=_local_cpus(), include_dashboard=False,
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES)
    else:
        ray.init(address=address)
    try:
        yield ray
    finally:
        ray.shutdown()  # with an address: this process disconnects; the cluster goes on


# --------------------------------------------------------------------------- what a run asks for


def wants_gpu(cfg: RunConfig, cluster_gpus: float) -> bool:
    """A config on 'cuda' wants a GPU; on 'auto' it does when the cluster has one ('auto': CUDA when present)."""
    device = str(cfg.device)
    return device.startswith("cuda") or (device == "auto" and cluster_gpus > 0)


def run_threads(cfg: RunConfig) -> int:
    """The CPU threads a run trains with on Ray: its ``threads``, or 1 when unset (see the module's doc)."""
    return cfg.threads or 1


def task_resources(cfg: RunConfig, cluster_gpus: float) -> dict[str, float]:
    """The Ray resources of a run's task: ``num_cpus`` its threads, ``num_gpus`` 1 when it wants CUDA."""
    return {"num_cpus": run_threads(cfg), "num_gpus": 1 if wants_gpu(cfg, cluster_gpus) else 0}


def _check_fits(ray: Any, configs: Sequence[RunConfig]) -> float:
    """Refuse a run no node could ever take (Ray would wait for it for ever); the cluster's GPU count."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = sum(n.get("GPU", 0) for n in nodes)
    for cfg in configs:
        need = task_resources(cfg, gpus)
        if need["num_cpus"] > most_cpus:
            raise ValueError(f"{cfg.label()} asks for {need['num_cpus']} CPU threads, and the largest node of the "
                             f"Ray cluster has {most_cpus:g} CPUs: lower threads")
        if need["num_gpus"] and not gpus:
            raise ValueError(f"{cfg.label()} asks for device {cfg.device!r}, and the Ray cluster has no GPU: "
                             "use device 'auto' or 'cpu', or add a GPU node")
    return gpus


# --------------------------------------------------------------------------- the board: what each run reached


def _board_class() -> type:
    """The board: a Ray actor that keeps, for each run of the sweep, the latest it reported -
    its result (with the run id the store gave it) and the rows of its curve so far.

    Made in a function, and holding pickled bytes it never opens, so that Ray sends the
    class by value and the actor's process imports nothing of this package (importing
    ``workbench`` imports torch: seconds per sweep, for a dictionary)."""

    class Board:
        def __init__(self) -> None:
            self.runs: dict[int, list] = {}

        def start(self, index: int, result: bytes) -> None:
            self.runs[index] = [result, []]

        def step(self, index: int, row: bytes) -> None:
            if index in self.runs:
                self.runs[index][1].append(row)

        def evaluated(self, index: int, result: bytes) -> None:
            if index in self.runs:
                self.runs[index][0] = result

        def latest(self, index: int) -> tuple | None:
            run = self.runs.get(index)
            return None if run is None else (run[0], run[1])

    return Board


def _pack(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _latest(ray: Any, board: Any, index: int) -> tuple[RunResult, list[dict]] | None:
    """What the board holds of run ``index``, unpacked: (its result, the rows since)."""
    packed = ray.get(board.latest.remote(index))
    if packed is None:
        return None
    return pickle.loads(packed[0]), [pickle.loads(row) for row in packed[1]]


class _Reporter(RunSink):
    """In the task: the caller's sinks, with each edge reported to the board.

    The order keeps the board ahead of the store: the start is reported after the sinks
    (the store names the run there), a step and an evaluation before them (before the
    store checkpoints it).  Each report waits for the board's answer (a round trip of
    about a millisecond per step): a report sent without waiting is lost with a worker
    killed right after it, and the run would be recorded a step short."""

    def __init__(self, board: Any, index: int, sinks: RunSink) -> None:
        self.board, self.index, self.sinks = board, index, sinks

    def needs_model(self, config: RunConfig) -> bool:
        return self.sinks.needs_model(config)

    def needs_adapter(self, config: RunConfig) -> bool:
        return self.sinks.needs_adapter(config)

    def on_start(self, result: RunResult) -> None:
        self.sinks.on_start(result)
        _ray().get(self.board.start.remote(self.index, _pack(replace(result, model=None))))

    def on_step(self, info: StepInfo) -> None:
        _ray().get(self.board.step.remote(self.index, _pack(info.row())))
        self.sinks.on_step(info)

    def on_eval(self, result: RunResult) -> None:
        _ray().get(self.board.evaluated.remote(self.index, _pack(replace(result, model=None))))
        self.sinks.on_eval(result)

    def on_finish(self, result: RunResult, model: nn.Module | None) -> None:
        self.sinks.on_finish(result, model)


def _ray() -> Any:
    import ray

    return ray


@dataclass
class _Task:
    """What a run's task needs besides its config."""

    index: int
    sinks: list[RunSink]
    threads: int
    keep_model: bool
    fresh_process: bool | None
    worker_check: Callable[[], None] | None


def _train_task(cfg: RunConfig, task: _Task, board: Any) -> RunResult:
    """The body of a run's Ray task, on whichever node Ray chose."""
    import torch

    from workbench.engine.launch import train

    if task.worker_check is not None:
        task.worker_check()
    torch.set_num_threads(task.threads)  # the CPUs the task holds (a run in a fresh process inherits it)
    reporter = _Reporter(board, task.index, SinkGroup(task.sinks))
    return train(cfg, progress=False, keep_model=task.keep_model, sinks=[reporter], fresh_process=task.fresh_process)


# --------------------------------------------------------------------------- the sweep


def _curve(snapshot: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """The longer of the last evaluation's curve and the steps reported since (the standard columns first)."""
    if len(snapshot) > len(rows):
        return snapshot
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in HISTORY_COLUMNS]
    return frame.reindex(columns=[*HISTORY_COLUMNS, *extra])


def _ended_here(cfg: RunConfig, latest: tuple[RunResult, list[dict]] | None, status: str, message: str,
                sinks: RunSink) -> RunResult:
    """The end of a run whose worker is gone (it died, or the sweep was stopped), told here.

    The run's result as the board last had it, with its curve so far, ``status`` and
    ``message`` (``{done}`` and ``{steps}`` filled in); the sinks hear its end here (the
    run store writes it under the run's own id).
    """
    if latest is None:  # it died before the run started (loading the model, the data)
        from workbench.lora.params import ParamCounts

        result = RunResult(config=cfg, status="failed", history=_curve(pd.DataFrame(columns=list(HISTORY_COLUMNS)), []),
                           params=ParamCounts(0, 0), memory=None,
                           timing=Timing(float("nan"), float("nan"), float("nan")))
    else:
        result, rows = latest
        result.history = _curve(result.history, rows)
    result.status = status  # type: ignore[assignment]
    result.message = message.format(done=len(result.history), steps=cfg.steps)
    sinks.on_finish(result, None)
    return result


def run_sweep_on_ray(
    configs: Sequence[RunConfig],
    progress: bool = True,
    on_run: Callable[[int, RunResult], None] | None = None,
    *,
    address: str | None = None,
    sinks: Iterable[RunSink] = (),
    stop: threading.Event | None = None,
    keep_model: bool = False,
    fresh_process: bool | None = None,
    worker_check: Callable[[], None] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> list[RunResult]:
    """Train each config as a Ray task; the results in the configs' order.

    ``sinks`` travel to the worker with each run (they must pickle) and hear it there;
    when a worker dies, they hear the run's end here.  ``on_run(i, result)`` is called here
    as each run finishes.  ``stop`` (a ``threading.Event``) or Ctrl-C cancels the runs not
    started and stops those in flight (their records end "stopped").  ``worker_check`` runs
    in the task before training (the run store's: is its folder there?).  ``address``: see
    ``ray_session``.
    """
    from tqdm.auto import tqdm

    if on_step is not None:
        raise ValueError("on_step is not available with backend 'ray': the steps run in other processes, on other "
                         "machines; use on_run (called here as each run ends) or a sink (it runs with the run)")
    configs = list(configs)
    if not configs:
        raise ValueError("run_sweep needs at least one RunConfig (see sweep_configs)")
    for cfg in configs:
        validate(cfg)  # a bad config is refused before any cluster is touched
    sinks = list(sinks)
    here = SinkGroup(sinks)  # the same sinks, for the end of a run whose worker died
    with ray_session(address) as ray:
        gpus = _check_fits(ray, configs)
        board = ray.remote(num_cpus=0)(_board_class()).remote()
        remote = ray.remote(_train_task)
        pending: dict[Any, int] = {}
        for i, cfg in enumerate(configs):
            task = _Task(i, sinks, run_threads(cfg), keep_model, fresh_process, worker_check)
            ref = remote.options(**task_resources(cfg, gpus), max_retries=0, name=f"train {cfg.label()}").remote(
                cfg, task, board)
            pending[ref] = i
        results: dict[int, RunResult] = {}
        bar = tqdm(total=len(configs), desc="sweep (ray)", disable=not progress)
        stopping = False
        try:
            while pending:
                if not stopping and stop is not None and stop.is_set():
                    stopping = _cancel(ray, pending)
                try:
                    done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                except KeyboardInterrupt:  # Ctrl-C: as in a local sweep, the runs stop and keep their records
                    if stopping:
                        raise  # a second Ctrl-C: leave now
                    stopping = _cancel(ray, pending)
                    continue
                for ref in done:
                    i = pending.pop(ref)
                    result = _collect(ray, ref, configs[i], board, i, here)
                    if result is None:
                        continue  # cancelled before it started
                    results[i] = result
                    bar.update(1)
                    bar.set_postfix_str(f"{result.config.label()}: {result.status}")
                    if on_run is not None:
                        on_run(i, result)
                    if result.status == "stopped" and not stopping:
                        stopping = _cancel(ray, pending)  # as a local sweep: a stopped run ends the sweep
        except BaseException:  # a run raised (or a second Ctrl-C): end the others, and finish their records
            _cancel(ray, pending)
            for ref, i in pending.items():
                with contextlib.suppress(Exception):
                    _collect(ray, ref, configs[i], board, i, here)
            raise
        finally:
            bar.close()
    return [results[i] for i in sorted(results)]


def _collect(ray: Any, ref: Any, cfg: RunConfig, board: Any, index: int, sinks: RunSink) -> RunResult | None:
    """A finished task's result; a lost worker's run marked failed; None if it was cancelled unstarted."""
    from ray import exceptions as rx

    try:
        return ray.get(ref)
    except rx.TaskCancelledError:  # the sweep was stopped: its worker was ended mid-run, or it never started
        latest = _latest(ray, board, index)
        if latest is None:
            return None
        return _ended_here(cfg, latest, "stopped", "stopped with the sweep after {done} of {steps} steps", sinks)
    except rx.RayTaskError as e:  # the run raised: the error is the run's own (as a local sweep raises it)
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
    except (rx.WorkerCrashedError, rx.NodeDiedError, rx.LocalRayletDiedError, rx.OutOfMemoryError,
            rx.ObjectLostError) as e:  # the worker died (or its node did): the run is lost, not the sweep
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "no reason given"
        return _ended_here(cfg, _latest(ray, board, index), "failed",
                           "the Ray worker running this run died after {done} of {steps} steps "
                           f"({type(e).__name__}: {reason})", sinks)


def _cancel(ray: Any, pending: dict[Any, int]) -> bool:
    """Cancel the runs not started, and end the workers of those in flight (``force=True``).

    Their records are finished here, from the board, as "stopped" (``_collect``).  Asking
    a running task to stop instead (``force=False``: a KeyboardInterrupt in the worker) was
    tried: it left tasks that never returned, when the interrupt landed inside a call to
    Ray (the worker's report to the board)."""
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    return True
