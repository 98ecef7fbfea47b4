"""Planning: parameters and training memory of LoRA and of full fine-tuning, from a config alone.

``plan("gpt3-175b", rank=8, targets=("query", "value"))`` builds the model on the meta
device (``meta.build_meta_model``), counts it, injects LoRA with ``add_lora`` on the meta
model itself (the adapters are created on the base weight's device: meta), counts again,
and estimates the memory of one training step for each side (``_side``), with s bytes per
element of ``dtype``:

    weights     = total * s   (a quantized base: the block Linear weights at the bytes of
                               ``workbench.lora.quantize``)
    gradients   = trainable * s                       (a frozen weight has no .grad)
    optimizer   = ``workbench.engine.memory.optimizer_state_estimate``
    activations = ``workbench.engine.memory.estimate_activation_bytes``, or unknown for an
                  architecture without a formula (the plan says so)
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from workbench.engine.memory import (
    OPTIMIZERS,
    MemoryBreakdown,
    estimate_activation_bytes,
    optimizer_state_estimate,
)
from workbench.lessons.planner.meta import (
    DTYPE_LABEL,
    TASKS,
    build_meta_model,
    parse_dtype,
    quantized_linears,
    resolve_targets,
)
from workbench.lessons.planner.plans import MethodPlan, Plan, PlanSettings
from workbench.lessons.planner.shipped import load_config, natural_task
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import add_lora
from workbench.lora.layer import LoRALayer
from workbench.lora.quantize import NF4_LAYER_TABLE_BYTES, check_quantize, quantized_bytes_per_weight
from workbench.lora.paths import head_names
from workbench.util.checks import check_choice, check_positive_int

__all__ = ["plan"]


def _quantized_weight_bytes(linears: Mapping[str, tuple[int, int]], quantize: str) -> int:
    """sum over the quantized weights of numel * ``quantized_bytes_per_weight`` (codes and block
    constants), plus for NF4 the code books every layer keeps (``NF4_LAYER_TABLE_BYTES``, 1,092)."""
    per_weight = sum(n * quantized_bytes_per_weight(quantize, fan_in) for n, fan_in in linears.values())
    tables = NF4_LAYER_TABLE_BYTES * len(linears) if quantize == "nf4" else 0
    return round(per_weight) + tables


def _side(model: nn.Module, method: str, s: torch.dtype, optimizer: str, batch_size: int, seq_len: int,
          *, dropout: bool, device: str, padded: bool, gradient_checkpointing: bool = False,
          quantize: str | None = None, linears: Mapping[str, tuple[int, int]] | None = None,
          ) -> tuple[MethodPlan, str | None]:
    """Count and estimate the model as it stands (its requires_grad flags say what trains).

    ``quantize`` with ``linears`` (``quantized_linears`` of the base): those frozen weights
    cost ``quantized_bytes_per_weight`` instead of ``s`` bytes each."""
    params = list(model.parameters())  # a tied weight appears once
    train = [p for p in params if p.requires_grad]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in train)
    weights = sum(p.numel() * p.element_size() for p in params)
    q_params = q_bytes = 0
    if quantize is not None:
        q_params = sum(n for n, _ in linears.values())
        q_bytes = _quantized_weight_bytes(linears, quantize)
        weights += q_bytes - q_params * s.itemsize
    grads = sum(p.numel() * p.element_size() for p in train)
    opt = optimizer_state_estimate(optimizer, [p.numel() for p in train], s.itemsize)
    adapters = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and ".lora_" in name)
    heads = head_names(model)
    head = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters() if p.requires_grad)
    note = None
    try:
        items = estimate_activation_bytes(model, batch_size, seq_len, dropout=dropout, device=device,
                                          dtype=s, padded=padded, gradient_checkpointing=gradient_checkpointing)
        known = True
    except ValueError as e:  # no formula for this architecture (inputs were checked before)
        items, known, note = {}, False, str(e)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALayer)]
    mem = MemoryBreakdown(weights=weights, gradients=grads, optimizer=opt,
                          activations=sum(items.values()), peak=None, peak_kind="estimate")
    return MethodPlan(method=method, trainable=trainable, total=total, memory=mem, activations_known=known,
                      adapter_params=adapters, head_params=head if method == "lora" else 0,
                      trainable_tensors=len(train), bytes_per_element=s.itemsize, wrapped=wrapped,
                      activation_items=items, quantized_params=q_params, quantized_bytes=q_bytes,
                      quantized_layers=len(linears) if quantize is not None else 0), note


def plan(
    config: Any,
    lora: LoRAConfig | None = None,
    /,
    *,
    method: str = "lora",
    batch_size: int = 1,
    seq_len: int = 512,
    dtype: torch.dtype | str | None = None,
    optimizer: str | None = None,
    task: str | None = None,
    num_labels: int = 2,
    device: str = "cpu",
    dropout: bool = True,
    padded: bool = True,
    name: str | None = None,
    quantize: str | None = None,
    gradient_checkpointing: bool = False,
    **lora_settings: Any,
) -> Plan:
    """Parameters and training memory of LoRA and of full fine-tuning, from a config alone.

    ``config``: a ``transformers`` config, a shipped name (``shipped_architectures()``), a
    local folder or config file, or a Hub name (needs a network).  The LoRA settings come
    as a ``LoRAConfig`` or as its fields by name (``plan("gpt2", rank=8, alpha=16,
    targets=("query", "value"))``; LoRA's own dropout only through ``LoRAConfig(dropout=...)``,
    since ``dropout`` here is the base model's).  The roles "query", "key", "value" in the
    targets are mapped to this architecture's names (``q_proj``, GPT-2's fused ``c_attn``).
    ``method`` picks which side ``.trainable``/``.total``/``.memory`` report; both are
    always computed.  ``task``: None for the architecture's natural one (classification
    for encoders, causal-lm for decoders), or one of ``TASKS``.  ``dtype``: the weights,
    gradients and activations are in that dtype (the optimizer state as ``optimizer``
    says).  Default (None): bf16 when ``quantize`` is given (QLoRA computes in bf16 on its
    quantized base), fp32 otherwise.  ``device``, ``dropout``, ``padded``: the
    activation estimate's assumptions (``workbench.engine.memory.estimate_memory``).
    ``name`` labels the plan (default: the shipped name, the Hub name, or the config's
    model type).

    ``optimizer``: one of ``workbench.engine.memory.OPTIMIZERS``: torch's "adamw" keeps its
    moments in the parameters' dtype; bitsandbytes' "adamw-32bit" keeps them in float32
    (the usual mixed-precision accounting), "adamw-8bit" in blockwise 8 bits, and the
    "paged-" ones have the same bytes (counted on the GPU; they can spill to CPU memory).
    Default (None): "adamw-32bit" for a 16-bit plan (bf16/fp16), because 16-bit training
    keeps AdamW's moments in float32 (2 + 2 + 8 = 12 bytes per trained parameter for weight,
    gradient and moments, the QLoRA paper's "16-bit finetuning" count); "adamw" for fp32,
    where both keep float32 moments (torch's adds a 4-byte step counter per tensor).  Pass
    ``optimizer="adamw"`` for torch's AdamW on 16-bit parameters (moments in 16 bits).
    ``Plan.assumptions()`` says which settings were defaulted, and to what.
    ``quantize``: None, "nf4" or "int8": QLoRA's frozen base.  The frozen ``nn.Linear``
    weights of the transformer blocks (``quantized_linears``) cost
    ``workbench.lora.quantize.quantized_bytes_per_weight`` bytes each (NF4 with double
    quantization: 4.127 bits; int8: 8 + 32 / in_features bits); embeddings, norms, biases,
    the output layer and the adapters stay in ``dtype``.  Applies to the LoRA side only:
    full fine-tuning cannot train quantized weights (``method="full"`` with ``quantize`` is
    refused; the ``full`` side of a quantized plan is unquantized).
    ``gradient_checkpointing``: every block checkpointed; activations per
    ``workbench.engine.memory.checkpointed_activations``.  ``Plan.breakdown()`` and
    ``Plan.assumptions()`` state the result and what it assumes.
    """
    lora = LoRAConfig.build(lora, **lora_settings)
    check_choice("method", method, ("lora", "full"))
    for what, value in (("batch_size", batch_size), ("seq_len", seq_len), ("num_labels", num_labels)):
        check_positive_int(what, value)
    if optimizer is not None:
        check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
    quantize = check_quantize(quantize)
    if quantize is not None and method == "full":
        raise ValueError(f"quantize={quantize!r} needs method='lora': full fine-tuning trains every weight, and "
                         "quantized weights cannot be trained (QLoRA trains LoRA adapters on a frozen quantized "
                         "base); plan full fine-tuning with quantize=None")
    if not isinstance(gradient_checkpointing, bool):
        raise ValueError(f"gradient_checkpointing must be True or False, not {gradient_checkpointing!r}")
    if task is not None:
        check_choice("task", task, TASKS)
    check_choice("device", device, ("cpu", "cuda"))
    s, optimizer, defaulted = _resolve_defaults(dtype, optimizer, quantize)
    cfg, label, natural = load_config(config)
    label = name or label
    task = task or natural or natural_task(cfg)
    if task == "classification":
        cfg.num_labels = num_labels  # cfg is the plan's own copy
    model = build_meta_model(cfg, task, num_labels, s)
    notes: list[str] = []
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if isinstance(limit, int) and seq_len > limit:
        notes.append(f"seq_len {seq_len} is longer than the model's {limit} positions: the shapes are "
                     "planned as asked, but the real model cannot take such sequences")

    for p in model.parameters():
        p.requires_grad_(True)
    kw = dict(dropout=dropout, device=device, padded=padded, gradient_checkpointing=gradient_checkpointing)
    full, full_note = _side(model, "full", s, optimizer, batch_size, seq_len, **kw)
    linears = quantized_linears(model) if quantize is not None else None
    if quantize is not None and not linears:
        raise ValueError(f"{label} has no nn.Linear layers inside its transformer blocks to quantize (GPT-2 "
                         "style models use Conv1D, which bitsandbytes does not quantize)")

    resolved, target_notes = resolve_targets(model, lora.targets)
    notes += target_notes
    lora = lora.replace(targets=resolved)
    add_lora(model, lora)
    lora_side, lora_note = _side(model, "lora", s, optimizer, batch_size, seq_len, quantize=quantize,
                                 linears=linears, **kw)
    for note in dict.fromkeys(n for n in (full_note, lora_note) if n):  # each message once
        notes.append(f"activations not estimated: {note}")
    if not (lora_side.activations_known and full.activations_known):
        notes.append("weights, gradients and optimizer state are exact closed forms for any architecture; "
                     "workbench.engine.memory has activation formulas for BERT-style encoders, GPT-2-style decoders "
                     "and Llama-style decoders (Llama, Qwen2, Mistral)")
    settings = PlanSettings(
        architecture=label, model_class=type(model).__name__, task=task, method=method, lora=lora,
        batch_size=batch_size, seq_len=seq_len, dtype=DTYPE_LABEL[s], optimizer=optimizer,
        num_labels=num_labels, device=device, dropout=dropout, padded=padded, quantize=quantize,
        gradient_checkpointing=gradient_checkpointing, defaulted=defaulted,
    )
    return Plan(settings=settings, lora=lora_side, full=full, config=cfg, notes=notes)


def _resolve_defaults(dtype: Any, optimizer: str | None, quantize: str | None
                      ) -> tuple[torch.dtype, str, tuple[str, ...]]:
    """(dtype, optimizer, the names of those that were defaulted), as ``plan`` documents:
    dtype None -> bf16 with ``quantize`` (QLoRA's compute dtype), else fp32; optimizer None ->
    "adamw-32bit" for a 16-bit dtype (float32 moments, as mixed precision keeps them), else
    "adamw"."""
    defaulted: list[str] = []
    if dtype is None:
        s = torch.bfloat16 if quantize is not None else torch.float32
        defaulted.append("dtype")
    else:
        s = parse_dtype(dtype)
    if optimizer is None:
        optimizer = "adamw-32bit" if s.itemsize == 2 else "adamw"
        defaulted.append("optimizer")
    return s, optimizer, tuple(defaulted)

