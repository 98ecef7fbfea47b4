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

Two variants change what the layer computes or where it starts; each is a small,
separate addition (see ``_dora_forward`` and ``pissa_init``):

* DoRA (``dora=True``, Liu et al. 2024, arXiv:2402.09353) splits the adapted weight into a
  learned length per output and a direction that LoRA updates:
  ``W' = m * (W + s B A) / ||W + s B A||`` (norm of each output row).
* PiSSA (``init="pissa"``, Meng et al. 2024, arXiv:2404.02948) starts A and B at the top-r
  singular directions of W and freezes the rest, ``W - s B A``, as the base weight.
"""

from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import nn

from workbench.lora.config import Init, LoRAConfig, check_init, lora_scaling

try:  # GPT-2 style models store their projections as Conv1D (weight transposed).
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = None  # type: ignore[assignment,misc]

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


class LoRALayer(nn.Module):
    """A frozen ``Linear``/``Conv1D`` layer plus a trainable low-rank update ``s * B A``.

    Submodule names match PEFT's (``base_layer``, ``lora_A``, ``lora_B``, and for DoRA the
    vector ``lora_magnitude_vector``), so the state dict keys of an adapted model are the
    keys PEFT writes in its adapter files.
    """

    def __init__(self, base_layer: nn.Module, config: LoRAConfig | None = None, /, **settings) -> None:
        super().__init__()
        config = LoRAConfig.build(config, **settings)
        rank, alpha, dropout, rslora, init, dora = (config.rank, config.alpha, config.dropout, config.rslora,
                                                    config.init, config.dora)
        self.config = config
        if dora and not isinstance(base_layer, SUPPORTED_TYPES):
            allowed = ", ".join(t.__name__ for t in SUPPORTED_TYPES)
            raise TypeError(f"DoRA supports {allowed} layers, not {type(base_layer).__name__}")
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
        self.init, self.dora = init, dora
        for p in self.base_layer.parameters():
            p.requires_grad_(False)
        if init == "pissa":
            pissa_init(self)  # also replaces the base weight by the residual W - s B A
        else:
            self.reset_lora_parameters(init)
        # DoRA's magnitude m starts at ||W + s B A|| per output, so a fresh layer changes nothing.
        self.lora_magnitude_vector: nn.Parameter | None = (
            nn.Parameter(self._dora_norm(self.delta_weight(transposed=False)).detach()) if dora else None
        )

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

    def delta_weight(self, transposed: bool | None = None) -> torch.Tensor:
        """Delta W = s * B A, shaped like the base weight (transposed for Conv1D).

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
    def original_weight(self) -> torch.Tensor:
        """The weight the layer wrapped before LoRA was added (stored orientation); unmerged only.

        Usually that is simply the base weight; after PiSSA the base holds the residual, so
        the initial top-r part s B0 A0 (kept in ``pissa_A0``/``pissa_B0``) is added back.
        """
        if self.merged:
            raise RuntimeError("unmerge the layer first")
        w = self.base_layer.weight.detach().clone()
        if self.init == "pissa":
            w0 = (self.pissa_B0 @ self.pissa_A0) * self.scaling
            w += (w0.T if self.fan_in_fan_out else w0).to(w.dtype)
        return w

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + s B A (DoRA: W <- m (W + s B A) / ||W + s B A||).  Then the layer costs
        what the base layer costs."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; unmerge it first")
        if self.dora:
            self._dora_merge()
        else:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - s B A (DoRA: W <- W' / g - s B A): the base weight as it was, up to rounding."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        if self.dora:
            self._dora_unmerge()
        else:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        if self.dora:
            return self._dora_forward(x, result)
        lora_in = self._lora_input(x)
        return result + self.lora_B(self.lora_A(lora_in)) * self.scaling

    def _lora_input(self, x: torch.Tensor) -> torch.Tensor:
        """dropout(x), in the adapter's dtype.  Under autocast the matmuls pick their own
        dtype, so casting here would only add two copies (bf16 -> fp32 -> bf16)."""
        x = self.lora_dropout(x)
        if torch.is_autocast_enabled(x.device.type):
            return x
        return x.to(self.lora_A.weight.dtype)

    def extra_repr(self) -> str:
        scale = f"alpha/sqrt(r)={self.scaling:.4g}" if self.rslora else f"alpha/r={self.scaling:.4g}"
        extras = (", DoRA" if self.dora else "") + (", PiSSA init" if self.init == "pissa" else "")
        return f"rank={self.rank}, alpha={self.alpha:g}, {scale}{extras}, merged={self.merged}"

    # ---- DoRA -------------------------------------------------------------------------------------------------

    def _dora_norm(self, delta: torch.Tensor) -> torch.Tensor:
        """||W + Delta W|| of each output row (out x in orientation): one number per output.

        The paper writes weights as (in x out) and calls this the column norm ||.||_c.
        """
        return torch.linalg.vector_norm(self.base_weight() + delta, dim=1).to(self.base_layer.weight.dtype)

    def _dora_forward(self, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """DoRA (Liu et al. 2024, arXiv:2402.09353): magnitude times unit direction.

            W' = m * V / ||V||,   V = W + s B A,   g = m / ||V||  (one factor per output)
            y  = g * (W x + s B A x) + b
               = base(x) + (g - 1) * W x + g * s * B A x

        The last line reuses the base layer's output.  ``||V||`` is treated as a constant
        in backward (detached), as the paper's section 4.3 recommends: gradients reach m,
        A and B, but not through the norm.  With dropout active the LoRA path and the
        ``(g - 1) W x`` term both see ``dropout(x)`` (as PEFT does), so the term is
        recomputed without the bias instead of taken from ``result``.
        """
        m = self.lora_magnitude_vector
        with torch.no_grad():
            norm = self._dora_norm(self.delta_weight(transposed=False))
        g = m / norm  # (out,)
        lora_in = self._lora_input(x)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:  # W x = base output - bias
            bias = self.base_layer.bias
            base_wx = result if bias is None else result - bias
        else:
            base_wx = F.linear(lora_in, self.base_weight().to(lora_in.dtype))
        lora_out = self.lora_B(self.lora_A(lora_in)) * self.scaling
        return result + ((g - 1) * base_wx + g * lora_out).to(result.dtype)

    def _dora_merge(self) -> None:
        """W <- g * (W + s B A) with g = m / ||W + s B A||, keeping ||W + s B A|| to unmerge."""
        w = self.base_weight()  # view: writing it writes the base weight
        delta = self.delta_weight(transposed=False)
        norm = self._dora_norm(delta)
        self.register_buffer("dora_merged_norm", norm, persistent=False)
        g = (self.lora_magnitude_vector / norm).unsqueeze(1)
        w.copy_((g * (w + delta)).to(w.dtype))

    def _dora_unmerge(self) -> None:
        """W <- W' / g - s B A, with the norm kept at merge time (the merged W has another)."""
        w = self.base_weight()
        g = (self.lora_magnitude_vector / self.dora_merged_norm).unsqueeze(1)
        w.copy_((w / g - self.delta_weight(transposed=False)).to(w.dtype))
        self.dora_merged_norm = None


@torch.no_grad()
def pissa_init(layer: LoRALayer) -> None:
    """PiSSA (Meng et al. 2024, arXiv:2404.02948): adapt the principal singular directions.

    With the SVD  W = U S V^T  (out x in) and the top r singular triples U_r, S_r, V_r:

        A = sqrt(S_r / s) V_r^T   (r x in),    B = U_r sqrt(S_r / s)   (out x r)

    so that  s B A = U_r S_r V_r^T, the best rank-r approximation of W.  The frozen base
    becomes the residual  W - s B A, so the layer still computes W x at the start, but
    training moves the largest directions of W instead of starting from zero.  This is
    PEFT's ``init_lora_weights="pissa"`` (full SVD in float32).  The initial A and B are
    kept as buffers ``pissa_A0``/``pissa_B0`` so the original W can be given back.
    """
    dtype = layer.base_layer.weight.dtype
    w = layer.base_weight().to(torch.float64 if dtype == torch.float64 else torch.float32)
    u, sing, vh = torch.linalg.svd(w, full_matrices=False)
    r = layer.rank
    root = torch.sqrt(sing[:r] / layer.scaling)
    a = root[:, None] * vh[:r]  # r x in
    b = u[:, :r] * root[None, :]  # out x r
    residual = w - layer.scaling * (b @ a)
    layer.lora_A.weight.copy_(a)
    layer.lora_B.weight.copy_(b)
    layer.base_weight().copy_(residual.to(dtype))
    layer.register_buffer("pissa_A0", layer.lora_A.weight.detach().clone(), persistent=False)
    layer.register_buffer("pissa_B0", layer.lora_B.weight.detach().clone(), persistent=False)
