"""The rank sweep: plant Delta W* once, fit one student per rank on the same batches, tabulate.

``rank_sweep`` returns a ``PlantedSweep`` whose ``table`` (``sweep_table``) has one row per
student: the loss left, the Eckart-Young fractions, and how close each learned update is.
``findings`` reads the knee off that table: the numbers and sentences notebook 05 shows.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from workbench.lessons.delta_w import singular_values
from workbench.lessons.planted_rank.config import PlantedConfig
from workbench.lessons.planted_rank.measures import captured_energy, output_singular_values, tail_and_total
from workbench.lessons.planted_rank.student import PlantedResult, fit_student
from workbench.lessons.planted_rank.task import layer_inputs, prepare_task, torch_threads
from workbench.lessons.planted_rank.teacher import make_teacher
from workbench.util.checks import is_integer

__all__ = ["PlantedSweep", "sweep_table", "rank_sweep", "PlantedFindings", "findings"]


@dataclass
class PlantedSweep:
    """A rank sweep: the config, the planted updates, the planted layers' inputs X,
    one result per rank, and the summary table (see ``sweep_table``)."""

    config: PlantedConfig
    planted: OrderedDict[str, torch.Tensor]
    inputs: OrderedDict[str, torch.Tensor]
    results: dict[int, PlantedResult]
    table: pd.DataFrame
    base_loss: float


def sweep_table(
    results: Sequence[PlantedResult],
    planted: Mapping[str, torch.Tensor],
    inputs: Mapping[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """One row per student, sorted by rank.

    Columns: ``rank``, ``alpha``, ``scaling``, ``trainable``, ``final_loss``, ``base_loss``,
    ``relative_loss`` (final / base), ``eckart_young`` (the tail fraction of Delta W*'s
    singular values), ``eckart_young_inputs`` (the same for Delta W* X^T, if ``inputs``),
    ``delta_error``, ``output_error`` (if ``inputs``), ``captured``, ``seconds``.  With
    several planted layers, fractions pool the squared norms of all layers (sum of the
    tails over sum of the totals), as the loss pools their effects.
    """
    def pooled(pairs: list[tuple[float, float]]) -> float:
        return sum(a for a, _ in pairs) / sum(b for _, b in pairs)

    w_sv = [singular_values(d) for d in planted.values()]  # the SVDs do not depend on the student
    x_sv = [output_singular_values(d, inputs[p]) for p, d in planted.items()] if inputs is not None else []
    rows = []
    for res in sorted(results, key=lambda x: x.rank):
        w_tail = [tail_and_total(sv, res.rank) for sv in w_sv]
        diff = [(float(torch.linalg.matrix_norm(res.learned[p] - d) ** 2), float(torch.linalg.matrix_norm(d) ** 2))
                for p, d in planted.items()]
        cap = [(captured_energy(res.learned[p], d) * b, b) for (p, d), (_, b) in zip(planted.items(), diff)]
        row = {
            "rank": res.rank, "alpha": res.alpha, "scaling": res.scaling, "trainable": res.trainable,
            "final_loss": res.final_loss, "base_loss": res.base_loss, "relative_loss": res.relative_loss,
            "eckart_young": pooled(w_tail),
        }
        if inputs is not None:
            row["eckart_young_inputs"] = pooled([tail_and_total(sv, res.rank) for sv in x_sv])
        row["delta_error"] = math.sqrt(pooled(diff))
        if inputs is not None:
            out = []
            for p, d in planted.items():
                x = inputs[p].T
                out.append((float(torch.linalg.matrix_norm((res.learned[p] - d) @ x) ** 2),
                            float(torch.linalg.matrix_norm(d @ x) ** 2)))
            row["output_error"] = math.sqrt(pooled(out))
        row["captured"] = pooled(cap)
        row["seconds"] = res.seconds
        rows.append(row)
    return pd.DataFrame(rows)


def rank_sweep(
    cfg: PlantedConfig,
    ranks: Sequence[int],
    base: nn.Module | None = None,
    tokenizer: object | None = None,
    progress: Callable[[PlantedResult], None] | None = None,
) -> PlantedSweep:
    """Plant Delta W* once, then fit one student per rank on the same batches.

    ``base``/``tokenizer`` default to ``load_base(cfg.model)``.  ``progress`` is called
    with each result as it finishes (e.g. to print a line).  Ranks run in increasing order.
    """
    ranks = list(ranks)
    if not ranks or any(not is_integer(r) or r < 1 for r in ranks):
        raise ValueError(f"ranks must be a non-empty list of positive integers, got {ranks!r}")
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"ranks must not repeat, got {ranks!r}")
    if base is None:
        from workbench.engine.models import load_base

        base, tokenizer = load_base(cfg.model, seed=cfg.seed)
    with torch_threads(cfg.threads):
        return _sweep(cfg, ranks, base, tokenizer, progress)


def _sweep(
    cfg: PlantedConfig, ranks: list[int], base: nn.Module, tokenizer: object | None,
    progress: Callable[[PlantedResult], None] | None,
) -> PlantedSweep:
    teacher, planted = make_teacher(base, cfg)
    task = prepare_task(base, teacher, cfg, tokenizer)
    inputs = OrderedDict((p, layer_inputs(base, task, p)) for p in planted)
    results: dict[int, PlantedResult] = {}
    for r in sorted(int(r) for r in ranks):
        results[r] = fit_student(base, teacher, cfg, r, task)
        if progress is not None:
            progress(results[r])
    table = sweep_table(list(results.values()), planted, inputs)
    return PlantedSweep(cfg, planted, inputs, results, table, task.base_loss)


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class PlantedFindings:
    """What a sweep shows about the knee, as numbers and in sentences (notebook 05, section 3).

    Losses are ``relative_loss`` (final / base loss).  ``best_below``: the lowest of the
    students with r < k; ``at_k``: the student with r = k; ``worst_at_or_above``: the
    highest with r >= k; ``worst_above``: the rank above k that keeps the most loss, and
    ``worst_above_loss`` its loss.  Each is None when the sweep has no such student.
    ``lines``: the comparisons in plain sentences; ``reading``: the paragraph that reads
    the figure (Markdown).
    """

    true_rank: int
    best_below: float | None
    at_k: float | None
    worst_at_or_above: float | None
    worst_above: int | None
    worst_above_loss: float | None
    lines: tuple[str, ...]
    reading: str

    @property
    def knee(self) -> float | None:
        """How many times less loss the student with r = k keeps than the best one below k."""
        return None if self.best_below is None or self.at_k is None else self.best_below / self.at_k

    @property
    def above_k_ratio(self) -> float | None:
        """The worst student above k's loss over the loss at r = k (> 1: more rank cost a little)."""
        return None if self.worst_above_loss is None or self.at_k is None else self.worst_above_loss / self.at_k


#: Why students with more rank than needed can end a little worse (Adam's normalised steps).
_WHY_MORE = ("Why more? A likely reason, a hypothesis these runs do not measure: the extra directions are not needed, "
             "so their gradients are tiny, but Adam divides each parameter's step by the size of its recent gradients, "
             "so they may still move by about the learning rate per step and wander, adding error, until the rate has "
             "decayed; a student with more directions has more to wander in the same number of steps. ")


def findings(sweep: PlantedSweep) -> PlantedFindings:
    """Read the knee off ``sweep.table``: the losses below, at and above the planted rank k,
    the comparisons in sentences and the paragraph that reads the loss-against-rank figure."""
    k = sweep.config.true_rank
    loss = sweep.table.set_index("rank")["relative_loss"]
    below, above = loss[loss.index < k], loss[loss.index >= k]
    higher = above[above.index > k]
    best_below = float(below.min()) if len(below) else None
    at_k = float(loss[k]) if k in loss.index else None
    worst_at_or_above = float(above.max()) if len(above) else None
    worst_above = int(higher.idxmax()) if len(higher) else None
    worst_above_loss = float(higher.max()) if len(higher) else None
    lines: list[str] = []
    if best_below is not None and at_k is not None:
        lines.append(f"best student below k keeps {best_below:.2e} of the base loss, the student with r = k "
                     f"{at_k:.2e}: {best_below / at_k:,.0f}x less")
    if best_below is not None and worst_at_or_above is not None:
        lines.append(f"the worst student at or above k keeps {worst_at_or_above:.2e}: still "
                     f"{best_below / worst_at_or_above:,.0f}x below any r < k")
    if best_below is None or at_k is None:
        reading = (f"**Reading it.** The knee needs students on both sides of $k = {k}$: run ranks below $k$ and "
                   "$r = k$ itself to see it.")
    else:
        reading = ("**Reading it.** Below $k$ the loss stays high, close to what Eckart–Young on the layer's inputs "
                   "predicts (the layers above the planted one bend the error a little, so it is a guide, not an "
                   f"identity). At $r = k$ it drops: {best_below / at_k:,.0f}x below the best student under $k$. ")
        if worst_above is not None:
            ratio = worst_above_loss / at_k
            reading += (f"Above $k$ nothing more is gained: $r = {worst_above}$ keeps {worst_above_loss:.2e} of the "
                        f"base loss against {at_k:.2e} at $r = k$, **{ratio:.1f}x {'more' if ratio > 1 else 'less'}**. ")
            if ratio > 1:
                reading += _WHY_MORE
        reading += "More rank than the task needs costs parameters and buys nothing here."
    return PlantedFindings(k, best_below, at_k, worst_at_or_above, worst_above, worst_above_loss, tuple(lines),
                           reading)
