"""What notebook 04 concludes (workbench.lessons.inside_delta_w), on hand-made tables.

Each function reads a table the notebook computes (``delta_report``, ``similarity_by_layer``,
``table7_layout``, ``amplification_vs_random``, ``a_spread_report``); here the tables are built
by hand, so every number and direction a sentence states is known in advance.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from workbench.lessons import inside_delta_w as idw
from workbench.lessons.inspect_runs import TABLE7_LAYOUT_ROWS, TABLE7_SOURCES, chance_similarity_grid


def test_accuracy_curves_and_first_and_last():
    def result(label, seed, acc):
        config = SimpleNamespace(label=lambda: label, seed=seed)
        history = pd.DataFrame({"step": [1, 50, 100], "eval_accuracy": [math.nan, acc[0], acc[1]]})
        return SimpleNamespace(config=config, history=history)

    curves = idw.accuracy_curves([result("r=8", 0, (0.5, 0.9)), result("r=8", 1, (0.6, 1.0))])
    assert list(curves.columns) == ["r=8, seed 0", "r=8, seed 1"] and list(curves.index) == [50, 100]
    named = idw.accuracy_curves([result("inside ΔW: r=8, seed 0", 0, (0.5, 0.9))])  # a name that says its seed
    assert list(named.columns) == ["inside ΔW: r=8, seed 0"]  # not "seed 0, seed 0"
    found = idw.first_and_last(curves)
    assert (found.first_step, found.first, found.last) == (50, [0.5, 0.6], [0.9, 1.0])
    assert found.markdown() == "At the first evaluation (step 50) the runs stood at 0.500, 0.600; at the end at 0.900, 1.000."


def test_rank_use_compares_the_shares_of_the_allowed_rank():
    small, large = pd.DataFrame({"entropy_rank": [4.0, 6.0]}), pd.DataFrame({"entropy_rank": [10.0, 14.0]})
    use = idw.rank_use(small, large, 8, 64)
    assert (use.used_small, use.used_large) == (5.0, 12.0) and use.larger_uses_smaller_share  # 19% < 62%
    assert use.markdown() == ("Mean entropy effective rank: **5.0** of 8 directions at $r = 8$, **12.0** of 64 at $r = 64$ "
                              "(62% and 19% of the allowed rank). The larger rank uses a smaller share of its directions: "
                              "8x the rank did not buy 8x the directions.")
    same = idw.rank_use(small, pd.DataFrame({"entropy_rank": [40.0]}), 8, 64)
    assert not same.larger_uses_smaller_share and "as large a share" in same.markdown()


def test_above_chance_counts_cells_and_layers():
    d = 100
    chance = chance_similarity_grid(2, 4, d)
    grid = chance.copy()
    grid[0, 0], grid[1, 3] = 0.31, chance[1, 3] - 0.01  # one cell far above, one below, the rest at chance
    by_layer = pd.DataFrame({"phi_top1": [0.3, 0.001, 0.2], "chance_top1": [0.01] * 3,
                             "phi_top1_in_all": [0.5, 0.01, 0.01], "chance_top1_in_all": [0.04] * 3})
    found = idw.above_chance(grid, d, by_layer)
    assert np.allclose(found.chance, chance) and found.r_large == 4
    assert (found.layers, found.top1_above, found.top1_in_all_above) == (3, 2, 1)
    assert found.share_above == pytest.approx(1 / 8)
    text = found.markdown()
    assert text.startswith("Chance in this layer: φ(1, 1) = 0.0100, but φ(i, 4) = 0.040 for every i. Measured φ(1, 1) = "
                           "0.310, 31.0x its chance level; 12% of the cells of the first heat map lie above chance, the "
                           "largest by 0.300.")
    assert text.endswith("Across the 3 layers, φ(1, 1) between r = 2 and r = 4 is above its chance level in 2 of them, "
                         "and φ(1, 4) in 1.")


def table7(columns: dict[str, tuple[float, float, float, float, float]]) -> pd.DataFrame:
    """table7_layout's shape: per run (proj ΔW, proj W, proj random, ||W||, ||ΔW||); the factor computed."""
    nan, values, cols = math.nan, [], []
    for label, (p_delta, p_w, p_rand, w_fro, d_fro) in columns.items():
        block = {"ΔW": [p_delta, nan, d_fro, d_fro / p_delta], "W": [p_w, w_fro, nan, nan], "random": [p_rand, nan, nan, nan]}
        for source in TABLE7_SOURCES:
            cols.append((label, source))
            values.append(block[source])
    return pd.DataFrame(np.array(values).T, index=list(TABLE7_LAYOUT_ROWS),
                        columns=pd.MultiIndex.from_tuples(cols, names=["run", "U, V: top-r directions of"]))


def test_table7_verdict_reads_each_run_against_random_directions():
    t = table7({"r = 8": (0.5, 20.0, 0.1, 30.0, 2.0), "r = 64": (0.09, 25.0, 0.1, 30.0, 1.8)})
    verdict = idw.table7_verdict(t, {8: "r = 8", 64: "r = 64"})
    small, large = verdict.readings
    assert small.reproduces and small.delta_vs_random == pytest.approx(5.0) and small.factor == pytest.approx(4.0)
    assert small.factor_random == pytest.approx(20.0) and not large.reproduces
    lines = verdict.markdown().split("\n")
    assert lines[0] == ("* r = 8: projection onto ΔW's directions 0.500, onto random ones 0.100, onto W's own 20.000; "
                        "factor 4.00, against 20.00 for random directions. ΔW's directions hold **5.00x** what random "
                        "ones hold (paper: 16x): the direction of Table 7, and clearly so.")
    assert lines[1].endswith("ΔW's directions hold **less** of W than random ones (0.900x): **this run does not "
                             "reproduce Table 7 here**.")
    faint = idw.table7_verdict(table7({"r = 2": (0.2, 20.0, 0.1, 30.0, 2.0)}), {2: "r = 2"})
    assert faint.markdown().endswith("**2.00x** what random ones hold (paper: 16x): the direction of Table 7, though "
                                     "far weaker.")


def test_amplification_summary_over_the_layers():
    amp = pd.DataFrame({"delta_vs_random": [2.0, 0.5, 3.0], "amplification": [1.5, 4.0, 2.0],
                        "factor_if_random": [3.0, 2.0, 6.0]})
    found = idw.amplification_summary(amp)
    assert (found.layers, found.delta_above_random, found.median_ratio) == (3, 2, 2.0) and found.random_factor_above_one
    assert found.markdown() == ("In **2 of 3** layers ΔW's directions hold more of W than random directions do (median "
                                "ratio 2.00; the paper's 16). The factors run from 1.50 to 4.00, and the factors random "
                                "directions would give from 2.00 to 6.00: a factor above 1 comes with random directions too.")
    low = idw.amplification_summary(amp.assign(factor_if_random=[0.5, 2.0, 6.0]))
    assert not low.random_factor_above_one and low.markdown().endswith("from 0.50 to 6.00.")


def test_a_spread_says_whether_training_moved_a():
    moved = {"r = 8": pd.DataFrame({"spread": [3.0, 2.0], "fresh_spread": [1.1, 1.1]}),
             "r = 64": pd.DataFrame({"spread": [5.0, 4.0], "fresh_spread": [1.5, 1.5]})}
    found = idw.a_spread(moved, steps=150)
    assert found.stands_out_everywhere and found.least_ratio == pytest.approx(2.0 / 1.1)
    assert found.markdown() == ("Trained $A$: $\\sigma_1$ is 2.0x to 3.0x its median at r = 8 (a fresh $A$: 1.10x); 4.0x "
                                "to 5.0x its median at r = 64 (a fresh $A$: 1.50x). In every layer the trained $A$'s top "
                                "direction stands out more than a fresh $A$'s does (at least 1.8x the fresh spread): 150 "
                                "steps do move $A$, in one or a few directions, while the rest keeps much of its random "
                                "start.")
    still = idw.a_spread({"r = 8": pd.DataFrame({"spread": [1.2], "fresh_spread": [1.1]})}, steps=6)
    assert not still.stands_out_everywhere and still.markdown().endswith("In some layers $A$ still looks much like its "
                                                                         "random start.")
