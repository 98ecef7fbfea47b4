"""Measuring a step: the peak memory of a device, and the probe that watches a run's first step.

Two kinds of peak (``PEAK_KINDS`` says what each one is):

* on CUDA the allocator's high-water mark (``torch.cuda.max_memory_allocated``): tensors only;
* on CPU the process's peak resident memory (VmHWM, read by ``workbench.util.procfs``):
  the interpreter, libraries and every temporary included, so it is larger than the
  four tensor terms and is not added into them.

``MemoryProbe`` measures a training run from outside its loop, through hooks;
``measure_train_step`` runs one step by hand and accounts for it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from workbench.engine.memory.breakdown import MemoryBreakdown
from workbench.engine.memory.counting import (
    SavedActivations,
    gradient_bytes,
    optimizer_state_bytes,
    parameter_bytes,
)
from workbench.engine.memory.estimate import estimate_memory
from workbench.util import procfs


def process_peak_bytes() -> int | None:
    """This process's peak resident memory (``VmHWM`` in /proc/self/status), or None.

    VmHWM ("high water mark") is the largest RSS the process has had, in kB; we return
    bytes.  Linux only: elsewhere, or if the file cannot be read, None.  (Not
    ``resource.getrusage().ru_maxrss``: a child process inherits its parent's value.)
    """
    return procfs.peak_resident_bytes()


def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def reset_peak_memory(device: torch.device | str | None = None) -> bool:
    """Start a fresh peak measurement; True if the peak was reset.

    CUDA: ``torch.cuda.reset_peak_memory_stats``.  CPU (Linux): writing "5" to
    /proc/self/clear_refs sets VmHWM back to the current RSS (Linux >= 4.0); where that
    is not allowed the process peak keeps its old value and we return False, so a CPU
    peak then means "since the process started" (run measurements in a fresh process).
    """
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return procfs.reset_peak_resident()


# What a measured peak is, by ``MemoryBreakdown.peak_kind``: figures and tables say it.
PEAK_CUDA = "cuda max allocated"
PEAK_OWN_PROCESS = "own process VmHWM"
PEAK_PROCESS = "process VmHWM"
PEAK_KINDS: dict[str, str] = {
    PEAK_CUDA: "the most memory PyTorch's CUDA tensors held at once during the run "
               "(torch.cuda.max_memory_allocated after a reset): temporaries included, the CUDA context not",
    PEAK_OWN_PROCESS: "the highest resident memory (VmHWM) of the run's own worker process, from its first step "
                      "to its end: the Python interpreter and libraries, the model, the data, and every tensor and "
                      "temporary of training; nothing that ran before it",
    PEAK_PROCESS: "the highest resident memory (VmHWM) of the calling process during the run: it includes whatever "
                  "the process already held (models kept by earlier runs, memory its allocator kept after freeing "
                  "it), so it depends on what ran before",
}


def describe_peak(kind: str) -> str:
    """One sentence saying what a peak of this kind measures (for a figure's or a table's note)."""
    return PEAK_KINDS.get(kind, f"a peak of kind {kind!r}" if kind else "a peak of unknown kind")


def peak_memory(device: torch.device | str | None = None, own_process: bool = False) -> tuple[int | None, str]:
    """(peak bytes, what kind of peak) for the device a model trains on (see ``PEAK_KINDS``).

    CUDA: ``torch.cuda.max_memory_allocated`` -> "cuda max allocated" (tensors only).
    CPU: ``process_peak_bytes()`` -> "own process VmHWM" when this process exists for
    the one run (``own_process``: ``workbench.engine.worker``), else "process VmHWM";
    (None, "unavailable") off Linux.
    """
    if _is_cuda(device):
        return int(torch.cuda.max_memory_allocated(device)), PEAK_CUDA
    peak = process_peak_bytes()
    if peak is None:
        return None, "unavailable"
    return peak, PEAK_OWN_PROCESS if own_process else PEAK_PROCESS


class MemoryProbe:
    """Measures a training run's memory from outside its loop: the loop has no line for it.

    Made just before the first step, it starts a fresh peak (``reset_peak_memory``) and
    watches the first training step through hooks, then takes them away:

    * the model's forward pre-hook: the analytic estimate for this batch's shape (with
      dynamic padding the first batch is as long as its longest sentence, not
      ``max_length``), then ``SavedActivations`` opens;
    * the model's forward hook: ``SavedActivations`` closes: the activations;
    * the optimizer's step pre-hook: the gradients present after backward (and clipping,
      which changes values, not sizes);
    * the optimizer's step post-hook: the optimizer state AdamW has just created.

    ``close()`` reads the peak and returns the breakdown; ``estimate`` holds the estimate
    (None where the model has no formula, with the reason in ``notes``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 own_process: bool = False) -> None:
        self.model, self.device, self.own_process = model, device, own_process
        self.memory = MemoryBreakdown(weights=parameter_bytes(model))
        self.estimate: MemoryBreakdown | None = None
        self.notes: dict[str, Any] = {}  # estimate_shape, or estimate_note: for the run's environment record
        self._saved: SavedActivations | None = None
        reset_peak_memory(device)  # this run's peak, not the session's
        self._forward_hooks = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        self._step_hooks = [
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
        ]

    def _before_forward(self, model: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            self.estimate = self._estimate(*ids.shape)
        self._saved = SavedActivations(model)
        self._saved.__enter__()

    def _estimate(self, batch_size: int, seq_len: int) -> MemoryBreakdown | None:
        try:
            est = estimate_memory(self.model, batch_size=batch_size, seq_len=seq_len, device=self.device.type)
        except (ValueError, NotImplementedError, TypeError) as e:
            self.notes["estimate_note"] = str(e)
            return None
        self.notes["estimate_shape"] = [batch_size, seq_len]
        return est

    def _after_forward(self, model: nn.Module, args: tuple, output: Any) -> None:
        self._close_saved()
        for handle in self._forward_hooks:
            handle.remove()

    def _close_saved(self) -> None:
        if self._saved is not None:
            self._saved.__exit__(None, None, None)
            self.memory.activations = self._saved.bytes
            self._saved = None

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.memory.gradients = gradient_bytes(self.model)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        self.memory.optimizer = optimizer_state_bytes(optimizer)
        for handle in self._step_hooks:
            handle.remove()

    def close(self) -> MemoryBreakdown:
        """Take the hooks away (if the first step never finished) and read the peak."""
        self._close_saved()
        for handle in self._forward_hooks + self._step_hooks:
            handle.remove()
        self.memory.peak, self.memory.peak_kind = peak_memory(self.device, own_process=self.own_process)
        return self.memory


def measure_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Any] | torch.Tensor,
    loss_fn: Callable[[Any], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> MemoryBreakdown:
    """Run one training step and account for its memory exactly.

    forward inside ``SavedActivations`` -> ``backward`` -> read gradient bytes ->
    ``optimizer.step()`` -> read optimizer-state bytes -> read the peak.  The loss is
    ``loss_fn(output)`` when given, else ``output.loss`` (a Hugging Face model called
    with ``labels``).  Gradients are left in place (the caller zeroes them).  Note that
    AdamW creates its state in the first ``step``, so a first step measures it fully.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else None
    reset_peak_memory(device)
    with SavedActivations(model) as saved:
        output = model(**batch) if isinstance(batch, Mapping) else model(batch)
    if loss_fn is not None:
        loss = loss_fn(output)
    else:
        loss = getattr(output, "loss", None)
        if loss is None:
            raise ValueError(
                "the model output has no .loss: pass labels in the batch or give loss_fn=callable(output)"
            )
    loss.backward()
    grads = gradient_bytes(model)
    optimizer.step()
    peak, kind = peak_memory(device)
    return MemoryBreakdown(
        weights=parameter_bytes(model),
        gradients=grads,
        optimizer=optimizer_state_bytes(optimizer),
        activations=saved.bytes,
        peak=peak,
        peak_kind=kind,
    )

