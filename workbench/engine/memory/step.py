"""One training step measured on demand: an optimizer by name, and gradient checkpointing's recomputation.

``measure_step`` runs and accounts one training step of a model as it stands (its
``requires_grad`` flags say what trains), with any optimizer the estimate knows
(``step_optimizer``) at learning rate 0, so one model can be measured again and again;
with gradient checkpointing it adds the largest block's recomputation in backward
(``RecomputeProbe``).  The memory lesson and the planner both set it beside the estimate
(``compare_breakdowns``).
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from workbench.engine.memory.breakdown import MemoryBreakdown
from workbench.engine.memory.counting import SavedActivations
from workbench.engine.memory.optimizers import OPTIMIZERS
from workbench.engine.memory.probe import measure_train_step
from workbench.util.checks import check_choice


def step_optimizer(name: str, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of ``workbench.engine.memory.OPTIMIZERS``) at learning rate 0.

    It allocates and updates its state in ``step`` as in any training step (the state
    sizes are ``workbench.engine.memory.optimizer_state_estimate``), but no weight moves,
    so one model can be measured again and again.  "adamw-8bit", "adamw-32bit" and the
    paged ones are bitsandbytes' optimizers (on a CPU bitsandbytes falls back from paged
    to ordinary memory, with the same bytes).
    """
    check_choice("optimizer", name, tuple(OPTIMIZERS))
    params = list(params)
    if name not in ("adamw", "adam", "sgd", "sgd-momentum"):
        import bitsandbytes as bnb

        cls = {"adamw-32bit": bnb.optim.AdamW32bit, "adamw-8bit": bnb.optim.AdamW8bit,
               "paged-adamw-32bit": bnb.optim.PagedAdamW32bit, "paged-adamw-8bit": bnb.optim.PagedAdamW8bit}[name]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
            return cls(params, lr=0.0, weight_decay=0.0)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)
    if name == "adam":
        return torch.optim.Adam(params, lr=0.0)
    return torch.optim.SGD(params, lr=0.0, momentum=0.9 if name == "sgd-momentum" else 0.0)


def measure_step(model: nn.Module, batch: Mapping[str, torch.Tensor], optimizer: str = "adamw",
                 seed: int = 0, gradient_checkpointing: bool = False) -> MemoryBreakdown:
    """One training step of ``model`` as it stands, accounted exactly.

    Its ``requires_grad`` flags say what trains and its mode says whether dropout runs;
    ``batch`` (with labels) is on the model's device.  Forward, backward and one step of
    ``step_optimizer(optimizer)`` under ``workbench.engine.memory.measure_train_step``:
    weights, the gradients present after backward, the optimizer's state after its first
    step, the bytes autograd saved for backward, and on CUDA the peak (max allocated
    after a reset).  ``seed`` fixes the dropout masks.  The gradients are cleared
    afterwards and no weight changes (learning rate 0).

    ``gradient_checkpointing``: every block of a transformers model is checkpointed for
    this step (``measure_checkpointed_step``); the activations are then what the forward
    pass saved (each block's input, and what lies outside the blocks) plus the most that
    one block's recomputation saved during backward.

    On a CPU no peak is reported: the only one there is the resident high-water mark of
    this whole process, which keeps what earlier steps and runs in it allocated, so the
    same step would read higher after a full fine-tuning than alone.  A run's own peak
    is what ``train`` measures, in a worker process of its own.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameter: nothing to measure")
    device = trainable[0].device
    model.zero_grad(set_to_none=True)
    opt = step_optimizer(optimizer, trainable)
    probe = RecomputeProbe(model) if gradient_checkpointing else None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
            torch.manual_seed(seed)  # the dropout masks
            measured = measure_train_step(model, opt, batch, device=device)
    finally:
        if probe is not None:
            probe.close()
    if probe is not None:
        if not probe.recomputed:
            raise RuntimeError("gradient checkpointing was on but no block was recomputed in backward")
        measured.activations += max(probe.recomputed)
    model.zero_grad(set_to_none=True)
    if device.type != "cuda":
        measured.peak, measured.peak_kind = None, ""
    return measured


class RecomputeProbe:
    """Checkpoint every block of a transformers model and measure each block's recomputation.

    transformers' blocks call ``self._gradient_checkpointing_func(forward, *args)``; we
    enable it with torch's *reentrant* checkpoint, whose saved inputs pass through
    autograd's saved-tensor hooks (so the forward pass's ``SavedActivations`` counts the
    block inputs; the non-reentrant default keeps the same tensors alive by reference,
    out of the hooks' sight), and wrap the function it calls: when it runs with grad
    enabled it is the recomputation in backward, and a fresh ``SavedActivations`` (block
    input excluded: that memory is the checkpoint's) counts what it saves.  For a frozen
    base (LoRA) the embeddings' output is made to require a gradient
    (``enable_input_require_grads``), as reentrant checkpointing needs and PEFT does.
    ``close()`` turns checkpointing off again.
    """

    def __init__(self, model: nn.Module) -> None:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
        self.model = model
        self.recomputed: list[int] = []
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": True})
        else:  # pragma: no cover - transformers before 5
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        self._input_grads = not model.get_input_embeddings().weight.requires_grad
        if self._input_grads:
            model.enable_input_require_grads()
        self._wrapped = [m for m in model.modules()
                         if getattr(m, "gradient_checkpointing", False) and hasattr(m, "_gradient_checkpointing_func")]
        if not self._wrapped:
            raise ValueError(f"{type(model).__name__} has no checkpointed block")
        for m in self._wrapped:
            m._gradient_checkpointing_func = self._wrap(m._gradient_checkpointing_func)

    def _wrap(self, checkpoint: Any) -> Any:
        def wrapped(function: Any, *args: Any, **kwargs: Any) -> Any:
            def run(*inputs: Any) -> Any:
                if not torch.is_grad_enabled():  # the forward pass (under no_grad): nothing is saved
                    return function(*inputs)
                with SavedActivations(self.model, exclude=[t for t in inputs if isinstance(t, torch.Tensor)]) as saved:
                    out = function(*inputs)
                self.recomputed.append(saved.bytes)
                return out

            return checkpoint(run, *args, **kwargs)

        return wrapped

    def close(self) -> None:
        if self._input_grads:
            self.model.disable_input_require_grads()
        disable = getattr(self.model, "activation_checkpointing_disable", None) or self.model.gradient_checkpointing_disable
        disable()
