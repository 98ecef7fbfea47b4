"""What a practitioner needs to know before a real fine-tune, measured on the bundled story-lm (notebook 09).

Five short measurements, each a question people get wrong on their first LoRA run:

a. **Which layers to adapt**: LoRA on query and value only (the LoRA paper's choice, and PEFT's
   default for Llama) against all six linear roles, at equal steps and rank, and q,v again at the
   rank that gives it as many trainable parameters as all six (is it the layers or the count?).
b. **The learning rate**: LoRA and full fine-tuning each swept over a few rates, on one figure.
c. **What the loss counts, and the prompt's format**: the same run with the prompt masked out of
   the loss (completion only, the default) and with every token learned; a model trained with one
   prompt template and asked with another.
d. **Evaluation beyond exact match**: sampled answers (temperature > 0, seeded) scored by exact
   match and chrF, how many different answers a prompt gets, and a probe of what the model could
   do before (does it still write a story when given the start of one).
e. **Forgetting, what helps**: fewer steps, a lower rate, a lower alpha, and replay (some of the
   pretraining text mixed into the training data), each against the same reference run on one
   figure of held-out loss against exact match.

Every function returns data (a table, a dataclass); the ``*Findings`` classes hold the directions
the notebook states, and their ``markdown`` is formatted from the runs, never written ahead of them.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from workbench.engine.config import EVERY_ROLE, RunConfig, RunResult, preset
from workbench.engine.sft import PromptDataset, load_prompts
from workbench.engine.story_lm import generate_corpus, story_lm_path
from workbench.lessons.forgetting import BasePoint
from workbench.records.recording import train
from workbench.util.checks import check_positive_int, check_positive_number
from workbench.util.fileio import atomic_write_text
from workbench.viz.style import (FIGSIZE, FULL_COLOR, MARKERS, RUN_PALETTE, STYLE, label_axes, legend_options,
                                  rank_color, style_axes)

ALL_ROLES = EVERY_ROLE  # query, key, value, attention output, FFN in, FFN out
QV = ("query", "value")
LEARNED = 0.9  # "learned the skill": exact match at least this (as notebook 07)
USEFUL = 0.9  # a learning rate is "useful" when its exact match is at least this share of the method's best
ROW_COLUMNS = ("name", "method", "targets", "rank", "alpha", "lr", "steps", "masked", "trainable", "exact_match",
               "completion_loss", "heldout_loss", "seconds", "status")
TINY = dict(steps=6, max_train_examples=96, max_eval_examples=16, max_generate_examples=8, max_new_tokens=12)


# --------------------------------------------------------------------------- runs


def practice_config(steps: int | None = 120, tiny: bool = False, **overrides: Any) -> RunConfig:
    """The notebook's reference run: the ``generate`` preset (LoRA r = 8, alpha 16, all six roles, lr 3e-3),
    shortened to ``steps`` (120: a run of a few seconds that still learns the skill), evaluated at its end
    on the first 100 validation prompts.  ``tiny``: a smoke test of the code (a few steps), not of the claims."""
    settings: dict[str, Any] = dict(eval_every=0, max_generate_examples=100)
    if tiny:
        settings |= TINY
    elif steps is not None:
        check_positive_int("steps", steps)
        settings["steps"] = steps
    return preset("generate", **(settings | overrides))


def _key(cfg: RunConfig) -> str:
    d = cfg.to_dict()
    d.pop("name", None)
    return json.dumps(d, sort_keys=True, default=str)


class Runs:
    """Trains configs, once each: a config asked for again (whatever its ``name``) gives the run already made,
    so the sections share their reference run instead of training it again."""

    def __init__(self, runs_dir: str | os.PathLike | None = None, keep_models: bool = True) -> None:
        self.runs_dir, self.keep_models = runs_dir, keep_models
        self._done: dict[str, RunResult] = {}

    def __len__(self) -> int:
        return len(self._done)

    def train(self, cfg: RunConfig) -> RunResult:
        key = _key(cfg)
        if key not in self._done:
            self._done[key] = train(cfg, runs_dir=self.runs_dir, progress=False, keep_model=self.keep_models)
        return self._done[key]

    def many(self, configs: Mapping[str, RunConfig]) -> dict[str, RunResult]:
        """Each named config's run, in order."""
        return {name: self.train(cfg) for name, cfg in configs.items()}

    @property
    def seconds(self) -> float:
        """The summed wall time of every run trained (loading and evaluation included)."""
        return sum(r.timing.total_seconds for r in self._done.values())


def row(name: str, result: RunResult) -> dict[str, Any]:
    """One run as a row of ``ROW_COLUMNS``: its settings and its end point on both axes."""
    cfg = result.config
    lora = cfg.method == "lora"
    return {"name": name, "method": cfg.method, "targets": ",".join(cfg.lora.targets) if lora else "every weight",
            "rank": cfg.lora.rank if lora else math.nan, "alpha": cfg.lora.alpha if lora else math.nan,
            "lr": cfg.lr, "steps": cfg.steps, "masked": cfg.completion_only_loss,
            "trainable": result.params.trainable, "exact_match": result.last("eval_exact_match"),
            "completion_loss": result.last("eval_loss"), "heldout_loss": result.last("heldout_loss"),
            "seconds": result.timing.total_seconds, "status": result.status}


def table(results: Mapping[str, RunResult]) -> pd.DataFrame:
    """One row per named run (``ROW_COLUMNS``), indexed by name."""
    return pd.DataFrame([row(n, r) for n, r in results.items()], columns=list(ROW_COLUMNS)).set_index("name")


# --------------------------------------------------------------------------- a. which layers


def equal_budget_rank(rank: int = 8, model: str = "story-lm") -> int:
    """The rank at which LoRA on query and value trains as many parameters as all six roles at ``rank``
    (counted on the model: ``count_parameters`` after ``add_lora`` at rank 1 on each set)."""
    import copy

    from workbench.engine.models import load_base
    from workbench.lora.inject import add_lora
    from workbench.lora.params import count_parameters

    check_positive_int("rank", rank, what="a LoRA rank")
    base, _ = load_base(model, task="causal-lm")
    per_rank = {}
    for targets in (QV, ALL_ROLES):
        m = copy.deepcopy(base)
        add_lora(m, rank=1, alpha=2, targets=targets)
        per_rank[targets] = count_parameters(m).trainable
    return max(1, round(rank * per_rank[ALL_ROLES] / per_rank[QV]))


def layer_configs(ref: RunConfig, budget_rank: int) -> dict[str, RunConfig]:
    """q,v and all six roles at the reference's rank, and q,v at ``budget_rank``; alpha = 2r everywhere (scale 2)."""
    r = ref.lora.rank
    return {f"q,v r={r}": ref.with_changes(targets=QV, rank=r, alpha=2 * r),
            f"all six r={r}": ref.with_changes(targets=ALL_ROLES, rank=r, alpha=2 * r),
            f"q,v r={budget_rank}": ref.with_changes(targets=QV, rank=budget_rank, alpha=2 * budget_rank)}


@dataclass
class LayerFindings:
    """Section a, as data: the three runs' rows, and what they say."""

    rows: pd.DataFrame  # table() of layer_configs' runs, in that order
    qv: str
    six: str
    qv_budget: str

    @property
    def gap(self) -> float:
        """Exact match of all six roles minus q,v at the same rank."""
        return float(self.rows.loc[self.six, "exact_match"] - self.rows.loc[self.qv, "exact_match"])

    @property
    def budget_gap(self) -> float:
        """Exact match of all six roles minus q,v at the equal-parameter rank."""
        return float(self.rows.loc[self.six, "exact_match"] - self.rows.loc[self.qv_budget, "exact_match"])

    @property
    def count_share(self) -> float:
        """The share of the gap at equal rank that q,v closed at the equal-parameter rank."""
        return (self.gap - self.budget_gap) / self.gap if self.gap else float("nan")

    @property
    def six_wins(self) -> bool:
        return self.gap > 0.1

    @property
    def layers_not_count(self) -> bool:
        """q,v with as many parameters as all six still learned clearly less (0.1 exact match or more)."""
        return self.budget_gap > 0.1

    def markdown(self) -> str:
        t = self.rows
        lines = [f"* **{n}**: {int(r.trainable):,} trainable parameters, exact match {r.exact_match:.3f}, "
                 f"held-out loss {r.heldout_loss:.3f}" for n, r in t.iterrows()]
        text = "**What the runs show** (same steps, learning rate and scale alpha / r = 2):\n\n" + "\n".join(lines)
        text += (f"\n\nAll six roles scored {self.gap:+.3f} exact match against q,v at the same rank"
                 + (", far ahead." if self.six_wins else ".")
                 + f" With as many trainable parameters (r = {int(t.loc[self.qv_budget, 'rank'])}), q,v scored "
                 f"{t.loc[self.qv_budget, 'exact_match']:.3f}: the parameter count closed {self.count_share:.0%} "
                 "of the gap, and "
                 + (f"all six roles were still {self.budget_gap:.3f} ahead, so the choice of layers made the rest."
                    if self.layers_not_count else
                    "q,v came within 0.1 of all six roles, so here the count, not the choice of layers, made the gap."))
        return text


def layer_findings(results: Mapping[str, RunResult]) -> LayerFindings:
    """Read layer_configs' three runs (in its order: q,v; all six; q,v at the equal budget)."""
    names = list(results)
    if len(names) != 3:
        raise ValueError(f"layer_findings reads the three runs of layer_configs, got {len(names)}: {names}")
    return LayerFindings(table(results), *names)


# --------------------------------------------------------------------------- b. the learning rate


def lr_configs(ref: RunConfig, lora_lrs: Sequence[float], full_lrs: Sequence[float]) -> dict[str, RunConfig]:
    """The reference LoRA run at each of ``lora_lrs`` and full fine-tuning at each of ``full_lrs``."""
    if not lora_lrs or not full_lrs:
        raise ValueError("the sweep compares LoRA with full fine-tuning: give at least one rate for each")
    for lr in (*lora_lrs, *full_lrs):
        check_positive_number("lr", lr, what="each learning rate of the sweep")
    out = {f"LoRA lr {lr:g}": ref.with_changes(method="lora", lr=lr) for lr in lora_lrs}
    out |= {f"full FT lr {lr:g}": ref.with_changes(method="full", lr=lr) for lr in full_lrs}
    return out


@dataclass
class LRFindings:
    """Section b, as data: per method the best rate, its exact match, and the useful range of the sweep."""

    rows: pd.DataFrame  # table() of the sweep
    best_lr: dict[str, float]
    best_em: dict[str, float]
    useful: dict[str, list[float]]  # rates reaching USEFUL x the method's best exact match
    at_edge: dict[str, bool]  # the best rate is the lowest or highest swept: the optimum may lie beyond

    @property
    def ratio(self) -> float:
        """LoRA's best rate over full fine-tuning's."""
        return self.best_lr["lora"] / self.best_lr["full"]

    def span(self, method: str) -> float:
        """The useful range's width as a factor (highest useful rate / lowest)."""
        return max(self.useful[method]) / min(self.useful[method])

    def markdown(self) -> str:
        said = {"lora": "LoRA", "full": "Full fine-tuning"}
        lines = []
        for m in ("lora", "full"):
            rates = self.rows[self.rows["method"] == m].sort_values("lr")
            scores = ", ".join(f"lr {r.lr:g} {r.exact_match:.3f}" for r in rates.itertuples())
            lines.append(f"* **{said[m]}**: " + scores
                         + f" exact match; best at **{self.best_lr[m]:g}**"
                         + (" (the edge of the sweep: the best may lie beyond)" if self.at_edge[m] else "")
                         + f"; within {USEFUL:.0%} of its best from {min(self.useful[m]):g} to {max(self.useful[m]):g}"
                         + f" (a factor of {self.span(m):.0f}).")
        if self.ratio > 1:
            rates = f"LoRA's best rate is **{self.ratio:.3g} times** full fine-tuning's"
        elif self.ratio == 1:
            rates = f"LoRA and full fine-tuning did best at **the same rate** ({self.best_lr['lora']:g})"
        else:
            rates = f"LoRA's best rate is **{1 / self.ratio:.3g} times lower** than full fine-tuning's"
        # compared in tenths of a decade: on a grid of 1, 3, 10, ... "3e-3 to 1e-2" and "1e-3 to 3e-3" are alike
        lora_w, full_w = (round(math.log10(self.span(m)), 1) for m in ("lora", "full"))
        wide = "narrower than" if lora_w < full_w else "wider than" if lora_w > full_w else "as wide as"
        return ("**What the sweep shows** (exact match at the end of each run):\n\n" + "\n".join(lines)
                + f"\n\n{rates}; LoRA's useful range is {wide} full fine-tuning's on this grid.")


def lr_findings(results: Mapping[str, RunResult]) -> LRFindings:
    rows = table(results)
    best_lr, best_em, useful, at_edge = {}, {}, {}, {}
    for m in ("lora", "full"):
        g = rows[rows["method"] == m].sort_values("lr")
        if g.empty:
            raise ValueError(f"the sweep has no {m} runs; it needs both methods (lr_configs)")
        top = g.loc[g["exact_match"].idxmax()]
        best_lr[m], best_em[m] = float(top["lr"]), float(top["exact_match"])
        useful[m] = [float(x) for x in g.loc[g["exact_match"] >= USEFUL * best_em[m], "lr"]]
        at_edge[m] = best_lr[m] in (float(g["lr"].min()), float(g["lr"].max()))
    return LRFindings(rows, best_lr, best_em, useful, at_edge)


def lr_figure(found: LRFindings) -> Figure:
    """Exact match (left) and held-out loss (right) against the learning rate, LoRA and full fine-tuning."""
    fig = Figure(figsize=(2 * FIGSIZE[0] * 0.72, FIGSIZE[1]), layout="constrained", facecolor=STYLE["face_color"])
    axes = fig.subplots(1, 2)
    for ax, col, ylabel in ((axes[0], "exact_match", "exact match on the skill"),
                            (axes[1], "heldout_loss", "held-out loss (nats per token; forgetting \u2191)")):
        style_axes(ax)
        for m, name, color, marker in (("lora", "LoRA r=8 (all six roles)", rank_color(8), "o"),
                                       ("full", "full fine-tuning", FULL_COLOR, "s")):
            g = found.rows[found.rows["method"] == m].sort_values("lr")
            ax.plot(g["lr"], g[col], marker=marker, color=color, label=name, linewidth=STYLE["line_width"])
        ax.set_xscale("log")
        label_axes(ax, "", "learning rate (log scale)", ylabel)
    axes[0].legend(**legend_options(), loc="best")
    fig.suptitle("One sweep per method: where each learns, and what it costs", fontsize=STYLE["title_size"],
                 color=STYLE["text_color"])
    return fig


# --------------------------------------------------------------------------- e. forgetting: what helps


def corpus_seed() -> int:
    """The seed story-lm's pretraining corpus was generated with (its ``build.json``)."""
    info = json.loads((Path(story_lm_path()) / "build.json").read_text(encoding="utf-8"))
    return int(info["corpus"]["seed"])


def write_replay_data(folder: str | os.PathLike, share: float = 0.25, seed: int = 0) -> str:
    """The bundled skill's training pairs with story-lm's own pretraining text mixed in (replay), as a folder.

    ``share``: the fraction of the mixed training set that is pretraining text (0.25: one example in four).
    The stories are the first ones of story-lm's pretraining corpus (``generate_corpus`` with its seed),
    so none is from the held-out text that measures forgetting.  Each is a record with an empty prompt
    (every token learned, as in pretraining).  The mix is shuffled with ``seed``; ``train.jsonl`` only:
    a run evaluates on the skill's own validation prompts (``eval_data="skill"``).  Returns the folder.
    """
    if not (isinstance(share, (int, float)) and 0 < share < 1):
        raise ValueError("share must be a fraction in (0, 1) of the training set that is pretraining text, "
                         f"got {share!r}")
    skill = load_prompts("skill", "train")
    n = round(share / (1 - share) * len(skill))
    records = [{"prompt": p, "completion": c} for p, c in zip(skill.prompts, skill.completions)]
    records += [{"prompt": "", "completion": s} for s in generate_corpus(n, corpus_seed())]
    random.Random(seed).shuffle(records)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return str(out)


def forgetting_configs(ref: RunConfig, replay_folder: str) -> dict[str, RunConfig]:
    """The reference run and four changes to it that should forget less: half the steps, a third of the rate,
    a quarter of alpha, and replay (``write_replay_data``'s folder, evaluated on the skill's own prompts)."""
    return {"reference": ref,
            f"fewer steps ({ref.steps // 2})": ref.with_changes(steps=max(1, ref.steps // 2)),
            f"lower rate ({ref.lr / 3:g})": ref.with_changes(lr=ref.lr / 3),
            f"lower alpha ({ref.lora.alpha / 4:g})": ref.with_changes(alpha=ref.lora.alpha / 4),
            "replay (25% stories)": ref.with_changes(data=replay_folder, eval_data="skill")}


@dataclass
class ForgettingFindings:
    """Section e, as data: each remedy's change against the reference run on both axes."""

    rows: pd.DataFrame  # table() of forgetting_configs' runs, the reference first
    base: BasePoint

    @property
    def changes(self) -> pd.DataFrame:
        """Per remedy: held-out loss and exact match minus the reference's, and whether it kept the skill."""
        ref = self.rows.iloc[0]
        rest = self.rows.iloc[1:]
        return pd.DataFrame({"heldout_change": rest["heldout_loss"] - ref["heldout_loss"],
                             "exact_match_change": rest["exact_match"] - ref["exact_match"],
                             "kept_skill": rest["exact_match"] >= LEARNED})

    @property
    def helped(self) -> list[str]:
        """Remedies that forgot less than the reference (lower held-out loss)."""
        return [n for n, c in self.changes.iterrows() if c.heldout_change < 0]

    @property
    def helped_and_kept(self) -> list[str]:
        """Remedies that forgot less and still learned the skill (exact match LEARNED or more)."""
        return [n for n, c in self.changes.iterrows() if c.heldout_change < 0 and c.kept_skill]

    @property
    def best(self) -> str | None:
        """Of helped_and_kept, the one that forgot least."""
        keep = self.helped_and_kept
        return min(keep, key=lambda n: self.rows.loc[n, "heldout_loss"]) if keep else None

    def markdown(self) -> str:
        ref = self.rows.iloc[0]
        lines = [f"* **{n}**: held-out loss {self.rows.loc[n, 'heldout_loss']:.3f} ({c.heldout_change:+.3f}), "
                 f"exact match {self.rows.loc[n, 'exact_match']:.3f} ({c.exact_match_change:+.3f})"
                 for n, c in self.changes.iterrows()]
        text = (f"**What the runs show** (the base model: held-out loss {self.base.heldout_loss:.3f}; the reference "
                f"run: {ref['heldout_loss']:.3f}, exact match {ref['exact_match']:.3f}):\n\n"
                + "\n".join(lines) + "\n\n")
        text += (f"{len(self.helped)} of {len(self.changes)} changes forgot less than the reference; "
                 f"{len(self.helped_and_kept)} of them still learned the skill (exact match {LEARNED} or more)"
                 + (f", and of those **{self.best}** forgot least." if self.best else "."))
        return text


def forgetting_figure(found: ForgettingFindings) -> Figure:
    """Held-out loss (x, forgetting) against exact match (y, learning): the reference, each remedy, the base."""
    fig = Figure(figsize=FIGSIZE, layout="constrained", facecolor=STYLE["face_color"])
    ax = fig.add_subplot()
    style_axes(ax)
    for i, (name, r) in enumerate(found.rows.iterrows()):
        ax.scatter([r.heldout_loss], [r.exact_match], s=60, color=RUN_PALETTE[i % len(RUN_PALETTE)],
                   marker=MARKERS[i % len(MARKERS)], label=name, zorder=3)
    ax.scatter([found.base.heldout_loss], [found.base.exact_match], marker="*", s=180, color="black",
               label="base model", zorder=3)
    label_axes(ax, "Forgetting, what helps (one marker per run)",
               "loss on held-out pretraining text (nats per token; forgetting \u2192)",
               "exact match on the skill (learning \u2191)")
    ax.legend(**legend_options(), loc="best")
    return fig


# --------------------------------------------------------------------------- c. the loss and the template


def masking_configs(ref: RunConfig) -> dict[str, RunConfig]:
    """The reference (the loss on the completion only) and the same run learning every token, prompt too."""
    return {"completion only (prompt masked)": ref,
            "prompt learned too": ref.with_changes(completion_only_loss=False)}


@dataclass
class MaskingFindings:
    rows: pd.DataFrame  # table() of masking_configs' runs, masked first

    @property
    def em_change(self) -> float:
        """Exact match of the unmasked run minus the masked one."""
        return float(self.rows.iloc[1]["exact_match"] - self.rows.iloc[0]["exact_match"])

    @property
    def heldout_change(self) -> float:
        return float(self.rows.iloc[1]["heldout_loss"] - self.rows.iloc[0]["heldout_loss"])

    @property
    def completion_change(self) -> float:
        return float(self.rows.iloc[1]["completion_loss"] - self.rows.iloc[0]["completion_loss"])

    def markdown(self) -> str:
        m, u = self.rows.iloc[0], self.rows.iloc[1]
        return (f"**What the runs show**: with the prompt masked, exact match {m.exact_match:.3f}, completion loss "
                f"{m.completion_loss:.3f}, held-out loss {m.heldout_loss:.3f}; with every token learned, "
                f"{u.exact_match:.3f}, {u.completion_loss:.3f} and {u.heldout_loss:.3f} ({self.em_change:+.3f} exact "
                f"match, {self.completion_change:+.3f} completion loss, {self.heldout_change:+.3f} held-out loss). "
                "Both are scored on the completion only, so the numbers compare.")


TEMPLATES: dict[str, str] = {
    "statement": "Statement: {statement}\nQuestion:",  # the bundled skill's own format
    "chat": "<|user|> Ask this as a question: {statement}\n<|assistant|>",  # a chat-like format of our own
}
_SKILL_PROMPT = re.compile(r"^Statement: (.*)\nQuestion:$", re.S)


def statement_of(prompt: str) -> str:
    """The statement of a bundled skill prompt (``Statement: Mia is happy.\\nQuestion:`` -> ``Mia is happy.``)."""
    found = _SKILL_PROMPT.match(prompt)
    if not found:
        raise ValueError(f"not a bundled skill prompt ('Statement: ...\\nQuestion:'): {prompt!r}")
    return found.group(1)


def templated(template: str, split: str = "validation") -> PromptDataset:
    """The bundled skill's ``split`` with every prompt rewritten in ``template`` (a key of ``TEMPLATES``)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; templates: {', '.join(TEMPLATES)}")
    ds = load_prompts("skill", split)
    prompts = [TEMPLATES[template].format(statement=statement_of(p)) for p in ds.prompts]
    return PromptDataset(prompts, list(ds.completions), f"skill ({template} template, {split})")


def write_template_data(folder: str | os.PathLike, template: str) -> str:
    """The bundled skill (train and validation) in ``template``, as a folder a run's ``data`` can name."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation"):
        ds = templated(template, split)
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps({"prompt": p, "completion": c}) + "\n"
                                                          for p, c in zip(ds.prompts, ds.completions)))
    return str(out)


def template_matrix(models: Mapping[str, Any], tokenizer: Any, max_examples: int = 100,
                    max_new_tokens: int = 24) -> pd.DataFrame:
    """Exact match of each model (rows: the template it was trained with) asked in each template (columns)."""
    from workbench.engine.text_metrics import evaluate

    cells = {t: [evaluate(model, tokenizer, templated(t), ["exact_match"], max_examples=max_examples,
                          max_new_tokens=max_new_tokens)["exact_match"] for model in models.values()]
             for t in TEMPLATES}
    return pd.DataFrame(cells, index=pd.Index(list(models), name="trained with")).rename_axis(columns="asked with")


# --------------------------------------------------------------------------- d. evaluation beyond exact match


@dataclass
class SampledFindings:
    """Section d's sampling, as data: greedy against sampled answers, and how varied the samples are."""

    temperature: float
    samples: int
    greedy_em: float
    greedy_chrf: float
    sampled_em: float  # mean over the samples
    sampled_chrf: float
    distinct: float  # mean number of different answers per prompt, over ``samples`` draws
    all_same: float  # share of prompts whose draws all agree
    answers: pd.DataFrame  # prompt, seed, answer

    def markdown(self) -> str:
        return (f"**What the runs show**: greedy, exact match {self.greedy_em:.3f} and chrF {self.greedy_chrf:.1f}; "
                f"sampled at temperature {self.temperature:g} ({self.samples} seeds each), exact match "
                f"{self.sampled_em:.3f} and chrF {self.sampled_chrf:.1f}. A prompt got {self.distinct:.2f} different "
                f"answers in {self.samples} draws on average; the draws agreed on {self.all_same:.0%} of the prompts.")


def sampled(model: Any, tokenizer: Any, temperature: float = 1.0, samples: int = 4, max_examples: int = 50,
            max_new_tokens: int = 24, seed: int = 0) -> SampledFindings:
    """Greedy and sampled answers to the skill's first validation prompts, scored by exact match and chrF."""
    from workbench.engine.text_metrics import evaluate

    check_positive_number("temperature", temperature, what="> 0: sampling")
    greedy = evaluate(model, tokenizer, "skill", ["exact_match", "chrf"], max_examples=max_examples,
                      max_new_tokens=max_new_tokens)
    drawn = evaluate(model, tokenizer, "skill", ["exact_match", "chrf"], max_examples=max_examples,
                     max_new_tokens=max_new_tokens, temperature=temperature, samples=samples, seed=seed)
    answers = pd.DataFrame(drawn.answers)[["prompt", "seed", "answer"]]
    per_prompt = answers.assign(answer=answers["answer"].str.strip()).groupby("prompt", sort=False)["answer"].nunique()
    return SampledFindings(temperature, samples, greedy["exact_match"], greedy["chrf"], drawn["exact_match"],
                           drawn["chrf"], float(per_prompt.mean()), float((per_prompt == 1).mean()), answers)


def story_starts(n: int = 20, words: int = 4) -> list[str]:
    """The first ``words`` words of the first ``n`` held-out stories (text story-lm never trained on)."""
    check_positive_int("n", n, what="story starts")
    check_positive_int("words", words, what="words per start")
    text = (Path(story_lm_path()) / "heldout.txt").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return [" ".join(ln.split()[:words]) for ln in lines[:n]]


def story_probe(models: Mapping[str, Any], tokenizer: Any, starts: Sequence[str], max_new_tokens: int = 32
                ) -> pd.DataFrame:
    """Does each model still write a story when given the start of one?  Greedy continuations, per model:
    ``words`` (mean words written), ``questions`` (share ending in '?'), ``stories`` (share that write on:
    8 words or more and no '?'), and ``first`` (the first continuation, to read)."""
    from workbench.engine.generation import generate

    rows = {}
    for name, model in models.items():
        said = [a.strip() for a in generate(model, tokenizer, list(starts), max_new_tokens=max_new_tokens)]
        rows[name] = {"words": sum(len(a.split()) for a in said) / len(said),
                      "questions": sum(a.endswith("?") for a in said) / len(said),
                      "stories": sum(len(a.split()) >= 8 and "?" not in a for a in said) / len(said),
                      "first": said[0]}
    return pd.DataFrame.from_dict(rows, orient="index")


__all__ = ["ALL_ROLES", "QV", "LEARNED", "USEFUL", "TEMPLATES", "practice_config", "Runs", "row", "table",
           "equal_budget_rank", "layer_configs", "LayerFindings", "layer_findings", "lr_configs", "LRFindings",
           "lr_findings", "lr_figure", "corpus_seed", "write_replay_data", "forgetting_configs", "ForgettingFindings",
           "forgetting_figure", "masking_configs", "MaskingFindings", "statement_of", "templated",
           "write_template_data", "template_matrix", "SampledFindings", "sampled", "story_starts", "story_probe"]
