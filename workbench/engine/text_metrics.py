"""Evaluating a model that writes, as a practitioner does: ``wb.evaluate(model, tokenizer, data, metrics=[...])``.

Metrics (``METRICS``):

* ``exact_match``: the share of answers equal to the reference (first line, stripped;
  ``workbench.engine.generation.exact_match``) - for tasks with one right answer;
* ``chrf``: chrF (Popović 2015) from sacrebleu, the character n-gram F-score of the answers
  against the references over the whole set, 0 to 100 - for tasks without one right answer,
  where a close paraphrase should score near the reference and an unrelated text low;
* ``loss`` and ``token_accuracy``: the completion tokens' mean loss (per token, as training
  averages it) and next-token accuracy, teacher-forced, no generation
  (``workbench.engine.evaluation.evaluate``); ``perplexity`` = exp(loss).

Why chrF from sacrebleu and not ROUGE-L from rouge-score: sacrebleu is the maintained
reference implementation the machine-translation benchmarks report with, it needs no
tokenizer or stemmer (characters, so short answers and inflections still get credit), and
its score is one definition everywhere; rouge-score's default tokenizer drops every
character outside a-z and 0-9, so non-English answers score zero.

Answers are greedy at ``temperature`` 0; above 0 they are sampled with ``seed``
(``workbench.engine.generation.generate``: the same seed, the same answers), and
``samples`` > 1 draws that many answers per prompt (seeds ``seed``, ``seed + 1``, ...), the
metrics then averaged over them.  The model may be any saved run's or adapter's:
``wb.run_model(run_id)`` and ``wb.adapter_model(folder)`` load them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from workbench.engine.generation import answer_pairs, exact_match, generate, normalize_answer
from workbench.engine.sft import PromptDataset
from workbench.util.checks import check_integer, check_positive_int

__all__ = ["METRICS", "EvalResult", "chrf", "evaluate"]

METRICS: tuple[str, ...] = ("exact_match", "chrf", "loss", "token_accuracy", "perplexity")
GENERATED = ("exact_match", "chrf")  # the metrics that need the model's answers


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """chrF (sacrebleu's defaults: character 6-grams, beta 2) of the answers against their references, 0-100.

    Each answer is compared as exact match reads it (``normalize_answer``: first line, stripped)."""
    try:
        from sacrebleu.metrics import CHRF
    except ImportError as e:
        raise ImportError("chrF needs sacrebleu: pip install 'lora-workbench[eval]' (or 'sacrebleu')") from e
    predictions, references = answer_pairs("chrF", predictions, references)
    hyps = [normalize_answer(p) for p in predictions]
    refs = [normalize_answer(r) for r in references]
    return float(CHRF().corpus_score(hyps, [refs]).score)


@dataclass
class EvalResult:
    """What ``evaluate`` measured: the metrics, and every prompt with its reference and answers."""

    metrics: dict[str, float]
    answers: list[dict[str, Any]] = field(default_factory=list)  # prompt, reference, answer, sample (seed)

    def __getitem__(self, name: str) -> float:
        return self.metrics[name]


def _dataset(data: Any, tokenizer: Any, split: str) -> PromptDataset:
    """Prompt/completion pairs from a data source name or file (as ``RunConfig.data``), a
    PromptDataset, or a list of {"prompt", "completion"} dicts."""
    from workbench.engine.sft import load_prompts

    if isinstance(data, PromptDataset):
        ds = data
    elif isinstance(data, str):
        ds = load_prompts(data, split, tokenizer)
    elif isinstance(data, (list, tuple)) and all(isinstance(d, dict) for d in data):
        missing = [i for i, d in enumerate(data) if not {"prompt", "completion"} <= d.keys()]
        if missing:
            raise ValueError(f"data item {missing[0]} lacks 'prompt' or 'completion'; each item is "
                             "{'prompt': ..., 'completion': ...}")
        ds = PromptDataset([str(d["prompt"]) for d in data], [str(d["completion"]) for d in data], "data")
    else:
        raise TypeError("data must be a data source ('skill', a .jsonl/.csv file), a PromptDataset, or a list of "
                        f"{{'prompt': ..., 'completion': ...}} dicts, got {type(data).__name__}")
    if not len(ds):
        raise ValueError(f"{ds.name or 'data'} has no examples to evaluate")
    return ds


def evaluate(model: Any, tokenizer: Any, data: Any, metrics: Sequence[str] = ("exact_match", "chrf", "loss"), *,
             split: str = "validation", max_examples: int | None = 100, max_new_tokens: int = 24,
             temperature: float = 0.0, seed: int = 0, samples: int = 1, batch_size: int = 16,
             max_length: int = 64) -> EvalResult:
    """Evaluate a language model on prompt/completion ``data`` with the ``metrics`` named.

    ``data``: a data source as a run's ``data`` (``"skill"``, a file; ``split`` picks its
    split), a PromptDataset or a list of {"prompt", "completion"} dicts; the first
    ``max_examples`` (None: all).  ``metrics``: any of ``METRICS``.  Generation as
    ``generate`` does it (``max_new_tokens``, ``temperature``, ``seed``); ``samples``
    answers per prompt at seeds seed, seed + 1, ... (more than one needs a temperature).
    """
    import torch

    from workbench.engine.data import make_batches
    from workbench.engine.evaluation import evaluate as teacher_forced
    from workbench.engine.sft import shortest_first, tokenize_prompts

    if isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"the metrics are: {', '.join(METRICS)}")
    check_positive_int("samples", samples, what="answers per prompt")
    if samples > 1 and not temperature:
        raise ValueError(f"samples={samples} needs a temperature > 0: greedy decoding gives the same answer each time")
    if max_examples is not None:
        check_integer("max_examples", max_examples, 1, what="None evaluates every example")
    ds = _dataset(data, tokenizer, split).head(max_examples)
    out: dict[str, float] = {}
    answers: list[dict[str, Any]] = []
    if any(m in GENERATED for m in metrics):
        scores: dict[str, list[float]] = {m: [] for m in metrics if m in GENERATED}
        for k in range(samples):
            said = generate(model, tokenizer, ds.prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            seed=seed + k, batch_size=batch_size, chat=list(ds.chat) if ds.chat else False)
            answers += [{"prompt": p, "reference": r, "answer": a, "seed": seed + k}
                        for p, r, a in zip(ds.prompts, ds.completions, said)]
            if "exact_match" in scores:
                scores["exact_match"].append(exact_match(said, ds.completions))
            if "chrf" in scores:
                scores["chrf"].append(chrf(said, ds.completions))
        out |= {m: sum(v) / len(v) for m, v in scores.items()}
    if any(m in ("loss", "token_accuracy", "perplexity") for m in metrics):
        tokens = shortest_first(tokenize_prompts(ds, tokenizer, max_length))
        batches = make_batches(tokens, tokenizer, batch_size, max_length, shuffle=False, task="causal-lm")
        device = next(model.parameters()).device
        loss, accuracy = teacher_forced(model, batches, torch.device(device), use_bf16=False)
        out |= {k: v for k, v in (("loss", loss), ("token_accuracy", accuracy),
                                  ("perplexity", math.exp(min(loss, 50.0)))) if k in metrics}
    return EvalResult({m: out[m] for m in metrics}, answers)
