"""What notebook 01 ("LoRA from scratch") concludes from its measurements, as data.

The notebook builds a LoRA layer by hand, trains a few ranks and times the merged and unmerged
model; the measuring lives in ``workbench.lessons.teaching`` (``mean_update_norm``,
``interleaved_timing``).  Each function here reads one of those measurements as the notebook's
text does and returns the numbers with the direction they show; ``markdown()`` formats every
sentence from them.  The notebook's self-test and ``tests/lessons/test_lora_from_scratch.py``
assert the same fields.

* ``update_shrink``: does ||s B A||_F of *trained* adapters shrink like 1 / sqrt(r), as the
  idealised first-steps model of section 6 predicts at fixed alpha?
* ``merge_timing``: can this machine's timing tell the merged model from the base (it should
  not: the same matrix multiplies), and the unmerged model's extra work?
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from workbench.lessons.teaching import TimingResult

#: The trained update "fails the idealised model" when it shrinks less than this share of the prediction.
FAILS_BELOW = 0.5
UPDATE_COLUMN = "mean ||sBA||_F (trained)"


@dataclass
class UpdateShrink:
    """||s B A||_F of trained adapters from the smallest to the largest rank, against the idealised sqrt(r_hi / r_lo)."""

    r_lo: int
    r_hi: int
    trained: float  # how many times the mean update shrank from r_lo to r_hi
    predicted: float  # sqrt(r_hi / r_lo)

    @property
    def idealised_fails(self) -> bool:
        """The trained update shrank less than half of what the idealised model predicts."""
        return self.trained < self.predicted * FAILS_BELOW

    def markdown(self) -> str:
        return (f"From $r = {self.r_lo}$ to $r = {self.r_hi}$ the idealised model predicts that $\\lVert s\\,BA\\rVert_F$ "
                f"shrinks $\\sqrt{{{self.r_hi // self.r_lo}}} = {self.predicted:.0f}$x; the trained adapters' update shrank "
                f"**{self.trained:.1f}x**. "
                + ("So the assumption fails on trained adapters: $B$ does not keep a size independent of $r$. "
                   "Training stops pushing once the task is solved, and a small $s$ is partly made up by a larger $B$: "
                   "the update ends near the size the task needs, whatever the scale. The idealised model describes the "
                   "*first* steps, where every entry of $B$ moves by about the learning rate, not where training ends."
                   if self.idealised_fails else
                   "Here the trained updates shrink about as the idealised model predicts."))


def update_shrink(trained_table: pd.DataFrame) -> UpdateShrink:
    """``UpdateShrink`` of a table indexed by rank (ascending) with the column ``UPDATE_COLUMN``."""
    ranks = list(trained_table.index)
    r_lo, r_hi = int(ranks[0]), int(ranks[-1])
    col = trained_table[UPDATE_COLUMN]
    return UpdateShrink(r_lo, r_hi, float(col.iloc[0] / col.iloc[-1]), (r_hi / r_lo) ** 0.5)


@dataclass
class MergeTiming:
    """The merged and the unmerged model's time over the base's, against the base timed against itself."""

    rounds: int
    merged: float  # median ratio to the base
    unmerged: float
    noise: tuple[float, float]  # the base against itself: 25th to 75th percentile of the ratio
    merged_resolved: bool
    unmerged_resolved: bool

    def markdown(self) -> str:
        return (f"Over {self.rounds} rounds: merged / base = **{self.merged:.3f}**, unmerged / base = **{self.unmerged:.3f}**, "
                f"and the base against itself spans {self.noise[0]:.3f} to {self.noise[1]:.3f}. "
                + ("The merged model's time is **within that noise**: this timing cannot tell it from the base model, "
                   "as expected of the same matrix multiplies. " if not self.merged_resolved else
                   f"The merged model differs from the base by more than the noise ({self.merged:.3f}); it runs the same "
                   "matrix multiplies, so look for a cause outside them (a cache, a thread, the machine). ")
                + (f"The unmerged model's extra work is **resolved**: {100 * (self.unmerged - 1):.0f}% slower."
                   if self.unmerged_resolved else "The unmerged model's extra multiplies are too small to resolve here."))


def merge_timing(timing: TimingResult, merged: str = "LoRA, merged", unmerged: str = "LoRA, unmerged",
                 control: str = "base model (again)") -> MergeTiming:
    """``MergeTiming`` of ``interleaved_timing`` over the base, the base again (``control``), and the two models."""
    table = timing.table()
    t = table["vs base (median)"]
    noise = table.loc[control, ["vs base, 25th pct", "vs base, 75th pct"]]
    return MergeTiming(len(timing.times[timing.reference]), float(t[merged]), float(t[unmerged]),
                       (float(noise.iloc[0]), float(noise.iloc[1])), bool(timing.resolves(merged, control=control)),
                       bool(timing.resolves(unmerged, control=control)))


__all__ = ["UpdateShrink", "update_shrink", "MergeTiming", "merge_timing", "FAILS_BELOW", "UPDATE_COLUMN"]
