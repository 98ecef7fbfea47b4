"""What notebook 02's rank sweep shows, as data: precision, the memory bars, and how the ranks start.

The notebook runs the sweep (``wb.run_sweep``), draws its figures and shows what ``findings``
returns: three tables and three paragraphs, each sentence formatted from the runs' own numbers,
so what the notebook says is what this run measured.  Its self-test and ``tests/lessons/test_rank_sweep.py``
assert the same fields.

* ``Precision``: how many validation sentences one point of accuracy is, the Wilson interval of
  the best LoRA rank and the ranks that cannot be told apart from it, and the head-only run.
* ``WeightBars``: the bytes per parameter of LoRA's and full fine-tuning's stored weights (the
  engine keeps a frozen base in bf16 when it trains in bf16: a storage choice, not LoRA's), and
  what the measured peaks are.
* ``StartSpeed``: the size of s B A after the runs' first steps, measured (``teaching.early_updates``),
  beside the accuracy at the first evaluation: did the rank that moved more start faster?  (At the
  defaults it did not: a formula for the update's size is not a prediction of the start.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from workbench.engine.config import RunResult
from workbench.lessons.teaching import accuracy_at, first_eval_step, wilson_interval
from workbench.util.units import MB

#: Below this accuracy at the first evaluation every rank is "near chance" on the bundled task.
NEAR_CHANCE = 0.65


def _lora_runs(results: Sequence[RunResult]) -> list[RunResult]:
    runs = [r for r in results if r.config.method == "lora"]
    if not runs:
        raise ValueError("the sweep has no LoRA run: findings compare LoRA's ranks")
    return runs


@dataclass
class Precision:
    """How precise one seed's accuracy on ``n_eval`` sentences is."""

    n_eval: int
    best: float  # the best LoRA rank's accuracy
    best_low: float  # the lower end of its 95% Wilson interval
    indistinct: list[int]  # LoRA ranks whose interval reaches ``best_low``
    head: tuple[float, float, float, int] | None  # head only: accuracy, interval low, high, steps

    def markdown(self) -> str:
        n = self.n_eval
        text = (f"**How precise is an accuracy here?** One seed, {n} validation sentences: one sentence is "
                f"{1 / n:.3f} of accuracy (0.994 against 1.000 is {0.006 * n:.1f} sentences). The column "
                f"`95% interval` is the Wilson interval of each accuracy; the LoRA ranks whose interval reaches the best "
                f"rank's lower end ({self.best_low:.3f}) cannot be told apart from it on this data: r = "
                f"{', '.join(map(str, self.indistinct))}. Seeds move a run more than that (the datasheet, "
                "`data/README.md`, has r = 8 at 1.000 and 0.990 for seeds 0 and 1).")
        if self.head is not None:
            acc, lo, hi, steps = self.head
            text += (f"\n\n**Head only** reached {acc:.3f} ({lo:.3f} to {hi:.3f}; chance is 0.5). That does not "
                     "mean the frozen features are empty. The standard head reads only the **pooler output** (the [CLS] "
                     "state through a frozen dense layer and tanh), and trains a 2-way linear layer on it for "
                     f"{steps} steps; a logistic-regression probe fitted to convergence on the same frozen "
                     "features reaches 0.61 to 0.68 on the pooler output and 0.72 to 0.74 on the mean of the token states "
                     "(datasheet, `data/README.md`). The signal is weak and not where the head looks, and a short head "
                     "training does not extract it.")
        return text


def precision(results: Sequence[RunResult], n_eval: int) -> Precision:
    """``Precision`` of a sweep evaluated on ``n_eval`` sentences."""
    lora = _lora_runs(results)
    best = max(r.eval_accuracy for r in lora)
    lo_best, _ = wilson_interval(best, n_eval)
    indistinct = [r.config.lora.rank for r in lora if wilson_interval(r.eval_accuracy, n_eval)[1] >= lo_best]
    head_run = next((r for r in results if r.config.method == "head"), None)
    head = None
    if head_run is not None:
        lo, hi = wilson_interval(head_run.eval_accuracy, n_eval)
        head = (head_run.eval_accuracy, lo, hi, head_run.config.steps)
    return Precision(n_eval, best, lo_best, indistinct, head)


def interval_column(results: Sequence[RunResult], n_eval: int) -> list[str]:
    """The table's ``95% interval`` column: 'low to high' per run ('' for a run without an accuracy)."""
    return ["{:.3f} to {:.3f}".format(*wilson_interval(r.eval_accuracy, n_eval))
            if r.eval_accuracy == r.eval_accuracy else "" for r in results]


@dataclass
class WeightBars:
    """The weights bars and the peaks of the memory figure, per run (``table``)."""

    table: pd.DataFrame  # index run label; weights MB, bytes per parameter, peak MB, peak measured as
    lora_labels: list[str]

    @property
    def lora_bytes_per_parameter(self) -> float:
        """The median over LoRA runs: about 2 with a bf16 frozen base, 4 in fp32."""
        return float(self.table.loc[self.lora_labels, "bytes per parameter"].median())

    @property
    def full_weights_mb(self) -> float | None:
        return self.table["weights MB"].get("full fine-tuning")

    @property
    def lora_to_full(self) -> float | None:
        """LoRA's median weights bar over full fine-tuning's (None without a full fine-tuning run)."""
        full = self.full_weights_mb
        return None if full is None else float(self.table.loc[self.lora_labels, "weights MB"].median() / full)

    @property
    def peak_kind(self) -> str | None:
        return None if not len(self.table) else str(self.table["peak measured as"].iloc[0])

    def markdown(self) -> str:
        bpp = self.lora_bytes_per_parameter
        parts = [f"**The weights bars.** LoRA's weights are stored at {bpp:.2f} bytes per parameter"
                 + (" (the frozen base in bf16, 2 bytes, and the small trainable part in fp32)" if bpp < 3 else " (fp32)")]
        if self.full_weights_mb is not None:
            fbpp = self.table.loc["full fine-tuning", "bytes per parameter"]
            parts.append(f"full fine-tuning's at {fbpp:.2f} (fp32: every weight trains, so it stays in full precision)"
                         f"; so LoRA's bar is {self.lora_to_full:.2f} of full fine-tuning's")
        text = ", ".join(parts) + ". "
        if self.full_weights_mb is not None and bpp < 3:
            text += ("That halving is the **storage precision** this engine picks for frozen weights when it trains in "
                     "bf16, not something LoRA does: in fp32 (notebook 03) LoRA's weights do not shrink at all. ")
        peaks = self.table["peak MB"].dropna()
        if len(peaks):
            text += (f"**The peaks** run from {peaks.min():.0f} to {peaks.max():.0f} MB and are "
                     f"measured as \"{self.peak_kind}\": each is its own run's high-water mark, ")
            text += ("so they do not add up with run order; most of each is the interpreter, the libraries and the "
                     "model, which is why they differ far less between methods than the tensor bars do."
                     if self.peak_kind != "process VmHWM" else
                     "but measured in a shared process, so a later run carries the earlier runs' high-water mark.")
        return text


def weight_bars(results: Sequence[RunResult]) -> WeightBars:
    """``WeightBars`` of the runs that measured their memory."""
    table = pd.DataFrame([{
        "run": r.config.label(),
        "weights MB": r.memory.weights / MB,
        "bytes per parameter": r.memory.weights / r.params.total,
        "peak MB": (r.memory.peak or float("nan")) / MB,
        "peak measured as": r.memory.peak_kind,
    } for r in results if r.memory is not None], columns=["run", "weights MB", "bytes per parameter", "peak MB",
                                                           "peak measured as"]).set_index("run")
    return WeightBars(table, [r.config.label() for r in _lora_runs(results) if r.memory is not None])


@dataclass
class StartSpeed:
    """Which rank took the larger early update, and which was ahead at the first evaluation.

    ``updates`` is ``teaching.early_updates`` of the sweep's LoRA configs: the runs' own first
    steps, measured, not a formula.  Without it (a sweep read from the store) the part says
    only what the first evaluation saw.
    """

    convention: str  # 'fixed alpha = 16', 'alpha = 2 r' or 'rsLoRA (alpha / sqrt(r))'
    first_eval: int  # the step of the first evaluation
    table: pd.DataFrame  # index r: s, [early ||sBA||_F, ||BA||_F], accuracy and validation loss at first_eval, final
    first_overlap: bool  # the smallest and largest rank's first accuracies lie within each other's intervals
    update_steps: int | None = None  # the steps ``early_updates`` took (None: not measured)

    @property
    def first(self) -> pd.Series:
        return self.table[f"accuracy at step {self.first_eval}"]

    @property
    def update(self) -> pd.Series | None:
        """The measured mean ||s B A||_F after ``update_steps`` steps, per rank."""
        return self.table["early ||sBA||_F"] if "early ||sBA||_F" in self.table else None

    @property
    def update_ratio(self) -> float | None:
        """The smallest rank's early update over the largest rank's (> 1: the smallest rank moved more)."""
        u = self.update
        return None if u is None else float(u.iloc[0] / u.iloc[-1])

    @property
    def ba_growth(self) -> float | None:
        """||BA||_F (no scale) at the largest rank over the smallest's: sqrt(r_hi / r_lo) if B's columns move
        independently, r_hi / r_lo if they move together."""
        if "early ||BA||_F" not in self.table:
            return None
        ba = self.table["early ||BA||_F"]
        return float(ba.iloc[-1] / ba.iloc[0])

    @property
    def larger_update(self) -> str | None:
        """'smallest' or 'largest': the rank whose measured early update was larger (None: not measured)."""
        r = self.update_ratio
        return None if r is None else "smallest" if r > 1 else "largest"

    @property
    def larger_update_ahead(self) -> bool | None:
        """Whether the rank with the larger early update was clearly ahead at the first evaluation
        (None: not measured, or the two accuracies lie within each other's intervals)."""
        if self.larger_update is None or self.first_overlap:
            return None
        a = self.first
        return bool(a.iloc[0] > a.iloc[-1]) if self.larger_update == "smallest" else bool(a.iloc[-1] > a.iloc[0])

    def markdown(self) -> str:
        a, ranks = self.first, list(self.table.index)
        lo, hi, final = ranks[0], ranks[-1], self.table["final accuracy"]
        s = self.table["s"]
        text = f"This sweep used **{self.convention}** (s = {s.iloc[0]:.3g} at r = {lo}, {s.iloc[-1]:.3g} at r = {hi}). "
        if self.update is not None:
            u, k, g = self.update, self.update_steps, self.ba_growth
            sq, lin = math.sqrt(hi / lo), hi / lo
            text += (f"**Measured** after the runs' first {k} steps (the same configs, seeds and batches, stepped again "
                     f"by `early_updates`): the mean $\\lVert s\\,BA\\rVert_F$ was {u.iloc[0]:.3g} at r = {lo} and "
                     f"{u.iloc[-1]:.3g} at r = {hi}, so the **{self.larger_update}** rank took the larger early update "
                     f"({max(self.update_ratio, 1 / self.update_ratio):.1f}x). ")
            if g is not None:
                independent = abs(math.log(g / sq)) < abs(math.log(g / lin))
                text += (f"Without the scale, $\\lVert BA\\rVert_F$ grew {g:.1f}x from r = {lo} to r = {hi}: closer to "
                         + (f"the {sq:.1f}x of B's columns moving in unrelated directions ($\\sqrt r$) than to the "
                            f"{lin:.0f}x of columns moving together ($r$). " if independent else
                            f"the {lin:.0f}x of B's columns moving together ($r$) than to the {sq:.1f}x of columns "
                            f"moving in unrelated directions ($\\sqrt r$). "))
        text += f"At step {self.first_eval} (the first evaluation) r = {lo} stood at {a.iloc[0]:.3f} and r = {hi} at {a.iloc[-1]:.3f}"
        if "validation loss at first evaluation" in self.table:
            v = self.table["validation loss at first evaluation"]
            text += f" (validation loss {v.iloc[0]:.3f} and {v.iloc[-1]:.3f})"
        if self.first_overlap:
            text += (": within each other's 95% intervals, so this evaluation cannot tell which started faster"
                     + (f" (every rank was between {a.min():.3f} and {a.max():.3f}, near chance: on this task LoRA leaves "
                        "chance late)" if a.max() < NEAR_CHANCE else "") + ".")
        else:
            text += "."
        if self.larger_update is not None:
            if self.larger_update_ahead:
                text += " The rank with the larger early update was ahead."
            elif self.larger_update_ahead is False:
                text += (" So the larger early update did **not** buy a faster start: the rank that moved less was "
                         "ahead. An update's size alone does not say how fast a rank learns.")
            else:
                text += (" So the larger early update did not put that rank measurably ahead: an update's size alone "
                         "does not say how fast a rank learns.")
        return text + (f" At the end the LoRA runs reached {final.min():.3f} to {final.max():.3f}. If a rank looks slow, "
                       "rerun with `rslora = True`, `alpha_per_rank`, a learning rate per rank, or more `steps` before "
                       "blaming its capacity.")


def start_speed(results: Sequence[RunResult], n_eval: int, alpha_per_rank: float | None = None,
                updates: pd.DataFrame | None = None, update_steps: int | None = None) -> StartSpeed:
    """``StartSpeed`` of the sweep's LoRA runs (``alpha_per_rank``: the sweep's, when alpha was set per rank;
    ``updates``: ``teaching.early_updates`` of the same configs after ``update_steps`` steps)."""
    lora = _lora_runs(results)
    first = lora[0].config.lora
    convention = ("rsLoRA (alpha / sqrt(r))" if first.rslora else
                  f"alpha = {alpha_per_rank:g} r" if alpha_per_rank else f"fixed alpha = {first.alpha:g}")
    step = first_eval_step(lora)

    def loss_at(r: RunResult) -> float:
        h = r.history.dropna(subset=["eval_loss"])
        h = h[h["step"] <= step]
        return float(h["eval_loss"].iloc[-1]) if len(h) else float("nan")

    columns = {"s": {r.config.lora.rank: r.config.lora.scaling for r in lora}}
    if updates is not None:
        columns["early ||sBA||_F"] = updates["mean ||sBA||_F"].to_dict()
        columns["early ||BA||_F"] = updates["mean ||BA||_F"].to_dict()
    columns.update({f"accuracy at step {step}": {r.config.lora.rank: accuracy_at(r, step) for r in lora},
                    "validation loss at first evaluation": {r.config.lora.rank: loss_at(r) for r in lora},
                    "final accuracy": {r.config.lora.rank: r.eval_accuracy for r in lora}})
    table = pd.DataFrame(columns).rename_axis("r").sort_index()
    a = table[f"accuracy at step {step}"]
    (lo1, hi1), (lo2, hi2) = wilson_interval(a.iloc[0], n_eval), wilson_interval(a.iloc[-1], n_eval)
    return StartSpeed(convention, step, table, bool(lo1 <= hi2 and lo2 <= hi1),
                      update_steps if updates is not None else None)


@dataclass
class Findings:
    """Everything notebook 02 states about its sweep (one part per section)."""

    precision: Precision
    weights: WeightBars
    start: StartSpeed


def findings(results: Sequence[RunResult], n_eval: int, alpha_per_rank: float | None = None,
             updates: pd.DataFrame | None = None, update_steps: int | None = None) -> Findings:
    """Read a rank sweep evaluated on ``n_eval`` validation sentences (``alpha_per_rank``: as the sweep was run;
    ``updates``: ``teaching.early_updates`` of its configs after ``update_steps`` steps)."""
    return Findings(precision(results, n_eval), weight_bars(results),
                    start_speed(results, n_eval, alpha_per_rank, updates, update_steps))


__all__ = ["Findings", "findings", "Precision", "precision", "WeightBars", "weight_bars", "StartSpeed", "start_speed",
           "interval_column", "NEAR_CHANCE"]
