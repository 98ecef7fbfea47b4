"""Comparing trained updates (workbench.lessons.inspect_runs) against hand computations and closed forms.

The models are 3-block BERTs 16 wide from the toy table (tests/toy_models.py, no download); their B matrices
are filled with seeded noise so that Delta W = s B A is not zero.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from toy_models import NARROW_HIDDEN, narrow_bert

from workbench.lessons import delta_w as an
from workbench.lessons import inspect_runs as ir
from workbench.lora.adapters import load_adapter, save_adapter
from workbench.lora.inject import add_lora, lora_layers

HIDDEN = NARROW_HIDDEN


def tiny_bert(seed: int = 0):
    """The toy table's narrow BERT (16 wide), 3 blocks."""
    return narrow_bert(blocks=3, seed=seed)


def trained_like(rank: int, seed: int = 0, base_seed: int = 0):
    """A tiny BERT with LoRA on query and value, B filled with noise (as if trained)."""
    model = tiny_bert(base_seed)
    torch.manual_seed(seed)
    add_lora(model, rank=rank, alpha=2 * rank, targets=["query", "value"])
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g))
    return model


# --------------------------------------------------------------------------- picking layers


def test_find_layer_counts_blocks_like_a_python_index():
    model = trained_like(2)
    assert ir.find_layer(model, "value", -1) == "bert.encoder.layer.2.attention.self.value"
    assert ir.find_layer(model, "query", 0) == "bert.encoder.layer.0.attention.self.query"
    assert ir.find_layer(model, "query", 1) == ir.find_layer(model, "query", -2)
    with pytest.raises(ValueError, match="block 3 is out of range: 3 blocks"):
        ir.find_layer(model, "value", 3)
    with pytest.raises(ValueError, match="no LoRA layer named 'key'.*'query', 'value'"):
        ir.find_layer(model, "key")
    with pytest.raises(TypeError, match="block must be an integer"):
        ir.find_layer(model, "value", 1.0)
    with pytest.raises(ValueError, match="no LoRA layers"):
        ir.find_layer(tiny_bert(), "value")


def test_find_layer_follows_the_adapted_blocks_only():
    model = tiny_bert()
    add_lora(model, rank=2, alpha=4, targets=["value"], layers=[0, 1])
    assert ir.find_layer(model, "value", -1) == "bert.encoder.layer.1.attention.self.value"


def test_lora_a_is_a_float64_copy_of_the_layer_matrix():
    model = trained_like(3)
    path = ir.find_layer(model, "query", 1)
    a = ir.lora_a(model, path)
    weight = model.get_submodule(path).lora_A.weight
    assert a.dtype == torch.float64 and a.shape == (3, HIDDEN)
    assert torch.equal(a, weight.detach().double())
    a.zero_()  # a copy: the model is untouched
    assert weight.abs().sum() > 0
    with pytest.raises(ValueError, match="is not a LoRA layer"):
        ir.lora_a(model, "bert.encoder.layer.0.attention.self.key")


# --------------------------------------------------------------------------- reload check


def test_delta_difference_is_zero_for_a_copy_and_for_a_reloaded_adapter(tmp_path):
    model = trained_like(2)
    assert ir.delta_difference(model, copy.deepcopy(model)) == 0.0
    save_adapter(model, tmp_path / "adapter")
    fresh = tiny_bert()  # the same base weights (same seed), no LoRA yet
    load_adapter(fresh, tmp_path / "adapter")
    assert ir.delta_difference(model, fresh) == 0.0


def test_delta_difference_measures_a_change_of_one_entry_of_b():
    model = trained_like(2)
    other = copy.deepcopy(model)
    path = ir.find_layer(model, "value", 1)
    layer = other.get_submodule(path)
    delta = 0.25
    with torch.no_grad():
        layer.lora_B.weight[3, 1] += delta
    # Delta W changes only in row 3, by s * delta * A[1, :]
    expected = layer.scaling * delta * float(layer.lora_A.weight[1].detach().abs().max())
    assert ir.delta_difference(model, other) == pytest.approx(expected, rel=1e-6)


def test_delta_difference_rejects_models_that_do_not_match():
    q_only = tiny_bert()
    add_lora(q_only, rank=2, alpha=4, targets=["query"])
    with pytest.raises(ValueError, match="different paths"):
        ir.delta_difference(trained_like(2), q_only)
    with pytest.raises(ValueError, match="no LoRA layers"):
        ir.delta_difference(trained_like(2), tiny_bert())


# --------------------------------------------------------------------------- chance similarity


def test_chance_similarity_closed_forms():
    assert ir.chance_similarity(1, 1, 384) == pytest.approx(1 / 384)
    assert ir.chance_similarity(8, 64, 384) == pytest.approx(1 / 6)
    assert ir.chance_similarity(5, 5, 5) == 1.0  # the whole space: every subspace is inside it
    grid = ir.chance_similarity_grid(2, 3, 10)
    assert grid.shape == (2, 3)
    assert np.allclose(grid, [[0.1, 0.2, 0.3], [0.2, 0.2, 0.3]])
    with pytest.raises(ValueError, match="cannot exceed the dimension"):
        ir.chance_similarity(3, 11, 10)
    with pytest.raises(ValueError, match="i must be a positive integer"):
        ir.chance_similarity(0, 1, 10)
    with pytest.raises(ValueError, match="r2 must be a positive integer"):
        ir.chance_similarity_grid(2, True, 10)


def test_chance_similarity_matches_random_matrices_on_average():
    """The mean of eq. 4 over independent Gaussian A1, A2 is max(i, j) / d."""
    d, r1, r2, trials = 24, 3, 6, 600
    g = torch.Generator().manual_seed(0)
    grids = np.stack([
        an.subspace_similarity_grid(torch.randn(r1, d, generator=g, dtype=torch.float64),
                                    torch.randn(r2, d, generator=g, dtype=torch.float64))
        for _ in range(trials)
    ])
    mean, sem = grids.mean(axis=0), grids.std(axis=0, ddof=1) / math.sqrt(trials)
    expected = ir.chance_similarity_grid(r1, r2, d)
    assert np.all(np.abs(mean - expected) < 4 * sem + 1e-12), (mean, expected)


# --------------------------------------------------------------------------- similarity by layer


def test_similarity_by_layer_against_eq4_and_nested_subspaces():
    small = trained_like(2, seed=0)
    large = trained_like(4, seed=1)
    # Make the rank-2 A of block 0's query the first two rows of the rank-4 A: nested spans.
    path = "bert.encoder.layer.0.attention.self.query"
    with torch.no_grad():
        large.get_submodule(path).lora_A.weight[:2] = small.get_submodule(path).lora_A.weight
    table = ir.similarity_by_layer(small, large)
    assert list(table["layer"]) == list(lora_layers(small))
    assert set(table["r1"]) == {2} and set(table["r2"]) == {4} and set(table["in_features"]) == {HIDDEN}
    for _, row in table.iterrows():
        a1, a2 = ir.lora_a(small, row["layer"]), ir.lora_a(large, row["layer"])
        assert row["phi_top1"] == pytest.approx(an.subspace_similarity(a1, a2, 1, 1), abs=1e-12)
        assert row["phi_top1_in_all"] == pytest.approx(an.subspace_similarity(a1, a2, 1, 4), abs=1e-12)
        assert row["phi_all"] == pytest.approx(an.subspace_similarity(a1, a2, 2, 4), abs=1e-12)
    nested = table.set_index("layer").loc[path]
    assert nested["phi_top1_in_all"] == pytest.approx(1.0) and nested["phi_all"] == pytest.approx(1.0)
    assert table["chance_top1"].eq(1 / HIDDEN).all()
    assert table["chance_top1_in_all"].eq(4 / HIDDEN).all() and table["chance_all"].eq(4 / HIDDEN).all()


def test_similarity_by_layer_needs_shared_layers():
    q_only, v_only = tiny_bert(), tiny_bert()
    add_lora(q_only, rank=2, alpha=4, targets=["query"])
    add_lora(v_only, rank=2, alpha=4, targets=["value"])
    with pytest.raises(ValueError, match="no LoRA layer at the same path"):
        ir.similarity_by_layer(q_only, v_only)


# --------------------------------------------------------------------------- Table 7 layout


def test_table7_layout_holds_the_amplification_numbers_in_the_papers_places():
    small, large = trained_like(2), trained_like(8, seed=1)
    path = ir.find_layer(small, "query", -1)
    table = ir.table7_layout([small, large], path, seed=3)
    assert list(table.index) == list(ir.TABLE7_LAYOUT_ROWS)
    assert list(table.columns) == [(f"r = {r}", s) for r in (2, 8) for s in ir.TABLE7_SOURCES]
    for label, model, r in (("r = 2", small, 2), ("r = 8", large, 8)):
        w, delta = an.base_and_delta(model.get_submodule(path))
        ref = an.amplification_table(w, delta, r, seed=3).iloc[:, 0]  # dense SVD route
        col = table[label]
        assert col.loc[ir.T7_PROJECTION, "ΔW"] == pytest.approx(ref[an.ROW_DELTA_DIRS], rel=1e-9)
        assert col.loc[ir.T7_PROJECTION, "W"] == pytest.approx(ref[an.ROW_WEIGHT_DIRS], rel=1e-9)
        assert col.loc[ir.T7_PROJECTION, "random"] == pytest.approx(ref[an.ROW_RANDOM_DIRS], rel=1e-9)
        # hand computations: the Frobenius norms and the factor they give
        assert col.loc[ir.T7_WEIGHT, "W"] == pytest.approx(float(torch.linalg.matrix_norm(w)), rel=1e-12)
        assert col.loc[ir.T7_DELTA, "ΔW"] == pytest.approx(float(torch.linalg.matrix_norm(delta)), rel=1e-9)
        assert col.loc[ir.T7_FACTOR, "ΔW"] == pytest.approx(
            col.loc[ir.T7_DELTA, "ΔW"] / col.loc[ir.T7_PROJECTION, "ΔW"], rel=1e-12)
        # W's own top-r directions give sqrt(sigma_1(W)^2 + ... + sigma_r(W)^2)
        s_w = torch.linalg.svdvals(w)
        assert col.loc[ir.T7_PROJECTION, "W"] == pytest.approx(float(s_w[:r].norm()), rel=1e-12)
    blank = table.isna()
    assert blank.loc[ir.T7_WEIGHT, ("r = 2", "ΔW")] and blank.loc[ir.T7_DELTA, ("r = 8", "W")]
    assert blank.loc[ir.T7_FACTOR, ("r = 2", "random")] and not blank.loc[ir.T7_PROJECTION].any()


def test_table7_layout_labels_and_errors():
    a, b = trained_like(2, seed=0), trained_like(2, seed=1)
    path = ir.find_layer(a, "value", 0)
    with pytest.raises(ValueError, match="same rank"):
        ir.table7_layout([a, b], path)
    table = ir.table7_layout({"seed 0": a, "seed 1": b}, path)
    assert list(table.columns.get_level_values(0).unique()) == ["seed 0", "seed 1"]
    assert isinstance(table, pd.DataFrame) and table.shape == (4, 6)
    with pytest.raises(ValueError, match="is not a LoRA layer"):
        ir.table7_layout([a], "bert.encoder.layer.0.attention.self.key")
    with pytest.raises(TypeError, match="mapping"):
        ir.table7_layout(a, path)
    with pytest.raises(ValueError, match="at least one model"):
        ir.table7_layout({}, path)


def test_random_projection_norm_closed_form_and_the_papers_random_column():
    assert ir.random_projection_norm(10.0, 2, 8, 32) == pytest.approx(10.0 * 2 / 16)
    # Table 7 of the paper: ||W_q||_F = 61.95 (12288 x 12288); random directions gave 0.02 (r = 4) and 0.33 (r = 64)
    assert round(ir.random_projection_norm(61.95, 4, 12288, 12288), 2) == 0.02
    assert round(ir.random_projection_norm(61.95, 64, 12288, 12288), 2) == 0.32  # the paper's 0.33 is one draw
    with pytest.raises(ValueError, match="cannot exceed"):
        ir.random_projection_norm(1.0, 9, 8, 32)
    with pytest.raises(ValueError, match="weight_fro"):
        ir.random_projection_norm(float("nan"), 1, 8, 8)


def test_random_projection_norm_matches_random_orthonormal_projections_on_average():
    g = torch.Generator().manual_seed(5)
    out, inp, r, trials = 12, 20, 3, 800
    w = torch.randn(out, inp, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3.0, inp, dtype=torch.float64)
    squares = np.array([
        an.projection_norm(w, an.random_orthonormal(out, r, g), an.random_orthonormal(inp, r, g)) ** 2
        for _ in range(trials)
    ])
    expected = ir.random_projection_norm(float(torch.linalg.matrix_norm(w)), r, out, inp) ** 2
    assert abs(squares.mean() - expected) < 4 * squares.std(ddof=1) / math.sqrt(trials)


# --------------------------------------------------------------------------- reading Table 7 against random; how far A moved


def test_amplification_vs_random_adds_the_two_readings():
    model = trained_like(3)
    rep = ir.amplification_vs_random(model)
    base = an.amplification_report(model)
    assert list(rep["layer"]) == list(base["layer"])
    np.testing.assert_allclose(rep["delta_vs_random"], base["proj_delta_dirs"] / base["proj_random_dirs"], rtol=1e-12)
    np.testing.assert_allclose(rep["factor_if_random"], base["delta_fro"] / base["proj_random_dirs"], rtol=1e-12)
    # the measured factor is below the random one exactly when ΔW's directions hold more of W than random ones
    assert ((rep["amplification"] < rep["factor_if_random"]) == (rep["delta_vs_random"] > 1)).all()


def test_amplification_vs_random_sees_an_update_along_ws_top_directions():
    """ΔW built on W's own top singular vectors holds far more of W than random directions."""
    model = tiny_bert()
    add_lora(model, rank=2, alpha=2, targets=["value"])
    for layer in lora_layers(model).values():
        u, _, vh = torch.linalg.svd(layer.base_layer.weight.detach())
        with torch.no_grad():
            layer.lora_B.weight.copy_(u[:, :2] * 0.1)
            layer.lora_A.weight.copy_(vh[:2])
    rep = ir.amplification_vs_random(model)
    assert (rep["delta_vs_random"] > 1).all() and (rep["amplification"] < rep["factor_if_random"]).all()


def test_singular_spread_by_hand_and_errors():
    m = torch.zeros(3, 5, dtype=torch.float64)
    m[0, 0], m[1, 1], m[2, 2] = 6.0, 2.0, 1.0
    assert ir.singular_spread(m) == pytest.approx(3.0)  # 6 / median(6, 2, 1)
    assert ir.singular_spread(np.eye(4)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="median singular value is zero"):
        ir.singular_spread(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="non-empty matrix"):
        ir.singular_spread(torch.zeros(5))


def test_a_spread_report_against_a_fresh_layer_and_a_stretched_a():
    from torch import nn

    from workbench.lora.layer import LoRALayer

    model = trained_like(4)
    rep = ir.a_spread_report(model, seed=7)
    torch.manual_seed(7)
    fresh = LoRALayer(nn.Linear(HIDDEN, HIDDEN), rank=4, alpha=1.0).lora_A.weight
    assert rep["fresh_spread"].tolist() == pytest.approx([ir.singular_spread(fresh)] * len(rep))
    first = next(iter(lora_layers(model).values()))
    assert rep["spread"].iloc[0] == pytest.approx(ir.singular_spread(first.lora_A.weight))
    with torch.no_grad():  # stretch one direction of A: its spread grows by that factor (other values unchanged)
        u, s, vh = torch.linalg.svd(first.lora_A.weight.double(), full_matrices=False)
        s2 = s.clone()
        s2[0] *= 10
        first.lora_A.weight.copy_((u * s2) @ vh)
    stretched = ir.a_spread_report(model, seed=7)["spread"].iloc[0]
    assert stretched == pytest.approx(10 * float(s[0]) / float(s2.median()), rel=1e-5)
