"""Choosing which layers get LoRA: target specs, block indices, and the model's layer groups.

Targets are chosen as PEFT chooses them, so an adapter means the same thing in both:

* a list of roles and names: a role (``"query"``, ``"key"``, ``"value"``, ``"attention
  output"``, ``"FFN in"``, ``"FFN out"``) selects that part of every block in the model's
  own names (``workbench.lora.roles``: Llama's ``"FFN in"`` is gate_proj and up_proj);
  a name matches a module when its path *is* the name or *ends with* ``"." + name``
  (``"c_attn"`` matches ``transformer.h.0.attn.c_attn``).  On BERT the roles query, key
  and value are also module names, and both readings select the same layers;
* a string: a regular expression that must match the whole module path;
* ``"all-linear"``: every Linear/Conv1D except the model's output head;
* ``layers``: optionally, only blocks with these indices (the first number in the path,
  e.g. ``encoder.layer.4`` or ``transformer.h.4``).

``layer_groups`` sorts a model's LoRA-capable layers by the part they play in every block
(all queries, all FFN-in layers, ...), each with a target that selects exactly it and the
roles it plays: what ``describe_layers`` prints when a target matches nothing.  For a
panel's toggles, ``workbench.lora.roles.model_roles`` gives one entry per role.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

from torch import nn

from workbench.lora.architectures import KINDS
from workbench.lora.config import ALL_LINEAR, check_targets
from workbench.lora.layer import SUPPORTED_TYPES, LoRALayer, layer_shape
from workbench.lora.paths import OUTPUT_NAMES, block_path, block_pattern, head_names, layer_index
from workbench.lora.roles import architecture_of, role_layer_names, roles_of_path, roles_text, suggestion

__all__ = ["LayerGroup", "layer_groups", "targets_for", "describe_layers", "find_targets"]


def _candidates(model: nn.Module) -> "OrderedDict[str, nn.Module]":
    """Every named module except the inside of existing LoRA layers."""
    out: OrderedDict[str, nn.Module] = OrderedDict()
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(p + ".") for p in inside):
            continue
        out[name] = module
        if isinstance(module, LoRALayer):
            inside.append(name)
    return out


def _name_matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


@dataclass
class LayerGroup:
    """LoRA-capable layers that play the same part in every block (e.g. all 6 queries)."""

    pattern: str  # the path with block numbers shown as N
    kind: str  # "query", "FFN out", ... (workbench.lora.architectures.KINDS) or the last path component
    type: str  # Linear or Conv1D
    shape: tuple[int, int]  # (in, out)
    names: list[str]
    target: str  # a target that selects exactly this group: a name suffix, or a regex
    is_regex: bool
    roles: tuple[str, ...] = ()  # the roles these layers play (workbench.lora.roles); () for none


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """The model's LoRA-capable layers grouped by role, each with a target that selects it."""
    by_key: OrderedDict[str, list[tuple[str, nn.Module]]] = OrderedDict()
    for name, module in _candidates(model).items():
        if isinstance(module, SUPPORTED_TYPES + (LoRALayer,)):
            by_key.setdefault(block_pattern(name), []).append((name, module))
    every = [n for items in by_key.values() for n, _ in items]
    arch = architecture_of(model)
    groups = []
    for key, items in by_key.items():
        names = [n for n, _ in items]
        parts = key.split(".")
        target, is_regex = None, False
        for k in range(1, len(parts) + 1):  # the shortest suffix that picks exactly this group
            suffix = ".".join(parts[-k:])
            if "N" in parts[-k:]:
                break
            if [n for n in every if _name_matches(n, suffix)] == names:
                target = suffix
                break
        if target is None:
            target, is_regex = re.escape(key).replace("N", r"\d+"), True
        roles = roles_of_path(arch, block_path(names[0]))
        kind = roles[0] if len(roles) == 1 else next(
            (v for k, v in KINDS.items() if key == k or key.endswith("." + k)), parts[-1])
        layer = items[0][1]
        layer = layer.base_layer if isinstance(layer, LoRALayer) else layer
        groups.append(LayerGroup(key, kind, type(layer).__name__, layer_shape(layer), names, target, is_regex,
                                 roles))
    return groups


def targets_for(groups: Sequence[LayerGroup]) -> list[str] | str:
    """One target spec selecting exactly the given groups: a list of names, or one regex."""
    if not groups:
        raise ValueError("no layer groups chosen: pick at least one kind of layer")
    if not any(g.is_regex for g in groups):
        return [g.target for g in groups]
    alternatives = [g.target if g.is_regex else r"(?:.*\.)?" + re.escape(g.target) for g in groups]
    return "|".join(f"(?:{a})" for a in alternatives)


def describe_layers(model: nn.Module) -> str:
    """The LoRA-capable layers of a model, grouped by path with block numbers as N."""
    lines = []
    for g in layer_groups(model):
        count = f" (x{len(g.names)})" if len(g.names) > 1 else ""
        how = f"regex {g.target!r}" if g.is_regex else f"target {g.target!r}"
        lines.append(f"  {g.pattern}{count}  [{g.type} {g.shape[0]}->{g.shape[1]}, {g.kind}; {how}]")
    return "\n".join(lines) if lines else "  (none)"


def find_targets(
    model: nn.Module,
    targets: Sequence[str] | str,
    layers: Iterable[int] | None = None,
) -> list[str]:
    """Paths of the modules that ``targets`` (and ``layers``) select, checked for type.

    Raises ``ValueError`` when nothing matches (listing what exists) and ``TypeError``
    when a match is a module LoRA cannot wrap, or ``ValueError`` when it already has LoRA.
    """
    cands = _candidates(model)
    outputs = set(head_names(model)) | {n for n in cands if n.rsplit(".", 1)[-1] in OUTPUT_NAMES}
    if isinstance(targets, str) and targets == ALL_LINEAR:
        names = [n for n, m in cands.items() if isinstance(m, SUPPORTED_TYPES) and n not in outputs]
        what = "'all-linear'"
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as e:
            raise ValueError(f"target regex {targets!r} does not compile: {e}") from None
        names = [n for n in cands if pattern.fullmatch(n)]
        what = f"regex {targets!r}"
    else:
        targets = check_targets(targets)
        by_role, by_name = role_layer_names(model, targets)
        unmatched = [t for t in by_name if not any(_name_matches(n, t) for n in cands)]
        if unmatched:
            t = unmatched[0]
            raise ValueError(
                f"target {t!r} matches no module of {type(model).__name__} and is not one of its roles"
                f"{suggestion(t, model, cands)}; {roles_text(model)}. "
                f"Layers that can take LoRA:\n{describe_layers(model)}"
            )
        chosen = set(by_role) | {n for n in cands if any(_name_matches(n, t) for t in by_name)}
        names = [n for n in cands if n in chosen]
        what = f"targets {targets!r}"
    if layers is not None:
        wanted = sorted(set(int(i) for i in layers))
        present = sorted({i for n in names if (i := layer_index(n)) is not None})
        missing = [i for i in wanted if i not in present]
        if missing:
            raise ValueError(f"layers {missing} do not exist among the matched modules; blocks present: {present}")
        names = [n for n in names if layer_index(n) in wanted]
    if not names:
        raise ValueError(f"{what} matched no module. Layers that can take LoRA:\n{describe_layers(model)}")
    for n in names:
        m = cands[n]
        if isinstance(m, LoRALayer):
            raise ValueError(f"{n} already has a LoRA layer; LoRA cannot be added twice to one layer")
        if not isinstance(m, SUPPORTED_TYPES):
            allowed = ", ".join(t.__name__ for t in SUPPORTED_TYPES)
            raise TypeError(f"{what} matched {n}, a {type(m).__name__}; LoRA supports {allowed} layers")
    return names
