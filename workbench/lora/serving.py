"""Many adapters on one base: names, the active adapter, and one adapter per row of a batch.

A served base model is shared by many fine-tunes (LoRAX, S-LoRA, vLLM's multi-LoRA): the
frozen weights ``W`` are held once and each adapter adds only its ``A_k, B_k``.  A batch
can mix requests for different adapters; each LoRA layer then computes, for row i,

    y_i = W x_i + s_k B_k A_k x_i,     k = the adapter row i asked for (none: W x_i alone)

grouping the rows by adapter so that each adapter costs one pair of small matmuls per
step, and the base matmul ``W x`` runs once for the whole batch.

How it sits in the layer (``workbench.lora.layer``): a ``LoRALayer``'s own ``lora_A`` and
``lora_B`` hold the first adapter loaded at that layer (``layer.adapter_name``; "default"
for a model adapted by ``add_lora`` or by ``load_adapter`` without a name), so their
state-dict keys are PEFT's as before; further adapters sit beside them in
``layer.extra_adapters`` (name -> ``NamedAdapter``).  A layer that only a later adapter
targets is wrapped then, with that adapter as its own.  ``model.lora_adapters``
(``AdapterSet``) keeps the names in load order and the active one.

Named adapters beside the first are plain LoRA for inference: DoRA and PiSSA change the
base computation itself (a rescaled or residual ``W``), which rows sharing ``W`` cannot
each have, so they are refused with a message (as is a trained classification head,
which a batch cannot switch per row).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from workbench.lora.config import LoRAConfig
from workbench.lora.layer import LoRALayer, RowGroups

__all__ = ["DEFAULT_NAME", "NamedAdapter", "AdapterSet", "adapter_names", "active_adapter", "set_adapter",
           "check_adapter_name", "check_row_adapters", "adapters_per_row", "plain_view", "adapter_bytes",
           "tensor_bytes"]

DEFAULT_NAME = "default"  # the name of a model's one adapter when nobody named it (PEFT's too)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


class NamedAdapter(nn.Module):
    """A further adapter of a LoRA layer: its own ``A`` (r x in), ``B`` (out x r) and scale s.

    ``forward(x) = s * B A x``, the update the layer adds to the base output.
    """

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.rank, self.scaling = config.rank, config.scaling
        self.config = config
        self.lora_A = nn.Linear(in_features, self.rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(self.rank, out_features, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(x)) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.config.alpha:g}, scaling={self.scaling:.4g}"


@dataclass
class AdapterSet:
    """The named adapters on a model (``model.lora_adapters``), in load order; the first is the default.

    ``owner`` is the ``LoRASettings`` of the model's first adapter: after ``remove_lora`` (or
    a new ``add_lora``) the set no longer belongs to the model and is rebuilt.
    """

    configs: dict[str, LoRAConfig]
    wrapped: dict[str, list[str]]  # each adapter's layers
    active: str | None
    owner: object = field(repr=False, default=None)

    @property
    def names(self) -> list[str]:
        return list(self.configs)

    @property
    def default(self) -> str:
        return next(iter(self.configs))


def adapter_set(model: nn.Module) -> AdapterSet | None:
    """The model's adapters, or None for a model without LoRA.  A model adapted once
    (``add_lora``, ``load_adapter`` without a name) has one adapter, called "default"."""
    settings = getattr(model, "lora_settings", None)
    if settings is None:
        return None
    found = getattr(model, "lora_adapters", None)
    if not isinstance(found, AdapterSet) or found.owner is not settings:
        found = AdapterSet({DEFAULT_NAME: settings.config}, {DEFAULT_NAME: list(settings.wrapped)}, DEFAULT_NAME,
                           owner=settings)
        model.lora_adapters = found
    return found


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters loaded on the model, in load order (the first is the default); [] without LoRA."""
    found = adapter_set(model)
    return [] if found is None else found.names


def active_adapter(model: nn.Module) -> str | None:
    """The adapter the model applies now (None: the base alone, after ``set_adapter(model, None)``)."""
    found = adapter_set(model)
    if found is None:
        raise ValueError("the model has no adapters loaded; load one with load_adapter(model, folder, name=...)")
    return found.active


def _unknown(model: nn.Module, name: object) -> ValueError:
    loaded = adapter_names(model)
    return ValueError(f"no adapter named {name!r} is loaded on this model; loaded: "
                      f"{', '.join(repr(n) for n in loaded) or 'none'} (None: the base model alone)")


def check_adapter_name(name: object) -> str:
    """A name for a new adapter: letters, digits, '_' and '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"an adapter name is letters, digits, '_' and '-' (starting with a letter or digit), "
                         f"e.g. 'sql'; got {name!r}")
    if hasattr(nn.ModuleDict(), name):
        raise ValueError(f"{name!r} is reserved (a method of torch's ModuleDict); choose another adapter name")
    return name


def set_adapter(model: nn.Module, name: str | None) -> None:
    """Make ``name`` the adapter every forward pass applies (None: the base model alone).

    Only the name changes: no weight is copied or merged, so switching is instant.
    """
    found = adapter_set(model)
    if found is None:
        raise ValueError("the model has no adapters loaded; load one with load_adapter(model, folder, name=...)")
    if name is not None and name not in found.configs:
        raise _unknown(model, name)
    for layer in model.modules():
        if isinstance(layer, LoRALayer):
            layer.active_adapter = name
    found.active = name


def check_row_adapters(model: nn.Module, adapters: Sequence[str | None], rows: int) -> list[str | None]:
    """One adapter name (or None: the base alone) per row, each loaded on the model."""
    if isinstance(adapters, str) or not isinstance(adapters, Sequence):
        raise TypeError(f"adapters must be a list with one adapter name (or None) per prompt, got {adapters!r}")
    adapters = list(adapters)
    if len(adapters) != rows:
        raise ValueError(f"{len(adapters)} adapter names for {rows} prompts; give one per prompt (None: the base)")
    loaded = set(adapter_names(model))
    for name in adapters:
        if name is not None and name not in loaded:
            raise _unknown(model, name)
    return adapters


@contextlib.contextmanager
def adapters_per_row(model: nn.Module, adapters: Sequence[str | None]) -> Iterator[None]:
    """Within the block, row i of every batch the model sees goes through adapter ``adapters[i]``.

    The batch must have exactly ``len(adapters)`` rows.  The names are checked first;
    afterwards every layer applies the active adapter again.
    """
    adapters = check_row_adapters(model, adapters, len(adapters))
    layers = [m for m in model.modules() if isinstance(m, LoRALayer)]
    if any(layer.merged for layer in layers):
        raise RuntimeError("the model's LoRA layers are merged; unmerge_lora before serving a batch per adapter")
    device = next((p.device for layer in layers for p in layer.parameters()), None)
    groups = RowGroups.of(adapters, device)  # once per batch, not in every layer at every step
    try:
        for layer in layers:
            layer.row_adapters = groups
        yield
    finally:
        for layer in layers:
            layer.row_adapters = None


@contextlib.contextmanager
def plain_view(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's LoRA layers are replaced by the layers they wrap (then put back).

    So the target rules and shape checks written for a plain base apply to a model that
    already carries adapters, unchanged.
    """
    swapped: list[tuple[nn.Module, str, LoRALayer]] = []
    try:
        for name, layer in list(model.named_modules()):
            if isinstance(layer, LoRALayer):
                parent_name, _, child = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, child, layer.base_layer)
                swapped.append((parent, child, layer))
        yield
    finally:
        for parent, child, layer in reversed(swapped):
            setattr(parent, child, layer)


def tensor_bytes(tensors) -> int:
    """Bytes held by the tensors, each storage counted once (tied weights are one tensor)."""
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def adapter_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of each loaded adapter's A and B tensors, by name (measured from the tensors)."""
    found = adapter_set(model)
    if found is None:
        return {}
    out = {name: [] for name in found.names}
    for layer in model.modules():
        if isinstance(layer, LoRALayer):
            if layer.adapter_name in out:
                out[layer.adapter_name] += [layer.lora_A.weight, layer.lora_B.weight]
            for name, extra in layer.extra_adapters.items():
                out[name] += [extra.lora_A.weight, extra.lora_B.weight]
    return {name: tensor_bytes(ts) for name, ts in out.items()}
