"""LoRA variants: small classes that change a few steps of the plain LoRA layer.

As in PEFT's ``tuners/lora/variants.py``, a variant is a class with the few hooks it
changes, and ``LoRALayer`` calls them; the layer itself stays plain LoRA.  The hooks:

    init(layer)                 once, when the layer is built (after it has made A and B)
    original_weight(layer, w)   the weight the layer wrapped, from the stored base weight w
    forward(layer, x, result)   the layer's output, given the base layer's output
    merge(layer), unmerge(layer)

A variant that sets ``replaces_init`` starts A and B itself (the layer's random start is
skipped); one that sets ``changes_output`` replaces forward, merge and unmerge.  A config
selects its variants with ``variants_for``; a new variant is a new class here and a line
there, not new branches in the layer.

* ``DoRA`` (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation",
  arXiv:2402.09353): the adapted weight is a learned length per output times a unit
  direction that LoRA updates,

      W' = m * V / ||V||,   V = W + s B A,   ||.|| the norm of each output row.

* ``PiSSA`` (Meng et al. 2024, "PiSSA: Principal Singular Values and Singular Vectors
  Adaptation", arXiv:2404.02948): A and B start at the top-r singular directions of W,
  s B A = U_r S_r V_r^T, and the frozen base becomes the residual W - s B A.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.lora.config import LoRAConfig

# The ``LoRALayer`` that calls a hook.  The layer imports this module, not the other way round
# (not even for type hints), so the hooks name it by what it is to torch.
Layer = nn.Module

__all__ = ["LoRAVariant", "DoRA", "PiSSA", "variants_for"]


class LoRAVariant:
    """The hooks a variant may change.  The defaults change nothing."""

    name: str = ""  # shown in the layer's repr
    replaces_init: bool = False  # True: ``init`` sets A and B; the layer's random start is skipped
    changes_output: bool = False  # True: ``forward``, ``merge`` and ``unmerge`` replace plain LoRA's

    def init(self, layer: Layer) -> None:
        """Called once, when the layer is built."""

    def original_weight(self, layer: Layer, weight: torch.Tensor) -> torch.Tensor:
        """The weight the layer wrapped (stored orientation), given the stored base weight."""
        return weight

    def forward(self, layer: Layer, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not change the layer's output")

    def merge(self, layer: Layer) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not change the layer's output")

    def unmerge(self, layer: Layer) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not change the layer's output")


class PiSSA(LoRAVariant):
    """PiSSA (Meng et al. 2024, arXiv:2404.02948): adapt the principal singular directions.

    With the SVD  W = U S V^T  (out x in) and the top r singular triples U_r, S_r, V_r:

        A = sqrt(S_r / s) V_r^T   (r x in),    B = U_r sqrt(S_r / s)   (out x r)

    so that  s B A = U_r S_r V_r^T, the best rank-r approximation of W.  The frozen base
    becomes the residual  W - s B A, so the layer still computes W x at the start, but
    training moves the largest directions of W instead of starting from zero.  This is
    PEFT's ``init_lora_weights="pissa"`` (full SVD in float32).  The initial A and B are
    kept as buffers ``pissa_A0``/``pissa_B0`` so the original W can be given back.
    """

    name = "PiSSA init"
    replaces_init = True

    @torch.no_grad()
    def init(self, layer: Layer) -> None:
        dtype = layer.base_layer.weight.dtype
        w = layer.base_weight().to(torch.float64 if dtype == torch.float64 else torch.float32)
        u, sing, vh = torch.linalg.svd(w, full_matrices=False)
        r, s = layer.rank, layer.scaling
        root = torch.sqrt(sing[:r] / s)
        a = root[:, None] * vh[:r]  # r x in
        b = u[:, :r] * root[None, :]  # out x r
        residual = w - s * (b @ a)
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b)
        layer.base_weight().copy_(residual.to(dtype))
        layer.register_buffer("pissa_A0", layer.lora_A.weight.detach().clone(), persistent=False)
        layer.register_buffer("pissa_B0", layer.lora_B.weight.detach().clone(), persistent=False)

    def original_weight(self, layer: Layer, weight: torch.Tensor) -> torch.Tensor:
        """W = residual + s B0 A0 (the top-r part PiSSA took out of the base)."""
        w0 = (layer.pissa_B0 @ layer.pissa_A0) * layer.scaling
        return weight + (w0.T if layer.fan_in_fan_out else w0).to(weight.dtype)


class DoRA(LoRAVariant):
    """DoRA (Liu et al. 2024, arXiv:2402.09353): magnitude times unit direction.

        W' = m * V / ||V||,   V = W + s B A,   g = m / ||V||  (one factor per output)
        y  = g * (W x + s B A x) + b
           = base(x) + (g - 1) * W x + g * s * B A x

    ``m`` (``lora_magnitude_vector``, one number per output) starts at ``||W + s B A||``,
    so a fresh layer computes what the base layer does.
    """

    name = "DoRA"
    changes_output = True

    @staticmethod
    def weight_norm(layer: Layer, delta: torch.Tensor) -> torch.Tensor:
        """||W + Delta W|| of each output row (out x in orientation): one number per output.

        The paper writes weights as (in x out) and calls this the column norm ||.||_c.
        """
        return torch.linalg.vector_norm(layer.base_weight() + delta, dim=1).to(layer.base_layer.weight.dtype)

    def init(self, layer: Layer) -> None:
        norm = self.weight_norm(layer, layer.delta_weight(transposed=False))
        layer.lora_magnitude_vector = nn.Parameter(norm.detach())

    def forward(self, layer: Layer, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """The last line of the class formula, reusing the base layer's output.

        ``||V||`` is treated as a constant in backward (detached), as the paper's section
        4.3 recommends: gradients reach m, A and B, but not through the norm.  With dropout
        active the LoRA path and the ``(g - 1) W x`` term both see ``dropout(x)`` (as PEFT
        does), so the term is recomputed without the bias instead of taken from ``result``.
        """
        with torch.no_grad():
            norm = self.weight_norm(layer, layer.delta_weight(transposed=False))
        g = layer.lora_magnitude_vector / norm  # (out,)
        lora_in = layer.lora_input(x)
        if isinstance(layer.lora_dropout, nn.Identity) or not layer.training:  # W x = base output - bias
            bias = layer.base_layer.bias
            base_wx = result if bias is None else result - bias
        else:
            base_wx = F.linear(lora_in, layer.base_weight().to(lora_in.dtype))
        lora_out = layer.lora_B(layer.lora_A(lora_in)) * layer.scaling
        return result + ((g - 1) * base_wx + g * lora_out).to(result.dtype)

    def merge(self, layer: Layer) -> None:
        """W <- g * (W + s B A) with g = m / ||W + s B A||, keeping ||W + s B A|| to unmerge."""
        w = layer.base_weight()  # a view: writing it writes the base weight
        delta = layer.delta_weight(transposed=False)
        norm = self.weight_norm(layer, delta)
        layer.register_buffer("dora_merged_norm", norm, persistent=False)
        g = (layer.lora_magnitude_vector / norm).unsqueeze(1)
        w.copy_((g * (w + delta)).to(w.dtype))

    def unmerge(self, layer: Layer) -> None:
        """W <- W' / g - s B A, with the norm kept at merge time (the merged W has another)."""
        w = layer.base_weight()
        g = (layer.lora_magnitude_vector / layer.dora_merged_norm).unsqueeze(1)
        w.copy_((w / g - layer.delta_weight(transposed=False)).to(w.dtype))
        layer.dora_merged_norm = None


def variants_for(config: LoRAConfig) -> tuple[LoRAVariant, ...]:
    """The variants a config selects, in the order their ``init`` runs: PiSSA first (it
    rewrites W), then DoRA (its magnitude starts at ||W + s B A|| of the final W, B, A)."""
    chosen: list[LoRAVariant] = []
    if config.init == "pissa":
        chosen.append(PiSSA())
    if config.dora:
        chosen.append(DoRA())
    return tuple(chosen)
