"""Looking inside Delta W (workbench.lessons.delta_w and its figures, delta_w_figures) against closed forms and hand computations.

Every matrix here is built from orthonormal factors with chosen singular values, so
the singular values, ranks, subspace similarities and projections have exact answers.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from transformers.pytorch_utils import Conv1D

from toy_models import LinearAndConv1D

from workbench.lessons import delta_w as an
from workbench.lessons import delta_w_figures as fg
from workbench.lora.inject import add_lora, lora_layers, merge_lora
from workbench.lora.layer import LoRALayer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[2]


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    """n x k with orthonormal columns (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def low_rank(out: int, inp: int, sigmas: list[float], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A) with B A = U diag(sigmas) V^T exactly: B = U diag(sigmas) (out x k), A = V^T (k x in)."""
    u = orthonormal(out, len(sigmas), seed)
    v = orthonormal(inp, len(sigmas), seed + 100)
    return u * torch.tensor(sigmas, dtype=torch.float64), v.T


# --------------------------------------------------------------------------- spectra and ranks


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_singular_values_of_a_constructed_product(dtype):
    sigmas = [5.0, 2.0, 0.5]
    b, a = low_rank(7, 9, sigmas)
    s = an.singular_values((b @ a).to(dtype))
    assert s.dtype == torch.float64 and s.shape == (7,)  # min(out, in) of them
    tol = (1e-12 if dtype == torch.float64 else 1e-6) * max(sigmas)  # relative to the largest singular value
    torch.testing.assert_close(s[:3], torch.tensor(sigmas, dtype=torch.float64), rtol=0, atol=tol)
    assert s[3:].abs().max() < tol * 5
    # numpy arrays are accepted too, and give the same numbers
    torch.testing.assert_close(an.singular_values((b @ a).numpy()), s, rtol=0, atol=tol)


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_effective_rank_of_rank_k_product_is_k(k, dtype):
    sigmas = [3.0 / (i + 1) for i in range(k)]
    b, a = low_rank(12, 10, sigmas, seed=k)
    delta = (b.to(dtype) @ a.to(dtype))  # product formed in the given precision, with its rounding
    assert an.effective_rank(delta) == k
    # numpy's matrix_rank is the independent reference for the default tolerance
    assert an.effective_rank(delta) == np.linalg.matrix_rank(delta.numpy())


def test_effective_rank_tolerance_and_edge_cases():
    b, a = low_rank(6, 5, [5.0, 2.0, 0.5])
    delta = b @ a
    assert an.effective_rank(delta, tol=1.0) == 2  # 5 and 2 exceed 1, 0.5 does not
    assert an.effective_rank(delta, tol=10.0) == 0
    assert an.rank_tolerance(delta) == pytest.approx(6 * np.finfo(np.float64).eps * 5.0)
    assert an.rank_tolerance(delta.float()) == pytest.approx(6 * np.finfo(np.float32).eps * 5.0, rel=1e-6)
    assert an.effective_rank(torch.zeros(4, 3)) == 0
    with pytest.raises(ValueError, match="tol must be"):
        an.effective_rank(delta, tol=-1.0)
    with pytest.raises(ValueError, match="2-D"):
        an.singular_values(torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        an.singular_values(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        an.singular_values([[1.0, 2.0]])


def test_entropy_effective_rank_closed_forms():
    # k equal singular values: p_k = 1/k, exp(H) = exp(log k) = k
    b, a = low_rank(8, 8, [2.0, 2.0, 2.0])
    assert an.entropy_effective_rank(b @ a) == pytest.approx(3.0, rel=1e-9)
    # sigma = (3, 1): p = (3/4, 1/4), H = -(3/4 log 3/4 + 1/4 log 1/4)
    b, a = low_rank(5, 4, [3.0, 1.0])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert an.entropy_effective_rank(b @ a) == pytest.approx(math.exp(h), rel=1e-9)
    assert an.entropy_effective_rank(7.0 * (b @ a)) == pytest.approx(math.exp(h), rel=1e-9)  # scale-free
    assert 1.0 < an.entropy_effective_rank(b @ a) < an.effective_rank(b @ a)
    assert an.entropy_effective_rank(torch.zeros(3, 3)) == 0.0


def test_factored_svd_matches_the_dense_svd():
    g = torch.Generator().manual_seed(2)
    b, a = torch.randn(9, 3, generator=g), torch.randn(3, 7, generator=g)
    b[:, 2] = b[:, 0]  # rank 2: the factored route must not need full-rank factors
    dense = 0.5 * (b.double() @ a.double())
    u, s, v = an.factored_svd(b, a, scale=0.5)
    assert u.shape == (9, 3) and s.shape == (3,) and v.shape == (7, 3)
    assert torch.allclose(s, torch.linalg.svdvals(dense)[:3], atol=1e-12)
    assert torch.allclose(u @ torch.diag(s) @ v.T, dense, atol=1e-12)
    assert torch.allclose(u.T @ u, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(v.T @ v, torch.eye(3, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="must share r"):
        an.factored_svd(b, a.T)


# --------------------------------------------------------------------------- subspace similarity


def test_similarity_of_a_subspace_with_itself_is_one():
    a = torch.randn(6, 20, dtype=torch.float64)
    grid = an.subspace_similarity_grid(a, a)
    assert grid.shape == (6, 6)
    np.testing.assert_allclose(grid, 1.0, atol=1e-12)  # min(i, j) shared directions out of min(i, j)
    for i in range(1, 7):
        assert an.subspace_similarity(a, 3.0 * a, i, i) == pytest.approx(1.0, abs=1e-12)


def test_similarity_of_orthogonal_subspaces_is_zero():
    q = orthonormal(12, 7, seed=3).T  # 7 orthonormal rows
    a1 = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)) @ q[:3]
    a2 = torch.diag(torch.tensor([4.0, 1.0, 0.5, 0.1], dtype=torch.float64)) @ q[3:]
    np.testing.assert_allclose(an.subspace_similarity_grid(a1, a2), 0.0, atol=1e-12)


@pytest.mark.parametrize("theta", [0.0, 0.3, math.pi / 4, 1.2, math.pi / 2])
def test_similarity_of_two_vectors_is_cos_squared(theta):
    a1 = torch.zeros(1, 5, dtype=torch.float64)
    a1[0, 0] = 3.0
    a2 = torch.zeros(1, 5, dtype=torch.float64)
    a2[0, 0], a2[0, 1] = -2.0 * math.cos(theta), -2.0 * math.sin(theta)  # sign and length do not matter
    assert an.subspace_similarity(a1, a2, 1, 1) == pytest.approx(math.cos(theta) ** 2, abs=1e-12)


def test_similarity_hand_built_two_by_two():
    """A1 spans e1 (stronger), e2; A2 spans e1 (stronger), cos t e2 + sin t e3.

    phi(1,1) = phi(1,2) = phi(2,1) = 1 (e1 is shared; e1 lies in span(e1, e2));
    phi(2,2) = (1 + cos^2 t) / 2.
    """
    t = 0.7
    e = torch.eye(4, dtype=torch.float64)
    a1 = torch.stack([3.0 * e[0], 1.0 * e[1]])
    a2 = torch.stack([2.0 * e[0], 0.5 * (math.cos(t) * e[1] + math.sin(t) * e[2])])
    expected = np.array([[1.0, 1.0], [1.0, (1 + math.cos(t) ** 2) / 2]])
    np.testing.assert_allclose(an.subspace_similarity_grid(a1, a2), expected, atol=1e-12)
    assert an.subspace_similarity(a1, a2, 2, 2) == pytest.approx(expected[1, 1], abs=1e-12)


def test_grid_matches_pointwise_definition_and_its_properties():
    g = torch.Generator().manual_seed(5)
    a1 = torch.randn(4, 10, generator=g, dtype=torch.float64)
    a2 = torch.randn(7, 10, generator=g, dtype=torch.float64)
    grid = an.subspace_similarity_grid(a1, a2)
    assert grid.shape == (4, 7)
    for i in range(1, 5):
        for j in range(1, 8):
            assert grid[i - 1, j - 1] == pytest.approx(an.subspace_similarity(a1, a2, i, j), abs=1e-12)
    assert (grid >= -1e-12).all() and (grid <= 1 + 1e-12).all()
    # swapping the matrices swaps i and j
    np.testing.assert_allclose(an.subspace_similarity_grid(a2, a1), grid.T, atol=1e-12)
    # the numerator (shared squared overlap) can only grow as either subspace grows
    numerator = grid * np.minimum.outer(np.arange(1, 5), np.arange(1, 8))
    assert (np.diff(numerator, axis=0) >= -1e-12).all() and (np.diff(numerator, axis=1) >= -1e-12).all()
    # with j >= i the denominator is fixed at i, so phi does not fall as j grows
    for i in range(1, 5):
        assert (np.diff(grid[i - 1, i - 1:]) >= -1e-12).all()
    # the whole input space contains every subspace
    full = torch.randn(10, 10, generator=g, dtype=torch.float64)
    np.testing.assert_allclose(an.subspace_similarity_grid(a1, full)[:, -1], 1.0, atol=1e-12)


def test_similarity_rejects_bad_indices_and_shapes():
    a1, a2 = torch.randn(3, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"i must be in 1\.\.3"):
        an.subspace_similarity(a1, a2, 4, 1)
    with pytest.raises(ValueError, match=r"i must be in 1\.\.3"):
        an.subspace_similarity(a1, a2, 0, 1)
    with pytest.raises(ValueError, match=r"j must be in 1\.\.5"):
        an.subspace_similarity(a1, a2, 1, 6)
    with pytest.raises(TypeError, match="integer"):
        an.subspace_similarity(a1, a2, True, 1)
    with pytest.raises(ValueError, match="same input space"):
        an.subspace_similarity_grid(a1, torch.randn(5, 9))


# --------------------------------------------------------------------------- amplification


def rank_one_sum(out: int, inp: int, sigmas: list[float], seed: int = 0):
    """W = sum_k sigma_k u_k v_k^T with orthonormal u's and v's; returns W, U, V."""
    u = orthonormal(out, len(sigmas), seed)
    v = orthonormal(inp, len(sigmas), seed + 1)
    w = u @ torch.diag(torch.tensor(sigmas, dtype=torch.float64)) @ v.T
    return w, u, v


SIG = [10.0, 5.0, 2.0, 1.0, 0.5]


def test_amplification_of_an_update_aligned_with_a_known_component():
    w, u, v = rank_one_sum(9, 7, SIG)
    c = 4.0
    delta = c * torch.outer(u[:, 3], v[:, 3])  # along W's 4th component (sigma = 1)
    table = an.amplification_table(w, delta, r=1)
    assert list(table.index) == list(an.TABLE7_ROWS) and list(table.columns) == ["r = 1"]
    col = table["r = 1"]
    assert col[an.ROW_DELTA_DIRS] == pytest.approx(SIG[3], rel=1e-12)  # u4^T W v4 = sigma_4
    assert col[an.ROW_WEIGHT_DIRS] == pytest.approx(SIG[0], rel=1e-12)  # W's own top direction
    assert col[an.ROW_WEIGHT_NORM] == pytest.approx(math.sqrt(sum(s * s for s in SIG)), rel=1e-12)
    assert col[an.ROW_DELTA_NORM] == pytest.approx(c, rel=1e-12)
    assert col[an.ROW_FACTOR] == pytest.approx(c / SIG[3], rel=1e-12)
    u_top, v_top = an.top_singular_directions(w, 2)  # W's top two directions are u1, u2 / v1, v2 (up to sign)
    assert torch.allclose((u_top.T @ u[:, :2]).abs(), torch.eye(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose((v_top.T @ v[:, :2]).abs(), torch.eye(2, dtype=torch.float64), atol=1e-10)


def test_amplification_rank_two_and_the_orthogonal_case():
    w, u, v = rank_one_sum(9, 7, SIG, seed=4)
    delta = 3.0 * torch.outer(u[:, 2], v[:, 2]) + 0.7 * torch.outer(u[:, 4], v[:, 4])
    col = an.amplification_table(w, delta, r=2)["r = 2"]
    assert col[an.ROW_DELTA_DIRS] == pytest.approx(math.hypot(SIG[2], SIG[4]), rel=1e-12)
    assert col[an.ROW_WEIGHT_DIRS] == pytest.approx(math.hypot(SIG[0], SIG[1]), rel=1e-12)
    assert col[an.ROW_DELTA_NORM] == pytest.approx(math.hypot(3.0, 0.7), rel=1e-12)
    assert col[an.ROW_FACTOR] == pytest.approx(math.hypot(3.0, 0.7) / math.hypot(SIG[2], SIG[4]), rel=1e-12)
    # W's own directions capture the most any r directions can (Ky Fan), random ones less
    assert col[an.ROW_WEIGHT_DIRS] >= col[an.ROW_DELTA_DIRS] and col[an.ROW_WEIGHT_DIRS] >= col[an.ROW_RANDOM_DIRS]
    # an update whose input direction W never reads: the projection is 0, the factor infinite
    v_out = orthonormal(7, 6, seed=9)
    v_new = v_out[:, -1] - v @ (v.T @ v_out[:, -1])  # orthogonal to all of W's row space
    col = an.amplification_table(w, torch.outer(u[:, 0], v_new / v_new.norm()), r=1)["r = 1"]
    assert col[an.ROW_DELTA_DIRS] == pytest.approx(0.0, abs=1e-12) and math.isinf(col[an.ROW_FACTOR])


def test_random_directions_are_seeded_and_average_to_the_closed_form():
    w, u, v = rank_one_sum(16, 12, [4.0, 3.0, 2.0, 1.0, 1.0, 0.5], seed=2)
    delta = torch.outer(u[:, 0], v[:, 0]) + 0.5 * torch.outer(u[:, 1], v[:, 1])
    one = an.amplification_table(w, delta, r=2, seed=7)
    again = an.amplification_table(w, delta, r=2, seed=7)
    other = an.amplification_table(w, delta, r=2, seed=8)
    pd.testing.assert_frame_equal(one, again)
    assert one.loc[an.ROW_RANDOM_DIRS].iloc[0] != other.loc[an.ROW_RANDOM_DIRS].iloc[0]
    assert one.drop(index=an.ROW_RANDOM_DIRS).equals(other.drop(index=an.ROW_RANDOM_DIRS))  # only random moves
    # Haar-random U, V: E ||U^T W V||_F^2 = (r/out)(r/in) ||W||_F^2
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(400):
        ur, vr = an.random_orthonormal(16, 2, g), an.random_orthonormal(12, 2, g)
        assert torch.allclose(ur.T @ ur, torch.eye(2, dtype=torch.float64), atol=1e-12)
        samples.append(an.projection_norm(w, ur, vr) ** 2)
    expected = (2 / 16) * (2 / 12) * float(w.norm()) ** 2
    assert np.mean(samples) == pytest.approx(expected, rel=0.15)


def test_amplification_rejects_bad_input():
    w, u, v = rank_one_sum(6, 5, [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="delta is zero"):
        an.amplification_table(w, torch.zeros(6, 5), r=1)
    with pytest.raises(ValueError, match="same .out x in. shape"):
        an.amplification_table(w, torch.ones(5, 6), r=1)
    with pytest.raises(ValueError, match=r"r must be in 1\.\.5"):
        an.amplification_table(w, w, r=6)
    with pytest.warns(UserWarning, match="numerical rank 1 < r = 2"):
        an.amplification_table(w, torch.outer(u[:, 0], v[:, 0]), r=2)


# --------------------------------------------------------------------------- per-model helpers


Tiny = LinearAndConv1D  # one Linear (6 -> 5, s = 2) and one Conv1D (6 -> 4, s = 0.5), from the toy table


LIN_SIG, CONV_SIG = [3.0, 0.25], [2.0, 1.0, 0.125]


def set_factors(layer: LoRALayer, sigmas: list[float], seed: int) -> None:
    """Give the layer factors with s * B A = U diag(sigmas) V^T."""
    b, a = low_rank(layer.out_features, layer.in_features, sigmas, seed)
    with torch.no_grad():
        layer.lora_A.weight.copy_(a)
        layer.lora_B.weight.copy_(b / layer.scaling)


@pytest.fixture
def tiny() -> Tiny:
    model = Tiny()
    set_factors(model.lin, LIN_SIG, seed=1)
    set_factors(model.conv, CONV_SIG, seed=2)
    return model


def test_delta_report_against_hand_norms(tiny):
    rep = an.delta_report(tiny, top=3)
    assert list(rep["layer"]) == ["lin", "conv"]
    lin, conv = rep.iloc[0], rep.iloc[1]
    assert (lin["out_features"], lin["in_features"], lin["rank"], lin["scaling"]) == (5, 6, 2, 2.0)
    assert (conv["out_features"], conv["in_features"], conv["rank"], conv["scaling"]) == (4, 6, 3, 0.5)
    for row, sig, base in ((lin, LIN_SIG, tiny.lin.base_layer.weight), (conv, CONV_SIG, tiny.conv.base_layer.weight)):
        delta_fro = math.sqrt(sum(s * s for s in sig))  # ||U diag(s) V^T||_F = ||s||_2
        weight_fro = math.sqrt(float((base.double() ** 2).sum()))
        assert row["delta_fro"] == pytest.approx(delta_fro, rel=1e-6)
        assert row["weight_fro"] == pytest.approx(weight_fro, rel=1e-12)
        assert row["ratio"] == pytest.approx(delta_fro / weight_fro, rel=1e-6)
        assert row["numerical_rank"] == len(sig)
        assert row["sigma_1"] == pytest.approx(sig[0], rel=1e-6) and row["sigma_2"] == pytest.approx(sig[1], rel=1e-6)
        np.testing.assert_allclose(row["singular_values"], sig, rtol=1e-6)
    assert lin["sigma_3"] == 0.0  # r = 2: a third singular value exists (min(5, 6) = 5) and is zero
    assert math.isnan(an.delta_report(tiny, top=6).iloc[0]["sigma_6"])  # a 5 x 6 matrix has only 5
    p = np.array(CONV_SIG) / sum(CONV_SIG)
    assert conv["entropy_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_conv1d_orientation_and_merged_layers(tiny):
    w, delta = an.base_and_delta(tiny.conv)
    assert w.shape == delta.shape == (4, 6)  # out x in, although Conv1D stores 6 x 4
    assert torch.equal(w, tiny.conv.base_layer.weight.detach().double().T)
    before = an.delta_report(tiny)
    merge_lora(tiny)
    after = an.delta_report(tiny)
    assert after["merged"].all() and not before["merged"].any()
    cols = ["delta_fro", "weight_fro", "ratio", "sigma_1", "sigma_2", "numerical_rank"]
    pd.testing.assert_frame_equal(before[cols], after[cols], rtol=1e-6)


def test_amplification_report_reads_conv1d_as_out_by_in():
    """A square Conv1D with a non-symmetric W: the transposed weight gives another answer."""
    w, u, v = rank_one_sum(5, 5, [4.0, 2.0, 1.0], seed=6)  # W (out x in)
    layer = LoRALayer(Conv1D(5, 5), rank=1, alpha=1)
    with torch.no_grad():
        layer.base_layer.weight.copy_(w.T)  # Conv1D stores in x out
        layer.lora_A.weight.copy_(v[:, 1][None, :])
        layer.lora_B.weight.copy_(3.0 * u[:, 1][:, None])  # Delta W = 3 u2 v2^T
    model = nn.Sequential(layer)
    rep = an.amplification_report(model)
    assert list(rep.columns) == ["layer", "rank"] + list(an.REPORT_COLUMNS.values())
    assert rep.loc[0, "proj_delta_dirs"] == pytest.approx(2.0, rel=1e-6)  # u2^T W v2 = sigma_2
    assert rep.loc[0, "amplification"] == pytest.approx(3.0 / 2.0, rel=1e-6)
    wrong = abs(float(u[:, 1] @ w.T @ v[:, 1]))  # what reading the stored (in x out) weight would give
    assert abs(wrong - 2.0) > 0.1


def test_report_helpers_reject_bad_models(tiny):
    with pytest.raises(ValueError, match="no LoRA layers"):
        an.delta_report(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="'nope' is not a LoRA layer.*lin, conv"):
        an.amplification_report(tiny, layer="nope")
    fresh = Tiny()  # B = 0
    with pytest.raises(ValueError, match="layer lin: delta is zero"):
        an.amplification_report(fresh)
    rep = an.delta_report(fresh)
    assert (rep["delta_fro"] == 0).all() and (rep["numerical_rank"] == 0).all()
    one = an.amplification_report(tiny, layer="conv")
    assert list(one["layer"]) == ["conv"]


def test_delta_report_on_an_injected_gpt2_agrees_with_merging():
    """Independent route: merge, then read (merged - original) from the stored Conv1D weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=1)
    model = GPT2LMHeadModel(config)
    original = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("attn.c_attn")}
    add_lora(model, rank=4, alpha=8, targets=["c_attn"])
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g))
    rep = an.delta_report(model).set_index("layer")
    merge_lora(model)
    for name, w0 in original.items():
        merged = model.get_submodule(name).base_layer.weight.detach()
        delta = (merged - w0).double().T  # (out x in) = (48 x 16)
        assert rep.loc[name, "out_features"] == 48 and rep.loc[name, "in_features"] == 16
        assert rep.loc[name, "delta_fro"] == pytest.approx(float(delta.norm()), rel=1e-5)
        assert rep.loc[name, "weight_fro"] == pytest.approx(float(w0.double().norm()), rel=1e-12)
        assert rep.loc[name, "numerical_rank"] == 4
        np.testing.assert_allclose(rep.loc[name, "singular_values"], torch.linalg.svdvals(delta)[:4].numpy(), rtol=1e-4)


# --------------------------------------------------------------------------- figures


def _labelled(ax) -> bool:
    """Both axis labels and a title (the house style puts titles on the left)."""
    return bool(ax.get_xlabel().strip()) and bool(ax.get_ylabel().strip()) and bool(ax.get_title(loc="left").strip())


def test_similarity_heatmap_is_a_labelled_figure(tmp_path):
    g = torch.Generator().manual_seed(1)
    grid = an.subspace_similarity_grid(torch.randn(3, 6, generator=g), torch.randn(5, 6, generator=g))
    fig = fg.similarity_heatmap(grid, "A (r=3)", "A (r=5)")
    assert isinstance(fig, Figure)
    ax, bar = fig.axes  # the map and its colour bar
    assert _labelled(ax) and "A (r=3)" in ax.get_ylabel() and "A (r=5)" in ax.get_xlabel()
    assert bar.get_ylabel().startswith("φ")
    image = ax.get_images()[0]
    np.testing.assert_allclose(image.get_array(), np.clip(grid, 0, 1))
    assert image.get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.texts][:2] == [f"{grid[0, 0]:.2f}", f"{grid[0, 1]:.2f}"]
    fig.savefig(tmp_path / "heat.png")
    assert (tmp_path / "heat.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fg.similarity_heatmap(np.array([[1.5]]))
    with pytest.raises(ValueError, match="2-D"):
        fg.similarity_heatmap(np.ones(3))


def test_spectrum_figure_draws_the_singular_values(tiny):
    for source in (tiny, an.delta_report(tiny), {"lin": LIN_SIG, "conv": CONV_SIG}):
        fig = fg.spectrum_figure(source)
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert _labelled(ax) and ax.get_yscale() == "log"
        lines = ax.get_lines()
        assert len(lines) == 2
        np.testing.assert_allclose(lines[0].get_ydata(), LIN_SIG, rtol=1e-6)
        np.testing.assert_allclose(lines[1].get_ydata(), CONV_SIG, rtol=1e-6)
        np.testing.assert_allclose(lines[1].get_xdata(), [1, 2, 3])
    norm = fg.spectrum_figure(tiny, layers=["conv"], normalize=True).axes[0]
    np.testing.assert_allclose(norm.get_lines()[0].get_ydata(), np.array(CONV_SIG) / CONV_SIG[0], rtol=1e-6)
    zero = fg.spectrum_figure(Tiny()).axes[0]  # B = 0: nothing to draw, a message instead
    assert any("B starts at zero" in t.get_text() for t in zero.texts)
    with pytest.raises(ValueError, match="unknown layers"):
        fg.spectrum_figure(tiny, layers=["nope"])
    with pytest.raises(TypeError, match="spectrum_figure takes"):
        fg.spectrum_figure([1.0, 2.0])


def test_figures_never_import_pyplot(tmp_path):
    code = textwrap.dedent(
        f"""
        import io, sys, numpy as np, torch
        from workbench.lessons import delta_w as an
        from workbench.lessons import delta_w_figures as fg
        g = an.subspace_similarity_grid(torch.randn(2, 5), torch.randn(4, 5))
        figs = [fg.similarity_heatmap(g), fg.spectrum_figure({{"a": [3.0, 1.0], "b": [2.0, 0.5]}})]
        for n, f in enumerate(figs):
            f.savefig({str(tmp_path)!r} + f"/{{n}}.png")
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all((tmp_path / f"{n}.png").read_bytes().startswith(PNG_MAGIC) for n in range(2))
