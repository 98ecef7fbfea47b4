"""The LoRA variants the panel offers, side by side before training (notebook 02b).

Each variant changes one part of plain LoRA,  y = W x + (alpha / r) B A x  (A random, B = 0):

* rsLoRA (Kalajdzievski 2023, arXiv:2312.03732): the scale, s = alpha / sqrt(r);
* DoRA (Liu et al. 2024, arXiv:2402.09353): the weight is a learned length per output row
  times a unit direction, W' = m * (W + s B A) / ||W + s B A||_row, m starting at ||W||_row:
  ``out_features`` more trainable numbers per layer;
* PiSSA (Meng et al. 2024, arXiv:2404.02948): the start, A and B from W's top-r singular
  directions (s B A = U_r S_r V_r^T) and the frozen base the residual W - s B A;
* LoRA+ (Hayou et al. 2024, arXiv:2402.12354): the optimizer, B's learning rate
  ``loraplus_ratio`` times A's.

``variant_overview`` measures what each changes on a real model before any training:
the trainable count, whether the fresh model still computes the base model's outputs,
the scale s, and the learning rates of A and B.  After training, ``side_by_side`` tabulates the
runs and ``findings`` compares each variant with plain LoRA: what the notebook shows and its
self-test and ``tests/lessons/test_variant_study.py`` assert.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from workbench.engine.config import RunResult
from workbench.engine.optim import learning_rates, make_optimizer
from workbench.lessons.teaching import accuracy_at, first_eval_step, wilson_interval
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import add_lora, lora_layers
from workbench.lora.params import count_parameters

#: The variants, as LoRAConfig changes (the same as the sweep's ``VARIANTS``, with LoRA+'s ratio 16).
VARIANT_SETTINGS: dict[str, dict[str, Any]] = {
    "LoRA": {},
    "rsLoRA": {"rslora": True},
    "DoRA": {"dora": True},
    "PiSSA": {"init": "pissa"},
    "LoRA+": {"loraplus_ratio": 16.0},
}


def variant_overview(base: nn.Module, inputs: Mapping[str, torch.Tensor], lora: LoRAConfig, lr: float = 1e-3,
                     variants: Mapping[str, Mapping[str, Any]] = VARIANT_SETTINGS) -> pd.DataFrame:
    """One row per variant, measured on a copy of ``base`` with the variant's adapters added.

    Columns: ``scale s``, ``trainable``, ``extra vs LoRA`` (trainable minus plain LoRA's),
    ``max |out - base out| at start`` (the largest change of the model's output on ``inputs``
    before training: 0 for B = 0, float rounding for DoRA and PiSSA, whose start rebuilds W
    from parts), and ``lr of A`` / ``lr of B`` (the first LoRA layer's, from the optimizer
    the engine builds at ``lr``).  ``base`` is not changed.
    """
    if "LoRA" not in variants:
        raise ValueError(f"variants must include plain 'LoRA' as the reference, got {list(variants)}")
    base = base.eval()
    with torch.no_grad():
        ref = _logits(base(**inputs))
    rows = []
    for name, changes in variants.items():
        cfg = lora.replace(**changes)
        model = copy.deepcopy(base)
        add_lora(model, cfg)
        model.eval()
        with torch.no_grad():
            out = _logits(model(**inputs))
        opt = make_optimizer(model, lr, loraplus_ratio=cfg.loraplus_ratio, fused=False)
        rates = learning_rates(model, opt)
        first = next(iter(lora_layers(model)))
        rows.append({
            "variant": name,
            "settings": ", ".join(f"{k}={v!r}" for k, v in changes.items()) or "(plain)",
            "scale s": cfg.scaling,
            "trainable": count_parameters(model).trainable,
            "max |out - base out| at start": float((out - ref).abs().max()),
            "lr of A": rates[f"{first}.lora_A.weight"],
            "lr of B": rates[f"{first}.lora_B.weight"],
        })
    table = pd.DataFrame(rows).set_index("variant")
    table.insert(3, "extra vs LoRA", table["trainable"] - table.loc["LoRA", "trainable"])
    return table


def _logits(out: Any) -> torch.Tensor:
    return (out.logits if hasattr(out, "logits") else out).float()


# ---- after training: the variants side by side, and what notebook 02b says about them ---------------------------


def side_by_side(results: Sequence[RunResult], names: Sequence[str], n_eval: int, first_eval: int | None = None) -> pd.DataFrame:
    """One row per trained variant (``names``, in the order of ``results``), plain LoRA first.

    Columns: ``scale s``, ``trainable``, the accuracy at the first evaluation (``accuracy at step N``),
    ``final accuracy`` with its ``95% interval`` (Wilson, ``n_eval`` sentences), ``final train loss``,
    ``seconds`` and ``status``.  ``first_eval``: default the earliest evaluated step of any run.
    """
    if len(names) != len(results):
        raise ValueError(f"give one name per run: {len(names)} names for {len(results)} runs")
    step = first_eval_step(results) if first_eval is None else first_eval
    return pd.DataFrame([{
        "variant": name, "scale s": r.config.lora.scaling, "trainable": r.params.trainable,
        f"accuracy at step {step}": accuracy_at(r, step), "final accuracy": r.eval_accuracy,
        "95% interval": "{:.3f} to {:.3f}".format(*wilson_interval(r.eval_accuracy, n_eval)),
        "final train loss": r.final_loss, "seconds": r.timing.total_seconds, "status": r.status,
    } for name, r in zip(names, results)]).set_index("variant")


@dataclass
class Comparison:
    """One variant against plain LoRA after the same training."""

    variant: str
    final: float
    verdict: str  # 'within' LoRA's 95% interval, 'above' or 'below' it
    first: float  # accuracy at the first evaluation
    lora_first: float
    time_ratio: float  # its seconds over LoRA's

    def line(self, first_eval: int) -> str:
        where = {"within": "(within LoRA's interval: not distinguishable on this data)",
                 "above": "(above LoRA's interval)", "below": "(below LoRA's interval)"}[self.verdict]
        return (f"* **{self.variant}**: {self.final:.3f} at the end {where}, {self.first:.3f} at step {first_eval} "
                f"(LoRA {self.lora_first:.3f}), {self.time_ratio:.2f}x LoRA's time.")


@dataclass
class Findings:
    """What notebook 02b says of its trained variants: each against plain LoRA's final accuracy interval."""

    table: pd.DataFrame  # ``side_by_side``
    n_eval: int
    first_eval: int
    lora_final: float
    lora_interval: tuple[float, float]
    comparisons: list[Comparison]

    @property
    def early(self) -> pd.Series:
        """Each variant's accuracy at the first evaluation."""
        return self.table[f"accuracy at step {self.first_eval}"]

    def markdown(self) -> str:
        lo, hi = self.lora_interval
        return (f"Against plain LoRA ({self.lora_final:.3f}, {lo:.3f} to {hi:.3f}) on one seed:\n\n"
                + "\n".join(c.line(self.first_eval) for c in self.comparisons))


def findings(results: Sequence[RunResult], names: Sequence[str], n_eval: int, reference: str = "LoRA") -> Findings:
    """Compare every trained variant with ``reference`` (plain LoRA): final accuracy within, above or below its
    Wilson interval on ``n_eval`` sentences, the accuracy at the first evaluation, and the time."""
    if reference not in names:
        raise ValueError(f"the runs must include the reference {reference!r}, got {list(names)}")
    step = first_eval_step(results)
    table = side_by_side(results, names, n_eval, step)
    ref = table.loc[reference]
    lo_ref, hi_ref = wilson_interval(ref["final accuracy"], n_eval)
    comparisons = []
    for name, row in table.iterrows():
        if name == reference:
            continue
        lo, hi = wilson_interval(row["final accuracy"], n_eval)
        verdict = "within" if lo <= hi_ref and lo_ref <= hi else ("above" if lo > hi_ref else "below")
        comparisons.append(Comparison(str(name), float(row["final accuracy"]), verdict,
                                      float(row[f"accuracy at step {step}"]), float(ref[f"accuracy at step {step}"]),
                                      float(row["seconds"] / ref["seconds"])))
    return Findings(table, n_eval, step, float(ref["final accuracy"]), (lo_ref, hi_ref), comparisons)
