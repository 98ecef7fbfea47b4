"""Learning versus forgetting: what adapting a language model gains, and what it costs.

Biderman et al. 2024, "LoRA Learns Less and Forgets Less" (TMLR; arXiv:2405.09673),
compare LoRA and full fine-tuning of Llama-2-7B on two axes at once: how well the model
does the new domain (code, math) and how much it loses of what it could do before (an
aggregate of HellaSwag, ARC-Challenge and WinoGrande).  Their finding: in the usual
low-rank settings full fine-tuning learns more and forgets more; LoRA stays nearer the
base model on both axes; plotted against each other, both methods lie on about the same
learning-forgetting curve.  They tune the learning rate per method.

Here the two axes are the bundled skill (exact match and completion loss on its
validation prompts) and the loss on held-out text from the bundled model's pretraining
corpus (``data/story_lm/heldout.txt``).  This module builds the grid (LoRA at several
ranks, full fine-tuning at one or more learning rates, several seeds), measures the
untrained base model as the origin, tabulates the runs and draws the two axes against
each other.  Whether the paper's picture holds on a 1-million-parameter model trained for
250 steps is a question the measurement answers, not an assumption.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
from matplotlib.figure import Figure

from workbench.engine.config import RunConfig, RunResult, preset
from workbench.engine.evaluation import evaluate, evaluate_writing
from workbench.engine.training import set_up
from workbench.records.recording import train
from workbench.util.checks import check_integer, check_positive_int, check_positive_number

COLUMNS = ("method", "rank", "lr", "seed", "exact_match", "completion_loss", "heldout_loss", "seconds", "run_id",
           "status")
AXES = ("exact_match", "completion_loss", "heldout_loss")


@dataclass
class BasePoint:
    """The untrained model on both axes: where every run starts."""

    exact_match: float
    completion_loss: float
    heldout_loss: float
    answers: list[dict]  # a few prompts with the base model's answers (step 0)


def measure_base(cfg: RunConfig) -> BasePoint:
    """Evaluate the base model exactly as a run of ``cfg`` evaluates, before its first step.

    A LoRA run starts from B = 0, so its model before training computes the base model's
    function: set one up and evaluate it without a step (same prompts, same held-out
    batches, same precision as the runs).
    """
    if cfg.task != "causal-lm":
        raise ValueError(f"measure_base needs a language model's run (task='causal-lm'), got task={cfg.task!r}: "
                         "forgetting is measured as the loss on held-out pretraining text")
    run = set_up(cfg.with_changes(method="lora"))
    if run.writing is None or not run.writing.heldout_batches:
        raise ValueError(f"the run of {cfg.model!r} has no held-out pretraining text to measure forgetting on; "
                         "use the bundled 'story-lm' or give heldout_data=<a text file>")
    loss, _ = evaluate(run.model, run.eval_batches, run.device, run.use_bf16)
    metrics, samples = evaluate_writing(run.model, run.tokenizer, run.writing, run.device, run.use_bf16, loss, 0)
    return BasePoint(metrics.get("eval_exact_match", math.nan), loss, metrics["heldout_loss"], samples)


def grid_configs(base: RunConfig, ranks: Sequence[int] = (1, 8, 64), seeds: Sequence[int] = (0, 1),
                 full_lr: float | Sequence[float] | None = None) -> list[RunConfig]:
    """LoRA at each rank and full fine-tuning at each of its learning rates, each with every seed.

    LoRA uses alpha = 2 r (the paper's choice), so the update's scale alpha / r = 2 is the
    same at every rank, at ``base.lr``.  ``full_lr``: full fine-tuning's learning rate, or
    several (one point each); default a tenth of LoRA's, the usual ratio (every weight
    moves, not a low-rank few).  An empty sequence leaves full fine-tuning out.
    """
    if not seeds:
        raise ValueError("give at least one seed (two or more show the spread between seeds)")
    for r in ranks:
        check_positive_int("rank", r, what="each LoRA rank of the grid")
    for s in seeds:
        check_integer("seed", s, 0, what="each seed of the grid")
    if full_lr is None:
        full_lrs: tuple[float, ...] = (base.lr / 10,)
    elif isinstance(full_lr, (int, float)):
        full_lrs = (float(full_lr),)
    else:
        full_lrs = tuple(full_lr)
    for lr in full_lrs:
        check_positive_number("full_lr", lr, what="full fine-tuning's learning rate")
    if not ranks and not full_lrs:
        raise ValueError("the grid is empty: give at least one rank or one full fine-tuning learning rate")
    configs = []
    for seed in seeds:
        for r in ranks:
            configs.append(base.with_changes(method="lora", rank=r, alpha=2 * r, seed=seed, name=None))
        for lr in full_lrs:
            name = f"full fine-tuning lr {lr:g}" if len(full_lrs) > 1 else None
            configs.append(base.with_changes(method="full", lr=lr, seed=seed, name=name))
    return configs


def point(result: RunResult) -> dict:
    """One row of the grid's table from a finished run: its settings and its final values on both axes."""
    cfg = result.config
    return {"method": cfg.method, "rank": cfg.lora.rank if cfg.method == "lora" else math.nan, "lr": cfg.lr,
            "seed": cfg.seed, "exact_match": result.last("eval_exact_match"),
            "completion_loss": result.last("eval_loss"), "heldout_loss": result.last("heldout_loss"),
            "seconds": result.timing.total_seconds, "run_id": result.run_id, "status": result.status}


def run_grid(configs: Sequence[RunConfig], runs_dir: str | os.PathLike | None = None, progress: bool = False,
             keep_models: bool = False) -> list[RunResult]:
    """Train every config in turn (stored under ``runs_dir`` when given).

    ``keep_models``: hand each trained model back as ``result.model`` (the bundled model is
    4 MB, so a grid's worth is cheap), to let its answers be compared with the base's.
    """
    return [train(cfg, runs_dir=runs_dir, progress=progress, keep_model=keep_models) for cfg in configs]


def grid_table(results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per run (``COLUMNS``)."""
    return pd.DataFrame([point(r) for r in results], columns=list(COLUMNS))


def learning_vs_forgetting(configs: Sequence[RunConfig], runs_dir: str | os.PathLike | None = None,
                           progress: bool = False) -> pd.DataFrame:
    """Train every config and tabulate both axes: ``grid_table(run_grid(configs, runs_dir))``."""
    return grid_table(run_grid(configs, runs_dir, progress))


def label(method: str, rank: float, lr: float) -> str:
    """How a group of runs is named in the summary and the legend: 'LoRA r=8', 'full FT lr 0.0003'."""
    return f"LoRA r={int(rank)}" if method == "lora" else f"full FT lr {lr:g}"


def summarize(table: pd.DataFrame, base: BasePoint | None = None) -> pd.DataFrame:
    """Mean, min and max over seeds of each axis, per method, rank and learning rate.

    Groups keep the table's order of first appearance.  With ``base``, adds
    ``forgetting`` = mean held-out loss - the base's (nats per token the run lost on
    pretraining text) and ``learned`` = mean exact match - the base's.
    """
    missing = [c for c in ("method", "rank", "lr", "seed") + AXES if c not in table]
    if missing:
        raise ValueError(f"the table lacks the columns {missing}; it takes grid_table's columns {list(COLUMNS)}")
    if not len(table):
        raise ValueError("the table has no runs to summarize")
    key = table.assign(rank=table["rank"].fillna(0).astype(int))
    agg = key.groupby(["method", "rank", "lr"], sort=False)[list(AXES)]
    out = agg.agg(["mean", "min", "max"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["seeds"] = key.groupby(["method", "rank", "lr"], sort=False)["seed"].nunique()
    out = out.reset_index()
    out.insert(0, "group", [label(m, r, lr) for m, r, lr in zip(out["method"], out["rank"], out["lr"])])
    if base is not None:
        out["learned"] = out["exact_match_mean"] - base.exact_match
        out["forgetting"] = out["heldout_loss_mean"] - base.heldout_loss
    return out


def forgetting_figure(table: pd.DataFrame, base: BasePoint) -> Figure:
    """Two panels: the new skill (exact match; completion loss) against forgetting (held-out loss).

    Each marker is one run (squares: full fine-tuning; circles: LoRA); the black star is the
    base model.  Right means more forgotten; up on the left panel and down on the right
    panel mean more learned.  Built on a ``Figure`` of its own: no pyplot state is touched.
    """
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    groups = list(dict.fromkeys(zip(table["method"], table["rank"].fillna(0).astype(int), table["lr"])))
    for ax, col, ylabel, base_y in ((axes[0], "exact_match", "exact match on the skill (learning \u2191)",
                                     base.exact_match),
                                    (axes[1], "completion_loss", "completion loss on the skill (learning \u2193)",
                                     base.completion_loss)):
        for method, rank, lr in groups:
            keep = (table["method"] == method) & (table["lr"] == lr)
            if method == "lora":
                keep &= table["rank"] == rank
            rows = table[keep]
            ax.scatter(rows["heldout_loss"], rows[col], label=label(method, rank, lr), s=40, alpha=0.85,
                       marker="s" if method == "full" else "o")
        ax.scatter([base.heldout_loss], [base_y], marker="*", s=180, color="black", label="base model")
        ax.set_xlabel("loss on held-out pretraining text (forgetting \u2192)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Learning vs forgetting on the bundled story-lm (one marker per run)")
    return fig


def default_grid(ranks: Sequence[int] = (1, 8, 64), seeds: Sequence[int] = (0, 1),
                 full_lr: float | Sequence[float] | None = None, **overrides) -> list[RunConfig]:
    """The notebook's grid: the default generative preset at each rank, and full fine-tuning."""
    return grid_configs(preset("generate", **overrides), ranks, seeds, full_lr)


__all__ = ["BasePoint", "measure_base", "grid_configs", "run_grid", "grid_table", "learning_vs_forgetting",
           "summarize", "forgetting_figure", "default_grid", "point", "label"]
