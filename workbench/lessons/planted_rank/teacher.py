"""The teacher: the base model with a random update of known rank planted in chosen layers.

    W_teacher = W + Delta W*,     Delta W* = U diag(s_1 .. s_k) V^T,

with U (out x k) and V (in x k) random orthonormal columns and the s_i sized so that
||Delta W*||_F = scale * ||W||_F (``planted_singular_values``).  Also here: where in the
model the update goes (``target_paths``), which the students' LoRA layers share.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from workbench.lessons.delta_w import random_orthonormal
from workbench.lessons.planted_rank.config import PlantedConfig
from workbench.lora.layer import layer_shape
from workbench.lora.targets import find_targets

__all__ = ["planted_singular_values", "planted_delta", "resolve_layers", "target_paths", "make_teacher",
           "encoder_of", "blocks_of"]


def planted_singular_values(cfg: PlantedConfig, weight_norm: float) -> torch.Tensor:
    """s_1 >= ... >= s_k of Delta W*, scaled so that ||Delta W*||_F = scale * ||W||_F.

    ``equal``: s_i = c;  ``geometric``: s_i = c * decay^(i-1);  and since the Frobenius
    norm of U diag(s) V^T with orthonormal U, V is sqrt(sum s_i^2), c is chosen so that
    sqrt(sum s_i^2) = scale * ||W||_F.
    """
    k = cfg.true_rank
    shape = torch.ones(k, dtype=torch.float64) if cfg.profile == "equal" else (
        float(cfg.decay) ** torch.arange(k, dtype=torch.float64))
    return shape * (cfg.scale * weight_norm / float(torch.linalg.vector_norm(shape)))


def planted_delta(
    out_features: int, in_features: int, s: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Delta W* = U diag(s) V^T (out x in, float64) with Haar-random orthonormal U and V.

    Its singular values are exactly ``s`` (up to float64 rounding) and its rank is the
    number of non-zero entries of ``s``.
    """
    k = len(s)
    if k > min(out_features, in_features):
        raise ValueError(
            f"true_rank {k} exceeds min(out, in) = {min(out_features, in_features)} of a "
            f"{out_features} x {in_features} layer: no matrix of that shape has rank {k}"
        )
    u = random_orthonormal(out_features, k, generator)
    v = random_orthonormal(in_features, k, generator)
    return (u * s.to(torch.float64)) @ v.T


def encoder_of(model: nn.Module) -> nn.Module:
    """The bare encoder/decoder of a transformers model (``BertModel`` inside ``...ForSequenceClassification``)."""
    inner = getattr(model, "base_model", model)
    return inner if isinstance(inner, nn.Module) else model


def blocks_of(encoder: nn.Module) -> nn.ModuleList | None:
    """The list of transformer blocks of a BERT-like encoder (``encoder.layer``), else None."""
    blocks = getattr(getattr(encoder, "encoder", None), "layer", None)
    return blocks if isinstance(blocks, nn.ModuleList) else None


def _n_blocks(encoder: nn.Module) -> int:
    n = getattr(encoder.config, "num_hidden_layers", None) or getattr(encoder.config, "n_layer", None)
    if n is None:
        raise ValueError(f"cannot tell how many blocks {type(encoder).__name__} has (no num_hidden_layers in its config)")
    return int(n)


def resolve_layers(encoder: nn.Module, layers: Sequence[int] | None) -> list[int] | None:
    """Block indices with negatives counted from the end; checked against the model's depth."""
    if layers is None:
        return None
    n = _n_blocks(encoder)
    out = []
    for i in layers:
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise ValueError(f"layer {i} does not exist: the model has blocks 0..{n - 1} (or -{n}..-1 from the end)")
        out.append(j)
    return sorted(set(out))


def target_paths(model: nn.Module, cfg: PlantedConfig) -> list[str]:
    """Paths (inside the encoder) of the layers where Delta W* is planted and LoRA goes."""
    encoder = encoder_of(model)
    return find_targets(encoder, cfg.targets, resolve_layers(encoder, cfg.layers))


def _weight_out_in(layer: nn.Module) -> torch.Tensor:
    """The weight in (out x in) orientation, as a view (Conv1D stores it in x out)."""
    return layer.weight if isinstance(layer, nn.Linear) else layer.weight.T


@torch.no_grad()
def make_teacher(base: nn.Module, cfg: PlantedConfig) -> tuple[nn.Module, OrderedDict[str, torch.Tensor]]:
    """A copy of the base encoder with W <- W + Delta W* in the chosen layers.

    Returns ``(teacher, planted)``: the teacher (eval mode, no gradients) and, per layer
    path, Delta W* (out x in, float64).  Each layer's Delta W* is drawn from a generator
    seeded with ``cfg.seed`` and the layer's position in the list, so it is reproducible
    and different in each layer.  ``base`` is not changed.
    """
    encoder = encoder_of(base)
    paths = target_paths(encoder, cfg)
    teacher = copy.deepcopy(encoder).eval()
    teacher.requires_grad_(False)
    planted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for n, path in enumerate(paths):
        layer = teacher.get_submodule(path)
        in_features, out_features = layer_shape(layer)
        w = _weight_out_in(layer)
        s = planted_singular_values(cfg, float(torch.linalg.matrix_norm(w.double())))
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1000 + n)
        delta = planted_delta(out_features, in_features, s, gen)
        w += delta.to(w.dtype)  # in place on the view: Conv1D's (in x out) weight gets Delta W*^T
        planted[path] = delta
    return teacher, planted
