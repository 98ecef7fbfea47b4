"""A paper autograd tape: the operations of a forward pass, each saving what its backward needs.

The activation estimate replays a model's forward pass on paper.  For each operation
we know (from PyTorch's autograd formulas) which tensors its backward needs, and that
it only saves them when some input or weight requires a gradient.  Whether a tensor
requires a gradient is the crux of LoRA's activation savings: below the lowest
trainable parameter nothing requires a gradient, so nothing is saved there; above
it, every nonlinearity, LayerNorm, dropout and attention softmax on the path back
to the loss must save its inputs, trainable or not; a linear layer additionally
saves its input only when its own weight (or a LoRA adapter on it) trains.

Here are the operations (``Tape.linear``, ``Tape.layer_norm``, ``Tape.drop``,
``attention``, ``rms_norm``, ``ffn_activation``) and the helpers that read a model's
config; ``forward_passes`` strings them into one replay per architecture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from workbench.util.units import FLOAT32_BYTES

# Tensors of the intermediate size that an activation function saves for backward,
# as labels: "in" (its input), "out" (its output, which the next linear layer may also
# save: counted once), or "tmp" (a temporary of the same size).  Measured on torch 2.13.
ACTIVATION_SAVES: dict[str, tuple[str, ...]] = {
    "gelu": ("in",),
    "gelu_pytorch_tanh": ("in",),
    "relu": ("out",),
    "silu": ("in",),
    "swish": ("in",),
    "gelu_new": ("in", "tmp", "tmp", "tmp"),  # 0.5 x (1 + tanh(c (x + 0.044715 x^3))) in Python ops
}

DEVICES = ("cpu", "cuda")  # the kernels an estimate follows (``estimate_memory``'s ``device``)


@dataclass
class _Adapter:
    rank: int
    a_trainable: bool
    b_trainable: bool
    dropout: float


@dataclass
class LinearInfo:
    """What the estimate needs to know about one (possibly LoRA-wrapped) linear layer."""

    weight_trainable: bool  # its input is saved for dW = dY^T X
    bias_trainable: bool
    adapters: list[_Adapter]

    @property
    def any_trainable(self) -> bool:
        return self.weight_trainable or self.bias_trainable or bool(self.adapters)


def linear_info(module: nn.Module, is_trainable: Callable[[nn.Parameter], bool]) -> LinearInfo:
    """Read a Linear/Conv1D, our LoRALayer or a PEFT LoRA layer (also PEFT's
    modules_to_save wrapper): which base parameters train, and its trainable adapters."""
    params = dict(module.named_parameters())
    modules = dict(module.named_modules())
    weight = bias = False
    adapters: list[_Adapter] = []
    for name, p in params.items():
        if "lora_" in name:
            continue
        if name.endswith("weight"):
            weight = weight or is_trainable(p)
        elif name.endswith("bias"):
            bias = bias or is_trainable(p)
    for name, p in params.items():
        if "lora_A" not in name or not name.endswith("weight"):
            continue
        before, after = name.split("lora_A", 1)
        b = params.get(before + "lora_B" + after)
        a_tr, b_tr = is_trainable(p), b is not None and is_trainable(b)
        if not (a_tr or b_tr):
            continue  # a frozen adapter saves nothing: its backward needs only its weights
        drop = modules.get(before + "lora_dropout" + after[: -len(".weight")])
        p_drop = drop.p if isinstance(drop, nn.Dropout) else 0.0
        adapters.append(_Adapter(int(p.shape[0]), a_tr, b_tr, float(p_drop)))
    return LinearInfo(weight, bias, adapters)


class Tape:
    """A paper autograd tape: labelled saved tensors, each label counted once.

    Labels play the role of storages in ``SavedActivations``: two operations saving the
    same tensor (the shared input of query, key and value, say) add one entry."""

    def __init__(self, elem: int, device: str, dropout: bool, padded: bool) -> None:
        self.items: dict[str, int] = {}
        self.device = device
        self.padded = padded  # an attention mask is passed (the batch has padding)
        self.e = elem  # bytes per activation element
        # A dropout mask is a float tensor of the input's dtype on CPU (x * mask), and a
        # bool tensor (1 byte) in CUDA's fused dropout kernel.
        self.m = elem if device == "cpu" else 1  # bytes per dropout-mask element
        self.dropout = dropout

    def save(self, label: str, nbytes: int) -> None:
        self.items.setdefault(label, int(nbytes))

    def linear(self, info: LinearInfo, x: str, x_numel: int, x_grad: bool, rows: int,
               name: str, x_storage_bytes: int | None = None) -> bool:
        """y = x W^T + b (+ s B A x).  Returns whether y requires grad.

        dW needs x; db needs nothing; dx needs only W (a parameter, not counted).  A LoRA
        adapter saves x for dA (or its dropout's output, plus the mask when x needs a
        gradient) and A x (``rows`` x r) for dB."""
        x_bytes = x_storage_bytes if x_storage_bytes is not None else x_numel * self.e
        if info.weight_trainable:
            self.save(x, x_bytes)
        for k, ad in enumerate(info.adapters):
            a_input = x
            if ad.dropout > 0 and self.dropout:
                a_input, x_bytes_a = f"{name}.lora{k}.dropout_out", x_numel * self.e
                if x_grad:
                    self.save(f"{name}.lora{k}.dropout_mask", x_numel * self.m)
            else:
                x_bytes_a = x_bytes
            if ad.a_trainable:
                self.save(a_input, x_bytes_a)
            if ad.b_trainable:
                self.save(f"{name}.lora{k}.Ax", rows * ad.rank * self.e)
        return x_grad or info.any_trainable

    def drop(self, p: float, numel: int, x_grad: bool, name: str) -> None:
        """Dropout in train mode saves its mask (dX = dY * mask) when x needs a gradient."""
        if self.dropout and p > 0 and x_grad:
            self.save(f"{name}.mask", numel * self.m)

    def layer_norm(self, x: str, tokens: int, width: int, x_grad: bool, trainable: bool, name: str) -> bool:
        """LayerNorm saves its input and the per-token mean and 1/std."""
        if x_grad or trainable:
            self.save(x, tokens * width * self.e)
            self.save(f"{name}.stats", 2 * tokens * self.e)
        return x_grad or trainable


def attention(tape: Tape, *, path: str, name: str, B: int, S: int, H: int, heads: int,
              q: tuple[str, int], k: tuple[str, int], v: tuple[str, int],
              gq: bool, gk: bool, gv: bool, p_drop: float, ctx: str) -> bool:
    """softmax(Q K^T / sqrt(d) + mask) V for all heads; returns whether the output needs grad.

    ``q``, ``k``, ``v`` are (storage label, storage bytes) of the tensors handed to the
    kernel.  Paths:
    * "eager" (and PyTorch's sdpa *math* fallback, taken on CPU when attention dropout
      is on): Q is saved if K needs a gradient (dK = dS^T Q) and vice versa; V and the
      softmax output P if Q or K need one; the dropout mask (B x heads x S x S) too;
      the dropped P if V needs one (dV = P^T dO).  The S x S terms are what grows
      quadratically with sequence length.  Both paths hand batched matmuls copies of
      the per-head views (reshaping a transposed view copies it; the math path also
      scales Q and K), so each of Q, K, V is a fresh B x S x H tensor.  On CPU the math
      path computes in float32 for 16-bit inputs, so there these tensors and the S x S
      ones take 4 bytes per element.
    * "fused" (flash / memory-efficient kernels: CPU sdpa without dropout, CUDA sdpa):
      Q, K, V, the output and the log-sum-exp (B x heads x S, float32), no S x S matrix;
      the kernel recomputes P in backward.  When the batch is padded, the attention
      mask is passed in and the kernel also keeps its own copy per call (B x S x S).
    """
    any_grad = gq or gk or gv
    if not any_grad:
        return False
    probs = B * heads * S * S
    e, m = tape.e, tape.m
    if path == "math" and tape.device == "cpu":
        e = m = max(e, FLOAT32_BYTES)  # upcast to float32
    if path == "fused":
        for label, nbytes in (q, k, v):
            tape.save(label, nbytes)
        tape.save(ctx, B * S * H * tape.e)
        tape.save(f"{name}.logsumexp", B * heads * S * FLOAT32_BYTES)
        if tape.padded:
            tape.save(f"{name}.attn_mask", B * S * S * tape.e)
        return True
    q = (f"{name}.q_copy", B * S * H * e)
    k = (f"{name}.k_copy", B * S * H * e)
    v = (f"{name}.v_copy", B * S * H * e)
    if gk:
        tape.save(*q)
    if gq:
        tape.save(*k)
    if gq or gk:
        tape.save(*v)
        tape.save(f"{name}.softmax", probs * e)
    if tape.dropout and p_drop > 0:
        if gq or gk:
            tape.save(f"{name}.attn_dropout_mask", probs * m)
        if gv:
            tape.save(f"{name}.dropped_probs", probs * e)
    elif gv:
        tape.save(f"{name}.softmax", probs * e)
    return True


def attention_path(config: Any, device: str, attn_dropout_active: bool) -> str:
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl == "eager":
        return "eager"
    if impl == "sdpa" and device == "cpu" and attn_dropout_active:
        return "math"  # PyTorch's CPU flash kernel does not support dropout
    return "fused"


def config_value(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        value = getattr(config, n, None)
        if value is not None:
            return value
    if default is not None:
        return default
    raise ValueError(f"model.config has none of {names}: cannot estimate activations for it")


def find_blocks(model: nn.Module, pattern: str) -> tuple[str, list[int]]:
    prefix, indices = None, set()
    for name, _ in model.named_modules():
        m = re.match(pattern, name)
        if m:
            prefix = m.group(1) if prefix is None else prefix
            indices.add(int(m.group(2)))
    return (prefix or ""), sorted(indices)


def hidden_label(layers: list[int], position: int) -> str:
    """Label of the hidden state entering block ``layers[position]`` (after the last
    block: "final_hidden").  Named after the block that reads it, so a block's items
    include its own input."""
    return f"layer{layers[position]}.input" if position < len(layers) else "final_hidden"


def activation_saves(config: Any, key: str) -> tuple[str, ...]:
    act = config_value(config, key, default="gelu")
    if not isinstance(act, str) or act not in ACTIVATION_SAVES:
        raise ValueError(
            f"activation function {act!r} is not modelled; supported: {sorted(ACTIVATION_SAVES)}"
        )
    return ACTIVATION_SAVES[act]


def ffn_activation(tape: Tape, saves: tuple[str, ...], x: str, out: str, numel: int,
                   x_grad: bool, name: str) -> None:
    if not x_grad:
        return
    for i, what in enumerate(saves):
        label = {"in": x, "out": out}.get(what, f"{name}.act_tmp{i}")
        tape.save(label, numel * tape.e)


def rms_norm(tape: Tape, x: str, tokens: int, width: int, x_grad: bool, trainable: bool, name: str) -> bool:
    """Llama's RMSNorm, w * (x / rms(x)), computed in float32 whatever the model's dtype.

    When x needs a gradient it saves x in float32 (x itself in fp32; a float32 copy of a
    16-bit x, which is then a storage of its own) and 1/rms (one float32 per token); when
    its weight trains, the normalised x (model dtype) for dw.  Returns whether the output
    needs a gradient."""
    if x_grad:
        tape.save(x if tape.e == FLOAT32_BYTES else f"{x}.fp32", tokens * width * FLOAT32_BYTES)
        tape.save(f"{name}.rstd", tokens * FLOAT32_BYTES)
    if trainable:
        tape.save(f"{name}.normed", tokens * width * tape.e)
    return x_grad or trainable


