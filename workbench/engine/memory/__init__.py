"""Where the memory of a training step goes: measured exactly, and estimated from a config.

Training memory has four parts, and LoRA changes each of them differently:

* **weights**      every parameter, trainable or frozen:            sum(numel) * bytes
* **gradients**    one ``.grad`` per *trainable* parameter:          trainable * bytes
* **optimizer**    AdamW keeps two moments per trainable number:     2 * trainable * bytes
* **activations**  tensors the forward pass saves for backward.

The first three are tensor sizes and can be counted exactly.  The fourth is counted
with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd stores for the
backward pass goes through our hook, and we add up the memory behind it.

One room per idea; this package re-exports their public names:

* ``breakdown``       ``MemoryBreakdown``: the four terms and a peak, as a run records them,
                      and ``compare_breakdowns``: a measurement beside an estimate;
* ``counting``        *measured*, exactly: ``parameter_bytes``, ``gradient_bytes``,
                      ``optimizer_state_bytes``, ``SavedActivations``;
* ``probe``           *measured*, a whole step: the allocator's or the process's peak
                      (``peak_memory``; ``PEAK_KINDS`` says what each kind of peak is),
                      ``MemoryProbe`` (a run's first step, through hooks), ``measure_train_step``;
* ``step``            *measured*, on demand: ``measure_step`` (any optimizer by name, at learning
                      rate 0; gradient checkpointing's recomputation with ``RecomputeProbe``);
* ``estimate``        *estimated* (``estimate_memory``): a closed formula from the model's
                      config and shapes alone, which works on a model built on PyTorch's
                      ``meta`` device (no weights);
* ``optimizers``      what each optimizer keeps (``OPTIMIZERS``, ``optimizer_state_estimate``);
* ``tape`` and ``forward_passes``: the activation estimate's paper autograd tape, and one
                      forward pass replayed on it per architecture.

Units: ``format_bytes`` and ``to_frame`` write decimal megabytes (1 MB = 10**6 bytes), as
the plots and the planner do.  The project's ml-stack guide divides by 2**20 instead:
MiniLM's 22,713,986 float32 parameters are 90,855,944 bytes = 90.9 MB = 86.6 MiB.
"""

from __future__ import annotations

from workbench.engine.memory.breakdown import COMPONENTS, MemoryBreakdown, compare_breakdowns
from workbench.engine.memory.counting import (
    SavedActivations,
    gradient_bytes,
    optimizer_state_bytes,
    parameter_bytes,
    storage_key_and_bytes,
    trainable_parameter_bytes,
)
from workbench.engine.memory.estimate import checkpointed_activations, estimate_activation_bytes, estimate_memory
from workbench.engine.memory.optimizers import OPTIMIZERS, optimizer_state_estimate
from workbench.engine.memory.probe import (
    PEAK_KINDS,
    MemoryProbe,
    describe_peak,
    measure_train_step,
    peak_memory,
    process_peak_bytes,
    reset_peak_memory,
)
from workbench.engine.memory.step import RecomputeProbe, measure_step, step_optimizer
from workbench.util.units import MB, MIB, format_bytes  # memory figures are reported in these

__all__ = [
    "MemoryBreakdown",
    "COMPONENTS",
    "compare_breakdowns",
    "parameter_bytes",
    "trainable_parameter_bytes",
    "gradient_bytes",
    "optimizer_state_bytes",
    "SavedActivations",
    "storage_key_and_bytes",
    "process_peak_bytes",
    "reset_peak_memory",
    "peak_memory",
    "PEAK_KINDS",
    "describe_peak",
    "MemoryProbe",
    "measure_train_step",
    "measure_step",
    "step_optimizer",
    "RecomputeProbe",
    "estimate_memory",
    "estimate_activation_bytes",
    "checkpointed_activations",
    "OPTIMIZERS",
    "optimizer_state_estimate",
    "format_bytes",
    "MIB",
    "MB",
]
