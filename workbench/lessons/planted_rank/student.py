"""A student: the base model with LoRA of rank r in the planted layers, trained to imitate the teacher.

``alpha = r`` by default, so the LoRA scaling s = alpha / r = 1 for every rank: with Adam
each entry of B moves by about the learning rate per step whatever r is, so ranks differ
only in capacity, not in step size.  Adam at lr 3e-2, the rate following a cosine down to
zero (a constant rate leaves Adam jittering around the optimum at a loss set by the rate,
which would fill in the knee); float32 throughout.
"""

from __future__ import annotations

import copy
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workbench.lessons.delta_w import base_and_delta
from workbench.lessons.planted_rank.config import PlantedConfig
from workbench.lessons.planted_rank.task import PlantedTask, eval_pairs, mse, prepare_task, runner, torch_threads
from workbench.lessons.planted_rank.teacher import encoder_of
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import add_lora, lora_layers
from workbench.util.checks import check_positive_int

__all__ = ["PlantedResult", "fit_student"]


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
    learned: OrderedDict[str, torch.Tensor]
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
    with torch_threads(cfg.threads):
        return _fit(base, teacher, cfg, int(rank), task if task is not None else prepare_task(base, teacher, cfg, tokenizer))


def _fit(base: nn.Module, teacher: nn.Module, cfg: PlantedConfig, rank: int, task: PlantedTask) -> PlantedResult:
    t0 = time.perf_counter()
    student = copy.deepcopy(encoder_of(base)).eval()
    lora = cfg.student_lora(rank, task.paths)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.seed) + 777)  # the same A for a given rank, whatever ran before
        add_lora(student, lora, train_head=False)
    params = [p for p in student.parameters() if p.requires_grad]
    adapters = list(lora_layers(student).values())
    for layer in adapters:  # the base stays in eval mode (no dropout of its own); LoRA's dropout trains
        layer.train()
    run = runner(student, task)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / cfg.steps)))
    losses = []
    for step in range(cfg.steps):
        b = step % task.n_train
        loss = mse(run(task.inputs[b]), task.targets[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    for layer in adapters:
        layer.eval()
    with torch.no_grad():
        final = float(np.mean([mse(run(x), y).item() for x, y in eval_pairs(task)]))
    learned = OrderedDict((p, base_and_delta(layer)[1]) for p, layer in lora_layers(student).items())
    return PlantedResult(
        lora=lora, trainable=sum(p.numel() for p in params), losses=losses, final_loss=final,
        base_loss=task.base_loss, learned=learned, seconds=time.perf_counter() - t0,
    )
