"""The task every student of a sweep shares: seeded random token batches and the teacher's outputs.

Inputs are random token sequences from the tokenizer's vocabulary (no data needed) with no
padding; the same seeded batches serve every rank, and train and evaluation batches are
distinct.  Everything below the first planted block is the same in base, teacher and
student, so for a BERT-like encoder (blocks in ``encoder.layer``) its output is computed
once per batch and cached (``PlantedTask.inputs``), and training runs only the blocks from
the first planted one up.  The teacher's outputs are computed once, under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workbench.lessons.planted_rank.config import PlantedConfig
from workbench.lessons.planted_rank.teacher import blocks_of, encoder_of, target_paths
from workbench.lora.paths import layer_index

__all__ = ["random_token_batches", "PlantedTask", "prepare_task", "layer_inputs", "torch_threads"]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``n`` inside the block (unchanged for None), then restored."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def random_token_batches(vocab_size: int, cfg: PlantedConfig, special_ids: Sequence[int] = ()) -> torch.Tensor:
    """(train_batches + eval_batches, batch_size, seq_len) token ids, uniform over the vocabulary
    without the special tokens, from a generator seeded with ``cfg.seed``: every rank sees the
    same batches."""
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[i for i in special_ids if 0 <= i < vocab_size]] = False
    ids = torch.nonzero(allowed).flatten()
    gen = torch.Generator().manual_seed(int(cfg.seed) + 12345)
    n = cfg.train_batches + cfg.eval_batches
    pick = torch.randint(len(ids), (n, cfg.batch_size, cfg.seq_len), generator=gen)
    return ids[pick]


@dataclass
class PlantedTask:
    """Cached inputs and teacher outputs, shared by every student of a sweep.

    ``inputs[b]`` is what the trained part of the student reads for batch b: the hidden
    states entering block ``start_block`` (or token ids when ``start_block`` is None, and
    the whole model runs).  ``targets[b]`` is the teacher's last hidden state.  Batches
    ``0 .. n_train - 1`` train, the rest evaluate.  ``base_loss`` is the mean squared error
    of the untouched base model against the teacher on the evaluation batches: where
    every student starts, since B = 0 makes a fresh LoRA model the base model.
    """

    inputs: list[torch.Tensor]
    targets: list[torch.Tensor]
    n_train: int
    start_block: int | None
    base_loss: float
    paths: list[str]


def _last_hidden(out: object) -> torch.Tensor:
    """The last hidden state of a transformers output (or of a plain tuple)."""
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class _Tail(nn.Module):
    """Blocks ``start ..`` of a BERT-like encoder, run on cached hidden states.

    BERT has no layer norm after its last block, so the output of the last block is the
    model's ``last_hidden_state``.  With no padding the attention mask is all ones,
    which is the same as no mask.
    """

    def __init__(self, encoder: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(blocks_of(encoder))[start:])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            out = block(h)
            h = out[0] if isinstance(out, tuple) else out
        return h


def runner(encoder: nn.Module, task: PlantedTask) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a step runs on ``task.inputs``: the whole encoder on token ids, or the blocks from ``start_block`` up."""
    if task.start_block is None:
        return lambda ids: _last_hidden(encoder(input_ids=ids))
    return _Tail(encoder, task.start_block)


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error over batch, positions and features."""
    return torch.mean((a - b) ** 2)


def prepare_task(base: nn.Module, teacher: nn.Module, cfg: PlantedConfig, tokenizer: object | None = None) -> PlantedTask:
    """Draw the batches, run the frozen part once, and record the teacher's outputs.

    With ``cfg.cache_prefix`` and a BERT-like encoder, the hidden states entering the
    first planted block are cached (identical in base, teacher and student); otherwise
    the token ids are kept and every step runs the whole model.
    """
    with torch_threads(cfg.threads):
        return _prepare(base, teacher, cfg, tokenizer)


@torch.no_grad()
def _prepare(base: nn.Module, teacher: nn.Module, cfg: PlantedConfig, tokenizer: object | None) -> PlantedTask:
    encoder = encoder_of(base).eval()
    teacher = teacher.eval()
    paths = target_paths(encoder, cfg)
    vocab = len(tokenizer) if tokenizer is not None else int(encoder.config.vocab_size)
    special = list(getattr(tokenizer, "all_special_ids", [])) if tokenizer is not None else []
    ids = random_token_batches(vocab, cfg, special)
    blocks = [layer_index(p) for p in paths]
    start = min(blocks) if cfg.cache_prefix and blocks_of(encoder) is not None and None not in blocks else None
    inputs, targets = [], []
    for batch in ids:
        targets.append(_last_hidden(teacher(input_ids=batch)).float())
        if start is None:
            inputs.append(batch)
        else:
            hidden = encoder(input_ids=batch, output_hidden_states=True).hidden_states
            inputs.append(hidden[start].float())  # hidden_states[j] enters block j (0: embeddings)
    task = PlantedTask(inputs, targets, cfg.train_batches, start, 0.0, paths)
    run_base = runner(encoder, task)
    task.base_loss = float(np.mean([mse(run_base(x), y).item() for x, y in eval_pairs(task)]))
    return task


def eval_pairs(task: PlantedTask) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, teacher output) of the evaluation batches (those after the ``n_train`` training ones)."""
    return list(zip(task.inputs[task.n_train:], task.targets[task.n_train:]))


@torch.no_grad()
def layer_inputs(base: nn.Module, task: PlantedTask, path: str) -> torch.Tensor:
    """X: what the layer ``path`` of the base model reads on the evaluation batches (tokens x in, float64).

    For the lowest planted layer these are exactly the teacher's and the student's
    inputs too (nothing below it differs).  They define the metric the student is
    judged in: on these inputs the layer's update produces Delta W x for each row x.
    """
    encoder = encoder_of(base)
    if path not in task.paths:
        raise ValueError(f"{path!r} is not a planted layer; planted: {task.paths}")
    rows: list[torch.Tensor] = []
    layer = encoder.get_submodule(path)
    hook = layer.register_forward_hook(lambda _m, args, _out: rows.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        run = runner(encoder, task)
        for x, _ in eval_pairs(task):
            run(x)
    finally:
        hook.remove()
    return torch.cat(rows).to(torch.float64)
