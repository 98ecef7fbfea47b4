"""A search over settings that stops bad runs early: ``wb.search`` (Optuna with a pruner).

    result = wb.search(wb.preset("generate"), space={"rank": [2, 4, 8, 16], "lr": wb.loguniform(1e-3, 3e-2)},
                       trials=8, metric="eval_exact_match", budget_steps=1000)
    result.table        # the runs table, one row per trial, with its settings, value and whether it was stopped
    result.figure()     # the metric against each setting; trials stopped by the search marked

How: each trial is a run (``wb.train``, stored in the run store like any other).  Optuna's
TPE sampler proposes its settings (``study.ask``); the run reports the metric at every
evaluation (``eval_every``) to the trial, and when the pruner judges it hopeless - the
median pruner: its value at that step is worse than the median of earlier trials at the
same step - the run is stopped there (the same stop as the panel's Stop button) and is
recorded as stopped by the search (status "stopped", the message says at which step and
why).  ``budget_steps`` caps the optimizer steps all trials together may use, so a search
can be set against a grid of the same cost: a pruned trial leaves its unused steps to more
trials.

Why Optuna and not Ray Tune with ASHA: the runs here are seconds to minutes long and run
one after another on one machine, where Optuna is a library call (a study in memory, no
cluster, no object store) and its ask/tell interface drives our own ``train`` with its own
sinks; Ray Tune would start a Ray instance and run each trial as a remote actor, worth it
for a cluster (the sweeps have that already: ``run_sweep(backend="ray")``), not here.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from workbench.engine.config import RunConfig, RunResult
from workbench.engine.events import RunSink, StepInfo
from workbench.lora.config import LoRAConfig
from workbench.records.store import DEFAULT_ROOT, save_run
from workbench.records.table import runs_table
from workbench.util.checks import check_positive_int

__all__ = ["LogUniform", "Uniform", "loguniform", "uniform", "search", "SearchResult", "STOPPED_BY_SEARCH"]

STOPPED_BY_SEARCH = "stopped by the search"
#: Metrics a search may follow, and which way is better.
METRICS: dict[str, str] = {"eval_exact_match": "maximize", "eval_accuracy": "maximize", "eval_loss": "minimize",
                           "eval_perplexity": "minimize", "heldout_loss": "minimize"}


@dataclass(frozen=True)
class LogUniform:
    """A number drawn between ``low`` and ``high`` evenly on a log scale (learning rates)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (isinstance(self.low, (int, float)) and isinstance(self.high, (int, float)) and 0 < self.low < self.high):
            raise ValueError(f"loguniform needs 0 < low < high, got ({self.low!r}, {self.high!r})")


@dataclass(frozen=True)
class Uniform:
    """A number drawn evenly between ``low`` and ``high``."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (isinstance(self.low, (int, float)) and isinstance(self.high, (int, float)) and self.low < self.high):
            raise ValueError(f"uniform needs low < high, got ({self.low!r}, {self.high!r})")


def loguniform(low: float, high: float) -> LogUniform:
    return LogUniform(float(low), float(high))


def uniform(low: float, high: float) -> Uniform:
    return Uniform(float(low), float(high))


def _distributions(cfg: RunConfig, space: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna distributions for the space; a name that is not a setting, or an empty choice, is refused."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if not isinstance(space, Mapping) or not space:
        raise ValueError("space must be a dict of settings to search, e.g. {'rank': [2, 4, 8], "
                         "'lr': wb.loguniform(1e-4, 1e-2)}")
    names = [f for f in RunConfig.__dataclass_fields__ if f not in ("lora", "method")] + list(LoRAConfig.field_names())
    out = {}
    for name, values in space.items():
        if name not in names:
            raise ValueError(f"space: {name!r} is not a setting; the settings are: {', '.join(names)}")
        if isinstance(values, LogUniform):
            out[name] = FloatDistribution(values.low, values.high, log=True)
        elif isinstance(values, Uniform):
            out[name] = FloatDistribution(values.low, values.high)
        elif isinstance(values, (list, tuple)) and values:
            for v in values:
                cfg.with_changes(**{name: v})  # refused here, with the dataclass's message, before any run
            out[name] = CategoricalDistribution(list(values))
        else:
            raise ValueError(f"space: {name!r} must be a non-empty list of values, wb.loguniform(low, high) or "
                             f"wb.uniform(low, high), got {values!r}")
    return out


def _own_values(cfg: RunConfig, distributions: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg``'s own value of each searched setting, where it lies in that setting's distribution."""
    from optuna.distributions import CategoricalDistribution

    own = {}
    for name, dist in distributions.items():
        value = getattr(cfg.lora if name in LoRAConfig.field_names() else cfg, name)
        if isinstance(dist, CategoricalDistribution):
            inside = value in dist.choices
        else:
            inside = isinstance(value, (int, float)) and dist.low <= value <= dist.high
        if inside:
            own[name] = value
    return own


def _value(info: StepInfo, metric: str) -> float | None:
    v = info.metrics.get(metric, getattr(info, metric, None))
    return None if v is None or not math.isfinite(float(v)) else float(v)


class _Pruning(RunSink):
    """Reports the metric at each evaluation to the trial and stops the run when the pruner says so."""

    def __init__(self, trial: Any, metric: str, stop: threading.Event, runs_dir: Any) -> None:
        self.trial, self.metric, self.stop, self.runs_dir = trial, metric, stop, runs_dir
        self.pruned_at: tuple[int, float] | None = None

    def on_step(self, info: StepInfo) -> None:
        value = _value(info, self.metric)
        if value is None or self.pruned_at is not None:
            return
        self.trial.report(value, info.step)
        if info.step < info.steps and self.trial.should_prune():
            self.pruned_at = (info.step, value)
            self.stop.set()

    def on_finish(self, result: RunResult, model: Any) -> None:
        if self.pruned_at is None or result.status != "stopped":
            return
        step, value = self.pruned_at
        result.message = (f"{STOPPED_BY_SEARCH} after {step} of {result.config.steps} steps: {self.metric} "
                          f"{value:.3f} at step {step} was worse than the median of earlier trials there")
        result.environment["search"] = {"pruned_at_step": step, "metric": self.metric, "value": value}
        if result.path and self.runs_dir is not None:
            save_run(result, self.runs_dir)  # the store wrote the record before this sink's word


@dataclass
class SearchResult:
    """A finished search: every trial's run, which were stopped, and the best."""

    results: list[RunResult]
    params: list[dict[str, Any]]  # the settings each trial tried
    values: list[float]  # each trial's metric at its last evaluation (NaN: none)
    pruned: list[bool]  # stopped by the search
    metric: str
    direction: str
    space: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_used(self) -> int:
        """Optimizer steps all trials ran together: the compute the search spent."""
        return int(sum(len(r.history) for r in self.results))

    @property
    def best_index(self) -> int | None:
        done = [i for i, (v, p) in enumerate(zip(self.values, self.pruned)) if not p and math.isfinite(v)]
        if not done:
            return None
        key = (lambda i: self.values[i]) if self.direction == "maximize" else (lambda i: -self.values[i])
        return max(done, key=key)

    @property
    def best(self) -> RunResult | None:
        i = self.best_index
        return None if i is None else self.results[i]

    @property
    def table(self) -> pd.DataFrame:
        """The runs table (``wb.runs`` columns) with the trial number, its value and whether it was stopped."""
        table = runs_table(self.results)
        table.insert(0, "trial", range(len(self.results)))
        table.insert(1, self.metric + " (search)", self.values)
        table.insert(2, "stopped_by_search", self.pruned)
        return table

    def figure(self, title: str = "Search") -> Figure:
        """The metric against each searched setting, one panel a setting; stopped trials as crosses.
        ``title``: what the trials were (a grid's runs read as "4-point grid")."""
        from workbench.viz.style import FIGSIZE, RUN_PALETTE, STYLE, label_axes, legend_below, style_axes

        names = list(self.space)
        fig = Figure(figsize=(max(FIGSIZE[0], 3.6 * len(names)), FIGSIZE[1]), layout="constrained",
                     facecolor=STYLE["face_color"])
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        best = self.best_index
        for ax, name in zip(axes, names):
            style_axes(ax)
            for pruned, marker, color, label in ((False, "o", RUN_PALETTE[0], "ran to the end"),
                                                 (True, "x", RUN_PALETTE[3], STOPPED_BY_SEARCH)):
                pts = [(p[name], v) for p, v, s in zip(self.params, self.values, self.pruned)
                       if s == pruned and math.isfinite(v)]
                if pts:
                    ax.scatter([x for x, _ in pts], [y for _, y in pts], marker=marker, color=color, label=label,
                               s=40, zorder=3)
            if best is not None:
                ax.scatter([self.params[best][name]], [self.values[best]], s=160, facecolors="none",
                           edgecolors=STYLE["text_color"], label="best", zorder=4)
            values = [p[name] for p in self.params]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if numeric and (isinstance(self.space[name], LogUniform) or name in ("lr", "rank", "alpha")):
                ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            if numeric and isinstance(self.space[name], (list, tuple)):  # a list: tick exactly its values
                ax.set_xticks(sorted(set(self.space[name])), [f"{v:g}" for v in sorted(set(self.space[name]))])
            elif ax.get_xscale() == "log":  # a range within a decade still gets labelled ticks
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            label_axes(ax, name, name, self.metric if ax is axes[0] else "")
        legend_below(axes[0])  # never on the points
        fig.suptitle(f"{title}: {self.metric} at each trial's last evaluation\n{len(self.results)} trials, "
                     f"{sum(self.pruned)} stopped early, {self.steps_used:,} steps in all",
                     fontsize=STYLE["title_size"])
        return fig


def search(
    cfg: RunConfig,
    space: Mapping[str, Any],
    trials: int = 8,
    metric: str = "eval_exact_match",
    *,
    budget_steps: int | None = None,
    seed: int = 0,
    startup_trials: int = 2,
    min_evals: int = 2,
    start_at_config: bool = True,
    runs_dir: str | os.PathLike | None = DEFAULT_ROOT,
    progress: bool = False,
    fresh_process: bool | None = None,
    on_trial: Callable[[int, RunResult], None] | None = None,
    track: str | bool | None = None,
    pruner: Any = None,
) -> SearchResult:
    """Search ``space`` around ``cfg`` for the best ``metric``, stopping hopeless trials early.

    ``space``: {setting: [values] | ``loguniform(low, high)`` | ``uniform(low, high)``}, any
    ``RunConfig`` or ``LoRAConfig`` field (``rank``, ``lr``, ``alpha``, ...).  ``trials``: at
    most this many runs; ``budget_steps``: and at most this many optimizer steps in all (a
    trial starts only if its full ``cfg.steps`` fit in what is left).  ``metric``: one of
    ``METRICS`` (maximized or minimized as it says), reported at every evaluation, so
    ``cfg.eval_every`` sets how often a trial can be stopped.  ``startup_trials``: trials
    that always run to the end, to give the median pruner something to compare with (and
    that TPE samples at random before it models the results).
    ``seed``: the sampler's seed (the same search proposes the same settings).  Every
    trial is a stored run (``runs_dir``); ``on_trial(i, result)`` is called after each.
    ``min_evals``: evaluations every trial gets before the default pruner may stop it (2:
    never at its first).  Early exact match says how fast a run starts more than where it
    ends: on the bundled task lr 1e-2 stood at 0.23 after 50 of 250 steps and ended at 0.96,
    above lr 1e-3's 0.90 (0.10 at step 50).
    ``start_at_config``: the first trial runs ``cfg``'s own value of each searched setting
    that lies in the space (the rest sampled), as a tuner warm-started from a known-good
    recipe does: the search measures the recipe first and looks for better around it.
    ``pruner``: an Optuna pruner (default: ``MedianPruner(n_startup_trials=startup_trials,
    n_warmup_steps=`` the step of the ``min_evals``-th evaluation ``)``).
    """
    import optuna

    if not isinstance(cfg, RunConfig):
        raise TypeError(f"search needs a RunConfig (e.g. wb.preset('generate')), got {type(cfg).__name__}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric in ("eval_exact_match", "eval_perplexity", "heldout_loss") and cfg.task != "causal-lm":
        raise ValueError(f"{metric} is measured on a language model's runs (task 'causal-lm'); this config's task is "
                         f"{cfg.task!r}: search eval_accuracy or eval_loss")
    check_positive_int("trials", trials)
    check_positive_int("startup_trials", startup_trials)
    check_positive_int("min_evals", min_evals)
    if budget_steps is not None:
        check_positive_int("budget_steps", budget_steps)
        if budget_steps < cfg.steps:
            raise ValueError(f"budget_steps {budget_steps} is less than one trial's {cfg.steps} steps")
    distributions = _distributions(cfg, space)
    direction = METRICS[metric]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's own default samples its first 10 trials at random; a search of a few trials would
    # then never use its model, so it starts modelling after the same startup trials as the pruner.
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    if pruner is None:  # a trial is judged from its min_evals-th evaluation on (eval_every 0: only the end)
        warmup = (min_evals * cfg.eval_every) if cfg.eval_every else cfg.steps
        pruner = optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup)
    study = optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)
    if start_at_config:
        own = _own_values(cfg, distributions)
        if own:
            study.enqueue_trial(own)
    from workbench.records.recording import train

    out = SearchResult([], [], [], [], metric, direction, dict(space))
    for i in range(trials):
        if budget_steps is not None and out.steps_used + cfg.steps > budget_steps:
            break
        trial = study.ask(distributions)
        stop = threading.Event()
        pruning = _Pruning(trial, metric, stop, runs_dir)
        trial_cfg = cfg.with_changes(**trial.params)
        result = train(trial_cfg, stop=stop, runs_dir=runs_dir, progress=progress, sinks=[pruning],
                       fresh_process=fresh_process, track=track)
        pruned = pruning.pruned_at is not None and result.status == "stopped"
        value = result.last(metric)
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif result.status == "completed" and math.isfinite(value):
            study.tell(trial, value)
        else:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        out.results.append(result)
        out.params.append(dict(trial.params))
        out.values.append(value)
        out.pruned.append(pruned)
        if on_trial is not None:
            on_trial(i, result)
        if result.status == "stopped" and not pruned:  # the user stopped it: stop the search too
            break
    return out
