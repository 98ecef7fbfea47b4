"""Small measurements the notebooks quote in their text, so the text is computed, not typed.

A workshop repeats what a notebook says, so every figure or direction a sentence states
comes from a function here (tested in ``tests/lessons/test_teaching.py``) and is formatted into
the markdown the notebook displays:

* ``wilson_interval``: how precise an accuracy on n validation sentences is;
* ``adam_update_size`` and ``scale_conventions``: how large the first updates of
  s * B A are under Adam, per rank, for each alpha convention (fixed alpha, alpha = 2r,
  rsLoRA), the argument of notebook 01 section 6 and notebook 02;
* ``interleaved_timing``: forward-pass timings run in turn, with a base-against-itself
  control that says how large a difference the timing can resolve;
* ``mean_update_norm``: the mean ||s B A||_F over a trained model's LoRA layers;
* ``early_updates``: the size of s B A after a run's first few steps, measured by taking
  exactly those steps (notebook 02: does the rank with the larger early update start faster?);
* ``accuracy_at`` and ``first_eval_step``: a run's accuracy at an early evaluation (notebooks 02, 02b);
* ``Stopwatch``: how long a notebook (or one section of it) took here.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

from workbench.engine.timing import interleave
from workbench.lessons.delta_w import delta_report
from workbench.util.checks import check_positive_int, check_positive_number


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on ``n`` examples (95 % for z = 1.96).

    With p = accuracy:  centre = (p + z^2 / 2n) / (1 + z^2 / n),
    half-width = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2).
    Unlike p +- z sqrt(p (1 - p) / n) it does not collapse to a point at p = 1: 500 of 500
    correct still leaves an interval of (0.992, 1).
    """
    check_positive_int("n", n, what="the number of examples the accuracy was measured on")
    check_positive_number("z", z)
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy!r}")
    denom = 1 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    lo = 0.0 if accuracy == 0.0 else max(0.0, centre - half)  # exact ends: the interval always holds the accuracy
    hi = 1.0 if accuracy == 1.0 else min(1.0, centre + half)
    return lo, hi


def adam_update_size(rank: int, alpha: float, rslora: bool = False) -> float:
    """How large s * B A grows in the first Adam steps, up to a factor common to all ranks.

    Adam moves every entry of B by about lr per step whatever r is (it divides by the
    gradient's own size), so after t steps B's entries are about lr * t, and each entry of
    B A sums r such terms times A's random entries: ||B A||_F grows like lr t sqrt(r).
    Times the scale s: alpha / sqrt(r) with s = alpha / r (fixed alpha: larger ranks move
    *slower*), alpha * sqrt(r) / sqrt(r) = alpha with rsLoRA (s = alpha / sqrt(r): the same
    for every rank), and 2 sqrt(r) with alpha = 2r (s = 2: larger ranks move faster).
    Returns s * sqrt(r).
    """
    check_positive_int("rank", rank)
    check_positive_number("alpha", alpha)
    s = alpha / math.sqrt(rank) if rslora else alpha / rank
    return s * math.sqrt(rank)


def scale_conventions(ranks: Sequence[int], alpha: float = 16.0, alpha_per_rank: float = 2.0) -> pd.DataFrame:
    """Per rank: the scale s and the relative first-update size (``adam_update_size``) of
    the three alpha conventions, each size divided by that convention's size at the
    smallest rank (so 1.0 marks the smallest rank, and a column says which ranks move faster)."""
    if not ranks:
        raise ValueError("scale_conventions needs at least one rank")
    for r in ranks:
        check_positive_int("rank", r, what="each rank")
    rows = []
    for r in ranks:
        rows.append({
            "r": r,
            f"s (alpha = {alpha:g})": alpha / r,
            f"update size (alpha = {alpha:g})": adam_update_size(r, alpha),
            f"s (alpha = {alpha_per_rank:g}r)": alpha_per_rank,
            f"update size (alpha = {alpha_per_rank:g}r)": adam_update_size(r, alpha_per_rank * r),
            f"s (rsLoRA, alpha = {alpha:g})": alpha / math.sqrt(r),
            f"update size (rsLoRA)": adam_update_size(r, alpha, rslora=True),
        })
    table = pd.DataFrame(rows).set_index("r").sort_index()
    for col in [c for c in table.columns if c.startswith("update size")]:
        table[col] = table[col] / table[col].iloc[0]
    return table


@dataclass
class TimingResult:
    """Interleaved timings: ``times[label]`` in seconds, one per round, in the order run."""

    times: dict[str, list[float]]
    reference: str

    def table(self) -> pd.DataFrame:
        """Median ms per label, and the per-round ratio to the reference: median and the
        middle half of the rounds (25th to 75th percentile)."""
        ref = self.times[self.reference]
        rows = {}
        for label, ts in self.times.items():
            ratios = sorted(t / r for t, r in zip(ts, ref))
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            rows[label] = {"median ms": 1000 * statistics.median(ts), "vs base (median)": statistics.median(ratios),
                           "vs base, 25th pct": q[0], "vs base, 75th pct": q[2]}
        return pd.DataFrame(rows).T

    def resolves(self, label: str, control: str) -> bool:
        """Whether ``label`` differs from the reference by more than ``control`` (the reference
        timed again) does: their middle halves of per-round ratios do not overlap."""
        t = self.table()
        a, c = t.loc[label], t.loc[control]
        return a["vs base, 25th pct"] > c["vs base, 75th pct"] or a["vs base, 75th pct"] < c["vs base, 25th pct"]


def interleaved_timing(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> TimingResult:
    """Time each function once per round, ``repeats`` rounds, in turn (a slow moment of a shared
    machine then hits all of them alike); the first label is the reference.  Put the
    reference in twice (under another label) to measure what the timing can resolve."""
    check_positive_int("repeats", repeats)
    if len(fns) < 2:
        raise ValueError("interleaved_timing compares at least two functions (the first is the reference)")
    return TimingResult(interleave(fns, repeats, warmup), reference=next(iter(fns)))


def accuracy_at(result: Any, step: int) -> float:
    """A run's validation accuracy at its last evaluation at or before ``step`` (NaN when none was that early).

    Notebooks 02 and 02b compare runs at their first evaluation, where the alpha conventions differ most.
    ``result``: a ``RunResult`` (anything with a ``history`` table of ``step`` and ``eval_accuracy``).
    """
    h = result.history.dropna(subset=["eval_accuracy"])
    h = h[h["step"] <= step]
    return float(h["eval_accuracy"].iloc[-1]) if len(h) else float("nan")


def first_eval_step(results: Sequence[Any]) -> int:
    """The earliest step at which any of the runs was evaluated."""
    steps = [r.history.dropna(subset=["eval_accuracy"])["step"].min() for r in results]
    steps = [s for s in steps if s == s]
    if not steps:
        raise ValueError("none of the runs was evaluated: no step has a validation accuracy")
    return int(min(steps))


def mean_update_norm(model: nn.Module) -> float:
    """The mean of ||s B A||_F over the model's LoRA layers (``delta_report``'s ``delta_fro``)."""
    return float(delta_report(model)["delta_fro"].mean())


#: The columns of ``early_updates``' table.
EARLY_COLUMNS = ("s", "mean ||BA||_F", "mean ||sBA||_F", "B columns together", "train loss")


def early_updates(configs: Sequence[Any], steps: int = 10) -> pd.DataFrame:
    """The LoRA adapters' size after each config's first ``steps`` optimizer steps, one row per rank.

    Each config is set up and stepped exactly as ``wb.train`` does (``engine.training.set_up``:
    the same seed, batches, optimizer and learning-rate schedule, ``training_step``), so the
    rows are the first ``steps`` steps of the runs those configs make; nothing is evaluated or
    stored.  Columns (``EARLY_COLUMNS``), means over the adapted layers:

    * ``mean ||BA||_F`` and ``mean ||sBA||_F``: the update without and with its scale s;
    * ``B columns together``: ||B 1|| / (sqrt(r) ||B||_F), 1 when B's r columns are one
      vector repeated (the update would grow like r), about 1 / sqrt(r) when they point in
      unrelated directions (it grows like sqrt(r));
    * ``train loss``: the loss of the last of those steps.
    """
    import torch

    from workbench.engine.training import set_up, training_step
    from workbench.lora.layer import LoRALayer

    check_positive_int("steps", steps, what="how many optimizer steps to take")
    rows = {}
    for cfg in configs:
        if cfg.method != "lora":
            continue
        run = set_up(cfg)
        loss = float("nan")
        for _ in range(min(steps, cfg.steps)):
            loss = training_step(run, next(run.batches).to(run.device).model_inputs(), cfg.max_grad_norm)
        layers = [m for m in run.model.modules() if isinstance(m, LoRALayer)]
        with torch.no_grad():
            bs = [m.lora_B.weight.detach().float() for m in layers]
            ba = [float(torch.linalg.matrix_norm(b @ m.lora_A.weight.detach().float())) for b, m in zip(bs, layers)]
            together = [float(b.sum(1).norm() / (b.shape[1] ** 0.5 * b.norm())) if b.norm() > 0 else float("nan")
                        for b in bs]
        rows[cfg.lora.rank] = {"s": cfg.lora.scaling, "mean ||BA||_F": statistics.fmean(ba),
                               "mean ||sBA||_F": cfg.lora.scaling * statistics.fmean(ba),
                               "B columns together": statistics.fmean(together), "train loss": loss}
        del run
    if not rows:
        raise ValueError("early_updates measures LoRA adapters: none of the configs is a LoRA run")
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(EARLY_COLUMNS)).rename_axis("r").sort_index()


@dataclass
class Stopwatch:
    """Wall-clock time since it was made (``elapsed``), and ``lap`` times by name."""

    start: float = field(default_factory=time.perf_counter)
    laps: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def lap(self, name: str) -> float:
        """Record and return the time since the previous lap (or the start)."""
        before = sum(self.laps.values())
        self.laps[name] = self.elapsed() - before
        return self.laps[name]

    def text(self) -> str:
        """'1 min 23 s' or '45 s'."""
        s = round(self.elapsed())  # whole seconds first, so 119.6 s reads '2 min 0 s', not '1 min 60 s'
        return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"
