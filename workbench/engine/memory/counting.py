"""Exact counting: the bytes of tensors that exist, read from their sizes and storages.

The weights, gradients and optimizer state are tensor sizes and can be counted exactly
(``parameter_bytes``, ``gradient_bytes``, ``optimizer_state_bytes``).  The activations are
counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd stores for
the backward pass goes through our hook (``SavedActivations``), and we add up the memory
behind it, each storage once (``storage_key_and_bytes``).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from workbench.lora.quantize import quantization_constant_bytes
from workbench.util.units import MIB


# --------------------------------------------------------------------- tensors that exist


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

