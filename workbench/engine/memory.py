"""Where the memory of a training step goes: measured exactly, and estimated from a config.

Training memory has four parts, and LoRA changes each of them differently:

* **weights**      every parameter, trainable or frozen:            sum(numel) * bytes
* **gradients**    one ``.grad`` per *trainable* parameter:          trainable * bytes
* **optimizer**    AdamW keeps two moments per trainable number:     2 * trainable * bytes
* **activations**  tensors the forward pass saves for backward.

The first three are tensor sizes and can be counted exactly.  The fourth is counted
with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd stores for the
backward pass goes through our hook, and we add up the memory behind it.

Two kinds of numbers come out of this module:

* *measured* (``parameter_bytes``, ``gradient_bytes``, ``optimizer_state_bytes``,
  ``SavedActivations``, ``measure_train_step``, and ``MemoryProbe``, which measures a
  training run's first step through hooks): exact tensor accounting on a real model,
  plus the allocator's or the process's peak (``peak_memory``; ``PEAK_KINDS`` says what
  each kind of peak is);
* *estimated* (``estimate_memory``): a closed formula from the model's config and
  shapes alone, which works on a model built on PyTorch's ``meta`` device (no weights).

Units: ``format_bytes`` and ``to_frame`` write decimal megabytes (1 MB = 10**6 bytes), as
the plots and the planner do.  The project's ml-stack guide divides by 2**20 instead:
MiniLM's 22,713,986 float32 parameters are 90,855,944 bytes = 90.9 MB = 86.6 MiB.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Collection, Iterable, Mapping

import pandas as pd
import torch
from torch import nn

from workbench.lora.quantize import quantization_constant_bytes
from workbench.util.checks import check_choice, check_positive_int
from workbench.util.units import MB, MIB, format_bytes  # noqa: F401  (memory figures are reported in these)

__all__ = [
    "MemoryBreakdown",
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
    "estimate_memory",
    "estimate_activation_bytes",
    "checkpointed_activations",
    "OPTIMIZERS",
    "optimizer_state_estimate",
    "format_bytes",
    "MIB",
    "MB",
]


# --------------------------------------------------------------------------- results


@dataclass
class MemoryBreakdown:
    """The memory of one training step, in bytes.

    ``total`` is the sum of the four tensor terms (what the model, its gradients, the
    optimizer and the saved activations occupy).  ``peak`` is a separate, coarser
    observation: the allocator's high-water mark on CUDA, or the whole process's peak
    resident memory on CPU (Python, libraries, temporaries included), so it is larger
    than ``total`` and is not added into it.
    """

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    peak: int | None = None
    peak_kind: str = ""

    @property
    def total(self) -> int:
        """weights + gradients + optimizer + activations (bytes)."""
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON-ready); ``total`` is included for readers, ignored on load."""
        d = asdict(self)
        d["total"] = self.total
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MemoryBreakdown":
        """Inverse of ``to_dict``; unknown keys (such as ``total``) are ignored."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for key in ("weights", "gradients", "optimizer", "activations"):
            if key in kwargs:
                kwargs[key] = int(kwargs[key])
        if kwargs.get("peak") is not None:
            kwargs["peak"] = int(kwargs["peak"])
        return cls(**kwargs)

    def to_frame(self) -> pd.DataFrame:
        """A small table: one row per component (and ``total``, and ``peak`` when known).

        Columns: ``component``, ``bytes``, ``MB`` (bytes / 10**6, as ``format_bytes``).
        """
        rows = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer", self.optimizer),
            ("activations", self.activations),
            ("total", self.total),
        ]
        if self.peak is not None:
            rows.append((f"peak ({self.peak_kind})" if self.peak_kind else "peak", self.peak))
        return pd.DataFrame(
            {
                "component": [name for name, _ in rows],
                "bytes": [int(b) for _, b in rows],
                "MB": [b / MB for _, b in rows],
            }
        )


# --------------------------------------------------------------------- exact counting


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of all parameters (trainable and frozen): sum of numel * element size.

    ``model.parameters()`` yields a shared (tied) parameter once, so it is counted once.
    Only shapes and dtypes are read, so this works on ``meta`` tensors too.

    A quantized base (QLoRA, ``workbench.lora.quantize``) counts as it is stored: its weight
    parameters hold the packed codes (NF4: two weights per byte; int8: one), and the
    constants bitsandbytes keeps beside them (absmax per block, the double-quantization
    scales and code books, int8's row scales) are added, so bytes per weight come out as
    ``quantized_bytes_per_weight`` says plus a fixed table per layer.
    """
    return sum(_tensor_bytes(p) for p in model.parameters()) + quantization_constant_bytes(model)


def trainable_parameter_bytes(model: nn.Module) -> int:
    """Bytes of the parameters with ``requires_grad=True``."""
    return sum(_tensor_bytes(p) for p in model.parameters() if p.requires_grad)


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the ``.grad`` tensors present now (call after ``backward``).

    A frozen parameter never gets a ``.grad``, which is exactly why LoRA saves gradient
    memory.  After ``optimizer.zero_grad()`` (``set_to_none=True`` by default) the
    gradients are gone and this returns 0.
    """
    return sum(_tensor_bytes(p.grad) for p in model.parameters() if p.grad is not None)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (call after the first ``step``).

    For AdamW/Adam that is ``exp_avg`` and ``exp_avg_sq`` (one trainable-sized tensor
    each, so 2 x trainable floats) **plus** the ``step`` counter, which PyTorch keeps as a
    0-dim float32 tensor per parameter: 4 bytes per trainable parameter *tensor*.  We
    count it because it is real memory; it is tiny.  SGD with momentum keeps one
    ``momentum_buffer`` (1 x trainable); plain SGD keeps nothing.  Non-tensor entries
    are ignored, and a tensor shared between parameters' states is counted once.
    """
    total, seen = 0, set()
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                info = storage_key_and_bytes(value)
                key = info[0] if info is not None else id(value)
                if key in seen:  # a tensor shared by every parameter's state (bitsandbytes' quantile maps)
                    continue
                seen.add(key)
                total += _tensor_bytes(value)
    return total


# ------------------------------------------------------------ saved activations


def storage_key_and_bytes(t: torch.Tensor) -> tuple[Any, int] | None:
    """(a key identifying the memory behind ``t``, the bytes of that memory).

    Views (``x.t()``, ``x[:, 0]``, ``x.view(...)``) share their base's storage, and the
    whole storage stays alive while any view of it is saved, so we key on the storage
    and count its full ``nbytes`` once.  The key is the storage's data pointer, as the
    guide recommends.  Tensors on the ``meta`` device have no data (pointer 0 for all of
    them), so they are keyed by their storage object instead and count their logical
    size.  A sparse COO tensor has no single storage: we count its indices and values.
    Returns None when the tensor's memory cannot be read at all (e.g. a tensor subclass
    without storage); callers count such tensors as unaccounted.
    """
    try:
        storage = t.untyped_storage()
    except (NotImplementedError, RuntimeError):
        if t.layout == torch.sparse_coo:
            indices, values = t._indices(), t._values()
            key = ("sparse", indices.untyped_storage().data_ptr(), values.untyped_storage().data_ptr())
            return key, indices.untyped_storage().nbytes() + values.untyped_storage().nbytes()
        return None
    if t.device.type == "meta" or storage.data_ptr() == 0:
        # No real allocation: key by the storage object's identity, size by shape.
        nbytes = storage.nbytes() or _tensor_bytes(t)
        return ("storage-object", getattr(storage, "_cdata", id(storage))), nbytes
    return (t.device.type, t.device.index, storage.data_ptr()), storage.nbytes()


class SavedActivations:
    """Count the bytes autograd saves for backward while the ``with`` block runs.

        with SavedActivations(model) as saved:
            loss = model(**batch).loss
        saved.bytes   # activation memory held for backward

    How: ``torch.autograd.graph.saved_tensors_hooks(pack, unpack)`` calls ``pack`` on
    every tensor an operation saves for its backward.  Our ``pack`` records the tensor's
    storage and passes the tensor through unchanged (``t.detach()``: the very same
    memory, no copy, minus the autograd link that would form a reference cycle;
    ``unpack`` returns it as is), so the model computes exactly what it would without us.

    Counting rules (why the number is the memory that backward holds on to):
    * each storage is counted once, by its full size: a tensor saved by two operations
      (or a view of a saved tensor) costs memory once;
    * storages of the model's parameters and buffers are left out: a frozen weight
      saved by a matmul is the weight itself, already counted as "weights";
    * tensors whose storage cannot be read are counted in ``unaccounted`` (a number of
      tensors), not in ``bytes``.

    ``records`` lists (shape, dtype, counted bytes) per saved tensor in saving order
    (counted bytes is 0 for a duplicate or a parameter), handy for teaching.
    """

    def __init__(self, model: nn.Module | None = None, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.model = model
        self._extra_exclude = list(exclude)
        self.bytes = 0
        self.count = 0  # tensors passed to pack, duplicates included
        self.unaccounted = 0
        self.records: list[tuple[tuple[int, ...], torch.dtype, int]] = []
        self._seen: set[Any] = set()
        self._excluded: set[Any] = set()
        self._hooks: Any = None

    def _exclusion_keys(self) -> set[Any]:
        tensors: list[torch.Tensor] = list(self._extra_exclude)
        if self.model is not None:
            tensors += list(self.model.parameters())
            tensors += list(self.model.buffers())
        keys = set()
        for t in tensors:
            info = storage_key_and_bytes(t.detach())
            if info is not None:
                keys.add(info[0])
        return keys

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.count += 1
        info = storage_key_and_bytes(t)
        counted = 0
        if info is None:
            self.unaccounted += 1
        else:
            key, nbytes = info
            if key not in self._excluded and key not in self._seen:
                self._seen.add(key)
                counted = nbytes
                self.bytes += nbytes
        self.records.append((tuple(t.shape), t.dtype, counted))
        # The same memory, without its autograd history.  Returning ``t`` itself would
        # make an op's saved *output* hold its own grad_fn: a C++ reference cycle that
        # leaks the whole graph when backward never runs.  Autograd re-attaches the
        # history when it unpacks, so backward computes exactly the same thing.
        return t.detach()

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> "SavedActivations":
        self._excluded = self._exclusion_keys()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None

    @property
    def megabytes(self) -> float:
        """``bytes`` in MB of 2**20 bytes (as ``format_bytes``)."""
        return self.bytes / MIB


# ------------------------------------------------------------------- peak memory


def process_peak_bytes() -> int | None:
    """This process's peak resident memory (``VmHWM`` in /proc/self/status), or None.

    VmHWM ("high water mark") is the largest RSS the process has had, in kB; we return
    bytes.  Linux only: elsewhere, or if the file cannot be read, None.  (Not
    ``resource.getrusage().ru_maxrss``: a child process inherits its parent's value.)
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def reset_peak_memory(device: torch.device | str | None = None) -> bool:
    """Start a fresh peak measurement; True if the peak was reset.

    CUDA: ``torch.cuda.reset_peak_memory_stats``.  CPU (Linux): writing "5" to
    /proc/self/clear_refs sets VmHWM back to the current RSS (Linux >= 4.0); where that
    is not allowed the process peak keeps its old value and we return False, so a CPU
    peak then means "since the process started" (run measurements in a fresh process).
    """
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


# What a measured peak is, by ``MemoryBreakdown.peak_kind``: figures and tables say it.
PEAK_CUDA = "cuda max allocated"
PEAK_OWN_PROCESS = "own process VmHWM"
PEAK_PROCESS = "process VmHWM"
PEAK_KINDS: dict[str, str] = {
    PEAK_CUDA: "the most memory PyTorch's CUDA tensors held at once during the run "
               "(torch.cuda.max_memory_allocated after a reset): temporaries included, the CUDA context not",
    PEAK_OWN_PROCESS: "the highest resident memory (VmHWM) of the run's own worker process, from its first step "
                      "to its end: the Python interpreter and libraries, the model, the data, and every tensor and "
                      "temporary of training; nothing that ran before it",
    PEAK_PROCESS: "the highest resident memory (VmHWM) of the calling process during the run: it includes whatever "
                  "the process already held (models kept by earlier runs, memory its allocator kept after freeing "
                  "it), so it depends on what ran before",
}


def describe_peak(kind: str) -> str:
    """One sentence saying what a peak of this kind measures (for a figure's or a table's note)."""
    return PEAK_KINDS.get(kind, f"a peak of kind {kind!r}" if kind else "a peak of unknown kind")


def peak_memory(device: torch.device | str | None = None, own_process: bool = False) -> tuple[int | None, str]:
    """(peak bytes, what kind of peak) for the device a model trains on (see ``PEAK_KINDS``).

    CUDA: ``torch.cuda.max_memory_allocated`` -> "cuda max allocated" (tensors only).
    CPU: ``process_peak_bytes()`` -> "own process VmHWM" when this process exists for
    the one run (``own_process``: ``workbench.engine.worker``), else "process VmHWM";
    (None, "unavailable") off Linux.
    """
    if _is_cuda(device):
        return int(torch.cuda.max_memory_allocated(device)), PEAK_CUDA
    peak = process_peak_bytes()
    if peak is None:
        return None, "unavailable"
    return peak, PEAK_OWN_PROCESS if own_process else PEAK_PROCESS


class MemoryProbe:
    """Measures a training run's memory from outside its loop: the loop has no line for it.

    Made just before the first step, it starts a fresh peak (``reset_peak_memory``) and
    watches the first training step through hooks, then takes them away:

    * the model's forward pre-hook: the analytic estimate for this batch's shape (with
      dynamic padding the first batch is as long as its longest sentence, not
      ``max_length``), then ``SavedActivations`` opens;
    * the model's forward hook: ``SavedActivations`` closes: the activations;
    * the optimizer's step pre-hook: the gradients present after backward (and clipping,
      which changes values, not sizes);
    * the optimizer's step post-hook: the optimizer state AdamW has just created.

    ``close()`` reads the peak and returns the breakdown; ``estimate`` holds the estimate
    (None where the model has no formula, with the reason in ``notes``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 own_process: bool = False) -> None:
        self.model, self.device, self.own_process = model, device, own_process
        self.memory = MemoryBreakdown(weights=parameter_bytes(model))
        self.estimate: MemoryBreakdown | None = None
        self.notes: dict[str, Any] = {}  # estimate_shape, or estimate_note: for the run's environment record
        self._saved: SavedActivations | None = None
        reset_peak_memory(device)  # this run's peak, not the session's
        self._forward_hooks = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        self._step_hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def _before_forward(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            self.estimate = self._estimate(*ids.shape)
        self._saved = SavedActivations(model)
        self._saved.__enter__()

    def _estimate(self, batch_size: int, seq_len: int) -> MemoryBreakdown | None:
        try:
            est = estimate_memory(self.model, batch_size=batch_size, seq_len=seq_len, device=self.device.type)
        except (ValueError, NotImplementedError, TypeError) as e:
            self.notes["estimate_note"] = str(e)
            return None
        self.notes["estimate_shape"] = [batch_size, seq_len]
        return est

    def _after_forward(self, model: nn.Module, args: tuple, output: Any) -> None:
        self._close_saved()
        for handle in self._forward_hooks:
            handle.remove()

    def _close_saved(self) -> None:
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self.memory.activations = self._saved.bytes
            self._saved = None

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.memory.gradients = gradient_bytes(self.model)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.memory.optimizer = optimizer_state_bytes(optimizer)
        for handle in self._step_hooks:
            handle.remove()

    def close(self) -> MemoryBreakdown:
        """Take the hooks away (if the first step never finished) and read the peak."""
        self._close_saved()
        for handle in self._forward_hooks + self._step_hooks:
            handle.remove()
        self.memory.peak, self.memory.peak_kind = peak_memory(self.device, own_process=self.own_process)
        return self.memory


def measure_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Any] | torch.Tensor,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> MemoryBreakdown:
    """Run one training step and account for its memory exactly.

    forward inside ``SavedActivations`` -> ``backward`` -> read gradient bytes ->
    ``optimizer.step()`` -> read optimizer-state bytes -> read the peak.  The loss is
    ``loss_fn(output)`` when given, else ``output.loss`` (a Hugging Face model called
    with ``labels``).  Gradients are left in place (the caller zeroes them).  Note that
    AdamW creates its state in the first ``step``, so a first step measures it fully.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else None
    reset_peak_memory(device)
    with SavedActivations(model) as saved:
        output = model(**batch) if isinstance(batch, Mapping) else model(batch)
    if loss_fn is not None:
        loss = loss_fn(output)
    else:
        loss = getattr(output, "loss", None)
        if loss is None:
            raise ValueError(
                "the model output has no .loss: pass labels in the batch or give loss_fn=callable(output)"
            )
    loss.backward()
    grads = gradient_bytes(model)
    optimizer.step()
    peak, kind = peak_memory(device)
    return MemoryBreakdown(
        weights=parameter_bytes(model),
        gradients=grads,
        optimizer=optimizer_state_bytes(optimizer),
        activations=saved.bytes,
        peak=peak,
        peak_kind=kind,
    )


# ------------------------------------------------------------- analytic estimate
#
# The activation estimate replays a model's forward pass on paper.  For each operation
# we know (from PyTorch's autograd formulas) which tensors its backward needs, and that
# it only saves them when some input or weight requires a gradient.  Whether a tensor
# requires a gradient is the crux of LoRA's activation savings: below the lowest
# trainable parameter nothing requires a gradient, so nothing is saved there; above
# it, every nonlinearity, LayerNorm, dropout and attention softmax on the path back
# to the loss must save its inputs, trainable or not; a linear layer additionally
# saves its input only when its own weight (or a LoRA adapter on it) trains.

OPTIMIZER_STATES: dict[str, int] = {  # trainable-sized state tensors per parameter
    "adamw": 2,
    "adam": 2,
    "sgd": 0,
    "sgd-momentum": 1,
}
_STEP_COUNTER_BYTES = 4  # Adam/AdamW keep `step` as a float32 0-dim tensor per parameter

# bitsandbytes' optimizers (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
# Quantization", arXiv:2110.02861), as bitsandbytes 0.50 allocates their state:
BNB_8BIT_BLOCK = 256  # numbers per float32 absmax of an 8-bit state
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep 32-bit states (bitsandbytes' min_8bit_size)
BNB_QMAP_BYTES = 2 * 256 * 4  # the two 256-entry float32 quantile maps, shared by all tensors

#: Every optimizer the estimate knows, and what its state is.
OPTIMIZERS: dict[str, str] = {
    "adamw": "torch.optim.AdamW: exp_avg and exp_avg_sq in the parameter's dtype (2 x s bytes per number) "
             "and a float32 step counter per tensor",
    "adam": "torch.optim.Adam: as adamw",
    "sgd": "torch.optim.SGD without momentum: no state",
    "sgd-momentum": "torch.optim.SGD with momentum: one buffer in the parameter's dtype (s bytes per number)",
    "adamw-32bit": "bitsandbytes AdamW32bit: both moments in float32 (8 bytes per number) whatever the "
                   "parameter's dtype, as mixed-precision training keeps them",
    "adamw-8bit": f"bitsandbytes AdamW8bit: both moments as 8-bit codes (2 bytes per number) plus one float32 "
                  f"absmax per {BNB_8BIT_BLOCK} numbers for each moment; tensors under {BNB_MIN_8BIT_SIZE} numbers "
                  f"keep float32 moments; two 256-entry float32 quantile maps ({BNB_QMAP_BYTES} bytes) per optimizer",
    "paged-adamw-32bit": "bitsandbytes PagedAdamW32bit: the bytes of adamw-32bit; on CUDA, state tensors of "
                         "100,000 numbers or more live in paged (unified) memory, which the driver moves to CPU "
                         "memory when the GPU runs short (counted here on the GPU, as the memory it uses when "
                         "nothing is evicted)",
    "paged-adamw-8bit": "bitsandbytes PagedAdamW8bit: the bytes of adamw-8bit, paged as paged-adamw-32bit",
}


def optimizer_state_estimate(optimizer: str, numels: Iterable[int], bytes_per_element: int) -> int:
    """Bytes of optimizer state for trainable tensors of ``numels`` numbers (see ``OPTIMIZERS``).

    torch: k * n * s per tensor (k = 2 for Adam/AdamW, 1 for SGD with momentum, 0 for SGD)
    + 4 bytes of float32 ``step`` per tensor for Adam/AdamW.  bitsandbytes 32-bit: 8 n.
    bitsandbytes 8-bit: 2 n + 2 * 4 * ceil(n / 256) for n >= 4096 (else 8 n), plus 2048
    bytes of quantile maps once.  bitsandbytes keeps ``step`` as a Python int: no tensor.
    """
    check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
    numels = [int(n) for n in numels]
    if optimizer in OPTIMIZER_STATES:
        k = OPTIMIZER_STATES[optimizer]
        step = _STEP_COUNTER_BYTES * len(numels) if optimizer in ("adam", "adamw") else 0
        return k * sum(numels) * bytes_per_element + step
    if optimizer.endswith("32bit"):
        return 8 * sum(numels)
    small = [n for n in numels if n < BNB_MIN_8BIT_SIZE]
    big = [n for n in numels if n >= BNB_MIN_8BIT_SIZE]
    blocks = sum(-(-n // BNB_8BIT_BLOCK) for n in big)
    return 8 * sum(small) + 2 * sum(big) + 2 * 4 * blocks + (BNB_QMAP_BYTES if big else 0)

# Tensors of the intermediate size that an activation function saves for backward,
# as labels: "in" (its input), "out" (its output, which the next linear layer may also
# save: counted once), or "tmp" (a temporary of the same size).  Measured on torch 2.13.
ACTIVATION_SAVES: dict[str, tuple[str, ...]] = {
    "gelu": ("in",),
    "gelu_pytorch_tanh": ("in",),
    "relu": ("out",),
    "silu": ("in",),
    "swish": ("in",),
    "gelu_new": ("in", "tmp", "tmp", "tmp"),  # 0.5 x (1 + tanh(c (x + 0.044715 x^3))) in Python ops
}

DEVICES = ("cpu", "cuda")


@dataclass
class _Adapter:
    rank: int
    a_trainable: bool
    b_trainable: bool
    dropout: float


@dataclass
class _LinearInfo:
    """What the estimate needs to know about one (possibly LoRA-wrapped) linear layer."""

    weight_trainable: bool  # its input is saved for dW = dY^T X
    bias_trainable: bool
    adapters: list[_Adapter]

    @property
    def any_trainable(self) -> bool:
        return self.weight_trainable or self.bias_trainable or bool(self.adapters)


def _linear_info(module: nn.Module, is_trainable: Callable[[nn.Parameter], bool]) -> _LinearInfo:
    """Read a Linear/Conv1D, our LoRALayer or a PEFT LoRA layer (also PEFT's
    modules_to_save wrapper): which base parameters train, and its trainable adapters."""
    params = dict(module.named_parameters())
    modules = dict(module.named_modules())
    weight = bias = False
    adapters: list[_Adapter] = []
    for name, p in params.items():
        if "lora_" in name:
            continue
        if name.endswith("weight"):
            weight = weight or is_trainable(p)
        elif name.endswith("bias"):
            bias = bias or is_trainable(p)
    for name, p in params.items():
        if "lora_A" not in name or not name.endswith("weight"):
            continue
        before, after = name.split("lora_A", 1)
        b = params.get(before + "lora_B" + after)
        a_tr, b_tr = is_trainable(p), b is not None and is_trainable(b)
        if not (a_tr or b_tr):
            continue  # a frozen adapter saves nothing: its backward needs only its weights
        drop = modules.get(before + "lora_dropout" + after[: -len(".weight")])
        p_drop = drop.p if isinstance(drop, nn.Dropout) else 0.0
        adapters.append(_Adapter(int(p.shape[0]), a_tr, b_tr, float(p_drop)))
    return _LinearInfo(weight, bias, adapters)


class _Tape:
    """A paper autograd tape: labelled saved tensors, each label counted once.

    Labels play the role of storages in ``SavedActivations``: two operations saving the
    same tensor (the shared input of query, key and value, say) add one entry."""

    def __init__(self, elem: int, device: str, dropout: bool, padded: bool) -> None:
        self.items: dict[str, int] = {}
        self.device = device
        self.padded = padded  # an attention mask is passed (the batch has padding)
        self.e = elem  # bytes per activation element
        # A dropout mask is a float tensor of the input's dtype on CPU (x * mask), and a
        # bool tensor (1 byte) in CUDA's fused dropout kernel.
        self.m = elem if device == "cpu" else 1  # bytes per dropout-mask element
        self.dropout = dropout

    def save(self, label: str, nbytes: int) -> None:
        self.items.setdefault(label, int(nbytes))

    def linear(self, info: _LinearInfo, x: str, x_numel: int, x_grad: bool, rows: int,
               name: str, x_storage_bytes: int | None = None) -> bool:
        """y = x W^T + b (+ s B A x).  Returns whether y requires grad.

        dW needs x; db needs nothing; dx needs only W (a parameter, not counted).  A LoRA
        adapter saves x for dA (or its dropout's output, plus the mask when x needs a
        gradient) and A x (``rows`` x r) for dB."""
        x_bytes = x_storage_bytes if x_storage_bytes is not None else x_numel * self.e
        if info.weight_trainable:
            self.save(x, x_bytes)
        for k, ad in enumerate(info.adapters):
            a_input = x
            if ad.dropout > 0 and self.dropout:
                a_input, x_bytes_a = f"{name}.lora{k}.dropout_out", x_numel * self.e
                if x_grad:
                    self.save(f"{name}.lora{k}.dropout_mask", x_numel * self.m)
            else:
                x_bytes_a = x_bytes
            if ad.a_trainable:
                self.save(a_input, x_bytes_a)
            if ad.b_trainable:
                self.save(f"{name}.lora{k}.Ax", rows * ad.rank * self.e)
        return x_grad or info.any_trainable

    def drop(self, p: float, numel: int, x_grad: bool, name: str) -> None:
        """Dropout in train mode saves its mask (dX = dY * mask) when x needs a gradient."""
        if self.dropout and p > 0 and x_grad:
            self.save(f"{name}.mask", numel * self.m)

    def layer_norm(self, x: str, tokens: int, width: int, x_grad: bool, trainable: bool, name: str) -> bool:
        """LayerNorm saves its input and the per-token mean and 1/std."""
        if x_grad or trainable:
            self.save(x, tokens * width * self.e)
            self.save(f"{name}.stats", 2 * tokens * self.e)
        return x_grad or trainable


def _attention(tape: _Tape, *, path: str, name: str, B: int, S: int, H: int, heads: int,
               q: tuple[str, int], k: tuple[str, int], v: tuple[str, int],
               gq: bool, gk: bool, gv: bool, p_drop: float, ctx: str) -> bool:
    """softmax(Q K^T / sqrt(d) + mask) V for all heads; returns whether the output needs grad.

    ``q``, ``k``, ``v`` are (storage label, storage bytes) of the tensors handed to the
    kernel.  Paths:
    * "eager" (and PyTorch's sdpa *math* fallback, taken on CPU when attention dropout
      is on): Q is saved if K needs a gradient (dK = dS^T Q) and vice versa; V and the
      softmax output P if Q or K need one; the dropout mask (B x heads x S x S) too;
      the dropped P if V needs one (dV = P^T dO).  The S x S terms are what grows
      quadratically with sequence length.  Both paths hand batched matmuls copies of
      the per-head views (reshaping a transposed view copies it; the math path also
      scales Q and K), so each of Q, K, V is a fresh B x S x H tensor.  On CPU the math
      path computes in float32 for 16-bit inputs, so there these tensors and the S x S
      ones take 4 bytes per element.
    * "fused" (flash / memory-efficient kernels: CPU sdpa without dropout, CUDA sdpa):
      Q, K, V, the output and the log-sum-exp (B x heads x S, float32), no S x S matrix;
      the kernel recomputes P in backward.  When the batch is padded, the attention
      mask is passed in and the kernel also keeps its own copy per call (B x S x S).
    """
    any_grad = gq or gk or gv
    if not any_grad:
        return False
    probs = B * heads * S * S
    e, m = tape.e, tape.m
    if path == "math" and tape.device == "cpu":
        e = m = max(e, 4)  # upcast to float32
    if path == "fused":
        for label, nbytes in (q, k, v):
            tape.save(label, nbytes)
        tape.save(ctx, B * S * H * tape.e)
        tape.save(f"{name}.logsumexp", B * heads * S * 4)
        if tape.padded:
            tape.save(f"{name}.attn_mask", B * S * S * tape.e)
        return True
    q = (f"{name}.q_copy", B * S * H * e)
    k = (f"{name}.k_copy", B * S * H * e)
    v = (f"{name}.v_copy", B * S * H * e)
    if gk:
        tape.save(*q)
    if gq:
        tape.save(*k)
    if gq or gk:
        tape.save(*v)
        tape.save(f"{name}.softmax", probs * e)
    if tape.dropout and p_drop > 0:
        if gq or gk:
            tape.save(f"{name}.attn_dropout_mask", probs * m)
        if gv:
            tape.save(f"{name}.dropped_probs", probs * e)
    elif gv:
        tape.save(f"{name}.softmax", probs * e)
    return True


def _attention_path(config: Any, device: str, attn_dropout_active: bool) -> str:
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl == "eager":
        return "eager"
    if impl == "sdpa" and device == "cpu" and attn_dropout_active:
        return "math"  # PyTorch's CPU flash kernel does not support dropout
    return "fused"


def _cfg(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        value = getattr(config, n, None)
        if value is not None:
            return value
    if default is not None:
        return default
    raise ValueError(f"model.config has none of {names}: cannot estimate activations for it")


def _find_blocks(model: nn.Module, pattern: str) -> tuple[str, list[int]]:
    prefix, indices = None, set()
    for name, _ in model.named_modules():
        m = re.match(pattern, name)
        if m:
            prefix = m.group(1) if prefix is None else prefix
            indices.add(int(m.group(2)))
    return (prefix or ""), sorted(indices)


def _hidden_label(layers: list[int], position: int) -> str:
    """Label of the hidden state entering block ``layers[position]`` (after the last
    block: "final_hidden").  Named after the block that reads it, so a block's items
    include its own input."""
    return f"layer{layers[position]}.input" if position < len(layers) else "final_hidden"


def _activation_act(config: Any, key: str) -> tuple[str, ...]:
    act = _cfg(config, key, default="gelu")
    if not isinstance(act, str) or act not in ACTIVATION_SAVES:
        raise ValueError(
            f"activation function {act!r} is not modelled; supported: {sorted(ACTIVATION_SAVES)}"
        )
    return ACTIVATION_SAVES[act]


def _ffn_activation(tape: _Tape, saves: tuple[str, ...], x: str, out: str, numel: int,
                    x_grad: bool, name: str) -> None:
    if not x_grad:
        return
    for i, what in enumerate(saves):
        label = {"in": x, "out": out}.get(what, f"{name}.act_tmp{i}")
        tape.save(label, numel * tape.e)


def _bert_activations(model: nn.Module, tape: _Tape, B: int, S: int, device: str,
                      info: Callable[[str], _LinearInfo], trainable_under: Callable[[str], bool]) -> None:
    """BERT-style encoder (post-LayerNorm): embeddings -> N x [attention, FFN] -> head."""
    cfg = model.config
    prefix, layers = _find_blocks(model, r"^(.*?)encoder\.layer\.(\d+)\.attention\.self\.query$")
    H = _cfg(cfg, "hidden_size")
    heads = _cfg(cfg, "num_attention_heads")
    inter = _cfg(cfg, "intermediate_size")
    p_hidden = float(_cfg(cfg, "hidden_dropout_prob", default=0.0))
    p_attn = float(_cfg(cfg, "attention_probs_dropout_prob", default=0.0))
    saves = _activation_act(cfg, "hidden_act")
    T = B * S
    path = _attention_path(cfg, device, tape.dropout and p_attn > 0)
    e = tape.e

    # Embeddings: word + position + token type, LayerNorm, dropout.  A trainable lookup
    # table saves its int64 indices.  BERT takes position ids as a view of a buffer (left
    # out, as SavedActivations does) and builds token-type ids of one row (S) from it;
    # RoBERTa builds both from input_ids (B x S each).  Assumes the caller passes no
    # token_type_ids (passing them costs B x S x 8 bytes instead).
    emb = prefix + "embeddings."
    modules = dict(model.named_modules())
    roberta_style = hasattr(modules.get(prefix + "embeddings"), "create_position_ids_from_input_ids")
    g = False
    if trainable_under(emb + "word_embeddings"):
        tape.save("input_ids", T * 8)
        g = True
    if trainable_under(emb + "position_embeddings"):
        if roberta_style:
            tape.save("position_ids", T * 8)
        g = True
    if trainable_under(emb + "token_type_embeddings"):
        tape.save("token_type_ids", (T if roberta_style else S) * 8)
        g = True
    g = tape.layer_norm("emb.sum", T, H, g, trainable_under(emb + "LayerNorm"), "emb.ln")
    tape.drop(p_hidden, T * H, g, "emb.dropout")
    x = _hidden_label(layers, 0)
    for pos, i in enumerate(layers):
        L = f"{prefix}encoder.layer.{i}."
        n = f"layer{i}"
        q_i, k_i, v_i = (info(L + "attention.self." + r) for r in ("query", "key", "value"))
        gq = tape.linear(q_i, x, T * H, g, T, n + ".query")
        gk = tape.linear(k_i, x, T * H, g, T, n + ".key")
        gv = tape.linear(v_i, x, T * H, g, T, n + ".value")
        ctx = n + ".context"
        g_ctx = _attention(tape, path=path, name=n, B=B, S=S, H=H, heads=heads,
                           q=(n + ".q", T * H * e), k=(n + ".k", T * H * e), v=(n + ".v", T * H * e),
                           gq=gq, gk=gk, gv=gv, p_drop=p_attn, ctx=ctx)
        g_o = tape.linear(info(L + "attention.output.dense"), ctx, T * H, g_ctx, T, n + ".attn_out")
        tape.drop(p_hidden, T * H, g_o, n + ".attn_out.dropout")
        g1 = tape.layer_norm(n + ".ln1_in", T, H, g_o or g, trainable_under(L + "attention.output.LayerNorm"), n + ".ln1")
        h1 = n + ".ln1_out"
        g2 = tape.linear(info(L + "intermediate.dense"), h1, T * H, g1, T, n + ".intermediate")
        _ffn_activation(tape, saves, n + ".act_in", n + ".act_out", T * inter, g2, n)
        g3 = tape.linear(info(L + "output.dense"), n + ".act_out", T * inter, g2, T, n + ".ffn_out")
        tape.drop(p_hidden, T * H, g3, n + ".ffn_out.dropout")
        g = tape.layer_norm(n + ".ln2_in", T, H, g3 or g1, trainable_under(L + "output.LayerNorm"), n + ".ln2")
        x = _hidden_label(layers, pos + 1)

    # Heads.  The [CLS] vector hidden[:, 0] is a view: whoever saves it keeps the
    # whole last hidden state (B x S x H) alive, so it costs T x H, not B x H.
    p_cls = float(_cfg(cfg, "classifier_dropout", default=-1.0))
    p_cls = p_hidden if p_cls < 0 else p_cls
    labels = _cfg(cfg, "num_labels", default=2)
    names = modules
    pooler = prefix + "pooler.dense"
    head_prefix = prefix[: -len("bert.")] if prefix.endswith("bert.") else prefix
    head_prefix = head_prefix[: -len("roberta.")] if head_prefix.endswith("roberta.") else head_prefix
    classifier = names.get(head_prefix + "classifier")
    if classifier is None:
        return  # a bare encoder: the caller's loss decides what more is saved
    if pooler in names:  # BERT: tanh(W_p h_cls) -> dropout -> classifier
        g = tape.linear(info(pooler), x, B * H, g, B, "pooler", x_storage_bytes=T * H * e)
        if g:
            tape.save("pooler.tanh_out", B * H * e)
        tape.drop(p_cls, B * H, g, "head.dropout")
        pooled = "head.dropout_out" if (tape.dropout and p_cls > 0) else "pooler.tanh_out"
        g = tape.linear(info(head_prefix + "classifier"), pooled, B * H, g, B, "classifier")
    elif head_prefix + "classifier.out_proj" in names:  # RoBERTa: dropout -> dense -> tanh -> dropout -> out_proj
        tape.drop(p_cls, B * H, g, "head.dropout1")
        if tape.dropout and p_cls > 0:
            h, h_bytes = "head.dropout1_out", None
        else:
            h, h_bytes = x, T * H * e
        g = tape.linear(info(head_prefix + "classifier.dense"), h, B * H, g, B, "head.dense", x_storage_bytes=h_bytes)
        if g:
            tape.save("head.tanh_out", B * H * e)
        tape.drop(p_cls, B * H, g, "head.dropout2")
        pooled = "head.dropout2_out" if (tape.dropout and p_cls > 0) else "head.tanh_out"
        g = tape.linear(info(head_prefix + "classifier.out_proj"), pooled, B * H, g, B, "classifier")
    else:
        raise ValueError(f"unsupported classification head {type(classifier).__name__} on {type(model).__name__}")
    if g:  # cross entropy: log-softmax of the logits, the labels, the weight normaliser
        tape.save("loss.log_probs", B * labels * e)
        tape.save("loss.labels", B * 8)
        tape.save("loss.total_weight", e)


def _gpt2_activations(model: nn.Module, tape: _Tape, B: int, S: int, device: str,
                      info: Callable[[str], _LinearInfo], trainable_under: Callable[[str], bool]) -> None:
    """GPT-2-style decoder (pre-LayerNorm, fused q/k/v projection ``c_attn``) -> LM or score head."""
    cfg = model.config
    prefix, layers = _find_blocks(model, r"^(.*?)h\.(\d+)\.attn\.c_attn$")
    H = _cfg(cfg, "n_embd", "hidden_size")
    heads = _cfg(cfg, "n_head", "num_attention_heads")
    inter = _cfg(cfg, "n_inner", default=4 * H)
    vocab = _cfg(cfg, "vocab_size")
    p_emb = float(_cfg(cfg, "embd_pdrop", default=0.0))
    p_res = float(_cfg(cfg, "resid_pdrop", default=0.0))
    p_attn = float(_cfg(cfg, "attn_pdrop", default=0.0))
    saves = _activation_act(cfg, "activation_function")
    T, e = B * S, tape.e
    path = _attention_path(cfg, device, tape.dropout and p_attn > 0)
    # With use_cache=True the model concatenates K and V into a cache even in training,
    # so a fused kernel sees fresh copies of K and V instead of views of the q/k/v output.
    cache = bool(getattr(cfg, "use_cache", False))

    g = False
    if trainable_under(prefix + "wte"):
        tape.save("input_ids", T * 8)
        g = True
    if trainable_under(prefix + "wpe"):
        tape.save("position_ids", S * 8)  # built with arange, not a buffer
        g = True
    tape.drop(p_emb, T * H, g, "emb.dropout")
    x = _hidden_label(layers, 0)
    for pos, i in enumerate(layers):
        L, n = f"{prefix}h.{i}.", f"layer{i}"
        g1 = tape.layer_norm(x, T, H, g, trainable_under(L + "ln_1"), n + ".ln1")
        g_qkv = tape.linear(info(L + "attn.c_attn"), n + ".ln1_out", T * H, g1, T, n + ".c_attn")
        qkv = (n + ".qkv", 3 * T * H * e)  # one storage, q, k, v are views of it
        k = (n + ".k_cache", T * H * e) if cache else qkv
        v = (n + ".v_cache", T * H * e) if cache else qkv
        ctx = n + ".context"
        g_ctx = _attention(tape, path=path, name=n, B=B, S=S, H=H, heads=heads, q=qkv, k=k, v=v,
                           gq=g_qkv, gk=g_qkv, gv=g_qkv, p_drop=p_attn, ctx=ctx)
        g_o = tape.linear(info(L + "attn.c_proj"), ctx, T * H, g_ctx, T, n + ".attn_out")
        tape.drop(p_res, T * H, g_o, n + ".attn_out.dropout")
        g = g_o or g
        h = n + ".resid1"
        g2 = tape.layer_norm(h, T, H, g, trainable_under(L + "ln_2"), n + ".ln2")
        g3 = tape.linear(info(L + "mlp.c_fc"), n + ".ln2_out", T * H, g2, T, n + ".c_fc")
        _ffn_activation(tape, saves, n + ".act_in", n + ".act_out", T * inter, g3, n)
        g4 = tape.linear(info(L + "mlp.c_proj"), n + ".act_out", T * inter, g3, T, n + ".mlp_out")
        tape.drop(p_res, T * H, g4, n + ".mlp_out.dropout")
        g = g4 or g
        x = _hidden_label(layers, pos + 1)
    g = tape.layer_norm(x, T, H, g, trainable_under(prefix + "ln_f"), "ln_f")
    names = dict(model.named_modules())
    head_prefix = prefix[: -len("transformer.")] if prefix.endswith("transformer.") else prefix
    _decoder_head(tape, model, names, info, head_prefix, "ln_f_out", B=B, T=T, H=H, vocab=vocab, e=e, g=g)


def _decoder_head(tape: _Tape, model: nn.Module, names: Mapping[str, nn.Module], info: Callable[[str], Any],
                  head_prefix: str, x: str, *, B: int, T: int, H: int, vocab: int, e: int, g: bool) -> None:
    """A decoder's head on its final norm's output ``x`` (GPT-2 and Llama alike), and its loss."""
    cfg = model.config
    if head_prefix + "lm_head" in names:
        # Every position predicts the next token: cross entropy over T x vocab logits,
        # computed in float32 whatever the model's dtype.
        g = tape.linear(info(head_prefix + "lm_head"), x, T * H, g, T, "lm_head")
        if g:
            tape.save("loss.log_probs", T * vocab * 4)
            tape.save("loss.labels", T * 8)
            tape.save("loss.total_weight", 4)
    elif head_prefix + "score" in names:
        labels = _cfg(cfg, "num_labels", default=2)
        # Scores for every position, then the last non-padding one is picked: the
        # indexing saves its two index vectors (B each).
        g = tape.linear(info(head_prefix + "score"), x, T * H, g, T, "score")
        if g:
            tape.save("score.pick_indices", 2 * B * 8)
            tape.save("loss.log_probs", B * labels * e)
            tape.save("loss.labels", B * 8)
            tape.save("loss.total_weight", e)
    else:
        raise ValueError(f"unsupported head on {type(model).__name__}: expected lm_head or score")


def _rms_norm(tape: _Tape, x: str, tokens: int, width: int, x_grad: bool, trainable: bool, name: str) -> bool:
    """Llama's RMSNorm, w * (x / rms(x)), computed in float32 whatever the model's dtype.

    When x needs a gradient it saves x in float32 (x itself in fp32; a float32 copy of a
    16-bit x, which is then a storage of its own) and 1/rms (one float32 per token); when
    its weight trains, the normalised x (model dtype) for dw.  Returns whether the output
    needs a gradient."""
    if x_grad:
        tape.save(x if tape.e == 4 else f"{x}.fp32", tokens * width * 4)
        tape.save(f"{name}.rstd", tokens * 4)
    if trainable:
        tape.save(f"{name}.normed", tokens * width * tape.e)
    return x_grad or trainable


def _llama_activations(model: nn.Module, tape: _Tape, B: int, S: int, device: str,
                       info: Callable[[str], _LinearInfo], trainable_under: Callable[[str], bool]) -> None:
    """Llama-style decoder (Llama, Qwen2, Mistral): RMSNorm, rotary positions, grouped-query
    attention through sdpa, SwiGLU FFN -> LM head (tied or not) or score head.

    Per block, T = B*S tokens, H hidden, I FFN width, h query heads, g key/value heads of d,
    e bytes per element, full fine-tuning (every weight trains):
      RMSNorm x2   2 x (T*H*4 input in float32 + T*4 for 1/rms + T*H*e normalised x)
      q/k/v input  T*H*e (shared), rotated q T*h*d*e, k and v T*g*d*e each (sdpa's own GQA
                   when the batch is unpadded; padded: transformers repeats k and v to h heads,
                   T*h*d*e each when 1 < g < h, and the kernel keeps a B*S*S*e mask), output T*h*d*e (o_proj's
                   input too), log-sum-exp B*h*S*4
      SwiGLU       gate/up input T*H*e (shared); gate output (SiLU's input), SiLU output, up
                   output, their product (down_proj's input): 4 x T*I*e
    In fp32 unpadded that is (8 T*H + 2 T*g*d + 4 T*I + 2 T + B*h*S) x 4 bytes a block.
    plus, once: cos and sin of the rotary embedding (S*d*e each), the final RMSNorm, the LM
    head's input when it trains, and the loss (T*vocab float32 log-probabilities).  With a
    frozen base (LoRA), the norms' normalised x, down_proj's input (unless it is adapted)
    and everything below the lowest adapter are not saved; an adapter saves its input and A x.
    """
    cfg = model.config
    prefix, layers = _find_blocks(model, r"^(.*?)layers\.(\d+)\.self_attn\.q_proj$")
    names = dict(model.named_modules())
    first = f"{prefix}layers.{layers[0]}."
    if first + "mlp.gate_proj" not in names or first + "input_layernorm" not in names:
        raise ValueError(
            f"no activation formula for {type(model).__name__} (model_type {getattr(cfg, 'model_type', '?')!r}): "
            "the Llama-style formula needs blocks with input_layernorm, self_attn.q_proj and a gated "
            "mlp.gate_proj/up_proj/down_proj (Llama, Qwen2, Mistral)"
        )
    H = _cfg(cfg, "hidden_size")
    heads = _cfg(cfg, "num_attention_heads")
    kv_heads = _cfg(cfg, "num_key_value_heads", default=heads)
    d = getattr(cfg, "head_dim", None) or H // heads
    inter = _cfg(cfg, "intermediate_size")
    vocab = _cfg(cfg, "vocab_size")
    p_attn = float(getattr(cfg, "attention_dropout", 0.0) or 0.0)
    if _attention_path(cfg, device, tape.dropout and p_attn > 0) != "fused":
        raise ValueError(
            "the Llama-style formula models sdpa's fused attention kernels (attn_implementation='sdpa', "
            f"attention_dropout 0); this model has {getattr(cfg, '_attn_implementation', None)!r} with "
            f"attention_dropout {p_attn}"
        )
    saves = _activation_act(cfg, "hidden_act")
    T, e = B * S, tape.e
    q_bytes, kv_bytes = T * heads * d * e, T * kv_heads * d * e
    # Padded: transformers' repeat_kv hands sdpa k and v at h heads, copies when 1 < g < h (for
    # g = 1, multi-query attention, the repeat is a stride-0 view of the g-head tensors).
    repeated = tape.padded and kv_heads not in (1, heads)

    g = False
    if trainable_under(prefix + "embed_tokens"):
        tape.save("input_ids", T * 8)
        g = True
    x = _hidden_label(layers, 0)
    for pos, i in enumerate(layers):
        L, n = f"{prefix}layers.{i}.", f"layer{i}"
        g1 = _rms_norm(tape, x, T, H, g, trainable_under(L + "input_layernorm"), n + ".ln1")
        ln1 = n + ".ln1_out"
        gq = tape.linear(info(L + "self_attn.q_proj"), ln1, T * H, g1, T, n + ".q_proj")
        gk = tape.linear(info(L + "self_attn.k_proj"), ln1, T * H, g1, T, n + ".k_proj")
        gv = tape.linear(info(L + "self_attn.v_proj"), ln1, T * H, g1, T, n + ".v_proj")
        if gq or gk:  # q*cos + rotate(q)*sin saves cos and sin (made once, shared by every block)
            tape.save("rotary.cos", S * d * e)
            tape.save("rotary.sin", S * d * e)
        k = (n + ".k_repeated", q_bytes) if repeated else (n + ".k_rotated", kv_bytes)
        v = (n + ".v_repeated", q_bytes) if repeated else (n + ".v", kv_bytes)
        ctx = n + ".context"
        g_ctx = _attention(tape, path="fused", name=n, B=B, S=S, H=heads * d, heads=heads,
                           q=(n + ".q_rotated", q_bytes), k=k, v=v, gq=gq, gk=gk, gv=gv, p_drop=0.0, ctx=ctx)
        g_o = tape.linear(info(L + "self_attn.o_proj"), ctx, T * heads * d, g_ctx, T, n + ".o_proj")
        g = g_o or g
        g2 = _rms_norm(tape, n + ".resid1", T, H, g, trainable_under(L + "post_attention_layernorm"), n + ".ln2")
        ln2 = n + ".ln2_out"
        g_gate = tape.linear(info(L + "mlp.gate_proj"), ln2, T * H, g2, T, n + ".gate_proj")
        g_up = tape.linear(info(L + "mlp.up_proj"), ln2, T * H, g2, T, n + ".up_proj")
        _ffn_activation(tape, saves, n + ".gate_out", n + ".act_out", T * inter, g_gate, n)
        if g_gate:  # act * up: d(act) needs up
            tape.save(n + ".up_out", T * inter * e)
        if g_up:  # d(up) needs act
            tape.save(n + ".act_out", T * inter * e)
        g_down = tape.linear(info(L + "mlp.down_proj"), n + ".product", T * inter, g_gate or g_up, T,
                             n + ".down_proj")
        g = g_down or g
        x = _hidden_label(layers, pos + 1)
    g = _rms_norm(tape, x, T, H, g, trainable_under(prefix + "norm"), "norm")
    head_prefix = prefix[: -len("model.")] if prefix.endswith("model.") else prefix
    _decoder_head(tape, model, names, info, head_prefix, "norm_out", B=B, T=T, H=H, vocab=vocab, e=e, g=g)


_ARCHITECTURES: tuple[tuple[str, Callable[..., None]], ...] = (
    (r"^(.*?)encoder\.layer\.(\d+)\.attention\.self\.query$", _bert_activations),
    (r"^(.*?)h\.(\d+)\.attn\.c_attn$", _gpt2_activations),
    (r"^(.*?)layers\.(\d+)\.self_attn\.q_proj$", _llama_activations),
)


def _trainable_predicate(
    model: nn.Module, trainable: Collection[str] | Callable[[str, nn.Parameter], bool] | None
) -> Callable[[nn.Parameter], bool]:
    named = list(model.named_parameters())
    if trainable is None:
        ids = {id(p) for _, p in named if p.requires_grad}
    elif callable(trainable):
        ids = {id(p) for n, p in named if trainable(n, p)}
    else:
        if isinstance(trainable, str):
            raise TypeError("trainable must be a collection of parameter names, a callable or None, not a str")
        wanted = set(trainable)
        known = {n for n, _ in named}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(
                f"trainable names not among model.named_parameters(): {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''} (e.g. {sorted(known)[:3]})"
            )
        ids = {id(p) for n, p in named if n in wanted}
    return lambda p: id(p) in ids


def estimate_activation_bytes(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    *,
    dropout: bool = True,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    trainable: Collection[str] | Callable[[str, nn.Parameter], bool] | None = None,
    padded: bool = True,
    gradient_checkpointing: bool = False,
) -> dict[str, int]:
    """Bytes saved for backward by one forward pass, itemised: {label: bytes}.

    See ``estimate_memory`` for the assumptions; the labels name the tensors (e.g.
    ``layer3.act_in``: the FFN activation's input in block 3) so a notebook can show
    where the memory goes.  Reads only shapes and ``model.config``: works on ``meta``.
    ``gradient_checkpointing``: see ``checkpointed_activations``.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    check_choice("device", device, DEVICES)
    if not hasattr(model, "config"):
        raise ValueError("estimate_activation_bytes needs a transformers model (with .config)")
    is_trainable = _trainable_predicate(model, trainable)
    elem = _activation_dtype(model, dtype).itemsize
    tape = _Tape(elem, device, dropout, padded)
    modules = dict(model.named_modules())

    def info(path: str) -> _LinearInfo:
        if path not in modules:
            raise ValueError(f"expected a module {path!r} in {type(model).__name__}")
        return _linear_info(modules[path], is_trainable)

    def trainable_under(path: str) -> bool:
        mod = modules.get(path)
        return mod is not None and any(is_trainable(p) for p in mod.parameters())

    names = list(modules)
    for pattern, builder in _ARCHITECTURES:
        if any(re.match(pattern, n) for n in names):
            builder(model, tape, batch_size, seq_len, device, info, trainable_under)
            if not gradient_checkpointing:
                return tape.items
            _, layers = _find_blocks(model, pattern)
            hidden = _cfg(model.config, "hidden_size", "n_embd")
            return checkpointed_activations(tape.items, layers, batch_size * seq_len * hidden * elem)
    raise ValueError(
        f"no activation formula for {type(model).__name__} (model_type "
        f"{getattr(model.config, 'model_type', '?')!r}): supported are BERT-style encoders "
        "(bert, roberta: modules encoder.layer.N.attention.self.query), GPT-2-style "
        "decoders (gpt2: modules h.N.attn.c_attn) and Llama-style decoders (llama, qwen2, "
        "mistral: modules layers.N.self_attn.q_proj with a gated mlp)"
    )


def checkpointed_activations(items: Mapping[str, int], layers: Iterable[int], input_bytes: int) -> dict[str, int]:
    """The activation items of a step under gradient checkpointing (one checkpoint per block).

    transformers checkpoints each block (``model.gradient_checkpointing_enable()``, with
    torch's reentrant ``checkpoint``): the forward pass runs the blocks without saving
    anything inside them and keeps only each block's input (B x S x H in the model's dtype);
    backward then re-runs one block at a time, with its input requiring a gradient, and
    holds that block's activations until it is done.  So

        activations = L x T*H*e  (the checkpoint inputs, ``layerN.input``)
                      + what is saved outside the blocks (embeddings, final norm, head, loss)
                      + the largest block's own activations, its input excluded
                        (``recompute.*``: the block being recomputed; its input is the checkpoint's)

    ``items``: the no-checkpointing tape (``estimate_activation_bytes``); its blocks are
    the labels ``layerN.*``.  The largest block is an interior one when adapters sit in
    every block (the lowest block saves less without checkpointing; recomputed, it saves
    as much as the others once its input requires a gradient, as
    ``enable_input_require_grads`` makes it for LoRA).  A peak bound in the same sense as
    the rest: gradients in flight during backward are not in it.
    """
    layers = list(layers)
    check_positive_int("input_bytes", input_bytes)
    if not layers:
        raise ValueError("checkpointed_activations needs the model's block indices (none given)")
    blocks = {i: {k: v for k, v in items.items() if k.startswith(f"layer{i}.")} for i in layers}
    in_blocks = {k for b in blocks.values() for k in b}
    out = {k: v for k, v in items.items() if k not in in_blocks}
    for i in layers:
        out[f"layer{i}.input"] = int(input_bytes)
    own = {i: {k: v for k, v in b.items() if k != f"layer{i}.input"} for i, b in blocks.items()}
    worst = max(layers, key=lambda i: sum(own[i].values()))
    out.update({f"recompute.{k}": v for k, v in own[worst].items()})
    return out


def _activation_dtype(model: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.bfloat16), not {dtype!r}")
        return dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def estimate_memory(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    optimizer: str = "adamw",
    dtype: torch.dtype | None = None,
    trainable: Collection[str] | Callable[[str, nn.Parameter], bool] | None = None,
    *,
    dropout: bool = True,
    device: str = "cpu",
    padded: bool = True,
    gradient_checkpointing: bool = False,
) -> MemoryBreakdown:
    """Training memory predicted from the model's shapes and config, without running it.

    Needs no real weights: a model built under ``with torch.device("meta")`` works.

    * weights     = sum over parameters of numel * s   (s = bytes per element of ``dtype``,
                    default the parameters' own dtype)
    * gradients   = trainable numel * s
    * optimizer   = k * trainable numel * s  +  4 bytes * (number of trainable tensors)
                    for Adam/AdamW (k = 2: exp_avg and exp_avg_sq; the 4 bytes are the
                    float32 ``step`` counter PyTorch keeps per parameter, counted exactly
                    as ``optimizer_state_bytes`` counts it); k = 1 for "sgd-momentum",
                    k = 0 for "sgd".
    * activations = ``estimate_activation_bytes``: the forward pass replayed on paper.

    ``trainable``: None uses the parameters' ``requires_grad`` flags (inject LoRA and
    freeze the base first, on the meta model too); or give the parameter names, or a
    predicate ``f(name, param) -> bool``.

    Activations, per transformer block (T = batch x seq tokens, H hidden, I FFN width,
    h heads, s bytes per element, in units of T*H*s, T*I*s and B*h*S*S*s):

    * full fine-tuning stores every block's activations.  On CPU with BERT's sdpa
      attention and dropout on (PyTorch's math attention: dropout needs the S x S
      matrix): 10 T*H (block input, Q, K, V, context, LayerNorm-1 input and output,
      LayerNorm-2 input, two dropout masks) + 2 T*I (GELU input and output)
      + 3 B*h*S*S (softmax output, its dropout mask, the dropped probabilities).
      With dropout off the fused (flash) kernel runs instead: no S x S term, no masks.
    * LoRA (frozen base): nothing below the lowest block holding an adapter, since no
      tensor there requires a gradient; from that block upward autograd must
      backpropagate through every block, so each saves its LayerNorm inputs, GELU input,
      dropout masks and attention internals, but a *frozen* linear layer saves no input
      (dx needs only W).  The adapted layers save their input x (shared by q, k and v)
      and A x (T x r).  For q,v adapters: 8 T*H + 1 T*I + 3 B*h*S*S per block (CPU,
      dropout on; one T*H fewer in the lowest adapted block, where K needs no
      gradient so Q is not kept), about three quarters of full fine-tuning.
    * head only: the pooler's tanh output, the classifier's input and the loss:
      a few B x H tensors.

    Assumptions (each one moves the number; all were checked against
    ``SavedActivations`` on torch 2.13 CPU):
    * ``dropout``: the model trains in ``train()`` mode with the dropout probabilities of
      its config (a mask per dropout layer, and the S x S attention-probability mask);
      ``dropout=False`` models training with every dropout p = 0.
    * ``device``: which kernels run.  "cpu": masks are float tensors (s bytes each); sdpa
      with attention dropout falls back to the math path.  "cuda": masks are bool
      (1 byte) and sdpa always uses a fused kernel (which handles dropout itself) -
      this follows PyTorch's kernels and has not been measured here.
    * ``model.config._attn_implementation``: "eager" stores the S x S probabilities;
      "sdpa" as above; anything else is treated as a fused kernel.
    * one batch of ``batch_size`` x ``seq_len`` tokens, padding included; input_ids
      and attention_mask only.  ``padded``: some sequence in the batch is padded, so
      transformers passes an attention mask, and a fused kernel keeps a B x S x S copy
      of it per block (with no padding at all the mask is dropped).  A few scalars are
      not counted.
    * ``dtype`` means training wholly in that dtype; autocast mixed precision (fp32
      weights, bf16 matmuls) is not modelled.
    * ``optimizer``: any of ``OPTIMIZERS`` (bitsandbytes' 32-bit, 8-bit and paged AdamW
      too: ``optimizer_state_estimate``).
    * ``gradient_checkpointing``: every block checkpointed, as transformers'
      ``gradient_checkpointing_enable()`` does (``checkpointed_activations``).
    """
    check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
    is_trainable = _trainable_predicate(model, trainable)
    size = (lambda p: dtype.itemsize) if dtype is not None else (lambda p: p.element_size())
    if dtype is not None:
        _activation_dtype(model, dtype)  # validates it
    params = list(model.parameters())
    train = [p for p in params if is_trainable(p)]
    # A quantized base's codes (uint8/int8) keep their own size whatever ``dtype`` says, and
    # their constants are added: the weights as they are stored (``parameter_bytes``).
    weights = (sum(p.numel() * (size(p) if p.is_floating_point() else p.element_size()) for p in params)
               + quantization_constant_bytes(model))
    grads = sum(p.numel() * size(p) for p in train)
    if optimizer in OPTIMIZER_STATES:  # torch: states in each parameter's own dtype
        k = OPTIMIZER_STATES[optimizer]
        opt = k * grads + (_STEP_COUNTER_BYTES * len(train) if optimizer in ("adam", "adamw") else 0)
    else:
        opt = optimizer_state_estimate(optimizer, [p.numel() for p in train], 4)
    items = estimate_activation_bytes(
        model, batch_size, seq_len, dropout=dropout, device=device, dtype=dtype, trainable=trainable,
        padded=padded, gradient_checkpointing=gradient_checkpointing,
    )
    return MemoryBreakdown(
        weights=weights,
        gradients=grads,
        optimizer=opt,
        activations=sum(items.values()),
        peak=None,
        peak_kind="estimate",
    )
