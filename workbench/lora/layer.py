"""The LoRA layer: a frozen weight W plus a trainable low-rank update.

Low-Rank Adaptation (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models", arXiv:2106.09685) keeps a pre-trained weight ``W`` (out x in) frozen and learns

    y = W x + b + s * B A dropout(x),     A: r x in,  B: out x r,  s = alpha / r

so a layer trains ``r * (in + out)`` numbers instead of ``in * out``.  rsLoRA
(Kalajdzievski 2023, arXiv:2312.03732) uses ``s = alpha / sqrt(r)`` so that the size
of the update does not shrink as the rank grows.

Initialisation follows Hugging Face PEFT: ``A`` kaiming-uniform (a = sqrt(5), the
default of ``nn.Linear``) and ``B = 0``, so ``B A = 0`` and a freshly adapted model
computes exactly what the base model does.  ``init="gaussian"`` draws ``A`` from
N(0, 1/r) instead (PEFT's ``init_lora_weights="gaussian"``).

Because the update is a matrix of the same shape as ``W``, it can be *merged*:
``W <- W + s * B A`` gives the adapted layer with no extra cost at inference time,
and ``W <- W - s * B A`` undoes it.

The layer wraps both ``nn.Linear`` (weight stored out x in) and ``transformers``'
``Conv1D`` used by GPT-2 (weight stored in x out, "fan_in_fan_out").

This file is plain LoRA only.  Variants live beside it in ``workbench.lora.variants`` as
small classes whose hooks the layer calls (as PEFT's ``LoraVariant`` classes are):

* DoRA (``dora=True``, Liu et al. 2024, arXiv:2402.09353): a learned length per output,
  ``W' = m * (W + s B A) / ||W + s B A||``;
* PiSSA (``init="pissa"``, Meng et al. 2024, arXiv:2404.02948): A and B start at the top-r
  singular directions of W, and the rest, ``W - s B A``, is the frozen base weight.

A quantized base (QLoRA) is wrapped as a ``Linear`` is; the two facts the layer needs about
it come from the leaf ``workbench.lora.quant_facts``: A and B train in float beside 4/8-bit
codes (``float_dtype``), and the update cannot be merged into them (``refuse_merge``).

Several named adapters on one base are not this layer's business: ``workbench.lora.serving``
swaps in its ``ServingLayer`` (this layer plus adapters beside it) when a second adapter is
loaded.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workbench.lora.config import Init, LoRAConfig, check_init, lora_scaling
from workbench.lora.quant_facts import float_dtype, refuse_merge
from workbench.lora.variants import LoRAVariant, variants_for

try:  # GPT-2 style models store their projections as Conv1D (weight transposed).
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = None  # type: ignore[assignment,misc]

SUPPORTED_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if Conv1D is not None else ())

__all__ = ["LoRALayer", "SUPPORTED_TYPES", "Conv1D", "layer_shape", "lora_scaling"]


def layer_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or Conv1D layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if Conv1D is not None and isinstance(layer, Conv1D):
        in_features, out_features = layer.weight.shape  # Conv1D stores (in, out)
        return in_features, out_features
    raise TypeError(
        f"LoRA supports {', '.join(t.__name__ for t in SUPPORTED_TYPES)} layers, "
        f"not {type(layer).__name__}"
    )


class LoRALayer(nn.Module):
    """A frozen ``Linear``/``Conv1D`` layer plus a trainable low-rank update ``s * B A``.

    The settings come as a ``LoRAConfig`` or as its fields by name
    (``LoRALayer(base, rank=8, alpha=16)``) and are kept as ``self.config``.  Submodule
    names match PEFT's (``base_layer``, ``lora_A``, ``lora_B``; DoRA adds the vector
    ``lora_magnitude_vector``), so the state dict keys of an adapted model are the keys
    PEFT writes in its adapter files.
    """

    def __init__(self, base_layer: nn.Module, config: LoRAConfig | None = None, /, **settings) -> None:
        super().__init__()
        self.config = LoRAConfig.build(config, **settings)
        self.in_features, self.out_features = layer_shape(base_layer)
        self.base_layer = base_layer.requires_grad_(False)  # W (and b): frozen
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)  # Conv1D stores W as in x out
        self.rank, self.scaling = self.config.rank, self.config.scaling  # r and s = alpha / r
        # Dropout on the LoRA path only; skipped entirely when p = 0 (it is costly on CPU).
        self.lora_dropout = nn.Dropout(self.config.dropout) if self.config.dropout > 0 else nn.Identity()
        w = base_layer.weight
        dtype = float_dtype(base_layer)  # a quantized base stores uint8/int8 codes: A and B train in float
        self.lora_A = nn.Linear(self.in_features, self.rank, bias=False, device=w.device, dtype=dtype)
        self.lora_B = nn.Linear(self.rank, self.out_features, bias=False, device=w.device, dtype=dtype)
        self.merged = False
        self.variants: tuple[LoRAVariant, ...] = variants_for(self.config)  # () for plain LoRA
        self.variant = next((v for v in self.variants if v.changes_output), None)  # the one that computes y
        if not any(v.replaces_init for v in self.variants):
            self.reset_lora_parameters(self.config.init)
        for v in self.variants:
            v.init(self)
        self.train(base_layer.training)  # joins the model in its layer's mode: an eval model stays eval

    @torch.no_grad()
    def reset_lora_parameters(self, init: Init = "kaiming") -> None:
        """A random, B zero: the update B A starts at exactly zero."""
        check_init(init)
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        elif init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1.0 / self.rank)
        else:
            raise ValueError("init 'pissa' changes the base weight, so it happens once, when the layer is built")
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = base(x) + s * B A dropout(x)  (merged: the base layer alone holds W + s B A)."""
        result = self.base_layer(x)
        if self.merged:
            return result
        if self.variant is not None:  # DoRA computes y its own way
            return self.variant.forward(self, x, result)
        # s B A x = B (s A x): s multiplies r numbers per token, not out_features (bit-equal when s is a power of 2)
        update = self.lora_B(self.lora_A(self.lora_input(x)) * self.scaling)
        # In the base output's dtype: on a bf16 model with a quantized base (QLoRA) A and B are fp32
        # (float_dtype), and an fp32 update would turn the hidden state fp32 (PEFT casts back too).
        return result + update.to(result.dtype)

    def lora_input(self, x: torch.Tensor) -> torch.Tensor:
        """dropout(x), in the adapter's dtype.  Under autocast the matmuls pick their own
        dtype, so casting here would only add two copies (bf16 -> fp32 -> bf16)."""
        x = self.lora_dropout(x)
        if torch.is_autocast_enabled(x.device.type):
            return x
        return x.to(self.lora_A.weight.dtype)

    def delta_weight(self, transposed: bool | None = None) -> torch.Tensor:
        """Delta W = s * B A, shaped like the stored base weight (transposed for Conv1D).

        ``transposed=False`` always gives the out x in orientation.
        """
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # out x in
        flip = self.fan_in_fan_out if transposed is None else transposed
        return delta.T if flip else delta

    def base_weight(self) -> torch.Tensor:
        """The frozen weight W in the out x in orientation (a view; Conv1D stores it transposed)."""
        w = self.base_layer.weight
        return w.T if self.fan_in_fan_out else w

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A: then the layer costs what the base layer costs."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; unmerge it first")
        self.check_merge()
        if self.variant is not None:
            self.variant.merge(self)
        else:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    def check_merge(self) -> None:
        """Raise if the update cannot be merged: a quantized base cannot hold W + s B A.

        ``merge_lora`` asks every layer before it merges any (all or nothing)."""
        refuse_merge(self.base_layer)

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s B A: the base weight as it was, up to rounding."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        if self.variant is not None:
            self.variant.unmerge(self)
        else:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    @torch.no_grad()
    def original_weight(self) -> torch.Tensor:
        """The weight the layer wrapped before LoRA was added (stored orientation); unmerged only.

        For plain LoRA that is the base weight; a variant that rewrote the base (PiSSA)
        gives back what it took out.
        """
        if self.merged:
            raise RuntimeError("unmerge the layer first")
        w = self.base_layer.weight.detach().clone()
        for v in self.variants:
            w = v.original_weight(self, w)
        return w

    def extra_repr(self) -> str:
        c = self.config
        scale = f"alpha/sqrt(r)={self.scaling:.4g}" if c.rslora else f"alpha/r={self.scaling:.4g}"
        extras = "".join(f", {v.name}" for v in self.variants)
        return f"rank={self.rank}, alpha={c.alpha:g}, {scale}{extras}, merged={self.merged}"
