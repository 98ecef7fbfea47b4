"""Putting LoRA layers into a model, merging them, and taking them out again.

``add_lora`` replaces each chosen ``Linear``/``Conv1D`` with a ``LoRALayer`` that wraps
it, freezes everything else, and keeps a classification head trainable (as PEFT's
``modules_to_save`` does: a new head has to learn its task).  Which layers are chosen is
``workbench.lora.targets``' business (PEFT's rules: names, a regex, "all-linear", blocks).

Variants: ``dora=True`` (a learned magnitude per output) and ``init="pissa"`` (start from
the top-r singular directions of W); see ``workbench.lora.variants``.

A quantized base (``workbench.lora.quantize``: QLoRA's NF4, LLM.int8) is wrapped as a plain
``Linear`` is; its update cannot be merged into the 4/8-bit codes, so merging is refused
with a message saying how to dequantize first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.lora.config import LoRAConfig
from workbench.lora.layer import LoRALayer, layer_shape
from workbench.lora.paths import head_names, replace_module
from workbench.lora.quant_facts import is_quantized_layer
from workbench.lora.targets import find_targets

__all__ = ["LoRASettings", "add_lora", "lora_layers", "merge_lora", "unmerge_lora", "remove_lora"]


@dataclass
class LoRASettings:
    """What ``add_lora`` did to a model; kept on it as ``model.lora_settings``.

    ``adapters``: the model's named adapters when it serves several (a
    ``workbench.lora.serving.AdapterSet``, made there on first use); gone with the settings
    when ``remove_lora`` takes the LoRA layers out.
    """

    config: LoRAConfig
    modules_to_save: list[str] = field(default_factory=list)
    wrapped: list[str] = field(default_factory=list)
    adapters: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "modules_to_save": list(self.modules_to_save),
                "wrapped": list(self.wrapped)}


def add_lora(
    model: nn.Module,
    config: LoRAConfig | None = None,
    /,
    *,
    train_head: bool = True,
    **settings,
) -> list[str]:
    """Wrap the chosen layers with LoRA, in place; freeze the rest; return the wrapped paths.

    The settings come as a ``LoRAConfig`` or as its fields by name
    (``add_lora(model, rank=8, alpha=16, targets=["query", "value"])``).  Everything is
    checked before the model is touched, so a bad argument changes nothing.  Afterwards
    only ``lora_A``/``lora_B`` (and the classification head, unless ``train_head=False``)
    have ``requires_grad``; with ``dora=True`` also each layer's magnitude vector.
    ``init="pissa"`` rewrites each wrapped base weight to the residual ``W - s B A``
    (``remove_lora`` puts the original back).
    """
    cfg = LoRAConfig.build(config, **settings)
    if getattr(model, "lora_settings", None) is not None:
        raise ValueError("this model already has LoRA layers; LoRA cannot be added twice (use remove_lora first)")
    names = find_targets(model, cfg.targets, cfg.layers)
    quantized = [n for n in names if is_quantized_layer(model.get_submodule(n))]
    if quantized and (cfg.dora or cfg.init == "pissa"):
        raise ValueError(
            f"{'DoRA' if cfg.dora else 'PiSSA'} reads and rewrites the base weight W in full precision, and "
            f"{len(quantized)} target layers are quantized ({quantized[0]}, ...): use plain LoRA on a quantized "
            "base (dora=False, init='kaiming' or 'gaussian'), or load the base without quantize")
    for n in names:
        fan_in, fan_out = layer_shape(model.get_submodule(n))
        if cfg.rank > min(fan_in, fan_out):
            raise ValueError(
                f"rank {cfg.rank} exceeds min(in, out) = {min(fan_in, fan_out)} of {n} ({fan_in} -> {fan_out}); "
                f"a rank above that adds parameters without adding capacity"
            )
    for p in model.parameters():
        p.requires_grad_(False)
    for n in names:
        replace_module(model, n, LoRALayer(model.get_submodule(n), cfg))
    heads = head_names(model) if train_head else []
    for h in heads:
        for p in model.get_submodule(h).parameters():
            p.requires_grad_(True)
    model.lora_settings = LoRASettings(config=cfg, modules_to_save=heads, wrapped=names)
    return names


def lora_layers(model: nn.Module) -> "OrderedDict[str, LoRALayer]":
    """Every LoRA layer in the model, by path."""
    return OrderedDict((n, m) for n, m in model.named_modules() if isinstance(m, LoRALayer))


def _require_lora(model: nn.Module) -> "OrderedDict[str, LoRALayer]":
    found = lora_layers(model)
    if not found:
        raise ValueError("the model has no LoRA layers; call add_lora first")
    return found


def merge_lora(model: nn.Module) -> None:
    """W <- W + s B A in every LoRA layer: inference then costs what the base model costs."""
    found = _require_lora(model)
    if any(m.merged for m in found.values()):
        raise RuntimeError("the model's LoRA layers are already merged; unmerge_lora first")
    for m in found.values():  # all or nothing: refuse before any layer changes
        m.check_merge()
    for m in found.values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    """W <- W - s B A in every LoRA layer: back to the frozen base plus a separate update."""
    found = _require_lora(model)
    if not all(m.merged for m in found.values()):
        raise RuntimeError("the model's LoRA layers are not merged")
    for m in found.values():
        m.unmerge()


def remove_lora(model: nn.Module, merge: bool = False) -> nn.Module:
    """Put the plain base layers back (with the update merged in if ``merge``); returns the model.

    Without ``merge`` the weights are the original ones, also after PiSSA (whose base
    holds the residual while the adapter is on).
    """
    found = _require_lora(model)
    if merge:
        for layer in found.values():
            layer.check_merge()
    for name, layer in found.items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge:
            if layer.merged:
                layer.unmerge()
            if layer.variants:  # a variant may have rewritten W (PiSSA keeps the residual)
                with torch.no_grad():
                    layer.base_layer.weight.copy_(layer.original_weight())
        replace_module(model, name, layer.base_layer)
    model.lora_settings = None
    return model
