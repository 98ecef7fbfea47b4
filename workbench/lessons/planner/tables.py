"""The planner's tables: plans side by side, precision recipes, and "will it fit".

``plan_table`` sets several plans in one table (parameter counts, LoRA against full);
``precision_table`` prices one plan's counts under the usual precision recipes;
``fit_table`` plans every architecture x method and says which GPU sizes each fits.
Units: GB = 10**9 bytes (decimal, as the LoRA paper's "350GB" = 175e9 parameters x 2 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from workbench.lessons.planner.planning import plan
from workbench.lessons.planner.plans import Plan
from workbench.lessons.planner.shipped import architecture
from workbench.lora.architectures import ARCHITECTURES, KEY, QUERY, VALUE
from workbench.util.units import GB

__all__ = ["plan_table", "Recipe", "PRECISION_RECIPES", "precision_table", "GPU_SIZES_GB", "FIT_METHODS",
           "MIXED_PRECISION_FULL", "MASTER_COPY_BYTES",
           "fit_table"]


def _role_words() -> dict[str, str]:
    """Layer name -> what it computes in the paper's words, read off the one architecture table
    (``workbench.lora.architectures``): ``q_proj`` is "query"; GPT-2's fused ``c_attn`` is
    "query+key+value (fused c_attn)"."""
    words: dict[str, str] = {}
    for arch in ARCHITECTURES:
        for role in (QUERY, KEY, VALUE):
            fused = arch.fused(role)
            for path in arch.paths[role]:
                name = path.rsplit(".", 1)[-1]
                words.setdefault(name, role if len(fused) == 1 else f"{'+'.join(fused)} (fused {name})")
    return words


def _adapted_roles(targets: Sequence[str] | str) -> str:
    """What the resolved targets adapt, in the paper's words: GPT-2's fused ``c_attn`` is
    query, key and value together (not the paper's W_q and W_v alone)."""
    if isinstance(targets, str):
        return targets
    names = _role_words()
    return ", ".join(names.get(t, t) for t in targets)


def plan_table(plans: Iterable[Plan]) -> pd.DataFrame:
    """One row per plan: parameter counts and LoRA vs full memory in GB (10**9 bytes).

    ``published`` is the size the architecture's authors give (shipped architectures).
    Two memory comparisons, never mixed in one column: ``LoRA (GB)``, ``full (GB)`` and
    ``full / LoRA`` count weights + gradients + optimizer state (known for every
    architecture); the ``... + activations`` columns add the estimated activations, and are
    NaN where no activation formula exists (``activations`` says which).  ``LoRA adapts``
    names the layers the role names resolved to (GPT-2's fused ``c_attn`` is query, key
    and value together).
    """
    rows = []
    for p in plans:
        if not isinstance(p, Plan):
            raise TypeError(f"plan_table takes Plan objects, got {type(p).__name__}")
        s = p.settings
        try:
            published = architecture(s.architecture).published_as
        except ValueError:
            published = ""
        known = p.lora.activations_known and p.full.activations_known
        lora_gb, full_gb = p.lora.static_bytes / GB, p.full.static_bytes / GB
        lora_act = p.lora.memory.total / GB if known else np.nan
        full_act = p.full.memory.total / GB if known else np.nan
        rows.append({
            "architecture": s.architecture,
            "model class": s.model_class,
            "total params": p.full.total,
            "published": published,
            "LoRA targets": s.lora.targets_text(),
            "LoRA adapts": _adapted_roles(s.lora.targets),
            "LoRA adapter params": p.lora.adapter_params,
            "LoRA trainable": p.lora.trainable,
            "LoRA (GB)": lora_gb,
            "full (GB)": full_gb,
            "full / LoRA": full_gb / lora_gb if lora_gb else np.nan,
            "LoRA + activations (GB)": lora_act,
            "full + activations (GB)": full_act,
            "full / LoRA with activations": full_act / lora_act if known and lora_act else np.nan,
            "activations": "estimated" if known else "not estimated",
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ precision recipes


@dataclass(frozen=True)
class Recipe:
    """Bytes per parameter under a training precision recipe.

    weights: every parameter (frozen ones too) in the compute dtype; gradients and
    ``optimizer`` (which includes an fp32 master copy where the recipe keeps one) for the
    trained parameters only:  memory = total * weight + trainable * (gradient + optimizer).
    """

    name: str
    weight: int
    gradient: int
    optimizer: int
    description: str

    def bytes(self, total: int, trainable: int) -> int:
        return total * self.weight + trainable * (self.gradient + self.optimizer)


PRECISION_RECIPES: tuple[Recipe, ...] = (
    Recipe("fp32", 4, 4, 8, "everything in float32; Adam's two moments 4 + 4 bytes"),
    Recipe("16-bit", 2, 2, 4, "weights, gradients and both Adam moments in fp16/bf16 (what plan(dtype='fp16', "
                              "optimizer='adamw') assumes: torch's AdamW on 16-bit parameters)"),
    Recipe("mixed", 2, 2, 12, "fp16 weights and gradients; fp32 master copy and fp32 Adam moments of the "
                              "trained weights (4 + 4 + 4 bytes): the usual mixed-precision recipe"),
)


def precision_table(p: Plan, recipes: Sequence[Recipe] = PRECISION_RECIPES) -> pd.DataFrame:
    """Weights + gradients + optimizer state (no activations) under each recipe, in GB.

    Uses the plan's counts: full = total * (w + g + o); LoRA = total * w + trainable * (g + o).
    The Adam step counters (a few bytes per tensor) are left out.
    """
    rows = []
    for r in recipes:
        full = r.bytes(p.full.total, p.full.trainable)
        lora = r.bytes(p.lora.total, p.lora.trainable)
        rows.append({"recipe": r.name, "bytes per weight / gradient / optimizer": f"{r.weight} / {r.gradient} / {r.optimizer}",
                     "full (GB)": full / GB, "LoRA (GB)": lora / GB, "full / LoRA": full / lora,
                     "what it assumes": r.description})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ will it fit

#: GPU memory sizes the "will it fit" table asks about (GB = 10**9 bytes, as the planner writes).
GPU_SIZES_GB: tuple[int, ...] = (16, 24, 48, 80)

#: The three ways of fine-tuning the "will it fit" table compares: full fine-tuning in 16 bits
#: (bf16 weights and gradients, float32 Adam moments), LoRA with the QLoRA paper's settings on
#: a bf16 base, and the same LoRA on an NF4 base (QLoRA).  All with gradient checkpointing.
FIT_METHODS: dict[str, dict[str, Any]] = {
    "full bf16": dict(method="full", dtype="bf16", optimizer="adamw-32bit", gradient_checkpointing=True),
    "LoRA bf16": dict(method="lora", dtype="bf16", optimizer="paged-adamw-32bit", gradient_checkpointing=True,
                      rank=64, alpha=16.0, targets="all-linear"),
    "QLoRA NF4": dict(method="lora", dtype="bf16", optimizer="paged-adamw-32bit", gradient_checkpointing=True,
                      rank=64, alpha=16.0, targets="all-linear", quantize="nf4"),
}


#: Bytes per trained parameter of mixed precision's float32 master copy of the weights.
MASTER_COPY_BYTES = 4

#: Standard mixed-precision full fine-tuning for the "will it fit" table: ``FIT_METHODS``'s
#: "full bf16" (2 + 2 + 8 bytes per parameter) plus a float32 master copy (+ 4): 16 bytes.
MIXED_PRECISION_FULL: dict[str, Any] = {**FIT_METHODS["full bf16"], "master_copy": True}


def fit_table(architectures: Sequence[str], *, methods: Mapping[str, Mapping[str, Any]] | None = None,
              gpus_gb: Sequence[float] = GPU_SIZES_GB, batch_size: int = 1, seq_len: int = 512,
              device: str = "cuda") -> pd.DataFrame:
    """Will it fit: one row per architecture x method, the planned memory and a column per GPU size.

    ``methods``: {name: ``plan`` keyword arguments} (default ``FIT_METHODS``).  Columns:
    ``architecture``, ``parameters``, ``method``, ``trainable``, ``weights (GB)``,
    ``gradients + optimizer (GB)``, ``activations (GB)``, ``total (GB)``, then
    ``fits N GB`` (total <= N * 10**9 bytes) for each GPU size.  A total is the plan's
    estimate of tensors alone (``Plan.assumptions``): a GPU also holds the CUDA context and
    allocator slack, so a row that fits with a small margin is a candidate, not a promise.
    An architecture without an activation formula is refused (its total would be unknown).
    Each batch is ``batch_size`` unpadded sequences of exactly ``seq_len`` tokens.
    A method's ``master_copy=True`` adds a float32 master copy of the trained weights (4 bytes per
    trained parameter, in ``gradients + optimizer``): standard mixed precision, 16 bytes per
    parameter for full fine-tuning with bf16 weights and gradients and float32 Adam moments.
    """
    methods = dict(FIT_METHODS if methods is None else methods)
    if not methods:
        raise ValueError("fit_table needs at least one method")
    gpus = [float(g) for g in gpus_gb]
    if not gpus or any(not np.isfinite(g) or g <= 0 for g in gpus):
        raise ValueError(f"gpus_gb must be positive sizes in GB, got {list(gpus_gb)!r}")
    rows = []
    for arch in architectures:
        for name, kwargs in methods.items():
            kwargs = dict(kwargs)
            master = MASTER_COPY_BYTES if kwargs.pop("master_copy", False) else 0
            p = plan(arch, **({"batch_size": batch_size, "seq_len": seq_len, "device": device, "padded": False}
                              | kwargs))
            m = p.chosen
            if not m.activations_known:
                raise ValueError(f"{arch}: no activation formula, so no total to compare with a GPU ({p.notes})")
            row = {"architecture": p.settings.architecture, "parameters": p.full.total, "method": name,
                   "trainable": m.trainable, "weights (GB)": m.memory.weights / GB,
                   "gradients + optimizer (GB)": (m.memory.gradients + m.memory.optimizer + master * m.trainable) / GB,
                   "activations (GB)": m.memory.activations / GB,
                   "total (GB)": (m.memory.total + master * m.trainable) / GB}
            for g in gpus:
                row[f"fits {g:g} GB"] = bool(m.memory.total + master * m.trainable <= g * GB)
            rows.append(row)
    return pd.DataFrame(rows)
