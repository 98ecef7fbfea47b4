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
the scale s, and the learning rates of A and B.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import nn

from workbench.engine.optim import learning_rates, make_optimizer
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
