"""What notebook 01 concludes (workbench.lessons.lora_from_scratch), on hand-made measurements."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest

from workbench.lessons import lora_from_scratch as lfs
from workbench.lessons.teaching import TimingResult


def trained(norms: dict[int, float]) -> pd.DataFrame:
    return pd.DataFrame({r: {"validation accuracy": 1.0, lfs.UPDATE_COLUMN: n, "idealised (same sigma)": 1.0,
                             "run seconds": 1.0} for r, n in norms.items()}).T.rename_axis("r")


def test_update_shrink_against_the_idealised_prediction():
    found = lfs.update_shrink(trained({1: 3.0, 8: 2.5, 64: 2.0}))
    assert (found.r_lo, found.r_hi) == (1, 64) and found.trained == 1.5 and found.predicted == 8.0
    assert found.idealised_fails  # 1.5x against 8x
    text = found.markdown()
    assert text.startswith("From $r = 1$ to $r = 64$ the idealised model predicts that $\\lVert s\\,BA\\rVert_F$ shrinks "
                           "$\\sqrt{64} = 8$x; the trained adapters' update shrank **1.5x**. So the assumption fails")
    ideal = lfs.update_shrink(trained({1: 8.0, 64: 1.0}))
    assert not ideal.idealised_fails and ideal.markdown().endswith("shrink about as the idealised model predicts.")


def timing(merged: list[float], unmerged: list[float]) -> TimingResult:
    base = [1.0, 1.0, 1.0, 1.0]
    return TimingResult({"base model": base, "base model (again)": [0.98, 1.0, 1.01, 1.02],
                         "LoRA, unmerged": unmerged, "LoRA, merged": merged}, reference="base model")


def test_merge_timing_within_noise_and_resolved():
    found = lfs.merge_timing(timing(merged=[0.99, 1.0, 1.01, 1.0], unmerged=[1.2, 1.3, 1.3, 1.2]))
    assert found.rounds == 4 and not found.merged_resolved and found.unmerged_resolved
    assert found.unmerged == pytest.approx(1.25)
    q = statistics.quantiles([0.98, 1.0, 1.01, 1.02], n=4)  # the base against itself: its middle half
    assert found.noise == pytest.approx((q[0], q[2]))
    text = found.markdown()
    assert text.startswith("Over 4 rounds: merged / base = **1.000**, unmerged / base = **1.250**, and the base against "
                           f"itself spans {q[0]:.3f} to {q[2]:.3f}.")
    assert "**within that noise**" in text and text.endswith("The unmerged model's extra work is **resolved**: 25% slower.")
    odd = lfs.merge_timing(timing(merged=[1.5, 1.5, 1.6, 1.5], unmerged=[1.0, 1.0, 1.01, 1.0]))
    assert odd.merged_resolved and not odd.unmerged_resolved
    assert "differs from the base by more than the noise (1.500)" in odd.markdown()
    assert odd.markdown().endswith("too small to resolve here.")
