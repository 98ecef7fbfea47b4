"""Looking inside the update Delta W = s * B A, as section 7 of the LoRA paper does.

Hu et al. 2021 ("LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685,
section 7) ask three questions of a trained adapter, and this module answers each of
them for our own models:

1. *How big and how low-rank is the update?*  ``delta_report`` lists, per LoRA layer,
   ||Delta W||_F next to ||W||_F, the numerical rank of Delta W, its entropy effective
   rank and its largest singular values; ``spectrum_figure`` plots the singular values.
2. *Do adapters of different ranks learn the same directions?*  (sec. 7.2, eq. 4)
   ``subspace_similarity`` compares the top-i right singular vectors of one ``A`` with
   the top-j of another; ``similarity_heatmap`` draws the paper's heat map.
3. *How does Delta W relate to W?*  (sec. 7.3, Table 7)  ``amplification_table``
   projects W onto the r directions of Delta W and compares the sizes: a small
   projection next to a large ||Delta W||_F means the update *amplifies* directions
   that W had but barely used.

Conventions.  Every matrix is taken in the (out x in) orientation of ``nn.Linear``:
GPT-2's ``Conv1D`` stores its weight (in x out), so it is transposed first.  Every SVD
runs in float64 on the CPU: the numbers are small, and float32 rounding (about 1e-7 of
the largest singular value) would otherwise blur exactly the small singular values the
analysis is about.  Functions take ``torch.Tensor`` or ``numpy.ndarray`` matrices.

The figures of these numbers (``similarity_heatmap``, ``spectrum_figure``) are in
``workbench.lessons.delta_w_figures``, drawn in the house style (``workbench.viz.style``).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.lora.inject import lora_layers
from workbench.lora.layer import LoRALayer
from workbench.util.checks import check_number, check_positive_int, is_integer

MatrixLike = torch.Tensor | np.ndarray

#: Rows of ``amplification_table``, in the order of Table 7 of the paper.  The paper
#: writes the projection as U^T W V^T with V^T the (r x in) matrix of right singular
#: vectors; as a product of (out x r)^T, (out x in) and (in x r) it is U^T W V, r x r.
ROW_DELTA_DIRS = "||U^T W V^T||_F, U, V: top-r directions of ΔW"
ROW_WEIGHT_DIRS = "||U^T W V^T||_F, U, V: top-r directions of W"
ROW_RANDOM_DIRS = "||U^T W V^T||_F, U, V: random orthonormal"
ROW_WEIGHT_NORM = "||W||_F"
ROW_DELTA_NORM = "||ΔW||_F"
ROW_FACTOR = "amplification ||ΔW||_F / ||U^T W V^T||_F (ΔW directions)"
TABLE7_ROWS: tuple[str, ...] = (
    ROW_DELTA_DIRS, ROW_WEIGHT_DIRS, ROW_RANDOM_DIRS, ROW_WEIGHT_NORM, ROW_DELTA_NORM, ROW_FACTOR,
)
#: The same quantities as columns of ``amplification_report`` (one row per layer).
REPORT_COLUMNS: dict[str, str] = {
    ROW_DELTA_DIRS: "proj_delta_dirs",
    ROW_WEIGHT_DIRS: "proj_weight_dirs",
    ROW_RANDOM_DIRS: "proj_random_dirs",
    ROW_WEIGHT_NORM: "weight_fro",
    ROW_DELTA_NORM: "delta_fro",
    ROW_FACTOR: "amplification",
}

#: Singular values below this fraction of the largest are not drawn by ``spectrum_figure``:
#: they are the float64 rounding noise (about 1e-16 sigma_1) of an exactly rank-deficient
#: Delta W, and a log axis cannot show an exact zero.
SPECTRUM_FLOOR = 1e-10


# --------------------------------------------------------------------------- input checks


def _as_float64(x: Any, name: str) -> tuple[torch.Tensor, float]:
    """``x`` as a float64 CPU matrix, plus the machine epsilon of the dtype it came in.

    The epsilon of the *input* dtype is kept because it sets how precise the numbers
    are: a float32 matrix is only known to about 1.2e-7 of its size, however accurately
    we then decompose it.
    """
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{name} must hold real numbers, got a numpy array of dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {t.dtype}")
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)}); a matrix needs at least one entry")
    eps = torch.finfo(t.dtype).eps if t.is_floating_point() else torch.finfo(torch.float64).eps
    t = t.to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values; the analysis needs finite numbers")
    return t, float(eps)


def _check_count(value: Any, name: str, low: int, high: int, why: str) -> int:
    if not is_integer(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in {low}..{high} ({why}), got {value}")
    return int(value)


# --------------------------------------------------------------------------- spectra and ranks


def singular_values(delta: MatrixLike) -> torch.Tensor:
    """The singular values sigma_1 >= sigma_2 >= ... >= 0 of a matrix, in float64.

    Delta W = U diag(sigma) V^T; there are min(out, in) of them, and a product B A with
    inner size r has at most r that are not zero.
    """
    m, _ = _as_float64(delta, "delta")
    return torch.linalg.svdvals(m)


def rank_tolerance(delta: MatrixLike) -> float:
    """The default cut-off of ``effective_rank``: tol = max(out, in) * eps * sigma_1.

    This is numpy's ``matrix_rank`` rule, with ``eps`` the machine epsilon of the dtype
    the matrix came in (float32: 1.19e-7, float64: 2.22e-16): singular values below it
    are indistinguishable from the rounding error of storing the matrix.
    """
    m, eps = _as_float64(delta, "delta")
    s = torch.linalg.svdvals(m)
    return max(m.shape) * eps * float(s[0])


def effective_rank(delta: MatrixLike, tol: float | None = None) -> int:
    """Numerical rank: how many singular values exceed ``tol``.

        rank = #{ k : sigma_k > tol },   default tol = max(out, in) * eps * sigma_1

    (see ``rank_tolerance``).  A LoRA update B A has rank at most r; a lower numerical
    rank means some of the r directions were not used.  A zero matrix has rank 0.
    """
    m, eps = _as_float64(delta, "delta")
    s = torch.linalg.svdvals(m)
    if tol is None:
        tol = max(m.shape) * eps * float(s[0])
    else:
        check_number("tol", tol, low=0)
    return int((s > tol).sum())


def _entropy_rank(s: torch.Tensor) -> float:
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def entropy_effective_rank(delta: MatrixLike) -> float:
    """Roy & Vetterli's effective rank (EUSIPCO 2007): exp of the entropy of the spectrum.

        p_k = sigma_k / sum_j sigma_j,     erank = exp( -sum_k p_k log p_k )   (0 log 0 = 0)

    A real number between 1 and the numerical rank: k equal singular values give exactly
    k, and a spectrum dominated by one direction gives close to 1, so it says how many
    directions *carry* the update, where the numerical rank only counts those that are
    not zero.  The zero matrix gets 0 by convention (the definition needs sigma != 0).
    """
    return _entropy_rank(singular_values(delta))


# --------------------------------------------------------------------------- per-model report


def base_and_delta(layer: LoRALayer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, Delta W)`` of one LoRA layer, both float64 on the CPU, both (out x in).

    Delta W = s * B A is computed in float64 from the stored factors, so it has rank at
    most r up to float64 rounding.  W is the base weight, transposed for ``Conv1D``
    (stored in x out).  For a *merged* layer the stored weight is W + Delta W, and W is
    recovered as (W + Delta W) - Delta W; the merge itself rounded the sum to the
    storage dtype, so this W is exact only to that precision (about 1e-7 relative in
    float32), which is far below anything the analysis reads.
    """
    if not isinstance(layer, LoRALayer):
        raise TypeError(f"expected a LoRALayer, got {type(layer).__name__}")
    a = layer.lora_A.weight.detach().to("cpu", torch.float64)  # r x in
    b = layer.lora_B.weight.detach().to("cpu", torch.float64)  # out x r
    delta = layer.scaling * (b @ a)
    w = layer.base_layer.weight.detach().to("cpu", torch.float64)
    if layer.fan_in_fan_out:
        w = w.T
    if layer.merged:
        w = w - delta
    return w.contiguous(), delta


def factored_svd(b: MatrixLike, a: MatrixLike, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of Delta W = scale * B A from its factors, without forming the (out x in) matrix.

    With the QR decompositions B = Q_B R_B (Q_B: out x r) and A^T = Q_A R_A (Q_A: in x r),

        scale * B A = Q_B (scale * R_B R_A^T) Q_A^T,   and the r x r core = U_c diag(sigma) V_c^T,

    so Delta W = (Q_B U_c) diag(sigma) (Q_A V_c)^T is an SVD.  It costs O((out + in) r^2)
    instead of O(out in min(out, in)): a report over every layer of a model stays fast,
    and the r singular values come out exactly as a dense SVD gives them (the other
    min(out, in) - r are zero).  Returns (U: out x r, sigma: r, V: in x r), float64.
    """
    bt, _ = _as_float64(b, "B")
    at, _ = _as_float64(a, "A")
    if bt.shape[1] != at.shape[0]:
        raise ValueError(f"B (out x r) and A (r x in) must share r: B is {tuple(bt.shape)}, A is {tuple(at.shape)}")
    q_b, r_b = torch.linalg.qr(bt)
    q_a, r_a = torch.linalg.qr(at.T)
    u_c, sigma, vh_c = torch.linalg.svd(float(scale) * (r_b @ r_a.T))
    return q_b @ u_c, sigma, q_a @ vh_c.T


def _layer_svd(layer: LoRALayer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``factored_svd`` of a LoRA layer's s * B A (out x in orientation)."""
    return factored_svd(layer.lora_B.weight, layer.lora_A.weight, layer.scaling)


def _require_layers(model: nn.Module) -> "dict[str, LoRALayer]":
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch model (nn.Module), got {type(model).__name__}")
    found = lora_layers(model)
    if not found:
        raise ValueError("the model has no LoRA layers; call add_lora first")
    return dict(found)


def delta_report(model: nn.Module, top: int = 3) -> pd.DataFrame:
    """One row per LoRA layer: how large Delta W is next to W, and how many directions it uses.

    Columns: ``layer`` (module path), ``out_features``, ``in_features``, ``rank`` (r),
    ``scaling`` (s), ``merged``, ``delta_fro`` = ||Delta W||_F, ``weight_fro`` = ||W||_F,
    ``ratio`` = ||Delta W||_F / ||W||_F, ``numerical_rank`` (``effective_rank`` with the
    float64 tolerance, since Delta W is formed in float64), ``entropy_rank``
    (``entropy_effective_rank``), ``sigma_1`` .. ``sigma_<top>`` (the largest singular
    values of Delta W: 0 past r, NaN past min(out, in)), and ``singular_values``: a tuple of
    the first r singular values (all that B A can have), which ``spectrum_figure`` reads.
    The singular values come from ``factored_svd`` (cheap: r x r core), not a dense SVD.

    W is (out x in) and, for a merged layer, the base weight with Delta W subtracted
    again (see ``base_and_delta``), so the report reads the same before and after a merge.
    A freshly initialised adapter (B = 0) has Delta W = 0: ratio 0 and rank 0.
    """
    check_positive_int("top", top, what="how many singular values to list")
    rows = []
    for path, layer in _require_layers(model).items():
        w, delta = base_and_delta(layer)
        _, s, _ = _layer_svd(layer)  # the r singular values that can be non-zero
        tol = max(delta.shape) * torch.finfo(torch.float64).eps * float(s[0])
        delta_fro = float(torch.linalg.matrix_norm(delta))
        weight_fro = float(torch.linalg.matrix_norm(w))
        row: dict[str, Any] = {
            "layer": path,
            "out_features": delta.shape[0],
            "in_features": delta.shape[1],
            "rank": layer.rank,
            "scaling": float(layer.scaling),
            "merged": bool(layer.merged),
            "delta_fro": delta_fro,
            "weight_fro": weight_fro,
            "ratio": delta_fro / weight_fro if weight_fro > 0 else math.nan,
            "numerical_rank": int((s > tol).sum()),
            "entropy_rank": _entropy_rank(s),
        }
        for k in range(top):  # sigma_k for k > r is exactly 0; past min(out, in) it does not exist
            row[f"sigma_{k + 1}"] = float(s[k]) if k < len(s) else 0.0 if k < min(delta.shape) else math.nan
        row["singular_values"] = tuple(float(v) for v in s[: layer.rank])
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- subspace similarity (sec. 7.2)


def right_singular_vectors(a: MatrixLike, name: str = "A") -> torch.Tensor:
    """The right singular vectors of A (r x in) as the columns of V (in x min(r, in)).

    A = U diag(sigma) V^T; column k of V is the input direction that A maps most strongly
    after the first k-1, so V[:, :i] spans the i most important input directions.  Their
    signs are arbitrary, and so is their order among equal singular values; eq. 4 only
    uses the spans of leading blocks, which are well defined when sigma_i > sigma_(i+1).
    """
    m, _ = _as_float64(a, name)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    return vh.T


def _two_bases(a1: MatrixLike, a2: MatrixLike) -> tuple[torch.Tensor, torch.Tensor]:
    v1 = right_singular_vectors(a1, "A1")
    v2 = right_singular_vectors(a2, "A2")
    if v1.shape[0] != v2.shape[0]:
        raise ValueError(
            f"A1 and A2 must act on the same input space (A is r x in, as lora_A.weight): "
            f"A1 has in = {v1.shape[0]} columns, A2 has in = {v2.shape[0]}"
        )
    return v1, v2


def subspace_similarity(a1: MatrixLike, a2: MatrixLike, i: int, j: int) -> float:
    """Eq. 4 of the paper: how much of the top-i directions of A1 lie in the top-j of A2.

        phi(A1, A2, i, j) = || V1[:, :i]^T V2[:, :j] ||_F^2 / min(i, j)

    with V1, V2 the right singular vectors of A1 (r1 x in) and A2 (r2 x in), columns
    ordered by singular value (the paper calls them U, "the right-singular unitary
    matrix").  The numerator is the sum of cos^2 of the principal angles between the two
    subspaces, so phi is 1 when the smaller subspace lies inside the larger and 0 when
    they are orthogonal.  Requires 1 <= i <= r1 and 1 <= j <= r2.
    """
    v1, v2 = _two_bases(a1, a2)
    i = _check_count(i, "i", 1, v1.shape[1], f"A1 has {v1.shape[1]} right singular vectors")
    j = _check_count(j, "j", 1, v2.shape[1], f"A2 has {v2.shape[1]} right singular vectors")
    overlap = v1[:, :i].T @ v2[:, :j]
    return float((overlap**2).sum()) / min(i, j)


def subspace_similarity_grid(a1: MatrixLike, a2: MatrixLike) -> np.ndarray:
    """phi(A1, A2, i, j) for every i in 1..r1 and j in 1..r2: an (r1 x r2) array.

    Entry [i-1, j-1] is phi(i, j).  With M = V1^T V2, the numerator of eq. 4 is the sum of
    M_ab^2 over a <= i, b <= j: a 2-D cumulative sum, so the whole grid costs one SVD of
    each matrix and one product.
    """
    v1, v2 = _two_bases(a1, a2)
    sq = ((v1.T @ v2) ** 2).numpy()
    numerator = sq.cumsum(axis=0).cumsum(axis=1)
    i = np.arange(1, sq.shape[0] + 1)[:, None]
    j = np.arange(1, sq.shape[1] + 1)[None, :]
    return numerator / np.minimum(i, j)


# --------------------------------------------------------------------------- amplification (sec. 7.3)


def top_singular_directions(m: MatrixLike, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r, V_r): the first r left (out x r) and right (in x r) singular vectors of m."""
    t, _ = _as_float64(m, "matrix")
    r = _check_count(r, "r", 1, min(t.shape), f"a {t.shape[0]} x {t.shape[1]} matrix has {min(t.shape)} directions")
    u, _, vh = torch.linalg.svd(t, full_matrices=False)
    return u[:, :r], vh[:r].T


def random_orthonormal(n: int, r: int, generator: torch.Generator) -> torch.Tensor:
    """An n x r matrix with orthonormal columns, uniformly (Haar) distributed.

    QR of a Gaussian matrix, with the signs of R's diagonal moved into Q so the result
    does not favour any direction.
    """
    g = torch.randn(n, r, generator=generator, dtype=torch.float64)
    q, rr = torch.linalg.qr(g)
    signs = torch.sign(torch.diagonal(rr))
    signs[signs == 0] = 1.0
    return q * signs


def projection_norm(w: MatrixLike, u: torch.Tensor, v: torch.Tensor) -> float:
    """|| U^T W V ||_F: the size of W inside the r input and r output directions U, V.

    With orthonormal U (out x r) and V (in x r) this is at most ||W||_F, with equality
    when W lives entirely in those directions.
    """
    t, _ = _as_float64(w, "W")
    return float(torch.linalg.matrix_norm(u.T.to(torch.float64) @ t @ v.to(torch.float64)))


def amplification_table(w: MatrixLike, delta: MatrixLike, r: int, seed: int = 0) -> pd.DataFrame:
    """Table 7 of the paper for one layer: does Delta W amplify directions W already has?

    U (out x r), V (in x r) are the top-r singular vectors of Delta W (r = the LoRA rank),
    and the table reports

    * ||U^T W V^T||_F for U, V from Delta W, from W itself (this equals
      sqrt(sigma_1(W)^2 + ... + sigma_r(W)^2)), and random orthonormal (seeded by ``seed``),
    * ||W||_F and ||Delta W||_F,
    * the amplification factor ||Delta W||_F / ||U^T W V^T||_F with Delta W's directions.

    The paper found the projection along Delta W's directions much smaller than along
    W's own (so Delta W does not repeat the top directions of W) yet larger than random,
    and the factor large (about 21 for r = 4 in GPT-3's layer 48 W_q): the update
    strongly amplifies directions W has but does not emphasise.

    Both matrices are (out x in).  Returns one column named ``"r = <r>"`` indexed by
    ``TABLE7_ROWS``, so tables for several ranks sit side by side with ``pd.concat(...,
    axis=1)``.  If Delta W has numerical rank k < r, its last r - k directions are an
    arbitrary completion, which a ``UserWarning`` points out; a zero Delta W has no
    directions at all and raises ``ValueError``.  A projection that is zero up to float64
    rounding (at most max(out, in) * eps * sigma_1(W)) gives an infinite factor.
    """
    wt, _ = _as_float64(w, "W")
    dt, deps = _as_float64(delta, "delta")
    if wt.shape != dt.shape:
        raise ValueError(
            f"W and delta must have the same (out x in) shape, got {tuple(wt.shape)} and {tuple(dt.shape)}"
            " (a Conv1D weight is stored in x out: transpose it, or use base_and_delta)"
        )
    r = _check_count(r, "r", 1, min(dt.shape), f"a {dt.shape[0]} x {dt.shape[1]} matrix has {min(dt.shape)} directions")
    u, sigma, vh = torch.linalg.svd(dt, full_matrices=False)
    values = _amplification(wt, u[:, :r], sigma, vh[:r].T, deps, seed)
    return pd.DataFrame({f"r = {r}": [values[k] for k in TABLE7_ROWS]}, index=list(TABLE7_ROWS))


def _amplification(
    wt: torch.Tensor, u: torch.Tensor, sigma: torch.Tensor, v: torch.Tensor, eps: float, seed: int
) -> dict[str, float]:
    """The numbers of Table 7, given W and the top-r singular triplets (U, sigma, V) of Delta W."""
    if not is_integer(seed):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    r = u.shape[1]
    if float(sigma[0]) == 0.0:
        raise ValueError("delta is zero, so it has no directions to project W onto (B starts at zero: train first)")
    k = int((sigma > max(wt.shape) * eps * float(sigma[0])).sum())
    if k < r:
        warnings.warn(
            f"delta has numerical rank {k} < r = {r}: its last {r - k} singular directions are an "
            "arbitrary completion and the projection along them means nothing in particular",
            UserWarning,
            stacklevel=3,
        )
    gen = torch.Generator().manual_seed(int(seed))
    u_rand = random_orthonormal(wt.shape[0], r, gen)
    v_rand = random_orthonormal(wt.shape[1], r, gen)
    sigma_w = torch.linalg.svdvals(wt)
    proj_delta = projection_norm(wt, u, v)
    # A projection at float64 rounding level of W is a zero that rounding made non-zero.
    zero = max(wt.shape) * torch.finfo(torch.float64).eps * float(sigma_w[0])
    delta_fro = float(torch.linalg.vector_norm(sigma))
    return {
        ROW_DELTA_DIRS: proj_delta,
        # U_W^T W V_W = diag(sigma_1(W) .. sigma_r(W)) for W's own top-r singular vectors, so its
        # norm is sqrt(sigma_1^2 + ... + sigma_r^2): read off the spectrum, no vectors needed.
        ROW_WEIGHT_DIRS: float(torch.linalg.vector_norm(sigma_w[:r])),
        ROW_RANDOM_DIRS: projection_norm(wt, u_rand, v_rand),
        ROW_WEIGHT_NORM: float(torch.linalg.vector_norm(sigma_w)),
        ROW_DELTA_NORM: delta_fro,
        ROW_FACTOR: delta_fro / proj_delta if proj_delta > zero else math.inf,
    }


def amplification_report(model: nn.Module, layer: str | None = None, seed: int = 0) -> pd.DataFrame:
    """``amplification_table`` for every LoRA layer (or just ``layer``), one row each.

    Columns: ``layer``, ``rank`` (r, the number of directions projected onto), then
    ``proj_delta_dirs``, ``proj_weight_dirs``, ``proj_random_dirs``, ``weight_fro``,
    ``delta_fro``, ``amplification`` (the rows of Table 7, see ``REPORT_COLUMNS``).
    W comes from ``base_and_delta`` (out x in, merge undone); the directions of Delta W
    from ``factored_svd``, so only W needs a dense SVD (for its singular values).
    """
    found = _require_layers(model)
    if layer is not None:
        if layer not in found:
            shown = ", ".join(list(found)[:6]) + (" ..." if len(found) > 6 else "")
            raise ValueError(f"{layer!r} is not a LoRA layer of this model; LoRA layers: {shown}")
        found = {layer: found[layer]}
    rows = []
    for path, lora in found.items():
        w, _ = base_and_delta(lora)
        u, sigma, v = _layer_svd(lora)
        try:
            values = _amplification(w, u, sigma, v, torch.finfo(torch.float64).eps, seed)
        except ValueError as e:
            raise ValueError(f"layer {path}: {e}") from None
        row: dict[str, Any] = {"layer": path, "rank": lora.rank}
        row.update({REPORT_COLUMNS[k]: values[k] for k in TABLE7_ROWS})
        rows.append(row)
    return pd.DataFrame(rows)
