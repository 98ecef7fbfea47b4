"""Evaluating a run: loss and accuracy for every task, and for a model that writes, what it writes.

``evaluate`` is the one measurement both tasks share: the mean loss over the evaluation set
and an accuracy (of the class for classification; of the next token, on the labelled
completion tokens, for a language model).  For a language model the loss is averaged over
tokens, not over sequences, as training averages it:

    eval_loss = sum over labelled tokens of -log p(token | context) / number of labelled tokens

``evaluate_writing`` adds what a generative run is for: the model answers evaluation
prompts by greedy decoding, and an answer counts when it equals the reference exactly
(``eval_exact_match``); ``eval_perplexity`` = exp(eval_loss); ``heldout_loss`` is the loss
on held-out pretraining text, which rises when adaptation makes the model forget what it
knew (Biderman et al. 2024, "LoRA Learns Less and Forgets Less").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from workbench.engine.data import IGNORE_INDEX, Batch
from workbench.engine.sft import PromptDataset

SAMPLES_PER_EVAL = 4  # prompts whose answers each evaluation keeps (RunResult.samples)
# Prompts answered per forward pass at evaluation.  A small model's decoding step costs about
# the same for 16 rows as for 100 (it is bound by the number of operations), so the preset's
# 100 prompts go through in 2 batches of up to 24 steps instead of 7; each prompt's answer is
# the same in any batch (``generate`` pads, masks and counts positions per row).
GENERATE_BATCH = 64


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device,
             use_bf16: bool) -> tuple[float, float]:
    """(mean loss, accuracy) over the evaluation batches; for a language model both are per token."""
    was_training = model.training
    model.eval()
    loss_sum, n_loss, correct, n_items = 0.0, 0, 0, 0
    for batch in batches:
        inputs = batch.to(device).model_inputs()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            out = model(**inputs)
        labels = inputs["labels"]
        logits = out.logits.float()
        if logits.dim() == 3:  # causal LM: position t predicts token t+1
            logits, gold = logits[:, :-1], labels[:, 1:]
            keep = gold != IGNORE_INDEX
            loss_sum += float(F.cross_entropy(logits[keep], gold[keep], reduction="sum"))
            n_loss += int(keep.sum())
            correct += int((logits[keep].argmax(-1) == gold[keep]).sum())
            n_items += int(keep.sum())
        else:
            loss_sum += float(out.loss) * labels.shape[0]
            n_loss += labels.shape[0]
            correct += int((logits.argmax(-1) == labels).sum())
            n_items += labels.numel()
    model.train(was_training)
    return loss_sum / max(1, n_loss), correct / max(1, n_items)


@dataclass
class WritingEval:
    """What a generative run is evaluated on, beyond its loss: prompts to answer, held-out text."""

    prompts: PromptDataset  # answered by greedy decoding; exact match against their completions
    heldout_batches: list[Batch] = field(default_factory=list)  # pretraining text; empty: no forgetting measure
    max_new_tokens: int = 24


def evaluate_writing(model: nn.Module, tokenizer: Any, ev: WritingEval, device: torch.device, use_bf16: bool,
                     eval_loss: float, step: int, limit: int | None = None
                     ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The generative columns of one evaluation, and the samples it keeps.

    Returns ({"eval_exact_match", "eval_perplexity", "heldout_loss"}, samples), where
    samples are the first ``SAMPLES_PER_EVAL`` prompts with the model's answers.
    ``limit``: answer only the first ``limit`` prompts (an interim evaluation; None: all).
    """
    from workbench.engine.generation import exact_match, generate

    metrics: dict[str, float] = {"eval_perplexity": math.exp(min(eval_loss, 50.0))}
    samples: list[dict[str, Any]] = []
    prompts, references, chat = list(ev.prompts.prompts), list(ev.prompts.completions), ev.prompts.chat or False
    if limit is not None:
        prompts, references = prompts[:limit], references[:limit]
        chat = chat if isinstance(chat, bool) else list(chat)[:limit]
    if prompts:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            answers = generate(model, tokenizer, prompts, max_new_tokens=ev.max_new_tokens, chat=chat,
                               batch_size=GENERATE_BATCH)
        metrics["eval_exact_match"] = exact_match(answers, references)
        samples = [{"step": step, "prompt": p, "reference": r, "answer": a}
                   for p, r, a in list(zip(prompts, references, answers))[:SAMPLES_PER_EVAL]]
    if ev.heldout_batches:
        metrics["heldout_loss"] = evaluate(model, ev.heldout_batches, device, use_bf16)[0]
    return metrics, samples
