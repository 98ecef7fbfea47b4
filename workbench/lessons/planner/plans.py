"""Plans: the answer ``plan`` gives, LoRA and full fine-tuning side by side.

``Plan`` holds the settings asked about (``PlanSettings``) and one ``MethodPlan`` per side:
what trains, and the memory of one training step split into weights, gradients,
optimizer state and activations (``workbench.engine.memory.MemoryBreakdown``).  Its
methods only read and present those numbers: ``table``, ``breakdown`` (each component
with how it is computed), ``assumptions`` (in sentences), ``summary``, ``compare`` (against
a measured step) and ``figure``.  How the numbers are made is ``planning.plan``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from workbench.engine.memory import OPTIMIZERS, MemoryBreakdown, compare_breakdowns
from workbench.lessons.planner.figures import MemoryBar, memory_bars_figure
from workbench.lessons.planner.meta import DTYPES
from workbench.lora.config import LoRAConfig
from workbench.lora.quantize import NF4_LAYER_TABLE_BYTES, nf4_bits_per_weight
from workbench.util.checks import check_choice
from workbench.util.units import GB, format_count
from workbench.viz.style import FULL_COLOR, MEMORY_COMPONENTS, rank_color

__all__ = ["MethodPlan", "PlanSettings", "Plan"]


@dataclass
class MethodPlan:
    """One side of a plan: what trains and the memory of a training step.

    ``trainable`` counts every trained number (for LoRA: the adapters *and* a
    classification head, which must learn its task); ``adapter_params`` counts the LoRA
    matrices alone (the LoRA paper's "trainable parameters"); ``head_params`` the trained
    head.  ``memory.activations`` is 0 when ``activations_known`` is False (no formula for
    this architecture): read ``activations``, which is None then.  A quantized base
    (``plan(..., quantize=...)``): ``quantized_params`` weights in ``quantized_layers``
    layers cost ``quantized_bytes`` (inside ``memory.weights``).
    """

    method: str
    trainable: int
    total: int
    memory: MemoryBreakdown
    activations_known: bool = True
    adapter_params: int = 0
    head_params: int = 0
    trainable_tensors: int = 0
    bytes_per_element: int = 4
    wrapped: list[str] = field(default_factory=list)
    activation_items: dict[str, int] = field(default_factory=dict, repr=False)
    quantized_params: int = 0
    quantized_bytes: int = 0
    quantized_layers: int = 0

    @property
    def activations(self) -> int | None:
        """Estimated saved-activation bytes, or None when the architecture has no formula."""
        return self.memory.activations if self.activations_known else None

    @property
    def static_bytes(self) -> int:
        """weights + gradients + optimizer state: exact closed forms, any architecture."""
        return self.memory.weights + self.memory.gradients + self.memory.optimizer

    @property
    def total_bytes(self) -> int | None:
        """All four parts, or None when the activations are unknown."""
        return self.memory.total if self.activations_known else None

    @property
    def checkpoint_bytes(self) -> int:
        """What must be saved after training: the trained numbers (LoRA: adapters + head)."""
        return self.trainable * self.bytes_per_element


@dataclass
class PlanSettings:
    """The question a plan answers (what ``plan`` was called with, targets resolved).

    ``lora``: the LoRA settings, with the targets as this architecture names them
    (``resolve_targets``).  ``dropout``: whether the activation estimate counts the base
    model's dropout masks (LoRA's own dropout is ``lora.dropout``).  ``defaulted``: which of
    "dtype" and "optimizer" ``plan`` chose by its defaults (``plan``'s docstring).
    """

    architecture: str
    model_class: str
    task: str
    method: str
    lora: LoRAConfig
    batch_size: int
    seq_len: int
    dtype: str
    optimizer: str
    num_labels: int
    device: str
    dropout: bool
    padded: bool
    quantize: str | None = None
    gradient_checkpointing: bool = False
    defaulted: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        return d


@dataclass
class Plan:
    """LoRA and full fine-tuning of one model, side by side.

    ``.trainable``, ``.total`` and ``.memory`` are those of the method asked for
    (``settings.method``); ``.lora`` and ``.full`` hold both.  ``notes`` says what was
    assumed or could not be estimated.
    """

    settings: PlanSettings
    lora: MethodPlan
    full: MethodPlan
    config: Any = field(repr=False, default=None)
    notes: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> MethodPlan:
        return self.lora if self.settings.method == "lora" else self.full

    @property
    def trainable(self) -> int:
        return self.chosen.trainable

    @property
    def total(self) -> int:
        return self.chosen.total

    @property
    def memory(self) -> MemoryBreakdown:
        return self.chosen.memory

    @property
    def lora_label(self) -> str:
        """'LoRA r=8 (query,value)' (``LoRAConfig.label``: DoRA, rsLoRA, PiSSA say so)."""
        return self.settings.lora.label()

    def table(self) -> pd.DataFrame:
        """Memory in GB (10**9 bytes), one row per component, LoRA and full side by side.

        Unknown activations are NaN, and the last row is then the total of the other three
        (named so).  ``full / LoRA`` is how many times more memory full fine-tuning takes.
        """
        rows = []
        for attr, label, _ in MEMORY_COMPONENTS:
            vals = [getattr(m.memory, attr) if (attr != "activations" or m.activations_known) else np.nan
                    for m in (self.lora, self.full)]
            rows.append((label, *vals))
        known = self.lora.activations_known and self.full.activations_known
        rows.append(("total" if known else "total without activations",
                     self.lora.memory.total if known else self.lora.static_bytes,
                     self.full.memory.total if known else self.full.static_bytes))
        df = pd.DataFrame(rows, columns=["component", "LoRA", "full"]).set_index("component")
        df = df.astype(float) / GB
        with np.errstate(divide="ignore", invalid="ignore"):
            df["full / LoRA"] = df["full"] / df["LoRA"]
        df.columns = ["LoRA (GB)", "full (GB)", "full / LoRA"]
        return df

    def breakdown(self, method: str | None = None) -> pd.DataFrame:
        """One side's memory itemised, each row with how it is computed (GB = 10**9 bytes).

        ``method``: "lora" or "full" (default: the plan's).  Rows: the weights (split into
        the quantized block weights, the other frozen weights and the trained ones), the
        gradients, the optimizer state, the activations (with gradient checkpointing: the
        checkpointed block inputs, what is saved outside the blocks, and the block being
        recomputed; without: inside and outside the blocks), then ``total``.  The rows
        other than ``total`` add up to ``memory.total`` (to ``static_bytes`` when the
        activations are not estimated: their rows are then absent).
        """
        method = method or self.settings.method
        check_choice("method", method, ("lora", "full"))
        m, st = getattr(self, method), self.settings
        e, dt = m.bytes_per_element, st.dtype
        rows: list[tuple[str, int, str]] = []
        if m.quantized_params:
            tables = (f" + {m.quantized_layers} layers x {NF4_LAYER_TABLE_BYTES:,} bytes of code books"
                      if st.quantize == "nf4" else "")
            rows.append((f"weights: quantized block Linear weights ({st.quantize})", m.quantized_bytes,
                         f"{m.quantized_params:,} weights x {_quantized_rate(st.quantize)}{tables}"))
        frozen = m.total - m.trainable - m.quantized_params
        if frozen:
            rows.append((f"weights: other frozen weights ({dt})", frozen * e,
                         f"{frozen:,} x {e} bytes (embeddings, norms, biases, output layer"
                         f"{'' if m.quantized_params else ', block weights'})"))
        rows.append((f"weights: trained ({dt})", m.trainable * e, f"{m.trainable:,} x {e} bytes"))
        rows.append((f"gradients ({dt})", m.memory.gradients, f"{m.trainable:,} x {e} bytes"))
        rows.append((f"optimizer ({st.optimizer})", m.memory.optimizer, _optimizer_rate(st.optimizer, e)))
        if m.activations_known:
            items = m.activation_items
            if st.gradient_checkpointing:
                inputs = {k: v for k, v in items.items() if k.endswith(".input") and k.startswith("layer")}
                recompute = {k: v for k, v in items.items() if k.startswith("recompute.")}
                rest = sum(items.values()) - sum(inputs.values()) - sum(recompute.values())
                T = st.batch_size * st.seq_len
                hidden = getattr(self.config, "hidden_size", None) or getattr(self.config, "n_embd", 0)
                rows += [("activations: checkpointed block inputs", sum(inputs.values()),
                          f"{len(inputs)} blocks x {T:,} tokens x {hidden:,} hidden x {e} bytes"),
                         ("activations: one block recomputed in backward", sum(recompute.values()),
                          "the largest block's saved tensors, its input excluded"),
                         ("activations: outside the blocks", rest,
                          "embeddings, final norm, head, loss (float32 log-probabilities), rotary tables")]
            else:
                inside = sum(v for k, v in items.items() if k.startswith("layer"))
                rows += [("activations: inside the blocks", inside, "every block's saved tensors"),
                         ("activations: outside the blocks", sum(items.values()) - inside,
                          "embeddings, final norm, head, loss")]
        total = sum(b for _, b, _ in rows)
        rows.append(("total", total, "the sum of the rows above" + ("" if m.activations_known else
                                                                    " (activations not estimated)")))
        df = pd.DataFrame(rows, columns=["component", "bytes", "how"])
        df.insert(2, "GB", df["bytes"] / GB)
        return df

    def assumptions(self) -> list[str]:
        """What the numbers assume, in sentences (each true of this plan's settings)."""
        st = self.settings
        e = DTYPES[st.dtype].itemsize
        out = [f"one training step on one device, batch {st.batch_size} x {st.seq_len} tokens, every tensor in "
               f"{st.dtype} ({e} bytes per number) unless said otherwise; GB = 10**9 bytes",
               f"optimizer {st.optimizer}: {OPTIMIZERS[st.optimizer]}"]
        out += [_default_reason(d, st) for d in st.defaulted]
        if st.quantize is not None:
            rate = _quantized_rate(st.quantize)
            out.append(f"LoRA side: the frozen nn.Linear weights inside the transformer blocks are stored in "
                       f"{st.quantize} at {rate} (workbench.lora.quantize.quantized_bytes_per_weight); the "
                       f"embeddings, norms, biases, output layer and the adapters stay in {st.dtype}"
                       + (f"; each NF4 layer also keeps {NF4_LAYER_TABLE_BYTES:,} bytes of code books"
                          if st.quantize == "nf4" else ""))
            out.append("full side: not quantized (full fine-tuning trains every weight, which quantized weights "
                       "cannot be)")
        if st.gradient_checkpointing:
            out.append("gradient checkpointing on every block: activations = each block's input (B x S x H) + what "
                       "is saved outside the blocks + the largest block's activations, recomputed in backward")
        else:
            out.append("no gradient checkpointing: every block's activations are held until backward")
        out.append(f"activations for device {st.device!r} kernels (for Llama-style models the fused attention of PyTorch's scaled_dot_product_attention, sdpa, which saves no S x S tensor), "
                   f"{'a padded' if st.padded else 'an unpadded'} batch"
                   + (", dropout as in the config" if st.dropout else ", no dropout"))
        out.append("not counted: the CUDA context and allocator fragmentation, temporaries that live within one "
                   "operation (a dequantized weight during its matmul, the bf16 logits before their float32 copy), "
                   "and gradients in flight during backward")
        return out

    def summary(self) -> str:
        """A few lines for people: counts, then memory."""
        s = self.settings
        extra = (f", {s.quantize} base" if s.quantize else "") + (", gradient checkpointing" if s.gradient_checkpointing else "")
        lines = [
            f"{s.architecture} ({s.model_class}, {s.task}), batch {s.batch_size} x {s.seq_len} tokens, "
            f"{s.dtype}, {s.optimizer}, {s.device}{extra}",
            f"  total parameters      {self.full.total:>18,}",
            f"  {self.lora_label}: trainable {self.lora.trainable:,} "
            f"(adapters {self.lora.adapter_params:,} + head {self.lora.head_params:,}), "
            f"{100 * self.lora.trainable / max(self.lora.total, 1):.4f}% of {self.lora.total:,}",
            f"  full fine-tuning: trainable {self.full.trainable:,}",
        ]
        for side, m in (("LoRA", self.lora), ("full", self.full)):
            act = "n/a" if m.activations is None else f"{m.memory.activations / GB:.3f}"
            total = f"{m.total_bytes / GB:.3f} GB" if m.total_bytes is not None else \
                f"{m.static_bytes / GB:.3f} GB without activations"
            lines.append(f"  {side:>4}: weights {m.memory.weights / GB:.3f} + gradients {m.memory.gradients / GB:.3f}"
                         f" + optimizer {m.memory.optimizer / GB:.3f} + activations {act} = {total}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def compare(self, measured: Mapping[str, MemoryBreakdown]) -> pd.DataFrame:
        """Estimate against a measurement (``measure(plan)``): MB (10**6 bytes) and error in %.

        One block per method ("lora", "full") of ``engine.memory.compare_breakdowns``, the
        one measure-beside-estimate table: columns ``method``, ``component``, ``measured MB``,
        ``estimated MB``, ``error %`` = 100 * (estimate - measured) / measured.  Unknown
        activations (no formula for the architecture) are NaN, and so is their total.
        """
        blocks = []
        for method in ("lora", "full"):
            if method not in measured:
                continue
            est = getattr(self, method)
            table = compare_breakdowns(measured[method], est.memory,
                                       unestimated=() if est.activations_known else ("activations",))
            table.insert(0, "method", method)
            blocks.append(table)
        if not blocks:
            raise ValueError(f"measured must hold 'lora' and/or 'full' (from measure(plan)), got {sorted(measured)}")
        return pd.concat(blocks, ignore_index=True)

    def figure(self) -> Figure:
        """Stacked bars, LoRA beside full fine-tuning: weights, gradients, optimizer, activations (GB).

        When the architecture has no activation formula, the bars hold the three exact
        parts and say "activations: no estimate".
        """
        s = self.settings
        bars = [MemoryBar(f"{self.lora_label}\n{format_count(self.lora.trainable)} trainable",
                          rank_color(s.lora.rank), self.lora.memory, self.lora.activations_known),
                MemoryBar(f"full fine-tuning\n{format_count(self.full.trainable)} trainable",
                          FULL_COLOR, self.full.memory, self.full.activations_known)]
        return memory_bars_figure(bars, f"{s.architecture}: memory of one training step\nbatch {s.batch_size} x "
                                        f"{s.seq_len} tokens, {s.dtype}, {s.optimizer} (estimate)")


# ------------------------------------------------------------------ the settings in words


def _default_reason(setting: str, st: PlanSettings) -> str:
    """Why a defaulted setting has its value, in words (for ``Plan.assumptions``)."""
    if setting == "dtype":
        why = ("with quantize: QLoRA computes in bf16 on its quantized base" if st.quantize is not None
               else "without quantize")
        return f"dtype {st.dtype} is the default {why} (pass dtype= to change it)"
    if st.optimizer == "adamw-32bit":
        return (f"optimizer adamw-32bit is the default for a 16-bit plan: mixed-precision training keeps AdamW's "
                f"moments in float32, so weight + gradient + moments = 2 + 2 + 8 = 12 bytes per trained parameter "
                f"(pass optimizer='adamw' for torch's AdamW, whose moments would be {st.dtype})")
    return "optimizer adamw is the default for an fp32 plan (torch's AdamW: float32 moments)"


def _quantized_rate(quantize: str) -> str:
    """The bytes per quantized weight in words, from ``workbench.lora.quantize``'s constants."""
    if quantize == "nf4":
        return (f"{nf4_bits_per_weight():.3f} bits = 4-bit code + 8-bit absmax per 64 + fp32 scale per 64 x 256 "
                f"(NF4 with double quantization)")
    return "(8 + 32 / in_features) bits = int8 code + fp32 scale per output row (LLM.int8)"


def _optimizer_rate(optimizer: str, e: int) -> str:
    """How ``optimizer_state_estimate`` counts, in a few words, for parameters of ``e`` bytes."""
    return {"adamw": f"2 moments x {e} bytes per trained number + 4 bytes per tensor",
            "adam": f"2 moments x {e} bytes per trained number + 4 bytes per tensor",
            "sgd": "no state", "sgd-momentum": f"1 buffer x {e} bytes per trained number",
            "adamw-32bit": "2 moments x 4 bytes (float32) per trained number",
            "paged-adamw-32bit": "2 moments x 4 bytes (float32) per trained number, paged",
            "adamw-8bit": "2 moments x 1 byte + 2 x 4 bytes per 256 numbers (absmax); float32 under 4096 numbers",
            "paged-adamw-8bit": "2 moments x 1 byte + 2 x 4 bytes per 256 numbers (absmax); float32 under 4096 "
                                "numbers; paged"}[optimizer]
