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
from typing import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from workbench.engine.config import RunConfig, RunResult, preset
from workbench.engine.evaluation import evaluate, evaluate_writing
from workbench.engine.training import set_up
from workbench.records.recording import train
from workbench.util.checks import check_integer, check_positive_int, check_positive_number
from workbench.viz.style import FIGSIZE, FULL_COLOR, MARKERS, STYLE, label_axes, legend_options, rank_color, style_axes

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


EXTRA_MARKERS = ("P", "X", "D", "v", "^", "<", ">")  # points drawn beside the grid (exercises, extra runs)


def forgetting_figure(table: pd.DataFrame, base: BasePoint, extra: Mapping[str, Mapping] | None = None) -> Figure:
    """Two panels: the new skill (exact match; completion loss) against forgetting (held-out loss).

    Each marker is one run (circles: LoRA, coloured by rank; squares, then triangles, diamonds ...: full
    fine-tuning at each learning rate, in red, as in every figure of the workbench); the black star is the
    base model.  Right means more forgotten; up on the left panel and down on the right panel mean more
    learned.  ``extra``: more runs drawn beside the grid's, {legend label: a row with ``heldout_loss``,
    ``exact_match``, ``completion_loss`` and optionally ``rank``}, each as a large hollow marker of its own
    shape (in the rank's colour when it has one), so that where an exercise's run lands can be seen.
    Built on a ``Figure`` of its own: no pyplot state is touched.
    """
    fig = Figure(figsize=(2 * FIGSIZE[0] * 0.72, FIGSIZE[1]), layout="constrained", facecolor=STYLE["face_color"])
    axes = fig.subplots(1, 2)
    groups = list(dict.fromkeys(zip(table["method"], table["rank"].fillna(0).astype(int), table["lr"])))
    full_lrs = [lr for method, _, lr in groups if method != "lora"]
    for ax, col, ylabel, base_y in ((axes[0], "exact_match", "exact match on the skill (learning \u2191)",
                                     base.exact_match),
                                    (axes[1], "completion_loss", "completion loss (nats per token; learning \u2193)",
                                     base.completion_loss)):
        style_axes(ax)
        for method, rank, lr in groups:
            keep = (table["method"] == method) & (table["lr"] == lr)
            if method == "lora":  # the house palette: LoRA by rank, full fine-tuning red (a marker per lr)
                keep &= table["rank"] == rank
                color, marker = rank_color(rank), "o"
            else:
                color, marker = FULL_COLOR, ("s", *MARKERS[2:])[full_lrs.index(lr) % (len(MARKERS) - 1)]
            rows = table[keep]
            ax.scatter(rows["heldout_loss"], rows[col], label=label(method, rank, lr), s=40, alpha=0.85,
                       marker=marker, color=color)
        for i, (name, row) in enumerate((extra or {}).items()):
            rank = row.get("rank")
            color = rank_color(int(rank)) if rank is not None and not pd.isna(rank) else STYLE["text_color"]
            ax.scatter([row["heldout_loss"]], [row[col]], marker=EXTRA_MARKERS[i % len(EXTRA_MARKERS)], s=110,
                       facecolors="none", edgecolors=color, linewidths=1.8, label=name)
        ax.scatter([base.heldout_loss], [base_y], marker="*", s=180, color="black", label="base model")
        label_axes(ax, "", "loss on held-out pretraining text (nats per token; forgetting \u2192)", ylabel)
    axes[1].set_yscale("log")
    axes[0].legend(**legend_options(), loc="best")
    fig.suptitle("Learning vs forgetting on the bundled story-lm (one marker per run)", fontsize=STYLE["title_size"],
                 color=STYLE["text_color"])
    return fig


LEARNED = 0.9  # a run "learned the skill" at this exact match or more (the datasheet's bar for LoRA r = 8)


@dataclass
class Findings:
    """What notebook 07's grid shows, as data: the notebook renders it (``markdown``), its self-test and the
    unit tests assert on the fields.  Every sentence of ``markdown`` is formatted from these fields.

    ``groups``: ``summarize``'s table (one row per method, rank and learning rate).  ``reference_rank``: the
    LoRA rank compared with full fine-tuning (8 when the grid has it, else its last rank).  ``lr_gap`` and
    ``method_gap`` are None when full fine-tuning has one learning rate.  ``best``: of the runs that learned
    the skill (exact match ``LEARNED`` or more), the one with the lowest held-out loss (a row of the grid's
    table as a dict), or None when none learned it.
    """

    base: BasePoint
    groups: pd.DataFrame
    seeds: int
    forgot_all: bool  # every run's held-out loss is above the base model's
    rank_order: list[int]  # LoRA's ranks from least to most forgetting (mean held-out loss)
    forgetting_grows_with_rank: bool
    full_learns_more_loss: bool  # full fine-tuning's completion loss below every LoRA rank's, at every lr
    smallest_rank: int
    small_less_both: bool  # the smallest rank learned less and forgot less than full fine-tuning at every lr
    ranks_that_learned: list[int]  # LoRA ranks whose mean exact match is LEARNED or more
    reference_rank: int
    lr_gap: float | None  # full FT's held-out loss at its highest lr minus at its lowest
    method_gap: float | None  # |LoRA reference_rank - full FT at its lowest lr|, held-out loss
    learned_runs: int
    best: dict | None

    @property
    def lora(self) -> pd.DataFrame:
        """LoRA's groups, indexed by rank."""
        return self.groups[self.groups["method"] == "lora"].set_index("rank")

    @property
    def full(self) -> pd.DataFrame:
        """Full fine-tuning's groups, indexed by learning rate."""
        return self.groups[self.groups["method"] == "full"].set_index("lr")

    @property
    def least_forgetting_learner(self) -> str | None:
        """'lora' or 'full': the method of ``best`` (None when no run learned the skill)."""
        return None if self.best is None else self.best["method"]

    def markdown(self) -> str:
        """The paragraph notebook 07 shows under its figure."""
        g, lora_g, full_g, base = self.groups.set_index("group"), self.lora, self.full, self.base
        lines = [f"* **{name}**: exact match {row.exact_match_mean:.3f} ({row.exact_match_min:.3f} to "
                 f"{row.exact_match_max:.3f}), completion loss {row.completion_loss_mean:.3f}, held-out loss "
                 f"{row.heldout_loss_mean:.3f} ({row.heldout_loss_min:.3f} to {row.heldout_loss_max:.3f}): "
                 f"{row.forgetting:+.3f} nats per token against the base."
                 for name, row in g.iterrows()]
        order = ", ".join(map(str, self.rank_order))
        text = (f"**What the measurement shows** ({self.seeds} seeds; the base model at exact match "
                f"{base.exact_match:.3f}, held-out loss {base.heldout_loss:.3f}):\n\n" + "\n".join(lines) + "\n\n")
        text += ("* **Forgetting.** " + ("Every run forgot: each one's held-out loss is above the base model's. "
                                         if self.forgot_all else
                                         "Not every run's held-out loss is above the base model's. ")
                 + (f"Across LoRA's ranks it grows with the rank (r = {order}, least to most): at "
                    "alpha = 2r and one learning rate, a larger rank moves the model further.\n"
                    if self.forgetting_grows_with_rank else
                    f"Ordered from least to most forgetting, the LoRA ranks go r = {order}.\n"))
        best_full = full_g["completion_loss_mean"].min()
        gaps = lora_g["completion_loss_mean"] - best_full  # LoRA's completion loss above full fine-tuning's best
        lo_r, hi_r = int(min(lora_g.index)), int(max(lora_g.index))
        if self.full_learns_more_loss:
            learning = (f"Full fine-tuning reached a lower completion loss at every learning rate "
                        f"({full_g['completion_loss_mean'].max():.3f} at most) than any LoRA rank "
                        f"({lora_g['completion_loss_mean'].min():.3f} at least). ")
            if hi_r != lo_r:
                learning += (f"The gap to full fine-tuning's best ({best_full:.3f}) was {gaps.loc[lo_r]:.3f} at "
                             f"r = {lo_r} and {gaps.loc[hi_r]:.3f} at r = {hi_r}: "
                             + (f"a {hi_r // lo_r if lo_r and hi_r % lo_r == 0 else hi_r / lo_r:g} times larger rank "
                                f"narrowed it by {1 - gaps.loc[hi_r] / gaps.loc[lo_r]:.0%} and left it open, so it is not a "
                                "rank limit. Full fine-tuning also trains "
                                "the tied embeddings and output layer and the norms, which LoRA leaves frozen; the section "
                                "*What LoRA leaves frozen* trains them beside LoRA to measure how much of the gap that is. "
                                if gaps.loc[hi_r] > 0.5 * gaps.loc[lo_r] else "it shrinks as the rank grows. "))
        else:
            learning = "Full fine-tuning did not reach a lower completion loss than every LoRA rank. "
        full_em = full_g["exact_match_mean"]
        text += ("* **Learning.** " + learning + "The paper measures learning by the task's own score; here that is "
                 f"exact match: LoRA ranks {', '.join(map(str, self.ranks_that_learned)) or 'none'} reached 0.9 or more "
                 "on average (" + ", ".join(f"r = {int(k)}: {v:.3f}" for k, v in lora_g["exact_match_mean"].items())
                 + "), full fine-tuning " + ", ".join(f"{v:.3f} at lr {k:g}" for k, v in full_em.items()) + ".\n")
        r = self.smallest_rank
        text += ("* **The smallest rank.** "
                 + (f"LoRA r = {r} learned less (exact match {lora_g.loc[r, 'exact_match_mean']:.3f}) "
                    f"and forgot less (held-out {lora_g.loc[r, 'heldout_loss_mean']:.3f}) than full fine-tuning at "
                    "either learning rate: the paper's title, on this model.\n" if self.small_less_both else
                    f"LoRA r = {r} did not both learn less and forget less than full fine-tuning at every "
                    "learning rate.\n"))
        if self.lr_gap is not None and self.method_gap is not None:
            lo_lr, hi_lr = min(full_g.index), max(full_g.index)
            text += (f"* **The learning rate.** Full fine-tuning's held-out loss went from "
                     f"{full_g.loc[lo_lr, 'heldout_loss_mean']:.3f} at lr {lo_lr:g} to "
                     f"{full_g.loc[hi_lr, 'heldout_loss_mean']:.3f} at lr {hi_lr:g}: {self.lr_gap:+.2f} nats, "
                     + ("more" if self.lr_gap > self.method_gap else "less")
                     + f" than the {self.method_gap:.2f} nats between LoRA r={self.reference_rank} and full "
                     f"fine-tuning at lr {lo_lr:g}: in this grid the learning rate moved a run "
                     + ("more than the choice of method did (as well as the method, not instead of it).\n"
                        if self.lr_gap > self.method_gap else "less than the choice of method did.\n"))
        best = self.best
        if best is not None:
            who = f"LoRA r={int(best['rank'])}" if best["method"] == "lora" else f"full fine-tuning at lr {best['lr']:g}"
            text += (f"* **At equal learning.** Of the {self.learned_runs} grid runs that learned the skill (exact "
                     f"match 0.9 or more), the one that forgot least is **{who}** (seed {int(best['seed'])}: exact "
                     f"match {best['exact_match']:.3f}, held-out loss {best['heldout_loss']:.3f})"
                     + (": at the grid's learning rates, LoRA forgot more for the same skill. In the paper the two "
                        "methods lay on about the same learning-forgetting curve (LoRA at its learn-less, forget-less "
                        "end), so this end point is worse for LoRA than the paper's." if best["method"] == "full" else
                        ": at equal learning LoRA forgot less here.") + "\n")
        return text


def findings(table: pd.DataFrame, base: BasePoint) -> Findings:
    """Read the grid (``grid_table``'s rows) against the base model: the directions notebook 07 states.

    Needs at least one LoRA rank and one full fine-tuning learning rate (the comparison is between them).
    """
    groups = summarize(table, base)
    lora_g = groups[groups["method"] == "lora"].set_index("rank")
    full_g = groups[groups["method"] == "full"].set_index("lr")
    if lora_g.empty or full_g.empty:
        raise ValueError("findings compare LoRA with full fine-tuning: the grid needs at least one LoRA rank and "
                         "one full fine-tuning learning rate")
    rank_order = [int(r) for r in lora_g.sort_values("heldout_loss_mean").index]
    r_small = int(min(lora_g.index))
    ranks = [int(r) for r in lora_g.index]
    reference = 8 if 8 in ranks else ranks[-1]
    lr_gap = method_gap = None
    if len(full_g) > 1:  # how far full fine-tuning's own learning rate moved it, against LoRA vs full FT
        lo_lr, hi_lr = min(full_g.index), max(full_g.index)
        lr_gap = float(full_g.loc[hi_lr, "heldout_loss_mean"] - full_g.loc[lo_lr, "heldout_loss_mean"])
        method_gap = float(abs(lora_g.loc[reference, "heldout_loss_mean"] - full_g.loc[lo_lr, "heldout_loss_mean"]))
    learned = table[table["exact_match"] >= LEARNED]
    best = learned.loc[learned["heldout_loss"].idxmin()].to_dict() if len(learned) else None
    return Findings(
        base=base, groups=groups, seeds=int(groups["seeds"].max()),
        forgot_all=bool((table["heldout_loss"] > base.heldout_loss).all()),
        rank_order=rank_order,
        forgetting_grows_with_rank=len(rank_order) > 1 and rank_order == sorted(rank_order),
        full_learns_more_loss=bool(full_g["completion_loss_mean"].max() < lora_g["completion_loss_mean"].min()),
        smallest_rank=r_small,
        small_less_both=bool((lora_g.loc[r_small, "exact_match_mean"] < full_g["exact_match_mean"]).all()
                             and (lora_g.loc[r_small, "heldout_loss_mean"] < full_g["heldout_loss_mean"]).all()),
        ranks_that_learned=[r for r in ranks if lora_g.loc[r, "exact_match_mean"] >= LEARNED],
        reference_rank=reference, lr_gap=lr_gap, method_gap=method_gap, learned_runs=len(learned), best=best,
    )


def default_grid(ranks: Sequence[int] = (1, 8, 64), seeds: Sequence[int] = (0, 1),
                 full_lr: float | Sequence[float] | None = None, **overrides) -> list[RunConfig]:
    """The notebook's grid: the default generative preset at each rank, and full fine-tuning."""
    return grid_configs(preset("generate", **overrides), ranks, seeds, full_lr)


def frozen_by_lora(model) -> pd.DataFrame:
    """Where a language model's parameters sit, and which of them LoRA on the blocks' linear layers leaves frozen.

    One row per part: ``block linear layers`` (what LoRA adapts, all six roles; LoRA trains low-rank
    updates of them, full fine-tuning the weights themselves), ``embeddings`` (the input embeddings,
    also the output layer when the two are tied, as in story-lm), ``output layer`` (when not tied),
    ``norms`` (every module whose class name ends in "Norm") and ``other``.  Columns: ``parameters``,
    ``share (%)`` and ``trained by LoRA``.  Full fine-tuning trains every row; what LoRA leaves
    frozen is what PEFT's ``modules_to_save`` would add back.  Each tensor is counted once.
    """
    from workbench.lora.paths import block_linear_names

    seen: set[int] = set()

    def count(params) -> int:
        n = 0
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = out is not None and out.weight is emb.weight
    rows = {"block linear layers": count(model.get_submodule(n).weight for n in block_linear_names(model)),
            "embeddings" + (" (tied to the output layer)" if tied else ""): count(emb.parameters())}
    if out is not None and not tied:
        rows["output layer"] = count(out.parameters())
    rows["norms"] = count(p for m in model.modules() if type(m).__name__.endswith("Norm") for p in m.parameters())
    rows["other"] = count(model.parameters())
    total = sum(rows.values())
    table = pd.DataFrame({"parameters": rows}).rename_axis("part")
    table["share (%)"] = 100 * table["parameters"] / total
    table["trained by LoRA"] = ["low-rank update" if k == "block linear layers" else "frozen" for k in table.index]
    return table


PARTS = ("norms", "embeddings")  # what train_lora_also can unfreeze beside LoRA (PEFT: modules_to_save)


def _part_parameters(model, part: str) -> list:
    """The parameters of one part LoRA leaves frozen: 'norms' (every *Norm module) or 'embeddings' (the input
    embeddings, which are also the output layer when tied, and the output layer when not)."""
    if part == "norms":
        return [p for m in model.modules() if type(m).__name__.endswith("Norm") for p in m.parameters()]
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    return list(emb.parameters()) + ([] if out is None or out.weight is emb.weight else list(out.parameters()))


def train_lora_also(cfg: RunConfig, parts: Sequence[str] = ("norms",), keep_model: bool = False) -> dict:
    """Train ``cfg``'s LoRA run with ``parts`` that LoRA leaves frozen trainable too; one row like ``point``'s.

    The run is set up exactly as ``wb.train`` sets it up (``engine.training.set_up``: the same
    seed, so the same A at the start and the same batches), then the chosen parts are unfrozen
    and the optimizer and schedule rebuilt over everything trainable (PEFT's ``modules_to_save``
    trains such modules beside the adapter, at the same learning rate); the same training step
    runs ``cfg.steps`` times and the end point is evaluated as the grid's runs are.  So it differs
    from the grid's LoRA run of the same config only in what trains: it measures how much of full
    fine-tuning's lead comes from the parts LoRA leaves frozen.  Nothing is stored; ``keep_model`` adds the
    trained model to the row (``"model"``).
    """
    import time

    import torch

    from workbench.engine.hardware import restore_frozen_to_fp32
    from workbench.engine.optim import make_optimizer
    from workbench.engine.training import linear_schedule, training_step

    if cfg.method != "lora" or cfg.task != "causal-lm":
        raise ValueError(f"train_lora_also trains a language model's LoRA run (method='lora', task='causal-lm'), "
                         f"got method={cfg.method!r}, task={cfg.task!r}")
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise ValueError(f"parts must name one or more of {list(PARTS)}, got {list(parts)}")
    started = time.perf_counter()
    run = set_up(cfg)
    if run.frozen_in_bf16:  # a part about to train must train in float32, as the adapter does
        restore_frozen_to_fp32(run.model)
    extra = {id(p): p for part in parts for p in _part_parameters(run.model, part)}
    for p in extra.values():
        p.requires_grad_(True)
    run.trainable = [p for p in run.model.parameters() if p.requires_grad]
    run.optimizer = make_optimizer(run.model, cfg.lr, cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * cfg.steps)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda s: linear_schedule(s, cfg.steps, warmup))
    run.model.train()
    for _ in range(cfg.steps):
        loss = training_step(run, next(run.batches).to(run.device).model_inputs(), cfg.max_grad_norm)
        if not math.isfinite(loss):
            raise RuntimeError(f"the run with {', '.join(parts)} trainable diverged (loss {loss}); try a lower lr "
                               f"than {cfg.lr:g}")
    completion, _ = evaluate(run.model, run.eval_batches, run.device, run.use_bf16)
    metrics, _ = evaluate_writing(run.model, run.tokenizer, run.writing, run.device, run.use_bf16, completion,
                                  cfg.steps)
    return {"method": "lora", "rank": cfg.lora.rank, "lr": cfg.lr, "seed": cfg.seed, "also trained": " + ".join(parts),
            "extra trainable": sum(p.numel() for p in extra.values()),
            "exact_match": metrics.get("eval_exact_match", math.nan), "completion_loss": completion,
            "heldout_loss": metrics["heldout_loss"], "seconds": time.perf_counter() - started,
            **({"model": run.model.eval()} if keep_model else {})}


@dataclass
class FrozenGap:
    """How much of full fine-tuning's completion-loss lead the parts LoRA leaves frozen account for.

    ``lora`` and ``full``: rows of the grid's table (the same seed); ``also``: ``train_lora_also`` rows of
    the same LoRA config.  ``closed``: per row of ``also`` (by its ``also trained``), the share of the gap
    ``lora - full`` in completion loss that training those parts too removed (1: all of it, 0: none,
    negative: it widened).
    """

    lora: dict
    full: dict
    also: list[dict]

    @property
    def gap(self) -> float:
        return float(self.lora["completion_loss"] - self.full["completion_loss"])

    @property
    def closed(self) -> dict[str, float]:
        return {row["also trained"]: float((self.lora["completion_loss"] - row["completion_loss"]) / self.gap)
                for row in self.also}

    def table(self) -> pd.DataFrame:
        """One row per run: the grid's LoRA run, each run with more trainable, and full fine-tuning."""
        rows = {f"LoRA r={int(self.lora['rank'])} (the grid's run)": {**self.lora, "extra trainable": 0}}
        rows.update({f"LoRA r={int(r['rank'])} + {r['also trained']}": r for r in self.also})
        rows[f"full FT lr {self.full['lr']:g} (the grid's run)"] = {**self.full, "extra trainable": math.nan}
        cols = ["extra trainable", "exact_match", "completion_loss", "heldout_loss"]
        table = pd.DataFrame.from_dict(rows, orient="index")[cols].rename_axis(f"seed {int(self.lora['seed'])}")
        return table.astype({"extra trainable": "Int64"})  # a count (full fine-tuning's row: not applicable)

    def markdown(self) -> str:
        """The sentences under the table, formatted from its rows."""
        if self.gap <= 0:
            return (f"Here LoRA's completion loss ({self.lora['completion_loss']:.3f}) is not above full fine-tuning's "
                    f"({self.full['completion_loss']:.3f}): there is no gap to explain.")
        parts = [f"with the {name} trainable too it closed "
                 + (f"{100 * c:.0f}% of it" if c <= 1 else "all of it and more, down below full fine-tuning's")
                 + f" (completion loss {row['completion_loss']:.3f}, exact match {row['exact_match']:.3f}, held-out "
                 f"loss {row['heldout_loss']:.3f})" for (name, c), row in zip(self.closed.items(), self.also)]
        best_name, best = max(self.closed.items(), key=lambda kv: kv[1])
        verdict = (f"So most of the gap comes from what LoRA leaves frozen (training the {best_name} too), not from "
                   "the low rank." if best >= 0.5 else
                   "So the frozen parts explain part of the gap, and most of it remains." if best >= 0.2 else
                   "So the parts LoRA leaves frozen do not explain the gap.")
        return (f"Full fine-tuning's completion loss was {self.gap:.3f} nats per token below LoRA r = "
                f"{int(self.lora['rank'])}'s ({self.full['completion_loss']:.3f} against "
                f"{self.lora['completion_loss']:.3f}, exact match {self.full['exact_match']:.3f} against "
                f"{self.lora['exact_match']:.3f}). The same LoRA run: " + "; ".join(parts) + ". " + verdict
                + f" The held-out loss of the grid's LoRA run was {self.lora['heldout_loss']:.3f} and full "
                f"fine-tuning's {self.full['heldout_loss']:.3f}: read the last column for what training more of the "
                "model cost on the pretraining text.")


def frozen_gap(table: pd.DataFrame, also: Sequence[dict]) -> FrozenGap:
    """Read ``train_lora_also`` rows against the grid's LoRA run of the same rank and seed and full fine-tuning
    at its lowest learning rate with that seed."""
    if not also:
        raise ValueError("give at least one train_lora_also row")
    first = also[0]
    pick = table[(table["method"] == "lora") & (table["rank"] == first["rank"]) & (table["seed"] == first["seed"])
                 & (table["lr"] == first["lr"])]
    full = table[(table["method"] == "full") & (table["seed"] == first["seed"])]
    if pick.empty or full.empty:
        raise ValueError(f"the grid has no LoRA r={first['rank']} run at lr {first['lr']:g} with seed {first['seed']}, "
                         "or no full fine-tuning run with that seed, to compare with")
    full = full[full["lr"] == full["lr"].min()]
    return FrozenGap(lora=pick.iloc[0].to_dict(), full=full.iloc[0].to_dict(), also=list(also))


__all__ = ["frozen_by_lora", "BasePoint", "measure_base", "grid_configs", "run_grid", "grid_table", "learning_vs_forgetting",
           "summarize", "forgetting_figure", "default_grid", "point", "label", "Findings", "findings", "LEARNED",
           "PARTS", "train_lora_also", "FrozenGap", "frozen_gap"]
