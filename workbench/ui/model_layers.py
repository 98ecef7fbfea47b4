"""What the panel knows of a model, read once from its layer shapes: ``ModelLayers``.

The panel never trains from this: it only needs the shapes to draw one toggle per kind
of layer, to bound the rank and the layer range, and to count LoRA's parameters before
anything runs (r * (in + out) per adapted layer).  A language model of a known family is
read by its roles (query, key, value, ...), a classifier by its kinds of layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from workbench.lora.paths import OUTPUT_NAMES, head_names, layer_index
from workbench.lora.roles import model_roles
from workbench.lora.targets import LayerGroup, layer_groups


@dataclass(frozen=True)
class ModelLayers:
    """What the panel needs of a model, read once from its layer shapes.

    ``targets``: the model's LoRA-capable layer groups (the classifier head left out),
    each under the name the panel shows for it: its kind ("query", "FFN out", ...), or
    its path pattern when two groups share a kind.  ``blocks``: the block indices.

    A language model (``task`` "causal-lm") of a known family has its **roles** as
    targets (``workbench.lora.roles.model_roles``: query, key, value, attention output,
    FFN in, FFN out; ``roles`` is True), each group's target being the role's name, so the
    LoRAConfig the panel makes names roles; ``fused`` gives, per role, the roles computed
    by the same layer (GPT-2's query, key and value), which toggle together.  Its output
    layer (``lm_head``) is never a target, and it has no head of its own to train.
    """

    name: str
    targets: dict[str, LayerGroup]
    blocks: tuple[int, ...]
    head_parameters: int
    base_parameters: int
    task: str = "classification"
    roles: bool = False
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_model(cls, name: str, model: Any, task: str = "classification") -> "ModelLayers":
        """Read the groups, blocks and counts of a loaded model (with its head)."""
        from workbench.lora.params import count_parameters

        total = count_parameters(model).total
        if task == "causal-lm":
            roles = [r for r in model_roles(model) if r.names]
            if roles:
                targets = {r.role: _role_group(model, r) for r in roles}
                fused = {r.role: r.fused for r in roles if r.fused}
                return cls(name, targets, _blocks(targets.values()), 0, total, task, True, fused)
            # A family without known roles: its layers by name, the output layer left out.
            groups = [g for g in layer_groups(model) if not any(n.rsplit(".", 1)[-1] in OUTPUT_NAMES for n in g.names)]
            return cls(name, _by_kind(groups), _blocks(groups), 0, total, task)
        heads = head_names(model)
        head_parameters = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
        groups = [g for g in layer_groups(model)
                  if not any(n == h or n.startswith(h + ".") for n in g.names for h in heads)]
        return cls(name, _by_kind(groups), _blocks(groups), head_parameters, total, task)

    @classmethod
    def load(cls, name: str, task: str = "classification", seed: int = 0) -> "ModelLayers":
        """Load the base model once (two labels, as the bundled task has), keep its shapes."""
        from workbench.engine.models import load_base

        model, _ = load_base(name, num_labels=2, task=task, seed=seed)
        return cls.from_model(name, model, task)

    def targets_matching(self, targets: tuple[str, ...] | str) -> tuple[str, ...]:
        """The panel's target names that a LoRAConfig ``targets`` selects (by target, kind or name suffix)."""
        if isinstance(targets, str):
            if targets == "all-linear":
                return tuple(k for k, g in self.targets.items() if g.kind != "pooler")
            pattern = re.compile(targets)
            return tuple(k for k, g in self.targets.items() if any(pattern.fullmatch(n) for n in g.names))
        return tuple(k for k, g in self.targets.items()
                     if any(t in (g.target, g.kind) or all(n == t or n.endswith("." + t) for n in g.names)
                            for t in targets))


def _by_kind(groups: list[LayerGroup]) -> dict[str, LayerGroup]:
    targets: dict[str, LayerGroup] = {}
    for g in groups:
        targets[g.kind if g.kind not in targets else g.pattern] = g
    return targets


def _blocks(groups: Any) -> tuple[int, ...]:
    return tuple(sorted({i for g in groups for n in g.names if (i := layer_index(n)) is not None}))


def _role_group(model: Any, role: Any) -> LayerGroup:
    """One role of a language model as a layer group whose target is the role's name.

    Its shape is that of the role's first path (Llama's FFN in: gate_proj and up_proj,
    both hidden -> intermediate, so each of its layers counts r * (in + out)).
    """
    layer = model.get_submodule(role.names[0])
    layer = getattr(layer, "base_layer", layer)
    pattern = " + ".join(re.sub(r"\.\d+\.", ".N.", next(n for n in role.names if n.endswith(p))) for p in role.paths)
    return LayerGroup(pattern=pattern, kind=role.role, type=type(layer).__name__, shape=role.shapes[0],
                      names=list(role.names), target=role.role, is_regex=False, roles=role.fused or (role.role,))


__all__ = ["ModelLayers"]
