"""Comparing the updates of trained runs, layer by layer (notebook 04, "Inside ΔW").

``workbench.lessons.delta_w`` looks at one matrix or one model at a time.  Section 7 of the
LoRA paper (Hu et al. 2021, arXiv:2106.09685) mostly *compares*: an adapter of rank 8
with one of rank 64 (sec. 7.2, Figure 3), two random seeds at the same rank (Figure 4),
and the r = 4 and r = 64 updates of one weight side by side (sec. 7.3, Table 7).  This
module composes the analysis functions into those comparisons, for trained models:

* ``find_layer`` and ``lora_a`` pick a layer ("the value projection of the top block")
  and its A matrix (r x in);
* ``similarity_by_layer`` lists eq. 4 for the same layer in two models, next to what two
  *random* subspaces would give (``chance_similarity``), because phi is not zero by
  chance: in d dimensions two random subspaces overlap by max(i, j) / d on average;
* ``table7_layout`` sets ``amplification_report`` out as the paper's Table 7, and
  ``random_projection_norm`` says what its "random" column is on average;
* ``delta_difference`` checks that two models carry the same Delta W (a model trained
  in memory against the same adapter reloaded from its folder).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.lessons.delta_w import (
    _require_layers,
    amplification_report,
    base_and_delta,
    subspace_similarity_grid,
)
from workbench.lora.paths import layer_index
from workbench.util.checks import check_number, check_positive_int, is_integer

#: Column groups of ``table7_layout``: whose top-r singular vectors U, V project W.
TABLE7_SOURCES: tuple[str, ...] = ("ΔW", "W", "random")
#: Rows of ``table7_layout``, as the paper prints them (plus the factor it quotes in the text).
T7_PROJECTION = "||Uᵀ W Vᵀ||_F"
T7_WEIGHT = "||W||_F"
T7_DELTA = "||ΔW||_F"
T7_FACTOR = "amplification ||ΔW||_F / ||Uᵀ W Vᵀ||_F"
TABLE7_LAYOUT_ROWS: tuple[str, ...] = (T7_PROJECTION, T7_WEIGHT, T7_DELTA, T7_FACTOR)


# --------------------------------------------------------------------------- picking layers


def find_layer(model: nn.Module, role: str = "value", block: int = -1) -> str:
    """The path of the LoRA layer whose name ends in ``role`` in block ``block``.

    ``block`` counts like a Python index over the blocks that have such a layer:
    -1 is the top block (the one nearest the output), 0 the first.  The paper reads
    W_q and W_v of one chosen layer (layer 48 of GPT-3's 96); ``find_layer(model,
    "value", -1)`` is the same kind of choice for a small model.
    """
    if not isinstance(role, str) or not role:
        raise ValueError(f"role must be the end of a layer name such as 'query' or 'value', got {role!r}")
    if not is_integer(block):
        raise TypeError(f"block must be an integer (0 = first block, -1 = top block), got {block!r}")
    found = _require_layers(model)
    matches = {
        layer_index(path): path for path in found
        if (path == role or path.endswith("." + role)) and layer_index(path) is not None
    }
    if not matches:
        roles = sorted({path.rsplit(".", 1)[-1] for path in found})
        raise ValueError(f"no LoRA layer named {role!r} inside a numbered block; the LoRA layers end in: {roles}")
    blocks = sorted(matches)
    if not -len(blocks) <= int(block) < len(blocks):
        raise ValueError(
            f"block {block} is out of range: {len(blocks)} blocks have a LoRA {role!r} layer "
            f"(indices {blocks[0]}..{blocks[-1]}; use 0..{len(blocks) - 1} or -{len(blocks)}..-1)"
        )
    return matches[blocks[int(block)]]


def _layer(model: nn.Module, layer: str):
    found = _require_layers(model)
    if layer not in found:
        shown = ", ".join(list(found)[:6]) + (" ..." if len(found) > 6 else "")
        raise ValueError(f"{layer!r} is not a LoRA layer of this model; LoRA layers: {shown}")
    return found[layer]


def lora_a(model: nn.Module, layer: str) -> torch.Tensor:
    """The A matrix (r x in, a detached float64 CPU copy) of one LoRA layer, as eq. 4 reads it."""
    return _layer(model, layer).lora_A.weight.detach().to("cpu", torch.float64).clone()


# --------------------------------------------------------------------------- reload check


def delta_difference(model1: nn.Module, model2: nn.Module) -> float:
    """max over layers and entries of |Delta W_1 - Delta W_2|, with Delta W = s * B A in float64.

    Zero means the two models add exactly the same update to every adapted weight, for
    example a trained model and a fresh base with the run's adapter loaded into it.  The
    two models must have LoRA layers at the same paths with the same shapes.
    """
    layers1, layers2 = _require_layers(model1), _require_layers(model2)
    if list(layers1) != list(layers2):
        only1 = sorted(set(layers1) - set(layers2))
        only2 = sorted(set(layers2) - set(layers1))
        raise ValueError(
            f"the models have LoRA layers at different paths: only in the first {only1[:3]}, "
            f"only in the second {only2[:3]}" if only1 or only2 else
            "the models have the same LoRA layers in a different order"
        )
    worst = 0.0
    for path in layers1:
        _, d1 = base_and_delta(layers1[path])
        _, d2 = base_and_delta(layers2[path])
        if d1.shape != d2.shape:
            raise ValueError(f"layer {path}: Delta W is {tuple(d1.shape)} in the first model, {tuple(d2.shape)} in the second")
        worst = max(worst, float((d1 - d2).abs().max()))
    return worst


# --------------------------------------------------------------------------- subspace similarity


def _check_positive(value: Any, name: str) -> int:
    """``value`` as a plain int, once ``check_positive_int`` has accepted it."""
    check_positive_int(name, value)
    return int(value)


def chance_similarity(i: int, j: int, d: int) -> float:
    """phi(i, j) expected for two *unrelated* subspaces of R^d: max(i, j) / d.

    Fix the i directions V1 (d x i, orthonormal) and draw the j directions V2 uniformly at
    random.  Each column of V2 is then a uniform unit vector, so its squared cosine with
    each column of V1 averages 1/d, and

        E ||V1ᵀ V2||²_F = i j / d,     E phi = i j / (d min(i, j)) = max(i, j) / d.

    This is the floor a heat map must be read against: with d = 384 and j = 64, even
    random directions give phi(1, 64) = 1/6.  Needs 1 <= i, j <= d.
    """
    i, j, d = _check_positive(i, "i"), _check_positive(j, "j"), _check_positive(d, "d")
    if max(i, j) > d:
        raise ValueError(f"i = {i} and j = {j} directions cannot exceed the dimension d = {d}")
    return max(i, j) / d


def chance_similarity_grid(r1: int, r2: int, d: int) -> np.ndarray:
    """``chance_similarity(i, j, d)`` for i in 1..r1, j in 1..r2: the (r1 x r2) random baseline."""
    r1, r2, d = _check_positive(r1, "r1"), _check_positive(r2, "r2"), _check_positive(d, "d")
    if max(r1, r2) > d:
        raise ValueError(f"r1 = {r1} and r2 = {r2} directions cannot exceed the dimension d = {d}")
    i = np.arange(1, r1 + 1)[:, None]
    j = np.arange(1, r2 + 1)[None, :]
    return np.maximum(i, j) / d


def similarity_by_layer(model1: nn.Module, model2: nn.Module) -> pd.DataFrame:
    """Eq. 4 of the paper for every LoRA layer the two models share, with its chance level.

    Per layer (A1: r1 x in from ``model1``, A2: r2 x in from ``model2``):

    * ``phi_top1`` = phi(1, 1): is the top direction of A1 the top direction of A2?
    * ``phi_top1_in_all`` = phi(1, r2): does the top direction of A1 lie in the span of A2?
    * ``phi_all`` = phi(r1, r2): how much of the smaller span lies in the larger;

    each next to its ``chance_*`` value, max(i, j) / in (``chance_similarity``).  The paper
    found phi(1, j) well above chance between r = 8 and r = 64 (the top direction is
    shared) and the remaining directions near chance.
    """
    layers1, layers2 = _require_layers(model1), _require_layers(model2)
    shared = [p for p in layers1 if p in layers2]
    if not shared:
        raise ValueError("the two models have no LoRA layer at the same path to compare")
    rows = []
    for path in shared:
        a1 = layers1[path].lora_A.weight.detach()
        a2 = layers2[path].lora_A.weight.detach()
        grid = subspace_similarity_grid(a1, a2)  # checks that both act on the same input size
        r1, r2 = grid.shape
        d = a1.shape[1]
        rows.append({
            "layer": path,
            "r1": r1,
            "r2": r2,
            "in_features": d,
            "phi_top1": float(grid[0, 0]),
            "chance_top1": chance_similarity(1, 1, d),
            "phi_top1_in_all": float(grid[0, -1]),
            "chance_top1_in_all": chance_similarity(1, r2, d),
            "phi_all": float(grid[-1, -1]),
            "chance_all": chance_similarity(r1, r2, d),
        })
    return pd.DataFrame(rows)


def random_projection_norm(weight_fro: float, r: int, out_features: int, in_features: int) -> float:
    """The typical ||Uᵀ W V||_F for random orthonormal U (out x r), V (in x r): ||W||_F r / sqrt(out in).

    For U and V drawn uniformly and independently, E[U Uᵀ] = (r / out) I and E[V Vᵀ] = (r / in) I, so

        E ||Uᵀ W V||²_F = E tr(Uᵀ W V Vᵀ Wᵀ U) = (r / out)(r / in) ||W||²_F,

    and the root of that is returned.  It sets the "random" column of Table 7: for GPT-3's
    W_q (||W||_F = 61.95, 12288 x 12288) it gives 0.020 for r = 4 and 0.32 for r = 64, the
    paper's 0.02 and 0.33; a small model's W, with far fewer dimensions, keeps a much larger
    share of itself in r random directions.
    """
    check_number("weight_fro", weight_fro, low=0, what="a Frobenius norm")
    r = _check_positive(r, "r")
    out_features = _check_positive(out_features, "out_features")
    in_features = _check_positive(in_features, "in_features")
    if r > min(out_features, in_features):
        raise ValueError(f"r = {r} directions cannot exceed min(out, in) = {min(out_features, in_features)}")
    return float(weight_fro) * r / math.sqrt(out_features * in_features)


# --------------------------------------------------------------------------- Table 7 layout


def table7_layout(models: Mapping[str, nn.Module] | Sequence[nn.Module], layer: str, seed: int = 0) -> pd.DataFrame:
    """The amplification numbers of one layer for several runs, laid out as Table 7 of the paper.

    Columns: for each run (labelled by the mapping's key, or "r = <rank>" for a list),
    three columns ``ΔW``, ``W``, ``random``: whose top-r singular vectors U (out x r),
    V (in x r) project W in the row ||Uᵀ W Vᵀ||_F.  ``||W||_F`` sits under ``W``,
    ``||ΔW||_F`` and the amplification factor ||ΔW||_F / ||Uᵀ W Vᵀ||_F (ΔW's
    directions; the number the paper quotes, about 21 for r = 4) under ``ΔW``; the other
    cells are NaN.  The numbers are ``amplification_report(model, layer, seed)``.
    """
    if isinstance(models, Mapping):
        items = list(models.items())
    elif isinstance(models, Sequence) and not isinstance(models, (str, bytes)):
        items = [(f"r = {_layer(m, layer).rank}", m) for m in models]
        labels = [k for k, _ in items]
        if len(set(labels)) < len(labels):
            raise ValueError(f"two runs have the same rank ({labels}); pass a mapping {{label: model}} to tell them apart")
    else:
        raise TypeError(f"models must be a mapping {{label: model}} or a list of models, got {type(models).__name__}")
    if not items:
        raise ValueError("no runs given: table7_layout needs at least one model")
    columns, values = [], []
    for label, model in items:
        _layer(model, layer)  # a clear error for a path the model does not have
        rep = amplification_report(model, layer=layer, seed=seed).iloc[0]
        nan = math.nan
        block = {
            "ΔW": [rep["proj_delta_dirs"], nan, rep["delta_fro"], rep["amplification"]],
            "W": [rep["proj_weight_dirs"], rep["weight_fro"], nan, nan],
            "random": [rep["proj_random_dirs"], nan, nan, nan],
        }
        for source in TABLE7_SOURCES:
            columns.append((str(label), source))
            values.append([float(v) for v in block[source]])
    return pd.DataFrame(
        np.array(values).T,
        index=list(TABLE7_LAYOUT_ROWS),
        columns=pd.MultiIndex.from_tuples(columns, names=["run", "U, V: top-r directions of"]),
    )


# --------------------------------------------------------------------------- reading Table 7 against random


def amplification_vs_random(model: nn.Module, seed: int = 0) -> pd.DataFrame:
    """``amplification_report`` with the two readings the factor needs, one row per LoRA layer.

    The factor ||ΔW||_F / ||Uᵀ W V||_F is above 1 for *any* directions that hold little of W,
    random ones included, so a factor above 1 is no evidence by itself.  The paper's
    evidence (Table 7) is that ΔW's directions hold *more* of W than random ones (0.32
    against 0.02 for GPT-3's W_q at r = 4) and far less than W's own (21.67).  Added columns:

    * ``delta_vs_random`` = proj_delta_dirs / proj_random_dirs: above 1 when ΔW's directions
      hold more of W than random ones (the paper: 16 at r = 4);
    * ``factor_if_random`` = delta_fro / proj_random_dirs: the factor random directions
      would give; the measured factor is below it exactly when ``delta_vs_random`` > 1.
    """
    rep = amplification_report(model, seed=seed)
    rep["delta_vs_random"] = rep["proj_delta_dirs"] / rep["proj_random_dirs"]
    rep["factor_if_random"] = rep["delta_fro"] / rep["proj_random_dirs"]
    return rep


# --------------------------------------------------------------------------- how far A moved


def singular_spread(a: torch.Tensor | np.ndarray) -> float:
    """sigma_1 / median(sigma) of a matrix (e.g. A, r x in): how far one direction stands out.

    A random r x in matrix with r much smaller than in has nearly equal singular values (all
    close to sqrt(in) times its entries' standard deviation), so its spread is near 1; a
    trained A whose top direction grew has a larger one.
    """
    m = torch.as_tensor(a).detach().to("cpu", torch.float64)
    if m.ndim != 2 or min(m.shape) == 0:
        raise ValueError(f"expected a non-empty matrix, got shape {tuple(m.shape)}")
    s = torch.linalg.svdvals(m)
    med = float(s.median())
    if med == 0.0:
        raise ValueError("the median singular value is zero: the matrix is rank-deficient, its spread is infinite")
    return float(s[0]) / med


def a_spread_report(model: nn.Module, seed: int = 0) -> pd.DataFrame:
    """Per LoRA layer: ``spread`` = ``singular_spread`` of the trained A, and ``fresh_spread`` of a
    freshly initialised A of the same shape (as ``LoRALayer`` draws it, seeded by ``seed``),
    so "training barely moved A" can be read against what a random start looks like."""
    from workbench.lora.layer import LoRALayer

    rows = []
    for path, layer in _require_layers(model).items():
        a = layer.lora_A.weight
        torch.manual_seed(seed)
        fresh = LoRALayer(nn.Linear(a.shape[1], a.shape[1]), rank=a.shape[0], alpha=1.0).lora_A.weight
        rows.append({"layer": path, "rank": a.shape[0], "spread": singular_spread(a),
                     "fresh_spread": singular_spread(fresh)})
    return pd.DataFrame(rows)
