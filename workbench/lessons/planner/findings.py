"""What notebook 06 concludes, as data: the QLoRA paper's headline and the will-it-fit verdicts.

The notebook calls these and shows what they return; its self-test and the unit tests
assert the same fields.  Numbers are in GB = 10**9 bytes, as everywhere in the planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from workbench.lessons.planner.plans import Plan
from workbench.util.units import GB

__all__ = ["QLoRAFindings", "qlora_findings", "FitFindings", "findings"]


@dataclass(frozen=True)
class QLoRAFindings:
    """The QLoRA paper's LLaMA 65B headline read off four plans (section 6 of notebook 06).

    ``qlora_gb``, ``recipe_gb``, ``full_gb`` and ``full_no_checkpointing_gb``: the plans'
    totals; ``nf4_gb``: the quantized block weights of the QLoRA plan; ``activations_gb``:
    its activations; ``text``: the two paragraphs that say it (Markdown).
    """

    qlora_gb: float
    recipe_gb: float
    full_gb: float
    full_no_checkpointing_gb: float
    nf4_gb: float
    activations_gb: float
    text: str


def qlora_findings(qlora: Plan, full: Plan, full_no_checkpointing: Plan, recipe: Plan) -> QLoRAFindings:
    """The headline in numbers and words: QLoRA's plan (``qlora``: batch 1, 512 tokens, checkpointing; ``recipe``:
    the paper's own LoRA settings) against 16-bit full fine-tuning, with and without gradient
    checkpointing.  Each QLoRA part comes from ``Plan.breakdown``, so the words add up."""
    bq = qlora.breakdown().set_index("component")["bytes"]
    q = qlora.settings.quantize
    dt = qlora.settings.dtype
    nf4_gb = bq[f"weights: quantized block Linear weights ({q})"] / GB
    act_gb = qlora.memory.activations / GB
    adapters_m = qlora.lora.adapter_params / 1e6
    text = f"""
**QLoRA: {qlora.memory.total / GB:.1f} GB, under the paper's 48 GB.** The NF4 block weights
({qlora.lora.quantized_params / 1e9:.2f}B weights) take {nf4_gb:.1f} GB; the rest of the base in bf16 (embeddings, output layer, norms)
{bq[f'weights: other frozen weights ({dt})'] / GB:.2f} GB; the {adapters_m:,.1f}M adapter numbers {bq[f'weights: trained ({dt})'] / GB:.2f} GB,
their gradients {bq[f'gradients ({dt})'] / GB:.2f} GB and their float32 Adam moments {bq[f'optimizer ({qlora.settings.optimizer})'] / GB:.2f} GB;
the activations of one 512-token sequence under checkpointing {act_gb:.2f} GB. With the paper's own LoRA settings
({recipe.lora_label}, {recipe.lora.adapter_params / 1e6:,.1f}M adapter numbers, paged 32-bit AdamW) the plan is
{recipe.memory.total / GB:.1f} GB, under 48 GB too.

**Full 16-bit fine-tuning: {full.memory.total / GB:.0f} GB, over the paper's 780 GB.** {full.full.total / 1e9:.1f}B parameters
× (2 bytes of weight + 2 of gradient + 8 of float32 Adam moments) = {full.full.static_bytes / GB:.0f} GB before any activation.
Without gradient checkpointing it is {full_no_checkpointing.memory.total / GB:.0f} GB. That is {full.memory.total / qlora.memory.total:.0f}× the QLoRA plan.
"""
    return QLoRAFindings(qlora.memory.total / GB, recipe.memory.total / GB, full.memory.total / GB,
                         full_no_checkpointing.memory.total / GB, nf4_gb, act_gb, text)


@dataclass(frozen=True)
class FitFindings:
    """Will it fit, read off a ``fit_table`` (section 7 of notebook 06).

    ``fitting[gb][method]``: the architectures whose plan fits a GPU of ``gb`` GB;
    ``smallest``: one row per architecture, one column per method, the smallest GPU size
    that fits ("48 GB", or "more than 80 GB"); ``qlora_least``: whether for every
    architecture QLoRA's plan is below LoRA's and LoRA's below full fine-tuning's (None
    when the table lacks one of the three ``FIT_METHODS``); ``text``: the verdict in Markdown.
    """

    architectures: tuple[str, ...]
    methods: tuple[str, ...]
    gpus_gb: tuple[float, ...]
    fitting: dict[float, dict[str, list[str]]]
    smallest: pd.DataFrame
    qlora_least: bool | None
    text: str


def _smallest_gpu(total_gb: float, gpus_gb: Sequence[float]) -> str:
    fitting = [g for g in gpus_gb if total_gb <= g]
    return f"{fitting[0]:g} GB" if fitting else f"more than {gpus_gb[-1]:g} GB"


def findings(fits: pd.DataFrame) -> FitFindings:
    """Which GPU sizes each architecture x method fits, and whether QLoRA < LoRA < full holds.

    ``fits``: a ``fit_table`` (its ``fits N GB`` columns say which GPU sizes to read).
    """
    needed = {"architecture", "method", "total (GB)"}
    if not needed <= set(fits.columns):
        raise ValueError(f"findings needs a fit_table with columns {sorted(needed)}, got {list(fits.columns)}")
    gpus = tuple(sorted(float(c[len("fits "):-len(" GB")]) for c in fits.columns if c.startswith("fits ")))
    if not gpus:
        raise ValueError("findings needs a fit_table with at least one 'fits N GB' column")
    archs = tuple(dict.fromkeys(fits["architecture"]))
    methods = tuple(dict.fromkeys(fits["method"]))
    by = fits.set_index(["architecture", "method"])["total (GB)"]
    fitting = {g: {m: [a for a in archs if by[(a, m)] <= g] for m in methods} for g in gpus}
    lines = [f"* **{g:g} GB** fits " + "; ".join(f"{m}: {', '.join(ok) if ok else 'none'}" for m, ok in per.items())
             + "." for g, per in fitting.items()]
    smallest = pd.DataFrame({m: [_smallest_gpu(by[(a, m)], gpus) for a in archs] for m in methods}, index=list(archs))
    three = ("QLoRA NF4", "LoRA bf16", "full bf16")
    least = (all(by[(a, three[0])] < by[(a, three[1])] < by[(a, three[2])] for a in archs)
             if set(three) <= set(methods) else None)
    text = "\n".join(lines)
    if least is not None:
        text += f"""

For every model here QLoRA's plan is {'the smallest' if least else 'not always the smallest'} of the three, and LoRA's is
{'smaller than full fine-tuning' if least else 'not always smaller than full fine-tuning'}.
"""
    return FitFindings(archs, methods, gpus, fitting, smallest, least, text)
