"""A run's time and memory as the panel says them: what each number counts, in one place.

The message after a run, the Runs table and the header all say a run's time and memory
with these functions, so a figure always says what it counts:

* **time**: "36.4 s: 21.3 s training (0.085 s/step), 9.1 s evaluating, 1.2 s loading,
  4.8 s between steps" (``Timing.total_seconds`` is click to done; training, evaluating and
  loading the model and data are measured apart by the loop, and the rest is between the
  steps: the next batch and what listens to the run, such as the panel's live curve; a
  record from before loading was measured says "loading and between steps" for that rest);
* **threads**: a run that trained with fewer threads than it was given, because other
  processes kept CPUs busy, says so beside its time (``threads_text``);
* **memory**: the peak *and* the weights ("peak 789.8 MB (own process VmHWM), weights
  44.1 MB"): a QLoRA run's weights go down while a CPU process's peak goes up, and only
  the two side by side (with ``QLORA_CPU_WHY``) do not contradict each other.
"""

from __future__ import annotations

import math

from workbench.engine.config import RunResult, Timing
from workbench.util.units import format_bytes

# Why a QLoRA run on a CPU shows a higher process peak and slower steps while its weights
# shrink: said once wherever those numbers stand side by side (the message, the Runs tab).
# (Measured on a Zen 3 CPU with MiniLM: the peak is reached while training, well above the process's size
# right after loading, so the float copy held while loading is not what raises it; importing bitsandbytes'
# kernels pulls in PyTorch's compiler modules, which tests/ui/test_panel_second_pass.py checks.)
QLORA_CPU_WHY = ("On a CPU, bitsandbytes stores the frozen weights in 4 or 8 bits (the weights' MB go down), but "
                 "its kernels bring PyTorch's compiler modules into the process and every step turns the codes "
                 "back into float weights to multiply with, so the process peak and the step time go up here; "
                 "on a GPU the saving in weights is what remains.")


def _finite(x: float | None) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def time_text(timing: Timing | None) -> str:
    """A run's time, split into what it counts: total, training, evaluating, loading, between steps."""
    if timing is None or not _finite(timing.total_seconds):
        return ""
    total = timing.total_seconds
    parts = []
    if _finite(timing.train_seconds):
        per_step = f" ({timing.seconds_per_step:.3f} s/step)" if _finite(timing.seconds_per_step) else ""
        parts.append(f"{timing.train_seconds:.1f} s training{per_step}")
    if _finite(timing.eval_seconds):
        parts.append(f"{timing.eval_seconds:.1f} s evaluating")
    if len(parts) == 2:
        rest = max(0.0, total - timing.train_seconds - timing.eval_seconds)
        if _finite(timing.load_seconds):
            parts.append(f"{timing.load_seconds:.1f} s loading")
            parts.append(f"{max(0.0, rest - timing.load_seconds):.1f} s between steps")
        else:  # a record from before loading was measured apart
            parts.append(f"{rest:.1f} s loading and between steps")
    if not parts:  # a record from before the split: the total is all there is
        per_step = f" ({timing.seconds_per_step:.3f} s/step)" if _finite(timing.seconds_per_step) else ""
        return f"{total:.1f} s from start to end{per_step}"
    return f"{total:.1f} s: " + ", ".join(parts)


def threads_text(result: RunResult) -> str:
    """Why a run trained with fewer threads than it was given, or "" (``workbench.engine.cpu_share``):
    "trained with 1 of 2 threads: other processes kept 1.0 of the 2 CPUs busy while the run loaded"."""
    reason = result.environment.get("threads_reason") if result.environment else None
    return f"trained with {reason}" if reason else ""


def time_cell(timing: Timing | None) -> str:
    """The Runs table's short form: "36.4 s (9.1 eval)"; "–" when not measured."""
    if timing is None or not _finite(timing.total_seconds):
        return "–"
    if _finite(timing.eval_seconds):
        return f"{timing.total_seconds:.1f} s ({timing.eval_seconds:.1f} eval)"
    return f"{timing.total_seconds:.1f} s"


def weights_bytes(result: RunResult) -> float | None:
    """The bytes of the model's weights as the run measured them (a quantized base's codes + constants)."""
    memory = result.memory
    weights = getattr(memory, "weights", None) if memory is not None else None
    return float(weights) if _finite(weights) else None


def memory_text(result: RunResult) -> str:
    """The peak and the weights side by side: "peak 789.8 MB (own process VmHWM), weights 44.1 MB (NF4 base)"."""
    memory = result.memory
    if memory is None:
        return ""
    parts = []
    peak = getattr(memory, "peak", None)
    if _finite(peak):
        kind = getattr(memory, "peak_kind", "") or ""
        parts.append(f"peak {format_bytes(peak)}" + (f" ({kind})" if kind else ""))
    weights = weights_bytes(result)
    if weights is not None:
        base = f" ({result.config.quantize.upper()} base)" if result.config.quantize else ""
        parts.append(f"weights {format_bytes(weights)}{base}")
    return ", ".join(parts)


def qlora_why(result: RunResult) -> str:
    """``QLORA_CPU_WHY`` for a quantized run trained on a CPU, else ""."""
    device = str(result.environment.get("device", "")) if result.environment else ""
    return QLORA_CPU_WHY if result.config.quantize and device.startswith("cpu") else ""


__all__ = ["QLORA_CPU_WHY", "memory_text", "qlora_why", "time_cell", "time_text", "weights_bytes"]
