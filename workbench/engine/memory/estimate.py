"""Training memory estimated from a model's config and shapes alone, without running it.

A closed formula for the weights, gradients and optimizer state, and a forward pass
replayed on paper for the activations (``forward_passes``), so it works on a model
built on PyTorch's ``meta`` device (no weights).  ``SavedActivations`` and
``measure_train_step`` check it against real steps in the tests.
"""

from __future__ import annotations

import re
from typing import Callable, Collection, Iterable, Mapping

import torch
from torch import nn

from workbench.engine.memory.breakdown import MemoryBreakdown
from workbench.engine.memory.forward_passes import FORWARD_PASSES
from workbench.engine.memory.optimizers import (
    OPTIMIZER_STATES,
    OPTIMIZERS,
    STEP_COUNTER_BYTES,
    optimizer_state_estimate,
)
from workbench.engine.memory.tape import DEVICES, LinearInfo, Tape, config_value, find_blocks, linear_info
from workbench.lora.quantize import quantization_constant_bytes
from workbench.util.checks import check_choice, check_positive_int
from workbench.util.units import FLOAT32_BYTES


def _trainable_predicate(
    model: nn.Module, trainable: Collection[str] | Callable[[str, nn.Parameter], bool] | None
) -> Callable[[nn.Parameter], bool]:
    named = list(model.named_parameters())
    if trainable is None:
        ids = {id(p) for _, p in named if p.requires_grad}
    elif callable(trainable):
        ids = {id(p) for n, p in named if trainable(n, p)}
    else:
        if isinstance(trainable, str):
            raise TypeError("trainable must be a collection of parameter names, a callable or None, not a str")
        wanted = set(trainable)
        known = {n for n, _ in named}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(
                f"trainable names not among model.named_parameters(): {unknown[:5]}"
                f"{' ...' if len(unknown) > 5 else ''} (e.g. {sorted(known)[:3]})"
            )
        ids = {id(p) for n, p in named if n in wanted}
    return lambda p: id(p) in ids


def estimate_activation_bytes(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    *,
    dropout: bool = True,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    trainable: Collection[str] | Callable[[str, nn.Parameter], bool] | None = None,
    padded: bool = True,
    gradient_checkpointing: bool = False,
) -> dict[str, int]:
    """Bytes saved for backward by one forward pass, itemised: {label: bytes}.

    See ``estimate_memory`` for the assumptions; the labels name the tensors (e.g.
    ``layer3.act_in``: the FFN activation's input in block 3) so a notebook can show
    where the memory goes.  Reads only shapes and ``model.config``: works on ``meta``.
    ``gradient_checkpointing``: see ``checkpointed_activations``.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    check_choice("device", device, DEVICES)
    if not hasattr(model, "config"):
        raise ValueError("estimate_activation_bytes needs a transformers model (with .config)")
    is_trainable = _trainable_predicate(model, trainable)
    elem = _activation_dtype(model, dtype).itemsize
    tape = Tape(elem, device, dropout, padded)
    modules = dict(model.named_modules())

    def info(path: str) -> LinearInfo:
        if path not in modules:
            raise ValueError(f"expected a module {path!r} in {type(model).__name__}")
        return linear_info(modules[path], is_trainable)

    def trainable_under(path: str) -> bool:
        mod = modules.get(path)
        return mod is not None and any(is_trainable(p) for p in mod.parameters())

    names = list(modules)
    for pattern, builder in FORWARD_PASSES:
        if any(re.match(pattern, n) for n in names):
            builder(model, tape, batch_size, seq_len, device, info, trainable_under)
            if not gradient_checkpointing:
                return tape.items
            _, layers = find_blocks(model, pattern)
            hidden = config_value(model.config, "hidden_size", "n_embd")
            return checkpointed_activations(tape.items, layers, batch_size * seq_len * hidden * elem)
    raise ValueError(
        f"no activation formula for {type(model).__name__} (model_type "
        f"{getattr(model.config, 'model_type', '?')!r}): supported are BERT-style encoders "
        "(bert, roberta: modules encoder.layer.N.attention.self.query), GPT-2-style "
        "decoders (gpt2: modules h.N.attn.c_attn) and Llama-style decoders (llama, qwen2, "
        "mistral: modules layers.N.self_attn.q_proj with a gated mlp)"
    )


def checkpointed_activations(items: Mapping[str, int], layers: Iterable[int], input_bytes: int) -> dict[str, int]:
    """The activation items of a step under gradient checkpointing (one checkpoint per block).

    transformers checkpoints each block (``model.gradient_checkpointing_enable()``, with
    torch's reentrant ``checkpoint``): the forward pass runs the blocks without saving
    anything inside them and keeps only each block's input (B x S x H in the model's dtype);
    backward then re-runs one block at a time, with its input requiring a gradient, and
    holds that block's activations until it is done.  So

        activations = L x T*H*e  (the checkpoint inputs, ``layerN.input``)
                      + what is saved outside the blocks (embeddings, final norm, head, loss)
                      + the largest block's own activations, its input excluded
                        (``recompute.*``: the block being recomputed; its input is the checkpoint's)

    ``items``: the no-checkpointing tape (``estimate_activation_bytes``); its blocks are
    the labels ``layerN.*``.  The largest block is an interior one when adapters sit in
    every block (the lowest block saves less without checkpointing; recomputed, it saves
    as much as the others once its input requires a gradient, as
    ``enable_input_require_grads`` makes it for LoRA).  A peak bound in the same sense as
    the rest: gradients in flight during backward are not in it.
    """
    layers = list(layers)
    check_positive_int("input_bytes", input_bytes)
    if not layers:
        raise ValueError("checkpointed_activations needs the model's block indices (none given)")
    blocks = {i: {k: v for k, v in items.items() if k.startswith(f"layer{i}.")} for i in layers}
    in_blocks = {k for b in blocks.values() for k in b}
    out = {k: v for k, v in items.items() if k not in in_blocks}
    for i in layers:
        out[f"layer{i}.input"] = int(input_bytes)
    own = {i: {k: v for k, v in b.items() if k != f"layer{i}.input"} for i, b in blocks.items()}
    worst = max(layers, key=lambda i: sum(own[i].values()))
    out.update({f"recompute.{k}": v for k, v in own[worst].items()})
    return out


def _activation_dtype(model: nn.Module, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype (e.g. torch.bfloat16), not {dtype!r}")
        return dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def estimate_memory(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    optimizer: str = "adamw",
    dtype: torch.dtype | None = None,
    trainable: Collection[str] | Callable[[str, nn.Parameter], bool] | None = None,
    *,
    dropout: bool = True,
    device: str = "cpu",
    padded: bool = True,
    gradient_checkpointing: bool = False,
) -> MemoryBreakdown:
    """Training memory predicted from the model's shapes and config, without running it.

    Needs no real weights: a model built under ``with torch.device("meta")`` works.

    * weights     = sum over parameters of numel * s   (s = bytes per element of ``dtype``,
                    default the parameters' own dtype)
    * gradients   = trainable numel * s
    * optimizer   = k * trainable numel * s  +  4 bytes * (number of trainable tensors)
                    for Adam/AdamW (k = 2: exp_avg and exp_avg_sq; the 4 bytes are the
                    float32 ``step`` counter PyTorch keeps per parameter, counted exactly
                    as ``optimizer_state_bytes`` counts it); k = 1 for "sgd-momentum",
                    k = 0 for "sgd".
    * activations = ``estimate_activation_bytes``: the forward pass replayed on paper.

    ``trainable``: None uses the parameters' ``requires_grad`` flags (inject LoRA and
    freeze the base first, on the meta model too); or give the parameter names, or a
    predicate ``f(name, param) -> bool``.

    Activations, per transformer block (T = batch x seq tokens, H hidden, I FFN width,
    h heads, s bytes per element, in units of T*H*s, T*I*s and B*h*S*S*s):

    * full fine-tuning stores every block's activations.  On CPU with BERT's sdpa
      attention and dropout on (PyTorch's math attention: dropout needs the S x S
      matrix): 10 T*H (block input, Q, K, V, context, LayerNorm-1 input and output,
      LayerNorm-2 input, two dropout masks) + 2 T*I (GELU input and output)
      + 3 B*h*S*S (softmax output, its dropout mask, the dropped probabilities).
      With dropout off the fused (flash) kernel runs instead: no S x S term, no masks.
    * LoRA (frozen base): nothing below the lowest block holding an adapter, since no
      tensor there requires a gradient; from that block upward autograd must
      backpropagate through every block, so each saves its LayerNorm inputs, GELU input,
      dropout masks and attention internals, but a *frozen* linear layer saves no input
      (dx needs only W).  The adapted layers save their input x (shared by q, k and v)
      and A x (T x r).  For q,v adapters: 8 T*H + 1 T*I + 3 B*h*S*S per block (CPU,
      dropout on; one T*H fewer in the lowest adapted block, where K needs no
      gradient so Q is not kept), about three quarters of full fine-tuning.
    * head only: the pooler's tanh output, the classifier's input and the loss:
      a few B x H tensors.

    Assumptions (each one moves the number; all were checked against
    ``SavedActivations`` on torch 2.13 CPU):
    * ``dropout``: the model trains in ``train()`` mode with the dropout probabilities of
      its config (a mask per dropout layer, and the S x S attention-probability mask);
      ``dropout=False`` models training with every dropout p = 0.
    * ``device``: which kernels run.  "cpu": masks are float tensors (s bytes each); sdpa
      with attention dropout falls back to the math path.  "cuda": masks are bool
      (1 byte) and sdpa always uses a fused kernel (which handles dropout itself) -
      this follows PyTorch's kernels and has not been measured here.
    * ``model.config._attn_implementation``: "eager" stores the S x S probabilities;
      "sdpa" as above; anything else is treated as a fused kernel.
    * one batch of ``batch_size`` x ``seq_len`` tokens, padding included; input_ids
      and attention_mask only.  ``padded``: some sequence in the batch is padded, so
      transformers passes an attention mask, and a fused kernel keeps a B x S x S copy
      of it per block (with no padding at all the mask is dropped).  A few scalars are
      not counted.
    * ``dtype`` means training wholly in that dtype; autocast mixed precision (fp32
      weights, bf16 matmuls) is not modelled.
    * ``optimizer``: any of ``OPTIMIZERS`` (bitsandbytes' 32-bit, 8-bit and paged AdamW
      too: ``optimizer_state_estimate``).
    * ``gradient_checkpointing``: every block checkpointed, as transformers'
      ``gradient_checkpointing_enable()`` does (``checkpointed_activations``).
    """
    check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
    is_trainable = _trainable_predicate(model, trainable)
    size = (lambda p: dtype.itemsize) if dtype is not None else (lambda p: p.element_size())
    if dtype is not None:
        _activation_dtype(model, dtype)  # validates it
    params = list(model.parameters())
    train = [p for p in params if is_trainable(p)]
    # A quantized base's codes (uint8/int8) keep their own size whatever ``dtype`` says, and
    # their constants are added: the weights as they are stored (``parameter_bytes``).
    weights = (sum(p.numel() * (size(p) if p.is_floating_point() else p.element_size()) for p in params)
               + quantization_constant_bytes(model))
    grads = sum(p.numel() * size(p) for p in train)
    if optimizer in OPTIMIZER_STATES:  # torch: states in each parameter's own dtype
        k = OPTIMIZER_STATES[optimizer]
        opt = k * grads + (STEP_COUNTER_BYTES * len(train) if optimizer in ("adam", "adamw") else 0)
    else:
        opt = optimizer_state_estimate(optimizer, [p.numel() for p in train], FLOAT32_BYTES)  # bitsandbytes
    items = estimate_activation_bytes(
        model, batch_size, seq_len, dropout=dropout, device=device, dtype=dtype, trainable=trainable,
        padded=padded, gradient_checkpointing=gradient_checkpointing,
    )
    return MemoryBreakdown(
        weights=weights,
        gradients=grads,
        optimizer=opt,
        activations=sum(items.values()),
        peak=None,
        peak_kind="estimate",
    )
