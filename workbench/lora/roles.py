"""Targets by role: the part a layer plays in a transformer block, in every architecture.

A role (``"query"``, ``"key"``, ``"value"``, ``"attention output"``, ``"FFN in"``,
``"FFN out"``) names the same part of every block whatever a model family calls it; the
families' names for them are the one table in ``workbench.lora.architectures``.  This
module applies that table to a model at hand: which family it is, which module paths a
role selects, and the messages when a choice does not fit.

GPT-2 computes query, key and value with one fused layer (``c_attn``, 3 x hidden
outputs), so LoRA there adapts all three at once: asking for some of them only is
refused with a message that says so (LoRA on ``c_attn`` is a single ``B A`` whose output
spans q, k and v; PEFT has no way to adapt a third of it either).

A path is matched *inside a block*: the part of the module path after the block number
(``bert.encoder.layer.3.output.dense`` -> ``output.dense``), so BERT's ``pooler.dense``
and ``attention.output.dense`` are never "FFN out", and an LM head is never a role.

The role names are the names the panel shows on its toggles, the names in run labels
and the names ``LayerGroup.kind`` gives: one name for one thing.  A model whose family
is not in ``ARCHITECTURES`` has no roles; its layers are chosen by module name as before.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

from torch import nn

from workbench.lora.architectures import ARCHITECTURES, ROLES, Architecture
from workbench.lora.layer import SUPPORTED_TYPES, LoRALayer, layer_shape
from workbench.lora.paths import block_path

__all__ = [
    "RoleLayers", "architecture_of", "model_roles", "role_layer_names", "roles_of_path", "is_role",
    "peft_target_modules", "roles_text", "suggestion",
]

@dataclass(frozen=True)
class RoleLayers:
    """One role of a model and the layers it maps to (what a panel toggle selects).

    ``paths``: the family's paths inside a block (Llama's FFN in: gate_proj and up_proj);
    ``names``: every module path, in model order; ``shapes``: (in, out) per entry of
    ``paths``; ``fused``: the roles that share these layers (GPT-2's query, key and value),
    ``()`` when the role has layers of its own.
    """

    role: str
    architecture: str
    paths: tuple[str, ...]
    names: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    fused: tuple[str, ...] = ()


def roles_of_path(arch: Architecture | None, path: str | None) -> tuple[str, ...]:
    """The roles a path inside a block plays in the family (GPT-2's attn.c_attn: query, key, value)."""
    if arch is None or path is None:
        return ()
    return tuple(r for r in ROLES if path in arch.paths[r])


def is_role(target: str) -> bool:
    return target in ROLES


def _capable(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """The LoRA-capable modules by path (a LoRA layer stands for the layer it wraps)."""
    out: OrderedDict[str, nn.Module] = OrderedDict()
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        if isinstance(module, LoRALayer):
            inside.append(name)
            out[name] = module
        elif isinstance(module, SUPPORTED_TYPES):
            out[name] = module
    return out


def _covers(arch: Architecture, present: set[str]) -> bool:
    return all(p in present for paths in arch.paths.values() for p in paths)


def architecture_of(model: nn.Module) -> Architecture | None:
    """The model's family: by ``config.model_type``, else by its layer names; None when unknown.

    A known model type must also have the family's layers (a model built from a config
    does); otherwise the layer names decide, so a custom model with Llama's names gets
    Llama's roles.
    """
    present = {p for n in _capable(model) if (p := block_path(n)) is not None}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for arch in ARCHITECTURES:
        if model_type in arch.model_types and _covers(arch, present):
            return arch
    return next((arch for arch in ARCHITECTURES if _covers(arch, present)), None)


def model_roles(model: nn.Module) -> list[RoleLayers]:
    """The roles the model has, in ``ROLES`` order, each with the layers it maps to.

    Empty for a model whose family is unknown (its layers are then chosen by name; see
    ``workbench.lora.targets.layer_groups``).  For the panel: one toggle per role, and the
    roles in a ``fused`` group toggle together.
    """
    arch = architecture_of(model)
    if arch is None:
        return []
    capable = _capable(model)
    out = []
    for role in ROLES:
        paths = arch.paths[role]
        names = tuple(n for n in capable if block_path(n) in paths)
        shapes = tuple(layer_shape(_base(capable[next(n for n in names if block_path(n) == p)])) for p in paths)
        fused = arch.fused(role)
        out.append(RoleLayers(role, arch.name, paths, names, shapes, fused if len(fused) > 1 else ()))
    return out


def _base(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, LoRALayer) else module


def role_layer_names(model: nn.Module, targets: Iterable[str]) -> tuple[list[str], list[str]]:
    """(module paths the role targets select, the targets that are not roles of this model).

    A role on a model of unknown family is returned among the non-roles: it is then an
    ordinary module name (``"query"`` still matches a module called ``query``).  Raises
    ``ValueError`` when some but not all of a fused group are asked for (GPT-2's q, k, v).
    """
    targets = list(targets)
    arch = architecture_of(model)
    if arch is None:
        return [], targets
    wanted = [t for t in targets if is_role(t)]
    for role in wanted:
        fused = arch.fused(role)
        missing = [r for r in fused if r not in wanted]
        if missing:
            roles = [r for r in fused if r in wanted]
            layer = arch.paths[role][0]
            shape = next((r.shapes[0] for r in model_roles(model) if r.role == role), None)
            shape_text = f", {shape[0]} -> {shape[1]}" if shape else ""
            raise ValueError(
                f"{arch.name} computes {_and(fused)} with one fused layer ({layer}{shape_text}), so LoRA cannot "
                f"adapt {_and(roles)} without {_and(missing)}: choose all of {_and(fused)} "
                f"(targets {list(fused)!r}, or the layer's name {layer.rsplit('.', 1)[-1]!r}), or leave them out"
            )
    return _names_of(model, arch, wanted), [t for t in targets if not is_role(t)]


def _names_of(model: nn.Module, arch: Architecture, roles: Iterable[str]) -> list[str]:
    paths = {p for role in roles for p in arch.paths[role]}
    return [n for n in _capable(model) if block_path(n) in paths]


def _and(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def roles_text(model: nn.Module) -> str:
    """One line for error messages: the roles of this model, or why it has none."""
    arch = architecture_of(model)
    if arch is None:
        families = ", ".join(a.name for a in ARCHITECTURES)
        return (f"{type(model).__name__} has no known roles (roles are known for the {families} families); "
                "choose its layers by name")
    return f"roles of this {arch.name} model: {', '.join(repr(r) for r in ROLES)}"


def suggestion(target: str, model: nn.Module, names: Iterable[str]) -> str:
    """' (did you mean 'FFN in'?)' for a near miss among the roles and layer names, else ''."""
    choices = list(ROLES if architecture_of(model) is not None else ()) + sorted(
        {n.rsplit(".", 1)[-1] for n in names})
    close = difflib.get_close_matches(target, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower().replace(" ", "_"): c for c in choices}
        hit = lowered.get(target.lower().replace(" ", "_"))
        close = [hit] if hit else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def peft_target_modules(model: nn.Module) -> list[str] | str:
    """``target_modules`` for PEFT's ``adapter_config.json`` of an adapted model.

    PEFT knows module names, not roles: when the config names roles, the exact module
    paths that were wrapped are written (a path matches itself in PEFT's suffix rule),
    otherwise the targets as given (BERT's "query" is both a role and a module name).
    """
    s = getattr(model, "lora_settings", None)
    if s is None:
        raise ValueError("the model has no LoRA layers; call add_lora first")
    targets = s.config.targets
    if isinstance(targets, str):
        return targets
    arch, capable = architecture_of(model), _capable(model)
    for t in targets:  # BERT's query, key and value are also its module names: those stay as they are
        if arch is not None and is_role(t) and (
                _names_of(model, arch, [t]) != [n for n in capable if n == t or n.endswith("." + t)]):
            return list(s.wrapped)
    return list(targets)
