"""A task whose true update has a known rank: the planted-rank lesson.

LoRA bets that the change a task needs, Delta W, has low rank.  On a real task nobody
knows that rank.  Here we *make* a task where we know it: a teacher is the base model
with a random rank-k update planted in chosen layers,

    W_teacher = W + Delta W*,     Delta W* = U diag(s_1 .. s_k) V^T,

with U (out x k) and V (in x k) random orthonormal columns.  A student, the base model
with LoRA of rank r in the same layers, learns to reproduce the teacher's outputs (the
last hidden state of the encoder, mean squared error).  For r >= k the student can
represent Delta W* exactly, so the loss can go to zero; for r < k it cannot, and the
best it can do leaves an error.  In Frobenius norm that error is the Eckart-Young tail
(Eckart & Young 1936): the best rank-r matrix is the SVD truncated after r terms, and

    min_{rank M <= r} ||Delta W* - M||_F^2 = s_{r+1}^2 + ... + s_k^2.

The student is measured on outputs, not on Delta W itself, so that tail is a guide, not
an identity: the layer's inputs X (tokens x in) are not isotropic, and directions they
rarely visit matter little.  The bound that holds for the layer's *outputs* is the same
theorem applied to Delta W* X^T (``output_singular_values``); the layers above still bend
the error, so it too is a guide for the final loss.  On MiniLM (k = 4) it predicted the
measured loss at r = 1 and 2 to within about 10% (0.61 and 0.34 against 0.63 and 0.38,
as fractions of the base model's loss), where the tail of Delta W* alone says 0.75 and 0.5.
``eckart_young_fraction`` turns either spectrum into the fraction that is missed.

Design choices, each for a clean "knee" at r = k (measured on MiniLM, k = 4, 300 steps):

* The update is planted in the first layer of the feed-forward network (FFN in,
  ``intermediate.dense``) of the last block.  It acts on each token separately, so what
  it changes reaches the output without being averaged over positions, as the
  attention's ``value`` vectors are.  Planted in ``value`` the knee was soft (loss ratio
  r=2 : r=4 about 2 : 1 after 200 steps); in FFN in it was about 100 : 1.
* Equal planted singular values (``profile="equal"``) make every direction as important
  as the next: r < k misses (k - r)/k of ||Delta W*||_F^2, r = k misses nothing.  A
  decaying spectrum (``profile="geometric"``) is more like a real task and gives a softer knee.
* ``alpha = r`` by default, so the LoRA scaling s = alpha / r = 1 for every rank: with
  Adam each entry of B moves by about the learning rate per step whatever r is, so each
  of the r directions of Delta W = B A grows at the same speed and ranks differ only in
  capacity, not in step size.  (With a fixed alpha, s = alpha / r shrinks the update of
  high ranks; rsLoRA's alpha / sqrt(r) is in between.)  A ``LoRAConfig`` given as the
  config's ``lora`` (its alpha, rsLoRA, dropout, init, DoRA) changes this to show the effect.
* Inputs are random token sequences from the tokenizer's vocabulary (no data needed) with
  no padding; the same seeded batches serve every rank.  Train and evaluation batches
  are distinct; the reported loss is on the evaluation batches.
* Everything below the first planted block is the same in base, teacher and student, so
  for a BERT-like encoder (blocks in ``encoder.layer``) its output is computed once per
  batch and cached, and training runs only the blocks from the first planted one up.  The
  teacher's outputs are computed once, under ``torch.no_grad``.  Planting in the last
  block (the default, ``layers=[-1]``) means a step runs one of MiniLM's six blocks.
* float32 throughout: the losses at r >= k fall to 1e-3 .. 1e-7 of the start, where
  bfloat16's 3 significant digits would blur the knee.
* Adam at lr 3e-2 (3e-3 and 1e-2 left r = k at 7x and 2x the loss after 300 steps), the
  rate following a cosine down to zero: a constant rate leaves Adam jittering around the
  optimum at a loss set by the rate, which would fill in the knee.

What the student cannot learn.  The student is judged on outputs only, so any part of
Delta W* that the layer's inputs never excite (for example the all-ones direction, which
a LayerNorm with its initial weights removes from every input) is invisible to it, and
||Delta W - Delta W*||_F (``delta_error``) stays well above zero even when the loss is
1e-6 of the start.  ``output_error`` measures the error on the real inputs instead.
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Literal

import matplotlib
import numpy as np
import pandas as pd
import torch
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator
from torch import nn

from workbench.lessons.delta_w import SPECTRUM_FLOOR, base_and_delta, random_orthonormal, singular_values
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import add_lora, lora_layers
from workbench.lora.layer import layer_shape
from workbench.lora.targets import find_targets, layer_index
from workbench.util.checks import (
    check_choice,
    check_integer,
    check_number,
    check_positive_int,
    check_positive_number,
    is_integer,
)
from workbench.viz.plots import FIGSIZE, LORA_CMAP, LORA_CMAP_SPAN, STYLE, label_axes, style_axes

Profile = Literal["equal", "geometric"]
PROFILES = ("equal", "geometric")

#: The colour of the planted (true) update in figures: black, the reference.
PLANTED_COLOR = "#222222"
#: The colour of the Eckart-Young reference curves.
TAIL_COLOR = "#c0392b"
#: The closed-form references drawn by ``loss_vs_rank_figure``: (table column, line style, marker, legend).
REFERENCES: tuple[tuple[str, str, str, str], ...] = (
    ("eckart_young", "--", "x", "Eckart–Young on ΔW*: Σ_{i>r} s_i² / Σ s_i²"),
    ("eckart_young_inputs", ":", "+", "Eckart–Young on ΔW*·Xᵀ (the layer's inputs)"),
)


# --------------------------------------------------------------------------- config


@dataclass
class PlantedConfig:
    """Everything that defines a planted-rank experiment, except the student's rank.

    ``targets`` and ``layers`` say where Delta W* is planted, and so where each student's
    LoRA goes: layer names or a regex of module paths, and block indices, negative ones
    counting from the end (-1 is the last block; ``None``: every block).  ``scale`` is
    ||Delta W*||_F / ||W||_F in each planted layer.

    ``lora``: the students' LoRA settings, a ``LoRAConfig`` whose rank and targets each
    student replaces by its own (rank r, in exactly the planted layers); its alpha,
    rsLoRA, dropout, init and DoRA apply to every student.  ``None`` (the default): alpha
    = r, so the LoRA scaling s = alpha / r is 1 at every rank, and LoRA's defaults
    otherwise (``student_lora``).
    """

    model: str = "minilm"
    targets: list[str] | str = field(default_factory=lambda: ["intermediate.dense"])
    layers: list[int] | None = field(default_factory=lambda: [-1])
    true_rank: int = 4
    scale: float = 0.4
    profile: Profile = "equal"
    decay: float = 0.5  # s_{i+1} / s_i for profile="geometric"
    seed: int = 0
    batch_size: int = 16
    seq_len: int = 32
    train_batches: int = 8
    eval_batches: int = 2
    steps: int = 300
    lr: float = 3e-2
    lora: LoRAConfig | None = None
    cache_prefix: bool = True
    threads: int | None = None  # torch CPU threads while training; None leaves torch's setting

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        for name in ("true_rank", "batch_size", "seq_len", "train_batches", "eval_batches", "steps"):
            check_positive_int(name, getattr(self, name))
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a model name such as 'minilm' or 'tiny-bert', got {self.model!r}")
        if isinstance(self.targets, str):
            if not self.targets or self.targets == "all-linear":
                raise ValueError(f"targets must be layer names such as ['value'] or a regex of module paths, got {self.targets!r}")
        elif not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"targets must be a non-empty list of layer names such as ['value'], got {self.targets!r}")
        if self.layers is not None:
            if isinstance(self.layers, (str, int)) or not list(self.layers) or not all(is_integer(i) for i in self.layers):
                raise ValueError(f"layers must be None (every block) or a non-empty list of block indices, got {self.layers!r}")
        check_positive_number("scale", self.scale)
        check_positive_number("lr", self.lr)
        check_choice("profile", self.profile, PROFILES)
        check_number("decay", self.decay, 0, 1, low_open=True, what="the ratio s_(i+1) / s_i")
        check_integer("seed", self.seed)
        if self.lora is not None and not isinstance(self.lora, LoRAConfig):
            raise ValueError(f"lora must be None (alpha = r) or a LoRAConfig, got {type(self.lora).__name__}")
        if self.lora is not None and self.lora.layers is not None:
            raise ValueError(f"lora.layers must be None: the students sit in the planted layers, chosen by "
                             f"PlantedConfig.layers (got lora.layers={list(self.lora.layers)})")
        if self.threads is not None:
            check_positive_int("threads", self.threads)

    def student_lora(self, rank: int, paths: Sequence[str]) -> LoRAConfig:
        """The LoRA settings of the student of rank ``rank``, in exactly the layers ``paths``.

        ``lora`` with that rank and those targets, or (``lora`` None) alpha = r: s = 1.
        """
        check_positive_int("rank", rank)
        if self.lora is None:
            return LoRAConfig(rank=int(rank), alpha=float(rank), targets=tuple(paths))
        return self.lora.replace(rank=int(rank), targets=tuple(paths))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lora"] = None if self.lora is None else self.lora.to_dict()
        return d


# --------------------------------------------------------------------------- planting


def planted_singular_values(cfg: PlantedConfig, weight_norm: float) -> torch.Tensor:
    """s_1 >= ... >= s_k of Delta W*, scaled so that ||Delta W*||_F = scale * ||W||_F.

    ``equal``: s_i = c;  ``geometric``: s_i = c * decay^(i-1);  and since the Frobenius
    norm of U diag(s) V^T with orthonormal U, V is sqrt(sum s_i^2), c is chosen so that
    sqrt(sum s_i^2) = scale * ||W||_F.
    """
    k = cfg.true_rank
    shape = torch.ones(k, dtype=torch.float64) if cfg.profile == "equal" else (
        float(cfg.decay) ** torch.arange(k, dtype=torch.float64))
    return shape * (cfg.scale * weight_norm / float(torch.linalg.vector_norm(shape)))


def planted_delta(
    out_features: int, in_features: int, s: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Delta W* = U diag(s) V^T (out x in, float64) with Haar-random orthonormal U and V.

    Its singular values are exactly ``s`` (up to float64 rounding) and its rank is the
    number of non-zero entries of ``s``.
    """
    k = len(s)
    if k > min(out_features, in_features):
        raise ValueError(
            f"true_rank {k} exceeds min(out, in) = {min(out_features, in_features)} of a "
            f"{out_features} x {in_features} layer: no matrix of that shape has rank {k}"
        )
    u = random_orthonormal(out_features, k, generator)
    v = random_orthonormal(in_features, k, generator)
    return (u * s.to(torch.float64)) @ v.T


def _encoder(model: nn.Module) -> nn.Module:
    """The bare encoder/decoder of a transformers model (``BertModel`` inside ``...ForSequenceClassification``)."""
    inner = getattr(model, "base_model", model)
    return inner if isinstance(inner, nn.Module) else model


def _blocks(encoder: nn.Module) -> nn.ModuleList | None:
    """The list of transformer blocks of a BERT-like encoder (``encoder.layer``), else None."""
    blocks = getattr(getattr(encoder, "encoder", None), "layer", None)
    return blocks if isinstance(blocks, nn.ModuleList) else None


def _n_blocks(encoder: nn.Module) -> int:
    n = getattr(encoder.config, "num_hidden_layers", None) or getattr(encoder.config, "n_layer", None)
    if n is None:
        raise ValueError(f"cannot tell how many blocks {type(encoder).__name__} has (no num_hidden_layers in its config)")
    return int(n)


def resolve_layers(encoder: nn.Module, layers: Sequence[int] | None) -> list[int] | None:
    """Block indices with negatives counted from the end; checked against the model's depth."""
    if layers is None:
        return None
    n = _n_blocks(encoder)
    out = []
    for i in layers:
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise ValueError(f"layer {i} does not exist: the model has blocks 0..{n - 1} (or -{n}..-1 from the end)")
        out.append(j)
    return sorted(set(out))


def target_paths(model: nn.Module, cfg: PlantedConfig) -> list[str]:
    """Paths (inside the encoder) of the layers where Delta W* is planted and LoRA goes."""
    encoder = _encoder(model)
    return find_targets(encoder, cfg.targets, resolve_layers(encoder, cfg.layers))


def _weight_out_in(layer: nn.Module) -> torch.Tensor:
    """The weight in (out x in) orientation, as a view (Conv1D stores it in x out)."""
    return layer.weight if isinstance(layer, nn.Linear) else layer.weight.T


@torch.no_grad()
def make_teacher(base: nn.Module, cfg: PlantedConfig) -> tuple[nn.Module, "OrderedDict[str, torch.Tensor]"]:
    """A copy of the base encoder with W <- W + Delta W* in the chosen layers.

    Returns ``(teacher, planted)``: the teacher (eval mode, no gradients) and, per layer
    path, Delta W* (out x in, float64).  Each layer's Delta W* is drawn from a generator
    seeded with ``cfg.seed`` and the layer's position in the list, so it is reproducible
    and different in each layer.  ``base`` is not changed.
    """
    encoder = _encoder(base)
    paths = target_paths(encoder, cfg)
    teacher = copy.deepcopy(encoder).eval()
    teacher.requires_grad_(False)
    planted: OrderedDict[str, torch.Tensor] = OrderedDict()
    for n, path in enumerate(paths):
        layer = teacher.get_submodule(path)
        in_features, out_features = layer_shape(layer)
        w = _weight_out_in(layer)
        s = planted_singular_values(cfg, float(torch.linalg.matrix_norm(w.double())))
        gen = torch.Generator().manual_seed(int(cfg.seed) * 1000 + n)
        delta = planted_delta(out_features, in_features, s, gen)
        w += delta.to(w.dtype)  # in place on the view: Conv1D's (in x out) weight gets Delta W*^T
        planted[path] = delta
    return teacher, planted


# --------------------------------------------------------------------------- threads


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
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


# --------------------------------------------------------------------------- data


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
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


class _Tail(nn.Module):
    """Blocks ``start ..`` of a BERT-like encoder, run on cached hidden states.

    BERT has no layer norm after its last block, so the output of the last block is the
    model's ``last_hidden_state``.  With no padding the attention mask is all ones,
    which is the same as no mask.
    """

    def __init__(self, encoder: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(_blocks(encoder))[start:])

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            out = block(h)
            h = out[0] if isinstance(out, tuple) else out
        return h


def _runner(encoder: nn.Module, task: PlantedTask) -> Callable[[torch.Tensor], torch.Tensor]:
    if task.start_block is None:
        return lambda ids: _last_hidden(encoder(input_ids=ids))
    return _Tail(encoder, task.start_block)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mean((a - b) ** 2)


def prepare_task(base: nn.Module, teacher: nn.Module, cfg: PlantedConfig, tokenizer: object | None = None) -> PlantedTask:
    """Draw the batches, run the frozen part once, and record the teacher's outputs.

    With ``cfg.cache_prefix`` and a BERT-like encoder, the hidden states entering the
    first planted block are cached (identical in base, teacher and student); otherwise
    the token ids are kept and every step runs the whole model.
    """
    with _threads(cfg.threads):
        return _prepare(base, teacher, cfg, tokenizer)


@torch.no_grad()
def _prepare(base: nn.Module, teacher: nn.Module, cfg: PlantedConfig, tokenizer: object | None) -> PlantedTask:
    encoder = _encoder(base).eval()
    teacher = teacher.eval()
    paths = target_paths(encoder, cfg)
    vocab = len(tokenizer) if tokenizer is not None else int(encoder.config.vocab_size)
    special = list(getattr(tokenizer, "all_special_ids", [])) if tokenizer is not None else []
    ids = random_token_batches(vocab, cfg, special)
    blocks = [layer_index(p) for p in paths]
    start = min(blocks) if cfg.cache_prefix and _blocks(encoder) is not None and None not in blocks else None
    inputs, targets = [], []
    for batch in ids:
        targets.append(_last_hidden(teacher(input_ids=batch)).float())
        if start is None:
            inputs.append(batch)
        else:
            hidden = encoder(input_ids=batch, output_hidden_states=True).hidden_states
            inputs.append(hidden[start].float())  # hidden_states[j] enters block j (0: embeddings)
    task = PlantedTask(inputs, targets, cfg.train_batches, start, 0.0, paths)
    run_base = _runner(encoder, task)
    task.base_loss = float(np.mean([_mse(run_base(x), y).item() for x, y in _eval_pairs(task)]))
    return task


def _eval_pairs(task: PlantedTask) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(task.inputs[task.n_train:], task.targets[task.n_train:]))


# --------------------------------------------------------------------------- the student



@dataclass
class PlantedResult:
    """One student: its loss curve, final loss, and the Delta W it learned per layer.

    ``losses`` is the training loss (mean squared error against the teacher's last
    hidden state) at every step; ``final_loss`` the same error on the evaluation batches
    after training; ``relative_loss`` = final_loss / base_loss, the share of the
    teacher's difference from the base model that the student did not learn.
    ``learned[path]`` is s * B A (out x in, float64).  ``lora`` is the student's LoRA
    settings (``rank``, ``alpha`` and ``scaling`` read from it).
    """

    lora: LoRAConfig
    trainable: int
    losses: list[float]
    final_loss: float
    base_loss: float
    learned: "OrderedDict[str, torch.Tensor]"
    seconds: float

    @property
    def rank(self) -> int:
        return self.lora.rank

    @property
    def alpha(self) -> float:
        return self.lora.alpha

    @property
    def scaling(self) -> float:
        """s = alpha / r (rsLoRA: alpha / sqrt(r))."""
        return self.lora.scaling

    @property
    def relative_loss(self) -> float:
        return self.final_loss / self.base_loss if self.base_loss > 0 else math.nan


def fit_student(
    base: nn.Module,
    teacher: nn.Module,
    cfg: PlantedConfig,
    rank: int,
    task: PlantedTask | None = None,
    tokenizer: object | None = None,
) -> PlantedResult:
    """Train LoRA of rank ``rank`` on a copy of the base encoder to match the teacher.

    Loss: mean over batch, positions and features of (h_student - h_teacher)^2, h the
    last hidden state.  Adam, learning rate ``cfg.lr`` decayed to zero on a cosine,
    ``cfg.steps`` steps cycling through the training batches.  The LoRA layers go in
    exactly the planted layers.  Pass ``task`` (from ``prepare_task``) to share the
    batches and teacher outputs between ranks; without it one is made.
    """
    check_positive_int("rank", rank)
    with _threads(cfg.threads):
        return _fit(base, teacher, cfg, int(rank), task if task is not None else _prepare(base, teacher, cfg, tokenizer))


def _fit(base: nn.Module, teacher: nn.Module, cfg: PlantedConfig, rank: int, task: PlantedTask) -> PlantedResult:
    t0 = time.perf_counter()
    student = copy.deepcopy(_encoder(base)).eval()
    lora = cfg.student_lora(rank, task.paths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed) + 777)  # the same A for a given rank, whatever ran before
        add_lora(student, lora, train_head=False)
    params = [p for p in student.parameters() if p.requires_grad]
    adapters = list(lora_layers(student).values())
    for layer in adapters:  # the base stays in eval mode (no dropout of its own); LoRA's dropout trains
        layer.train()
    run = _runner(student, task)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / cfg.steps)))
    losses = []
    for step in range(cfg.steps):
        b = step % task.n_train
        loss = _mse(run(task.inputs[b]), task.targets[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    for layer in adapters:
        layer.eval()
    with torch.no_grad():
        final = float(np.mean([_mse(run(x), y).item() for x, y in _eval_pairs(task)]))
    learned = OrderedDict((p, base_and_delta(layer)[1]) for p, layer in lora_layers(student).items())
    return PlantedResult(
        lora=lora, trainable=sum(p.numel() for p in params), losses=losses, final_loss=final,
        base_loss=task.base_loss, learned=learned, seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- closed forms and measures


def eckart_young_fraction(s: torch.Tensor | Sequence[float], rank: int) -> float:
    """(s_{r+1}^2 + ... + s_n^2) / (s_1^2 + ... + s_n^2): what the best rank-r matrix misses.

    By Eckart-Young, truncating the SVD of a matrix M after r terms gives the closest
    rank-r matrix in Frobenius norm, and the squared error left is the sum of the
    dropped squared singular values.  With M = Delta W* and equal s_i this is (k - r) / k
    for r < k, and 0 for any r >= k.  Values below ``SPECTRUM_FLOOR`` * s_1 count as the
    exact zeros they are (an SVD returns them as rounding noise, about 1e-16 s_1).
    """
    tail, total = _tail_and_total(s, rank)
    if total == 0:
        raise ValueError("the singular values are all zero: a zero matrix has no best approximation to measure")
    return tail / total


def _tail_and_total(s: torch.Tensor | Sequence[float], rank: int) -> tuple[float, float]:
    check_integer("rank", rank, minimum=0)
    sv = torch.as_tensor(s, dtype=torch.float64).flatten().sort(descending=True).values
    if len(sv) and float(sv[0]) > 0:  # values under SPECTRUM_FLOOR * s_1 are rounding of exact zeros
        sv = torch.where(sv > SPECTRUM_FLOOR * sv[0], sv, torch.zeros_like(sv))
    return float((sv[int(rank):] ** 2).sum()), float((sv**2).sum())


@torch.no_grad()
def layer_inputs(base: nn.Module, task: PlantedTask, path: str) -> torch.Tensor:
    """X: what the layer ``path`` of the base model reads on the evaluation batches (tokens x in, float64).

    For the lowest planted layer these are exactly the teacher's and the student's
    inputs too (nothing below it differs).  They define the metric the student is
    judged in: on these inputs the layer's update produces Delta W x for each row x.
    """
    encoder = _encoder(base)
    if path not in task.paths:
        raise ValueError(f"{path!r} is not a planted layer; planted: {task.paths}")
    rows: list[torch.Tensor] = []
    layer = encoder.get_submodule(path)
    hook = layer.register_forward_hook(lambda _m, args, _out: rows.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        run = _runner(encoder, task)
        for x, _ in _eval_pairs(task):
            run(x)
    finally:
        hook.remove()
    return torch.cat(rows).to(torch.float64)


def output_singular_values(delta: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Singular values of Delta W X^T: the update as the layer's inputs see it.

    The student is measured on outputs, so the Eckart-Young bound that applies is the
    one for Delta W* X^T (out x tokens): among rank-r updates Delta W,

        min ||(Delta W - Delta W*) X^T||_F^2 = sum_{i>r} sigma_i(Delta W* X^T)^2,

    since every rank-r matrix with rows in the row space of X^T is some Delta W X^T,
    and the truncated SVD of Delta W* X^T is one.  Directions of Delta W* that the
    inputs rarely visit count little here, however large s_i is.
    """
    return singular_values(delta.to(torch.float64) @ inputs.to(torch.float64).T)


def output_error(learned: torch.Tensor, planted: torch.Tensor, inputs: torch.Tensor) -> float:
    """||(Delta W - Delta W*) X^T||_F / ||Delta W* X^T||_F: the learned update's error on the real inputs.

    Unlike ``delta_error`` this ignores what the inputs never excite (for example the
    all-ones direction, which a LayerNorm with its initial weights removes from every
    input): no training signal can recover Delta W* there, so it is no fault of the student.
    """
    x = inputs.to(torch.float64).T
    p = planted.detach().to(torch.float64) @ x
    return float(torch.linalg.matrix_norm(learned.detach().to(torch.float64) @ x - p) / torch.linalg.matrix_norm(p))


def delta_error(learned: torch.Tensor, planted: torch.Tensor) -> float:
    """||Delta W - Delta W*||_F / ||Delta W*||_F: how close the learned update is to the planted one."""
    d = learned.detach().to(torch.float64) - planted.detach().to(torch.float64)
    return float(torch.linalg.matrix_norm(d) / torch.linalg.matrix_norm(planted.detach().to(torch.float64)))


def captured_energy(learned: torch.Tensor, planted: torch.Tensor, tol: float = 1e-6) -> float:
    """The share of ||Delta W*||_F^2 inside the row and column spaces of the learned Delta W.

        ||P_U Delta W* P_V||_F^2 / ||Delta W*||_F^2,   P_U, P_V: projections onto the
        left and right singular vectors of Delta W with sigma > tol * sigma_1.

    1 when the student found all of Delta W*'s directions; at most r / k for equal planted
    singular values and a rank-r student.
    """
    u, sv, vh = torch.linalg.svd(learned.detach().to(torch.float64), full_matrices=False)
    if float(sv[0]) == 0.0:
        return 0.0
    keep = sv > tol * sv[0]
    u, v = u[:, keep], vh[keep].T
    p = planted.detach().to(torch.float64)
    inside = u.T @ p @ v
    return float((inside**2).sum() / (p**2).sum())


# --------------------------------------------------------------------------- the sweep


@dataclass
class PlantedSweep:
    """A rank sweep: the config, the planted updates, the planted layers' inputs X,
    one result per rank, and the summary table (see ``sweep_table``)."""

    config: PlantedConfig
    planted: "OrderedDict[str, torch.Tensor]"
    inputs: "OrderedDict[str, torch.Tensor]"
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
        w_tail = [_tail_and_total(sv, res.rank) for sv in w_sv]
        diff = [(float(torch.linalg.matrix_norm(res.learned[p] - d) ** 2), float(torch.linalg.matrix_norm(d) ** 2))
                for p, d in planted.items()]
        cap = [(captured_energy(res.learned[p], d) * b, b) for (p, d), (_, b) in zip(planted.items(), diff)]
        row = {
            "rank": res.rank, "alpha": res.alpha, "scaling": res.scaling, "trainable": res.trainable,
            "final_loss": res.final_loss, "base_loss": res.base_loss, "relative_loss": res.relative_loss,
            "eckart_young": pooled(w_tail),
        }
        if inputs is not None:
            row["eckart_young_inputs"] = pooled([_tail_and_total(sv, res.rank) for sv in x_sv])
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
    with _threads(cfg.threads):
        return _sweep(cfg, ranks, base, tokenizer, progress)


def _sweep(
    cfg: PlantedConfig, ranks: list[int], base: nn.Module, tokenizer: object | None,
    progress: Callable[[PlantedResult], None] | None,
) -> PlantedSweep:
    teacher, planted = make_teacher(base, cfg)
    task = _prepare(base, teacher, cfg, tokenizer)
    inputs = OrderedDict((p, layer_inputs(base, task, p)) for p in planted)
    results: dict[int, PlantedResult] = {}
    for r in sorted(int(r) for r in ranks):
        results[r] = _fit(base, teacher, cfg, r, task)
        if progress is not None:
            progress(results[r])
    table = sweep_table(list(results.values()), planted, inputs)
    return PlantedSweep(cfg, planted, inputs, results, table, task.base_loss)


# --------------------------------------------------------------------------- figures


def loss_vs_rank_figure(table: pd.DataFrame, true_rank: int, column: str = "relative_loss") -> Figure:
    """Final loss against the student's rank r (log-log), with the planted rank k marked.

    The measured line is ``table[column]`` (by default the share of the teacher's
    difference left, final_loss / base_loss).  With the default column, the closed-form
    references in the table (``REFERENCES``: the Eckart-Young tail of Delta W* and of
    Delta W* X^T) are drawn in red where they are not zero (r < k).  A knee at r = k says
    the student needs exactly the planted rank.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame (PlantedSweep.table), got {type(table).__name__}")
    missing = {"rank", column} - set(table.columns)
    if missing:
        raise ValueError(f"table lacks the columns {sorted(missing)}; it has {list(table.columns)}")
    if table.empty:
        raise ValueError("table has no rows: run at least one rank")
    check_positive_int("true_rank", true_rank)
    t = table.sort_values("rank")
    ranks = t["rank"].to_numpy(dtype=int)
    y = t[column].to_numpy(dtype=float)
    fig = Figure(figsize=FIGSIZE, layout="constrained", facecolor=STYLE["face_color"])
    ax = fig.add_subplot()
    style_axes(ax)
    ax.plot(ranks, y, color="#4c72b0", linewidth=STYLE["line_width"], zorder=2,
            label="measured" if column != "relative_loss" else "measured: final loss / base loss", gid="measured")
    colors = sweep_colors(ranks.tolist())
    ax.scatter(ranks, y, c=[colors[int(r)] for r in ranks], s=STYLE["marker_size"] ** 2 * 1.6,
               edgecolors="white", linewidths=0.8, zorder=3)
    if column == "relative_loss":
        for col, style, marker, label in REFERENCES:
            if col not in t.columns:
                continue
            tail = t[col].to_numpy(dtype=float)
            keep = tail > 0  # 0 for r >= k: a log axis cannot show it, and the text says it
            if keep.any():
                ax.plot(ranks[keep], tail[keep], linestyle=style, marker=marker, color=TAIL_COLOR,
                        linewidth=1.3, markersize=6, label=label, gid=col)
    ax.axvline(true_rank, color="#555555", linestyle=":", linewidth=1.3, label=f"planted rank k = {true_rank}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(ranks.tolist()) | {int(true_rank)})))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    if (y > 0).all():
        ax.set_yscale("log")
    ylabel = "final loss / base loss" if column == "relative_loss" else column.replace("_", " ")
    label_axes(ax, "Loss against LoRA rank: the knee sits at the planted rank", "LoRA rank r of the student", ylabel)
    ax.legend(fontsize=STYLE["legend_size"], framealpha=0.9, edgecolor=STYLE["grid_color"], loc="upper right")
    return fig


def sweep_colors(ranks: Sequence[int]) -> dict[int, str]:
    """A colour per rank, spread evenly over the house LoRA colormap in rank order.

    ``plots.rank_color`` fixes each rank's colour on a 1..256 scale so that runs compare
    across figures; in this lesson the ranks are few and close (1, 2, 3, 4 would be four
    shades of one purple), so the colours are spread over the ranks present instead.
    """
    ordered = sorted(set(int(r) for r in ranks))
    lo, hi = LORA_CMAP_SPAN
    cmap = matplotlib.colormaps[LORA_CMAP]
    if len(ordered) == 1:
        return {ordered[0]: to_hex(cmap(lo))}
    return {r: to_hex(cmap(lo + (hi - lo) * i / (len(ordered) - 1))) for i, r in enumerate(ordered)}


def _nonzero_spectrum(m: torch.Tensor) -> np.ndarray:
    """Singular values of m above ``SPECTRUM_FLOOR`` * sigma_1 (the rest are rounding of zeros)."""
    s = singular_values(m).numpy()
    return s[s > SPECTRUM_FLOOR * s[0]] if s[0] > 0 else s[:0]


def spectrum_comparison_figure(
    learned: torch.Tensor | Mapping[int, torch.Tensor],
    planted: torch.Tensor,
    title: str | None = None,
) -> Figure:
    """Singular values of the learned Delta W against those of the planted Delta W*.

    ``learned`` is one Delta W, or {rank: Delta W} for a sweep, which gets one panel per
    rank (shared log y axis) so each student is read against the same black reference.
    Delta W* has exactly k non-zero singular values; a rank-r student has at most r.
    Values below ``SPECTRUM_FLOOR`` * sigma_1 are float64 rounding of exact zeros and are
    not drawn.  Each learned line has the gid ``learned_r<rank>`` (``learned`` for a single
    tensor) and the planted one ``planted``, so a test can find the data.
    """
    if isinstance(learned, Mapping):
        items: list[tuple[int | None, torch.Tensor]] = sorted((int(r), d) for r, d in learned.items())
    elif isinstance(learned, torch.Tensor):
        items = [(None, learned)]
    else:
        raise TypeError(f"learned must be a tensor or a mapping {{rank: tensor}}, got {type(learned).__name__}")
    if not items:
        raise ValueError("learned is empty: pass at least one learned Delta W")
    if not isinstance(planted, torch.Tensor):
        raise TypeError(f"planted must be a tensor (Delta W*), got {type(planted).__name__}")
    for r, d in items:
        if not isinstance(d, torch.Tensor) or tuple(d.shape) != tuple(planted.shape):
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ValueError(f"learned Delta W{'' if r is None else f' (r = {r})'} is {got} but Delta W* is {tuple(planted.shape)}")
    sp = _nonzero_spectrum(planted)
    if not len(sp):
        raise ValueError("the planted Delta W* is zero: there is nothing to compare against")
    k = len(sp)
    spectra = [(r, _nonzero_spectrum(d)) for r, d in items]
    colors = sweep_colors([r for r, _ in items if r is not None]) if items[0][0] is not None else {}
    ncols = min(len(items), 3)
    nrows = math.ceil(len(items) / ncols)
    size = FIGSIZE if len(items) == 1 else (FIGSIZE[0], 0.6 + 2.3 * nrows)
    fig = Figure(figsize=size, layout="constrained", facecolor=STYLE["face_color"])
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).flatten()
    for ax in axes[len(items):]:
        ax.set_axis_off()
    for ax, (r, s) in zip(axes, spectra):
        style_axes(ax)
        longest = max(k, len(s), r or 0)
        ax.plot(np.arange(1, k + 1), sp, color=PLANTED_COLOR, marker="o", markersize=10, markerfacecolor="none",
                linewidth=2.2, label=f"planted ΔW* (rank {k})", gid="planted", zorder=3)
        color = colors.get(r, "#4c72b0")
        label = f"learned, r = {r} (rank {len(s)})" if r is not None else f"learned ΔW (rank {len(s)})"
        ax.plot(np.arange(1, len(s) + 1), s, color=color, marker="o", markersize=4.5, linewidth=1.6,
                label=label, gid=f"learned_r{r}" if r is not None else "learned", zorder=4)
        ax.axvline(k + 0.5, color="#555555", linestyle=":", linewidth=1.1)
        ax.set_xlim(0.5, longest + 0.5)
        ax.xaxis.set_major_locator(FixedLocator(_ticks(longest, most=8 if len(items) > 1 else 16)))
        ax.set_yscale("log")
        if r is not None and len(items) > 1:
            ax.set_title(f"student r = {r}", fontsize=STYLE["label_size"], color=color, loc="left")
    if len(items) == 1:
        ax = axes[0]
        ax.text(k + 0.6, 0.97, f"σ_i(ΔW*) = 0 for i > {k}", transform=ax.get_xaxis_transform(),
                fontsize=STYLE["annotation_size"], color="#555555", va="top")
        label_axes(ax, title or "Singular values: learned ΔW = s·B·A against the planted ΔW*",
                "index i (largest first)", "singular value σ_i")
        ax.legend(fontsize=STYLE["legend_size"], framealpha=0.9, edgecolor=STYLE["grid_color"], loc="lower left")
    else:
        fig.suptitle(title or f"Singular values: each student's ΔW (colour) against the planted ΔW* (black, rank {k})",
                     fontsize=STYLE["label_size"] + 0.5,
                     color=STYLE["text_color"], x=0.01, ha="left")
        fig.supxlabel("index i (largest first)", fontsize=STYLE["label_size"], color=STYLE["text_color"])
        fig.supylabel("singular value σ_i", fontsize=STYLE["label_size"], color=STYLE["text_color"])
    return fig


def _ticks(n: int, most: int = 16) -> list[int]:
    """Index ticks 1..n, or every 2nd/4th/... index when more than ``most`` would crowd."""
    step = 1
    while n / step > most:
        step *= 2
    return list(range(1, n + 1)) if step == 1 else list(range(step, n + 1, step))


def loss_curves_figure(results: Mapping[int, PlantedResult] | Sequence[PlantedResult], true_rank: int | None = None) -> Figure:
    """Training loss against step for each student (log y), coloured by rank."""
    res = list(results.values()) if isinstance(results, Mapping) else list(results)
    if not res:
        raise ValueError("no results to draw: run at least one rank")
    fig = Figure(figsize=FIGSIZE, layout="constrained", facecolor=STYLE["face_color"])
    ax = fig.add_subplot()
    style_axes(ax)
    colors = sweep_colors([r.rank for r in res])
    for r in sorted(res, key=lambda x: x.rank):
        style = "-" if true_rank is None or r.rank >= true_rank else "--"
        ax.plot(np.arange(1, len(r.losses) + 1), r.losses, color=colors[r.rank], linestyle=style,
                linewidth=1.4, label=f"r = {r.rank}", gid=f"r{r.rank}")
    ax.set_yscale("log")
    label_axes(ax, "Training loss of each student" + ("" if true_rank is None else f" (dashed: r < k = {true_rank})"),
            "step", "MSE against the teacher's hidden states")
    ax.legend(fontsize=STYLE["legend_size"], framealpha=0.9, edgecolor=STYLE["grid_color"], loc="upper right")
    return fig
