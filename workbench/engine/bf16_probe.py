"""bf16 "auto": measured, not guessed from the CPU's flags.

A CPU with AMX or AVX-512-bf16 units multiplies large bf16 matrices several times faster
than fp32 ones, but a small model's step is bound by how many operations it launches, not
by their arithmetic, and autocast adds casts.  On the Intel machine with AMX the bundled
story-lm trained 19 % slower in bf16 autocast than in fp32 (57 against 48 ms a step), while
MiniLM trained three times faster.  So on such a CPU, ``bf16="auto"`` asks a short probe:
a few forward + backward steps of the run's own model on its first batch, in fp32 and in
bf16 as a bf16 run does them (frozen base stored in bf16, plain attention, autocast),
interleaved, medians.  bf16 is chosen only when it is faster by more than the noise
(``FASTER_BY``).  The verdict is cached per model, method and machine (CPU model and flags,
torch version, thread count) in a JSON file under the user's cache folder
(``cache_path``), written atomically, so that the probe costs its few seconds once.

Where the answer is known without measuring, nothing is measured: on CUDA, bf16 where the
GPU supports it; on a CPU without bf16 units, fp32 (bf16 would be emulated, converting
every number); with a quantized base, the units decide (its compute dtype is chosen before
the model loads).  Every run states its choice and why (``Bf16Choice.reason``, in
``RunResult.environment["bf16_reason"]`` and so in the stored run's record).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from workbench.engine.hardware import cpu_has_fast_bf16, store_frozen_in_bf16, use_plain_attention
from workbench.engine.provenance import cpu_name, now, package_version
from workbench.engine.timing import interleave
from workbench.util import procfs
from workbench.util.fileio import atomic_write_json

__all__ = ["Bf16Choice", "FASTER_BY", "choose_bf16", "needs_probe", "probe_key", "cache_path", "read_cache",
           "write_cache", "measure_bf16"]

# bf16 is chosen when its median step is at least this much faster than fp32's: within
# the probe's noise the simpler (and exact) fp32 is kept.
FASTER_BY = 1.05
PROBE_REPEATS = 5  # timed rounds (fp32, bf16, fp32, ...), after one untimed round


@dataclass
class Bf16Choice:
    """Whether a run uses bf16 autocast, and why (a sentence for the run's record)."""

    use: bool
    reason: str


def cache_path() -> Path:
    """Where probe verdicts are kept: ``$XDG_CACHE_HOME/workbench`` (default ``~/.cache/workbench``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "workbench" / "bf16_probe.json"


def probe_key(model: str, method: str, threads: int | None = None) -> str:
    """The cache key: what the verdict depends on (the model and what trains; the machine)."""
    threads = threads if threads is not None else torch.get_num_threads()
    flags = ",".join(sorted(f for f in procfs.cpu_flags() if "bf16" in f or f.startswith("amx") or f == "avx512f"))
    return f"{model}|{method}|{cpu_name()}|{flags}|torch {package_version('torch')}|{threads} threads"


def read_cache(path: Path | None = None) -> dict[str, Any]:
    """The cached verdicts (an unreadable or foreign file counts as empty: it is rewritten)."""
    path = path or cache_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(key: str, entry: Mapping[str, Any], path: Path | None = None) -> Path:
    """Add one verdict to the cache file (atomically: a reader never sees half a file)."""
    path = path or cache_path()
    data = read_cache(path)
    data[key] = dict(entry)
    return atomic_write_json(path, data)


def _reason(entry: Mapping[str, Any], cached: bool) -> str:
    how = "cached probe" if cached else "probe"
    faster = entry["fp32_ms"] / entry["bf16_ms"] if entry["bf16_ms"] > 0 else float("inf")
    verdict = "bf16" if entry["bf16"] else "fp32"
    return (f"{verdict}: measured by a {how} of this model on this CPU ({entry.get('measured', '?')}): "
            f"fp32 {entry['fp32_ms']:.1f} ms, bf16 {entry['bf16_ms']:.1f} ms a forward+backward step "
            f"(bf16 chosen only when {FASTER_BY:g}x faster or more)")


def needs_probe(bf16: bool | str, device: torch.device, quantized: bool = False) -> bool:
    """True when "auto" must be measured: a CPU with bf16 units and a float base."""
    return bf16 == "auto" and device.type == "cpu" and not quantized and cpu_has_fast_bf16()


def choose_bf16(bf16: bool | str, device: torch.device, *, key: str | None = None, quantized: bool = False,
                measure: Callable[[], tuple[float, float]] | None = None) -> Bf16Choice:
    """The run's bf16 choice and its reason.

    ``bf16``: True, False or "auto".  For "auto" on a CPU with bf16 units and a float base,
    the cache is read under ``key``; on a miss ``measure()`` gives (fp32 ms, bf16 ms) and its
    verdict is cached.  (``measure`` is ``workbench.engine.training``'s: it knows how to
    build the run's model.)
    """
    if isinstance(bf16, bool):
        return Bf16Choice(bf16, f"{'bf16' if bf16 else 'fp32'}: set by the run's config (bf16={bf16})")
    if bf16 != "auto":
        raise ValueError(f"bf16 must be True, False or 'auto', got {bf16!r}")
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return Bf16Choice(ok, "bf16: the GPU supports it" if ok else "fp32: this GPU has no bf16 support")
    if device.type != "cpu":
        return Bf16Choice(False, f"fp32: bf16 'auto' measures only CPUs and CUDA GPUs, not {device.type}")
    if not cpu_has_fast_bf16():
        return Bf16Choice(False, "fp32: this CPU has no AMX or AVX-512-bf16 units, so bf16 would be emulated "
                                 "(slower)")
    if quantized:
        return Bf16Choice(True, "bf16: the CPU has bf16 units, and a quantized base's compute dtype is chosen "
                                "before the model loads, so it is not measured")
    if key is None or measure is None:
        raise ValueError("bf16='auto' on this CPU is decided by a probe: give key= and measure=")
    cached = read_cache().get(key)
    if isinstance(cached, dict) and {"fp32_ms", "bf16_ms", "bf16"} <= set(cached):
        return Bf16Choice(bool(cached["bf16"]), _reason(cached, cached=True))
    fp32_ms, bf16_ms = measure()
    entry = {"fp32_ms": round(fp32_ms, 3), "bf16_ms": round(bf16_ms, 3), "bf16": bool(bf16_ms * FASTER_BY <= fp32_ms),
             "measured": now().isoformat(timespec="seconds")}
    try:
        write_cache(key, entry)
    except OSError:  # a read-only home: the verdict holds for this run, and is measured again next time
        pass
    return Bf16Choice(entry["bf16"], _reason(entry, cached=False))


def _step(model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device, bf16: bool) -> None:
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def measure_bf16(model: nn.Module, inputs: dict[str, torch.Tensor], device: torch.device,
                 repeats: int = PROBE_REPEATS) -> tuple[float, float]:
    """Median ms of a forward + backward step in fp32 and in bf16 as a bf16 run does it.

    Works on two copies (the bf16 one with its frozen base stored in bf16 and, on the CPU,
    plain attention), so ``model`` is left exactly as it was; the global RNG state is
    given back too, so a probe does not change the run that follows it.
    """
    rng = torch.get_rng_state()
    try:
        fp32 = copy.deepcopy(model).train()
        bf16 = copy.deepcopy(model).train()
        store_frozen_in_bf16(bf16)
        if device.type == "cpu":
            use_plain_attention(bf16)
        times = interleave({"fp32": lambda: _step(fp32, inputs, device, False),
                            "bf16": lambda: _step(bf16, inputs, device, True)}, repeats=repeats, warmup=1)
    finally:
        torch.set_rng_state(rng)
    median = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    return median["fp32"], median["bf16"]
