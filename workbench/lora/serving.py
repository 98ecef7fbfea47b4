"""Many adapters on one base: names, the active adapter, and one adapter per row of a batch.

A served base model is shared by many fine-tunes (LoRAX, S-LoRA, vLLM's multi-LoRA): the
frozen weights ``W`` are held once and each adapter adds only its ``A_k, B_k``.  A batch
can mix requests for different adapters; each LoRA layer then computes, for row i,

    y_i = W x_i + s_k B_k A_k x_i,     k = the adapter row i asked for (none: W x_i alone)

grouping the rows by adapter so that each adapter costs one pair of small matmuls per
step, and the base matmul ``W x`` runs once for the whole batch.

How it sits in the model: a plain ``LoRALayer`` (``workbench.lora.layer``) knows nothing of
names.  When a model takes a second adapter, or is asked to switch or to mix them, each of
its LoRA layers is swapped for a ``ServingLayer``: the same layer (its base, ``lora_A``,
``lora_B`` and settings shared, nothing copied) holding the first adapter loaded at that
layer as its own (``adapter_name``; "default" for a model adapted by ``add_lora`` or by
``load_adapter`` without a name), so their state-dict keys are PEFT's as before; further
adapters sit beside them in ``extra_adapters`` (name -> ``NamedAdapter``).  A layer that
only a later adapter targets is wrapped then, with that adapter as its own.  The model's
``AdapterSet`` (the names in load order and the active one) is kept with its LoRA settings,
``model.lora_settings.adapters``.  Everything about named adapters is in this file;
``workbench.lora.adapters`` reads the files and hands the weights here.

Named adapters beside the first are plain LoRA for inference: DoRA and PiSSA change the
base computation itself (a rescaled or residual ``W``), which rows sharing ``W`` cannot
each have, so they are refused with a message (as is a trained classification head,
which a batch cannot switch per row).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from workbench.lora.config import LoRAConfig
from workbench.lora.layer import LoRALayer
from workbench.lora.paths import replace_module

__all__ = ["DEFAULT_NAME", "NamedAdapter", "RowGroups", "ServingLayer", "AdapterSet", "adapter_set", "adapter_names",
           "active_adapter", "set_adapter", "check_adapter_name", "check_row_adapters", "adapters_per_row",
           "plain_view", "serving_layers", "name_adapter", "beside_problem", "add_named_adapter", "adapter_bytes",
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
        return self.lora_B(self.lora_A(x) * self.scaling)  # s B A x, scaled at rank r as LoRALayer does

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.config.alpha:g}, scaling={self.scaling:.4g}"


@dataclass(frozen=True)
class RowGroups:
    """A mixed batch's rows grouped by adapter: ``groups[name]`` holds the indices of the rows
    that adapter serves (rows whose adapter is None, the base alone, are in no group)."""

    rows: int
    groups: dict[str, torch.Tensor]

    @classmethod
    def of(cls, adapters: list[str | None], device: torch.device | str | None = None) -> "RowGroups":
        names = [n for n in dict.fromkeys(adapters) if n is not None]  # in order of first row
        return cls(len(adapters), {n: torch.tensor([i for i, a in enumerate(adapters) if a == n], device=device)
                                   for n in names})


class ServingLayer(LoRALayer):
    """A LoRA layer that serves several named adapters on its one frozen base.

    Its own ``lora_A``/``lora_B`` are the adapter called ``adapter_name``; the others sit
    beside them in ``extra_adapters``.  ``active_adapter`` says which one a forward pass adds
    (None: the base alone); within ``adapters_per_row`` ``row_adapters`` gives one per row.
    With its own adapter active and no rows it is exactly the plain ``LoRALayer``.
    """

    adapter_name: str
    active_adapter: str | None
    row_adapters: RowGroups | None

    @classmethod
    def from_layer(cls, layer: LoRALayer, name: str, active: str | None) -> "ServingLayer":
        """``layer`` able to serve more adapters: its base, A, B and settings are shared, not copied."""
        served = cls.__new__(cls)
        state = layer.__dict__.items()  # torch's own tables (parameters, submodules, ...) copied, their contents shared
        served.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in state})
        served.adapter_name, served.active_adapter = name, active
        served.extra_adapters = nn.ModuleDict()  # name -> NamedAdapter; empty: no state-dict keys
        served.row_adapters = None  # a mixed batch: adapter name -> the rows it serves, grouped once per batch
        return served

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain LoRA when its own adapter serves the whole batch, else ``forward_named``."""
        if self.merged or (self.row_adapters is None and self.active_adapter == self.adapter_name):
            return super().forward(x)
        return self.forward_named(x, self.base_layer(x))

    def forward_named(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """y = base(x) + s_k B_k A_k x for the active named adapter k, or for row i of a mixed batch
        the adapter ``row_adapters[i]``: rows grouped by adapter, one pair of matmuls per group (as
        S-LoRA, LoRAX and PEFT's ``adapter_names`` do).  An adapter that does not adapt this layer,
        or None (the base alone), leaves its rows at base(x)."""
        if self.row_adapters is None:
            update = self.named_update(self.active_adapter)
            return result if update is None else result + update(self.lora_input(x)).to(result.dtype)
        if self.row_adapters.rows != x.shape[0]:
            raise ValueError(f"{self.row_adapters.rows} adapter names for a batch of {x.shape[0]} rows")
        for name, rows in self.row_adapters.groups.items():  # each adapter once, in order of first row
            update = self.named_update(name)
            if update is not None:
                rows = rows.to(x.device)  # a no-op unless the model spans devices
                result = result.index_add(0, rows, update(self.lora_input(x[rows])).to(result.dtype))
        return result

    def named_update(self, name: str | None):
        """x -> s B A x of the adapter called ``name`` at this layer; None where it does not adapt it."""
        if name is not None and name == self.adapter_name:
            if self.variant is not None:
                raise RuntimeError(f"a {self.config.kind} adapter serves alone: named adapters are plain LoRA")
            return lambda x: self.lora_B(self.lora_A(x) * self.scaling)
        return self.extra_adapters[name] if name in self.extra_adapters else None

    def check_merge(self) -> None:
        """Several named adapters share the base: none may be merged into it."""
        super().check_merge()
        if self.extra_adapters or self.active_adapter != self.adapter_name:
            raise RuntimeError("this layer serves several named adapters (or not its own): merging would bake one "
                               "into the base all share; load that adapter alone into a fresh base to merge it")

    def extra_repr(self) -> str:
        extra = f", extra_adapters={list(self.extra_adapters)}" if self.extra_adapters else ""
        return f"{super().extra_repr()}, adapter={self.adapter_name!r}, active={self.active_adapter!r}{extra}"


@dataclass
class AdapterSet:
    """The named adapters on a model (``model.lora_settings.adapters``), in load order; the first is the default."""

    configs: dict[str, LoRAConfig]
    wrapped: dict[str, list[str]]  # each adapter's layers
    active: str | None

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
    if settings.adapters is None:
        settings.adapters = AdapterSet({DEFAULT_NAME: settings.config}, {DEFAULT_NAME: list(settings.wrapped)},
                                       DEFAULT_NAME)
    return settings.adapters


def name_adapter(model: nn.Module, name: str) -> None:
    """The model's one adapter is called ``name`` (and is active)."""
    s = model.lora_settings
    s.adapters = AdapterSet({name: s.config}, {name: list(s.wrapped)}, name)


def serving_layers(model: nn.Module) -> list[ServingLayer]:
    """The model's LoRA layers as ``ServingLayer``s: each plain one is swapped for one (its own
    adapter: the model's first), so that adapters can be switched, mixed or added."""
    found = adapter_set(model)
    if found is None:
        raise ValueError("the model has no adapters loaded; load one with load_adapter(model, folder, name=...)")
    out = []
    for name, layer in list(model.named_modules()):
        if isinstance(layer, LoRALayer) and not isinstance(layer, ServingLayer):
            layer = ServingLayer.from_layer(layer, found.default, found.active)
            replace_module(model, name, layer)
        if isinstance(layer, ServingLayer):
            out.append(layer)
    return out


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
    for layer in serving_layers(model):
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
    layers = serving_layers(model)
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
    swapped: list[tuple[str, LoRALayer]] = []
    try:
        for name, layer in list(model.named_modules()):
            if isinstance(layer, LoRALayer):
                replace_module(model, name, layer.base_layer)
                swapped.append((name, layer))
        yield
    finally:
        for name, layer in reversed(swapped):
            replace_module(model, name, layer)


def beside_problem(model: nn.Module, name: str, settings: LoRAConfig | None = None) -> str | None:
    """Why an adapter called ``name`` (with ``settings``, once known) cannot join the model's
    adapters; None when it can."""
    loaded = adapter_names(model)
    if name in loaded:
        return (f"an adapter named {name!r} is already loaded (loaded: {', '.join(map(repr, loaded))}); "
                "load it under another name")
    first = model.lora_settings.config
    for what, c in (("the model's first adapter", first), (f"adapter {name!r}", settings)):
        if c is not None and (c.dora or c.init == "pissa"):
            return (f"{what} is {'DoRA' if c.dora else 'PiSSA'}, which changes the base weights' use ("
                    f"{'a learned length per output' if c.dora else 'a residual base weight'}); several adapters "
                    "on one base are plain LoRA only: load a DoRA or PiSSA adapter alone into its own base model")
    if any(m.merged for m in model.modules() if isinstance(m, LoRALayer)):
        return "the model's adapter is merged into its weights; unmerge_lora before loading another"
    return None


@torch.no_grad()
def add_named_adapter(model: nn.Module, name: str, settings: LoRAConfig,
                      weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[str]:
    """Put adapter ``name`` beside the model's adapters: ``weights[path] = (A, B)`` per layer it adapts.

    Inference only: its weights are frozen.  A layer no adapter had is wrapped now, with this
    adapter as its own.  The caller (``workbench.lora.adapters.load_adapter``) has checked the
    name (``beside_problem``) and every key and shape, so nothing here can fail half way.
    """
    found = adapter_set(model)
    serving_layers(model)
    for n, (a, b) in weights.items():
        module = model.get_submodule(n)
        if isinstance(module, ServingLayer):
            w = module.lora_A.weight
            extra = NamedAdapter(module.in_features, module.out_features, settings, device=w.device, dtype=w.dtype)
            module.extra_adapters[name] = extra
        else:  # a layer no adapter had: wrapped now, with this adapter as its own
            extra = ServingLayer.from_layer(LoRALayer(module, settings), name, found.active)
            replace_module(model, n, extra)
        extra.lora_A.weight.copy_(a.to(extra.lora_A.weight.dtype))
        extra.lora_B.weight.copy_(b.to(extra.lora_B.weight.dtype))
        extra.lora_A.weight.requires_grad_(False)
        extra.lora_B.weight.requires_grad_(False)
    found.configs[name], found.wrapped[name] = settings, list(weights)
    return list(weights)


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
        if isinstance(layer, ServingLayer):
            out[layer.adapter_name] += [layer.lora_A.weight, layer.lora_B.weight]
            for name, extra in layer.extra_adapters.items():
                out[name] += [extra.lora_A.weight, extra.lora_B.weight]
        elif isinstance(layer, LoRALayer):  # a model with one adapter: the layers' own
            out[found.default] += [layer.lora_A.weight, layer.lora_B.weight]
    return {name: tensor_bytes(ts) for name, ts in out.items()}
