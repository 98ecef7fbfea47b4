"""From a run's config and its tokenizer to the batches it trains and evaluates on.

``run_batches(cfg, tokenizer)`` is the one place a run's data is made, for every task:

* classification (``workbench.engine.data``): texts and labels are read (``load_task``),
  tokenized once, and batched with dynamic padding; evaluation batches are sorted by
  length first (order does not change an evaluation's result, and similar lengths pad less);
* a language model (task "causal-lm", ``workbench.engine.sft``): prompt/completion pairs,
  chats or plain text are read (``load_prompt_task``; a chat needs the tokenizer's
  template), tokenized with the prompt masked out of the loss, and batched the same way;
  besides, the evaluation prompts it answers by greedy decoding (exact match) and the
  held-out pretraining text it measures forgetting on (``WritingEval``).

The loop (``workbench.engine.training``) asks here once and never looks at a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from torch.utils.data import DataLoader

from workbench.engine.config import RunConfig
from workbench.engine.data import Batch, by_length, load_task, make_batches, tokenize_dataset
from workbench.engine.evaluation import WritingEval
from workbench.engine.models import BUNDLED_LM
from workbench.engine.sft import PromptDataset, load_prompt_task, read_text_lines, shortest_first, tokenize_prompts

__all__ = ["RunBatches", "run_batches", "heldout_source"]


@dataclass
class RunBatches:
    """What a run trains and evaluates on, made by ``run_batches``."""

    train: DataLoader  # shuffled by a generator seeded with the run's seed: each pass a new order
    eval: Iterable[Batch]  # shortest examples first
    num_labels: int = 2  # the classifier's outputs (at least 2); a language model has no classifier
    writing: WritingEval | None = None  # a language model's run: prompts to answer, held-out text


def run_batches(cfg: RunConfig, tokenizer: Any) -> RunBatches:
    """The training and evaluation batches of ``cfg``'s task, tokenized with ``tokenizer``."""
    if cfg.task == "causal-lm":
        return _language_batches(cfg, tokenizer)
    return _classification_batches(cfg, tokenizer)


def _classification_batches(cfg: RunConfig, tokenizer: Any) -> RunBatches:
    train_ds, eval_ds = load_task(cfg.data, cfg.eval_data, cfg.text_column, cfg.label_column, cfg.seed)
    train_ds, eval_ds = train_ds.head(cfg.max_train_examples), eval_ds.head(cfg.max_eval_examples)
    train = make_batches(train_ds, tokenizer, cfg.batch_size, cfg.max_length, shuffle=True, seed=cfg.seed,
                         task=cfg.task)
    eval_tokens = by_length(tokenize_dataset(eval_ds, tokenizer, cfg.max_length))
    evaluation = make_batches(eval_tokens, tokenizer, cfg.batch_size * 2, cfg.max_length, shuffle=False,
                              task=cfg.task)
    return RunBatches(train, evaluation, num_labels=max(2, train_ds.num_labels))


def _language_batches(cfg: RunConfig, tokenizer: Any) -> RunBatches:
    train_ds, eval_ds = load_prompt_task(cfg.data, cfg.eval_data, tokenizer, cfg.seed)
    train_ds, eval_ds = train_ds.head(cfg.max_train_examples), eval_ds.head(cfg.max_eval_examples)
    train_tokens = tokenize_prompts(train_ds, tokenizer, cfg.max_length, cfg.completion_only_loss)
    train = make_batches(train_tokens, tokenizer, cfg.batch_size, cfg.max_length, shuffle=True, seed=cfg.seed,
                         task=cfg.task)
    evaluation = _eval_batches(eval_ds, tokenizer, cfg)
    # Plain text has no answer to match: exact match is measured on prompt/completion data only.
    answerable = eval_ds.select([i for i, p in enumerate(eval_ds.prompts) if p]).head(cfg.max_generate_examples)
    heldout: list[Batch] = []
    source = heldout_source(cfg)
    if source is not None:
        lines = read_text_lines(source)[: cfg.max_eval_examples or None]
        heldout = _eval_batches(PromptDataset([""] * len(lines), lines, "held-out text"), tokenizer, cfg)
    return RunBatches(train, evaluation, writing=WritingEval(answerable, heldout, cfg.max_new_tokens))


def _eval_batches(ds: PromptDataset, tokenizer: Any, cfg: RunConfig) -> list[Batch]:
    tokens = shortest_first(tokenize_prompts(ds, tokenizer, cfg.max_length))
    return list(make_batches(tokens, tokenizer, cfg.batch_size * 2, cfg.max_length, shuffle=False, task=cfg.task))


def heldout_source(cfg: RunConfig) -> str | None:
    """The held-out pretraining text a language model's run measures forgetting on.

    "auto": the bundled model's held-out text (``data/story_lm/heldout.txt``) when the run
    adapts the bundled model, else none (we do not know another model's pretraining data).
    """
    if cfg.heldout_data != "auto":
        return cfg.heldout_data
    if cfg.model != BUNDLED_LM:
        return None
    from workbench.engine.story_lm import story_lm_path

    return str(Path(story_lm_path()) / "heldout.txt")
