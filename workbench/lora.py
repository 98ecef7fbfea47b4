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
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

try:  # GPT-2 style models store their projections as Conv1D (weight transposed).
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = None  # type: ignore[assignment,misc]

Init = Literal["kaiming", "gaussian"]
SUPPORTED_TYPES: tuple[type, ...] = (nn.Linear,) + ((Conv1D,) if Conv1D is not None else ())


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


def lora_scaling(rank: int, alpha: float, rslora: bool = False) -> float:
    """The factor s in  y = W x + s B A x:  alpha / r, or alpha / sqrt(r) with rsLoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class LoRALayer(nn.Module):
    """A frozen ``Linear``/``Conv1D`` layer plus a trainable low-rank update ``s * B A``.

    Submodule names match PEFT's (``base_layer``, ``lora_A``, ``lora_B``), so the state
    dict keys of an adapted model are the keys PEFT writes in its adapter files.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        rslora: bool = False,
        init: Init = "kaiming",
    ) -> None:
        super().__init__()
        in_features, out_features = layer_shape(base_layer)
        self.base_layer = base_layer
        self.in_features, self.out_features = in_features, out_features
        self.fan_in_fan_out = not isinstance(base_layer, nn.Linear)
        self.rank, self.alpha, self.rslora = rank, alpha, rslora
        self.scaling = lora_scaling(rank, alpha, rslora)
        # Dropout on the LoRA path only; skipped entirely when p = 0 (it is costly on CPU).
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        weight = base_layer.weight
        self.lora_A = nn.Linear(in_features, rank, bias=False, device=weight.device, dtype=weight.dtype)
        self.lora_B = nn.Linear(rank, out_features, bias=False, device=weight.device, dtype=weight.dtype)
        self.merged = False
        self.reset_lora_parameters(init)
        for p in self.base_layer.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def reset_lora_parameters(self, init: Init = "kaiming") -> None:
        """A random, B zero: the update B A starts at exactly zero."""
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        elif init == "gaussian":
            nn.init.normal_(self.lora_A.weight, std=1.0 / self.rank)
        else:
            raise ValueError(f"init must be 'kaiming' or 'gaussian', not {init!r}")
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        """Delta W = s * B A, shaped like the base weight (transposed for Conv1D)."""
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling  # out x in
        return delta.T if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A.  Afterwards the layer costs what the base layer costs."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; unmerge it first")
        self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s B A: the base weight as it was (up to float rounding)."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        lora_in = self.lora_dropout(x).to(self.lora_A.weight.dtype)
        return result + self.lora_B(self.lora_A(lora_in)) * self.scaling

    def extra_repr(self) -> str:
        scale = f"alpha/sqrt(r)={self.scaling:.4g}" if self.rslora else f"alpha/r={self.scaling:.4g}"
        return f"rank={self.rank}, alpha={self.alpha:g}, {scale}, merged={self.merged}"
