"""Did a run learn?  A verdict read after the fact from a RunResult (live or stored).

A run can end with status "completed" and still have learned nothing: a learning rate
of 10 sends the loss from 0.69 to 24 and the accuracy to chance without a NaN.  The
status says how the loop ended; the *outcome* says whether the result is worth reading:

* **did not learn** when the training loss ended above where it started
  (last recorded loss > (1 + ``LOSS_ROSE``) x the first, i.e. more than 1 % above), or when the final validation accuracy is
  at chance.  Chance is the share of the eval set's most common label (what always
  answering that label scores), and "at chance" allows for sampling noise: accuracy
  ``<= chance + 2 * sqrt(chance * (1 - chance) / n)`` on ``n`` eval examples (two
  binomial standard errors, 0.045 for 500 balanced examples);
* a **language model's run** (task "causal-lm") is judged by the loss rule alone: its
  ``eval_accuracy`` is next-token accuracy over a whole vocabulary, where "the most
  common label" means nothing, so it is never called "at chance"; its exact match is
  reported beside the verdict, not in it (a run whose loss fell has learned something
  even before its first answer is exactly right);
* **diverged**, **stopped**, **failed**, **running**: the status itself, with its message;
* **learned** otherwise.

``run_outcome(result)`` returns an ``Outcome`` (a verdict and one sentence such as
"did not learn: loss rose from 0.69 to 24.3; try a lower learning rate than 10").
The chance level is read from the run's own eval data (``eval_chance``), once per data
setting; pass ``chance=`` to skip that (tests, or data that is not on disk any more).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from workbench.engine.config import RunConfig, RunResult

Verdict = Literal["learned", "did not learn", "diverged", "stopped", "failed", "running"]
# Two binomial standard errors above chance still count as chance.
CHANCE_MARGIN_SE = 2.0
# The loss "rose" when it ended more than this share above where it started (a flat 0.6931
# -> 0.6932 is no rise; the chance rule judges such a run).
LOSS_ROSE = 0.01


@dataclass(frozen=True)
class Chance:
    """The accuracy of always answering the eval set's most common label, and the set's size."""

    accuracy: float
    n: int

    @property
    def margin(self) -> float:
        """``CHANCE_MARGIN_SE`` binomial standard errors: sqrt(p (1 - p) / n) each."""
        if self.n <= 0:
            return 0.0
        return CHANCE_MARGIN_SE * math.sqrt(self.accuracy * (1 - self.accuracy) / self.n)


@dataclass(frozen=True)
class Outcome:
    """What a finished run amounts to: ``verdict``, one ``sentence`` for the user, ``ok`` when it learned."""

    verdict: Verdict
    sentence: str

    @property
    def ok(self) -> bool:
        return self.verdict == "learned"

    @property
    def short(self) -> str:
        """The verdict as a table cell or a legend suffix."""
        return self.verdict


@lru_cache(maxsize=32)
def _chance(data: str, eval_data: str | None, text_column: str, label_column: str | None, seed: int,
            max_eval: int | None) -> Chance | None:
    from workbench.engine.data import load_task

    _, eval_ds = load_task(data, eval_data, text_column, label_column, seed)
    eval_ds = eval_ds.head(max_eval)
    if not eval_ds.labels:
        return None
    counts = Counter(eval_ds.labels)
    return Chance(max(counts.values()) / len(eval_ds.labels), len(eval_ds.labels))


def eval_chance(cfg: RunConfig) -> Chance | None:
    """Chance on the eval set a run of ``cfg`` is scored on (the majority label's share); None without labels.

    Reads the data as the training does (``load_task`` then ``max_eval_examples``); cached.
    """
    if cfg.task != "classification":
        return None
    return _chance(cfg.data, cfg.eval_data, cfg.text_column, cfg.label_column, cfg.seed, cfg.max_eval_examples)


def _loss_ends(result: RunResult) -> tuple[float, float] | None:
    if not len(result.history) or "train_loss" not in result.history:
        return None
    losses = result.history["train_loss"].dropna()
    losses = losses[losses.map(math.isfinite)]
    if len(losses) < 2:
        return None
    return float(losses.iloc[0]), float(losses.iloc[-1])


def run_outcome(result: RunResult, chance: Chance | float | None = None) -> Outcome:
    """The verdict on one run (see the module's docstring for the rule).

    ``chance``: a ``Chance``, a plain accuracy (no noise margin), or None to read it from
    the run's eval data (when that cannot be read, only the loss rule applies).
    """
    status, lr = result.status, result.config.lr
    if status == "running":
        return Outcome("running", "still training")
    if status in ("diverged", "failed", "stopped"):
        text = result.message.rstrip(".") or status
        return Outcome(status, f"{status}: {text}")  # type: ignore[arg-type]
    advice = f"; try a lower learning rate than {lr:g}"
    ends = _loss_ends(result)
    if ends is not None and ends[1] > ends[0] * (1 + LOSS_ROSE):
        return Outcome("did not learn", f"did not learn: loss rose from {ends[0]:.3g} to {ends[1]:.3g}{advice}")
    acc = result.eval_accuracy
    if math.isfinite(acc) and result.config.task == "classification":
        if chance is None:
            try:
                chance = eval_chance(result.config)
            except Exception:  # noqa: BLE001 - data gone or unreadable: the loss rule still holds
                chance = None
        if isinstance(chance, (int, float)):
            chance = Chance(float(chance), 0)
        if chance is not None and acc <= chance.accuracy + chance.margin:
            n = f" of {chance.n} examples" if chance.n else ""
            return Outcome("did not learn", (
                f"did not learn: validation accuracy {100 * acc:.1f}% is no better than chance "
                f"({100 * chance.accuracy:.1f}%: always answering the most common label{n}); try more steps or "
                f"a different learning rate than {lr:g}"))
    return Outcome("learned", "learned")


__all__ = ["Outcome", "Chance", "Verdict", "run_outcome", "eval_chance", "CHANCE_MARGIN_SE"]
