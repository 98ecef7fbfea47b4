"""What notebook 04 ("Inside ΔW") concludes from its three runs, as data.

The notebook computes its tables with ``workbench.lessons.delta_w`` (one matrix or one model)
and ``workbench.lessons.inspect_runs`` (comparisons of runs), and hands each table to one
function here, which reads it as the notebook's text does: a small dataclass of the numbers and
the directions they show, with a ``markdown()`` that formats every sentence from those numbers.
The notebook's self-test and ``tests/lessons/test_inside_delta_w.py`` assert the same fields,
so what the notebook says is what its run measured.

* ``accuracy_curves`` / ``first_and_last``: where the runs stood at the first and last evaluation;
* ``rank_use``: how many of its r directions each rank uses (entropy effective rank), section 2;
* ``above_chance``: the subspace similarity against what random subspaces give, section 3;
* ``table7_verdict``: Table 7 of the paper read against random directions, section 4;
* ``amplification_summary``: the same reading over every layer, section 4;
* ``a_spread``: how far training moved A from its random start, section 5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.engine.config import RunResult
from workbench.lessons.inspect_runs import T7_DELTA, T7_FACTOR, T7_PROJECTION, chance_similarity_grid

#: A trained A "stands out" from a fresh one when its spread is this many times the fresh spread.
STANDS_OUT = 1.2
#: ΔW's directions hold "clearly" more of W than random ones above this ratio (the paper: 16).
CLEARLY = 4.0


# --------------------------------------------------------------------------- the runs' accuracy


def accuracy_curves(results: Sequence[RunResult]) -> pd.DataFrame:
    """Validation accuracy per evaluated step (rows), one column per run ('<label>, seed <seed>'; the seed is
    not repeated when the run's label, e.g. its name, already says it)."""
    def column(r: RunResult) -> str:
        label = r.config.label()
        return label if f"seed {r.config.seed}" in label else f"{label}, seed {r.config.seed}"

    return pd.DataFrame({column(r):
                         r.history.dropna(subset=["eval_accuracy"]).set_index("step")["eval_accuracy"]
                         for r in results}).rename_axis("step")


@dataclass
class FirstAndLast:
    """The runs' accuracies at the first and at the last evaluation."""

    first_step: int
    first: list[float]
    last: list[float]

    def markdown(self) -> str:
        return "At the first evaluation (step {}) the runs stood at {}; at the end at {}.".format(
            self.first_step, ", ".join(f"{v:.3f}" for v in self.first), ", ".join(f"{v:.3f}" for v in self.last))


def first_and_last(curves: pd.DataFrame) -> FirstAndLast:
    """``FirstAndLast`` of ``accuracy_curves``' table."""
    step = curves.index.min()
    return FirstAndLast(int(step), [float(v) for v in curves.loc[step]], [float(v) for v in curves.iloc[-1]])


# --------------------------------------------------------------------------- section 2: how many directions


@dataclass
class RankUse:
    """Mean entropy effective rank of ΔW over the layers, at the small and the large rank."""

    r_small: int
    r_large: int
    used_small: float
    used_large: float

    @property
    def larger_uses_smaller_share(self) -> bool:
        """The larger rank uses a smaller share of its r directions (it mostly adds small ones)."""
        return self.used_large / self.r_large < self.used_small / self.r_small

    def markdown(self) -> str:
        rs, rl, es, el = self.r_small, self.r_large, self.used_small, self.used_large
        return (f"Mean entropy effective rank: **{es:.1f}** of {rs} directions at $r = {rs}$, **{el:.1f}** of "
                f"{rl} at $r = {rl}$ ({100 * es / rs:.0f}% and {100 * el / rl:.0f}% of the allowed rank). "
                + (f"The larger rank uses a smaller share of its directions: {rl // rs}x the rank did not buy "
                   f"{rl // rs}x the directions." if self.larger_uses_smaller_share else
                   "The larger rank uses as large a share of its directions as the small one."))


def rank_use(report_small: pd.DataFrame, report_large: pd.DataFrame, r_small: int, r_large: int) -> RankUse:
    """``RankUse`` from two ``delta_report`` tables (their ``entropy_rank`` columns)."""
    return RankUse(r_small, r_large, float(report_small["entropy_rank"].mean()),
                   float(report_large["entropy_rank"].mean()))


# --------------------------------------------------------------------------- section 3: similarity against chance


@dataclass
class AboveChance:
    """The subspace similarity of one layer (``grid``) against chance, and how many layers beat chance."""

    grid: np.ndarray  # phi(i, j) between the small and the large rank's A, in one layer
    chance: np.ndarray  # what two random subspaces give, the same shape
    layers: int
    top1_above: int  # layers whose phi(1, 1) is above its chance level
    top1_in_all_above: int  # layers whose phi(1, r_large) is above its chance level

    @property
    def r_large(self) -> int:
        return self.grid.shape[1]

    @property
    def share_above(self) -> float:
        """The share of the grid's cells above chance."""
        return float((self.grid - self.chance > 0).mean())

    def markdown(self) -> str:
        g, c, above = self.grid, self.chance, self.grid - self.chance
        return (f"Chance in this layer: φ(1, 1) = {c[0, 0]:.4f}, but φ(i, {self.r_large}) = {c[0, -1]:.3f} for every i. "
                f"Measured φ(1, 1) = {g[0, 0]:.3f}, {g[0, 0] / c[0, 0]:.1f}x its chance level; "
                f"{100 * self.share_above:.0f}% of the cells of the first heat map lie above chance, the largest by "
                f"{above.max():.3f}. Across the {self.layers} layers, φ(1, 1) between r = {g.shape[0]} and "
                f"r = {self.r_large} is above its chance level in {self.top1_above} of them, and φ(1, {self.r_large}) in "
                f"{self.top1_in_all_above}.")


def above_chance(grid: np.ndarray, d: int, by_layer: pd.DataFrame) -> AboveChance:
    """``AboveChance`` of ``subspace_similarity_grid``'s ``grid`` in a layer of input size ``d``, and of
    ``similarity_by_layer``'s table for the same two runs (its ``phi_top1``/``chance_top1`` columns)."""
    grid = np.asarray(grid)
    chance = chance_similarity_grid(grid.shape[0], grid.shape[1], d)
    return AboveChance(grid, chance, len(by_layer), int((by_layer["phi_top1"] > by_layer["chance_top1"]).sum()),
                       int((by_layer["phi_top1_in_all"] > by_layer["chance_top1_in_all"]).sum()))


# --------------------------------------------------------------------------- section 4: Table 7 against random


@dataclass
class Table7Reading:
    """One run's column of ``table7_layout`` read against random directions."""

    rank: int
    proj_delta: float  # ||Uᵀ W Vᵀ||_F with ΔW's top-r directions
    proj_weight: float  # ... with W's own
    proj_random: float  # ... with random ones
    factor: float  # ||ΔW||_F / proj_delta
    factor_random: float  # ||ΔW||_F / proj_random: the factor random directions would give

    @property
    def delta_vs_random(self) -> float:
        return self.proj_delta / self.proj_random

    @property
    def reproduces(self) -> bool:
        """ΔW's directions hold more of W than random ones: the direction of the paper's Table 7."""
        return self.proj_delta > self.proj_random

    def line(self) -> str:
        ratio = self.delta_vs_random
        if self.reproduces:
            how = (f"ΔW's directions hold **{ratio:.2f}x** what random ones hold (paper: 16x): the direction of "
                   "Table 7, " + ("though far weaker." if ratio < CLEARLY else "and clearly so."))
        else:
            how = (f"ΔW's directions hold **less** of W than random ones ({ratio:.3f}x): "
                   "**this run does not reproduce Table 7 here**.")
        return (f"* r = {self.rank}: projection onto ΔW's directions {self.proj_delta:.3f}, onto random ones "
                f"{self.proj_random:.3f}, onto W's own {self.proj_weight:.3f}; factor {self.factor:.2f}, against "
                f"{self.factor_random:.2f} for random directions. {how}")


@dataclass
class Table7Verdict:
    readings: list[Table7Reading]

    def markdown(self) -> str:
        return "\n".join(r.line() for r in self.readings)


def table7_verdict(table7: pd.DataFrame, runs: Mapping[int, str]) -> Table7Verdict:
    """Read ``table7_layout``'s columns: ``runs`` maps each rank to its run's label in the table."""
    readings = []
    for rank, label in runs.items():
        col = table7[label]
        p_rand = float(col.loc[T7_PROJECTION, "random"])
        readings.append(Table7Reading(int(rank), float(col.loc[T7_PROJECTION, "ΔW"]), float(col.loc[T7_PROJECTION, "W"]),
                                      p_rand, float(col.loc[T7_FACTOR, "ΔW"]), float(col.loc[T7_DELTA, "ΔW"]) / p_rand))
    return Table7Verdict(readings)


@dataclass
class AmplificationSummary:
    """``amplification_vs_random`` over every layer."""

    layers: int
    delta_above_random: int  # layers where ΔW's directions hold more of W than random ones
    median_ratio: float
    factor_range: tuple[float, float]
    random_factor_range: tuple[float, float]

    @property
    def random_factor_above_one(self) -> bool:
        """Random directions give a factor above 1 in every layer too."""
        return self.random_factor_range[0] > 1

    def markdown(self) -> str:
        return (f"In **{self.delta_above_random} of {self.layers}** layers ΔW's directions hold more of W than random "
                f"directions do (median ratio {self.median_ratio:.2f}; the paper's 16). The factors run from "
                f"{self.factor_range[0]:.2f} to {self.factor_range[1]:.2f}, and the factors random directions would give "
                f"from {self.random_factor_range[0]:.2f} to {self.random_factor_range[1]:.2f}"
                + (": a factor above 1 comes with random directions too." if self.random_factor_above_one else "."))


def amplification_summary(amp: pd.DataFrame) -> AmplificationSummary:
    """``AmplificationSummary`` of ``amplification_vs_random``'s table."""
    return AmplificationSummary(len(amp), int((amp["delta_vs_random"] > 1).sum()), float(amp["delta_vs_random"].median()),
                                (float(amp["amplification"].min()), float(amp["amplification"].max())),
                                (float(amp["factor_if_random"].min()), float(amp["factor_if_random"].max())))


# --------------------------------------------------------------------------- section 5: how far A moved


@dataclass
class ASpread:
    """``a_spread_report`` of several runs (``table``: indexed by run, then row)."""

    table: pd.DataFrame
    steps: int  # how many steps the runs trained

    @property
    def stands_out_everywhere(self) -> bool:
        """In every layer the trained A's top direction stands out more than a fresh A's (by ``STANDS_OUT``)."""
        return bool((self.table["spread"] > STANDS_OUT * self.table["fresh_spread"]).all())

    @property
    def least_ratio(self) -> float:
        return float((self.table["spread"] / self.table["fresh_spread"]).min())

    def markdown(self) -> str:
        runs = "; ".join(
            f"{s['spread'].min():.1f}x to {s['spread'].max():.1f}x its median at {run} (a fresh $A$: "
            f"{s['fresh_spread'].iloc[0]:.2f}x)" for run, s in self.table.groupby(level="run", sort=False))
        return ("Trained $A$: $\\sigma_1$ is " + runs + ". "
                + ("In every layer the trained $A$'s top direction stands out more than a fresh $A$'s does (at least "
                   f"{self.least_ratio:.1f}x the fresh spread): {self.steps} steps do move $A$, in one or a "
                   "few directions, while the rest keeps much of its random start." if self.stands_out_everywhere else
                   "In some layers $A$ still looks much like its random start."))


def a_spread(reports: Mapping[str, pd.DataFrame], steps: int) -> ASpread:
    """``ASpread`` of ``a_spread_report`` tables, one per run label, of runs that trained ``steps`` steps."""
    return ASpread(pd.concat(dict(reports), names=["run", None]), steps)


__all__ = ["accuracy_curves", "FirstAndLast", "first_and_last", "RankUse", "rank_use", "AboveChance", "above_chance",
           "Table7Reading", "Table7Verdict", "table7_verdict", "AmplificationSummary", "amplification_summary",
           "ASpread", "a_spread", "STANDS_OUT", "CLEARLY"]
