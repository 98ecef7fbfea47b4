"""Counting parameters: what trains, what is frozen, and where it sits.

For a LoRA layer wrapping a weight of shape out x in, the trainable count is the
closed form ``r * (in + out)`` (A is r x in, B is out x r), against ``in * out`` (+ bias)
for training the layer in full.

The LoRA core needs only torch: ``count_parameters`` returns plain rows (``ParamRow``), and
``ParameterReport.table`` turns them into a pandas DataFrame only when asked (pandas is
imported there, not here).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

from torch import nn

from workbench.lora.paths import head_names
from workbench.lora.layer import LoRALayer, layer_shape
from workbench.lora.quant_facts import logical_numel

if TYPE_CHECKING:  # only for the annotation: ParameterReport.table imports pandas when called
    import pandas as pd


def lora_parameter_count(in_features: int, out_features: int, rank: int, dora: bool = False) -> int:
    """Closed form for one LoRA layer: r * (in + out), plus DoRA's magnitude vector (out)."""
    return rank * (in_features + out_features) + (out_features if dora else 0)


@dataclass
class ParamCounts:
    """How many parameters train, of how many in all."""

    trainable: int
    total: int

    @property
    def share(self) -> float:
        """Trainable share of all parameters (0..1)."""
        return self.trainable / self.total if self.total else 0.0


@dataclass(frozen=True)
class ParamRow:
    """One module that owns parameters: a whole LoRA layer (its frozen base plus A and B) or
    an ordinary module with parameters of its own.  ``kind``: "lora", "head" or "base"."""

    module: str
    kind: str
    type: str
    trainable: int
    total: int


@dataclass
class ParameterReport(ParamCounts):
    """Trainable and total counts plus one row per parameter owner (``rows``; ``table``: as a DataFrame)."""

    rows: list[ParamRow] = field(default_factory=list)

    @property
    def table(self) -> "pd.DataFrame":
        """The rows as a pandas DataFrame, columns module, kind, type, trainable, total (pandas imported here)."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows], columns=[f.name for f in fields(ParamRow)])

    def __repr__(self) -> str:
        return (
            f"ParameterReport(trainable={self.trainable:,}, total={self.total:,}, "
            f"share={100 * self.share:.3f}%)"
        )


def count_parameters(model: nn.Module) -> ParameterReport:
    """Count trainable and total parameters (each shared tensor once) and tabulate them.

    Each row is a module that owns parameters: a whole LoRA layer (its frozen base plus
    A and B) or an ordinary module with parameters of its own.  ``kind`` says what role
    the module plays: "lora", "head", or "base".

    Counts are numbers of weights, whatever their storage: a quantized base's NF4 weight
    packs two 4-bit codes per byte, so its ``numel()`` is half the weights it stands for
    (``logical_numel``); a quantized model counts what the same model in float counts.
    """
    seen: set[int] = set()
    heads = tuple(head_names(model))
    rows: list[ParamRow] = []
    skip_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in skip_prefixes):
            continue
        if isinstance(module, LoRALayer):
            params = list(module.parameters())
            skip_prefixes.append(name + ".")
            fan_in, fan_out = layer_shape(module.base_layer)
            kind, detail = "lora", f"{type(module.base_layer).__name__} {fan_in}->{fan_out}, r={module.rank}"
        else:
            params = list(module.parameters(recurse=False))
            if not params:
                continue
            is_head = any(name == h or name.startswith(h + ".") for h in heads)
            kind, detail = ("head" if is_head else "base"), type(module).__name__
        fresh = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        if not fresh:
            continue
        rows.append(ParamRow(
            module=name or "(model)",
            kind=kind,
            type=detail,
            trainable=sum(logical_numel(p) for p in fresh if p.requires_grad),
            total=sum(logical_numel(p) for p in fresh),
        ))
    return ParameterReport(trainable=sum(r.trainable for r in rows), total=sum(r.total for r in rows), rows=rows)
