"""Where the memory of a training step goes: one measured step beside the analytic estimate.

``workbench.engine.memory`` counts the memory of a training step exactly (``measure_train_step``)
and predicts it from shapes alone (``estimate_memory``).  This module sets the two side
by side for a ``RunConfig``, over a grid of batch sizes and sequence lengths, for the
memory notebook (``notebooks/03_memory.ipynb``):

* ``measure_vs_estimate(cfg, batch_size, seq_len)``: load ``cfg.model``, apply
  ``cfg.method`` (LoRA, full fine-tuning, head only), run one measured AdamW step on a
  synthetic batch of exactly ``batch_size`` x ``seq_len`` tokens, and estimate the same
  step on paper;
* ``memory_grid(cfgs, batch_sizes, seq_lens)``: the same over a grid, as a long table,
  loading each model once;
* ``activation_table(model, batch_size, seq_len)``: the estimate's per-tensor list of
  saved activations, with what each tensor is and how it grows with B and S.

This is the one place where a measured step is set beside the estimate: ``measure_step``
runs and accounts one training step of a model as it stands, and ``compare_breakdowns``
puts a measurement beside an estimate in one table (``component``, ``measured MB``,
``estimated MB``, ``error %``).  The planner (``workbench.lessons.planner``: ``measure``
and ``Plan.compare``) uses both.

Why a synthetic batch: real data is padded per batch to that batch's longest sentence
(dynamic padding), so "sequence length 64" of a real run means "at most 64", and the
measured activations follow the first batch's longest sentence.  Random token ids with a
full attention mask make the length exact, and memory depends on shapes, not on which
tokens they are.

Why float32 and no autocast: the estimate models training wholly in one dtype; under
autocast the weights stay float32 while matmuls save bfloat16 copies, a mixture the
formulas do not describe.  (``cfg.bf16`` is therefore ignored here.)

The measured step uses AdamW with learning rate 0: the optimizer allocates and updates
its two moments as in any step, but no weight changes, so one loaded model serves a
whole grid.  Dropout runs as in training (the model is in ``train()`` mode), as the
estimate assumes.

Units: bytes in the tables' ``measured``/``estimated`` columns, decimal MB (10**6 bytes)
where a column says MB.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from workbench.engine.config import RunConfig
from workbench.engine.memory import (
    OPTIMIZERS,
    SavedActivations,
    MemoryBreakdown,
    estimate_activation_bytes,
    estimate_memory,
    measure_train_step,
)
from workbench.lora.quantize import logical_numel
from workbench.util.checks import check_choice, check_positive_int
from workbench.util.units import MB

__all__ = [
    "COMPONENTS",
    "MemoryComparison",
    "compare_breakdowns",
    "measure_step",
    "step_optimizer",
    "prepared_model",
    "synthetic_batch",
    "measure_vs_estimate",
    "memory_grid",
    "activation_table",
    "activation_kinds",
    "effective_seq_len",
    "TENSOR_KINDS",
]

#: The rows of a comparison, in the order a reader adds them up.
COMPONENTS: tuple[str, ...] = ("weights", "gradients", "optimizer", "activations", "total")


# --------------------------------------------------------------------------- results


def compare_breakdowns(measured: MemoryBreakdown, estimated: MemoryBreakdown | None,
                       unestimated: Iterable[str] = ()) -> pd.DataFrame:
    """Measured beside estimated, one row per component: MB (10**6 bytes) and error in %.

    Columns, in this order: ``component``, ``measured MB``, ``estimated MB``, ``error %``
    = 100 * (estimated - measured) / measured (NaN when nothing was measured, or when
    there is no estimate).  ``unestimated``: components the estimate does not cover (the
    planner has no activation formula for some architectures): NaN there, and in the
    total.  A ``peak`` row follows when the measurement has one: it has no estimate (the
    peak includes memory that is not tensors; see ``MemoryBreakdown``).  Works for a
    ``RunResult``'s ``memory`` and ``memory_estimate`` too.
    """
    if not isinstance(measured, MemoryBreakdown):
        raise TypeError(f"measured must be a MemoryBreakdown, got {type(measured).__name__}")
    if estimated is not None and not isinstance(estimated, MemoryBreakdown):
        raise TypeError(f"estimated must be a MemoryBreakdown or None, got {type(estimated).__name__}")
    missing = set(unestimated)
    unknown = missing - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unestimated must name components among {COMPONENTS}, got {sorted(unknown)}")
    if missing:
        missing.add("total")
    rows = []
    for name in COMPONENTS:
        m = getattr(measured, name)
        e = getattr(estimated, name) if estimated is not None and name not in missing else None
        rows.append({
            "component": name,
            "measured MB": m / MB,
            "estimated MB": np.nan if e is None else e / MB,
            "error %": np.nan if (e is None or m == 0) else 100.0 * (e - m) / m,
        })
    if measured.peak is not None:
        rows.append({"component": f"peak ({measured.peak_kind})" if measured.peak_kind else "peak",
                     "measured MB": measured.peak / MB, "estimated MB": np.nan, "error %": np.nan})
    return pd.DataFrame(rows, columns=["component", "measured MB", "estimated MB", "error %"])


@dataclass
class MemoryComparison:
    """One training step of one configuration: measured exactly and estimated on paper.

    ``measured.peak`` is the process's VmHWM on CPU (Python, torch and everything else
    resident included) or CUDA's max allocated; the estimate has no peak.
    ``activation_items`` is the estimate's itemised list ({label: bytes}), whose sum is
    ``estimated.activations``.
    """

    label: str  # cfg.label(): "LoRA r=8 (query,value)", "full fine-tuning", "head only"
    method: str  # cfg.method
    rank: int  # cfg.lora.rank for LoRA, 0 otherwise
    batch_size: int
    seq_len: int
    trainable: int  # numbers that train
    total_params: int  # all numbers of the model
    device: str
    measured: MemoryBreakdown
    estimated: MemoryBreakdown
    activation_items: dict[str, int] = field(default_factory=dict, repr=False)

    def table(self) -> pd.DataFrame:
        """``compare_breakdowns(measured, estimated)``: MB per component and error in %."""
        return compare_breakdowns(self.measured, self.estimated)

    def rows(self, name: str | None = None) -> list[dict[str, Any]]:
        """Long-format rows (one per component, bytes), as ``memory_grid`` stacks them.

        ``name`` goes in the ``method`` column (default: the label).
        """
        return [{
            "method": name if name is not None else self.label,
            "kind": self.method,
            "rank": self.rank,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "component": comp,
            "measured": int(getattr(self.measured, comp)),
            "estimated": int(getattr(self.estimated, comp)),
        } for comp in COMPONENTS]


# --------------------------------------------------------------------------- one step


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
        import warnings

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
    probe = _RecomputeProbe(model) if gradient_checkpointing else None
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


class _RecomputeProbe:
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


def _max_positions(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    return None


def prepared_model(cfg: RunConfig, seed: int | None = None) -> tuple[nn.Module, Any]:
    """(model, tokenizer): ``cfg.model`` loaded, ``cfg.method`` applied, in train mode, on
    ``cfg.device``, in float32.  Which parameters train is exactly what ``train`` would
    train (the same ``prepare_model``).  ``seed`` (default ``cfg.seed``) seeds the random
    weights of the tiny presets and LoRA's A.  ``cfg.quantize`` (QLoRA) quantizes the
    base's block linears as ``train`` does; their codes keep their own dtype (uint8/int8)
    and everything else is float32.
    """
    from workbench.engine.models import load_base
    from workbench.engine.training import prepare_model, resolve_device, validate

    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    validate(cfg)
    seed = cfg.seed if seed is None else seed
    device = resolve_device(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = load_base(cfg.model, num_labels=2, task=cfg.task, seed=seed, quantize=cfg.quantize)
        prepare_model(cfg, model)
    model.to(device=device, dtype=torch.float32).train()
    return model, tokenizer


def synthetic_batch(tokenizer: Any, batch_size: int, seq_len: int, task: str = "classification",
                    num_labels: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Exactly ``batch_size`` x ``seq_len`` random token ids, no padding, and labels.

    Ids are drawn uniformly from the tokenizer's vocabulary, special tokens left out; the
    attention mask is all ones (so the length is exact: nothing is padding).  Labels: one
    class per sequence for classification, the ids themselves for causal-lm (the model
    shifts them).  Memory depends on these shapes only, not on the values.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    check_choice("task", task, ("classification", "causal-lm"))
    vocab = len(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(vocab) if i not in special], dtype=torch.long)
    if not len(allowed):
        raise ValueError("the tokenizer has no ordinary (non-special) tokens to draw from")
    g = torch.Generator().manual_seed(seed)
    ids = allowed[torch.randint(len(allowed), (batch_size, seq_len), generator=g)]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "classification":
        batch["labels"] = torch.randint(num_labels, (batch_size,), generator=g)
    else:
        batch["labels"] = ids.clone()
    return batch


def measure_vs_estimate(cfg: RunConfig, batch_size: int, seq_len: int, seed: int = 0, *,
                        model: nn.Module | None = None, tokenizer: Any = None) -> MemoryComparison:
    """One training step of ``cfg`` on exactly ``batch_size`` x ``seq_len`` tokens, measured
    and estimated with the same settings.

    Measured (``workbench.engine.memory.measure_train_step``): weights, the gradients present
    after backward, AdamW's state after its first step, the bytes autograd saved for
    backward, and the peak.  Estimated (``estimate_memory``): the same four terms from the
    model's shapes and config, for the same batch, dtype (float32), device, dropout on
    and no padding.  The closed forms both sides share:

        weights = total * 4,  gradients = trainable * 4,
        optimizer = 2 * trainable * 4 + 4 * (number of trainable tensors)

    With ``cfg.quantize`` (QLoRA) the quantized weights count as stored on both sides:
    their 4/8-bit codes plus the constants bitsandbytes keeps (``parameter_bytes``);
    ``total_params`` still counts weights (``logical_numel``), not bytes.

    ``model``/``tokenizer``: a model already prepared for ``cfg`` (``prepared_model``),
    to reuse across calls; it is left as it was (learning rate 0, gradients cleared).
    Without them the model is loaded and prepared here (the slow part).
    """
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"cfg must be a RunConfig, got {type(cfg).__name__}")
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer (from prepared_model), or neither")
    if model is None:
        model, tokenizer = prepared_model(cfg, seed)
    limit = _max_positions(model)
    if limit is not None and seq_len > limit:
        raise ValueError(f"seq_len {seq_len} is longer than {cfg.model!r} can take ({limit} positions)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = next(model.parameters()).device
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{cfg.label()} leaves no parameter trainable: nothing to measure")
    batch = {k: v.to(device) for k, v in synthetic_batch(tokenizer, batch_size, seq_len, cfg.task, seed=seed).items()}
    measured = measure_step(model, batch, "adamw", seed)
    del batch
    kw = dict(dropout=True, device=device.type, padded=False)
    estimated = estimate_memory(model, batch_size, seq_len, optimizer="adamw", **kw)
    items = estimate_activation_bytes(model, batch_size, seq_len, **kw)
    return MemoryComparison(
        label=cfg.label(), method=cfg.method, rank=cfg.lora.rank if cfg.method == "lora" else 0,
        batch_size=int(batch_size), seq_len=int(seq_len),
        trainable=sum(p.numel() for p in trainable), total_params=sum(logical_numel(p) for p in model.parameters()),
        device=str(device), measured=measured, estimated=estimated, activation_items=items,
    )


def memory_grid(cfg_by_method: Mapping[str, RunConfig], batch_sizes: Iterable[int], seq_lens: Iterable[int],
                seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """``measure_vs_estimate`` over every (method, batch size, sequence length), as a long table.

    One row per (method, batch_size, seq_len, component), columns ``method`` (the key of
    ``cfg_by_method``), ``kind`` (lora/full/head), ``rank`` (0 unless LoRA),
    ``batch_size``, ``seq_len``, ``component`` (weights, gradients, optimizer,
    activations, total), ``measured`` and ``estimated`` (bytes).  Each model is loaded
    and prepared once per method and reused for all its points.  ``progress`` prints a
    line per point.
    """
    if not isinstance(cfg_by_method, Mapping) or not cfg_by_method:
        raise ValueError("cfg_by_method must be a non-empty mapping {name: RunConfig}")
    bs, ss = list(batch_sizes), list(seq_lens)
    if not bs or not ss:
        raise ValueError("batch_sizes and seq_lens must each hold at least one value")
    for b in bs:
        check_positive_int("every batch size", b)
    for s in ss:
        check_positive_int("every sequence length", s)
    rows: list[dict[str, Any]] = []
    for name, cfg in cfg_by_method.items():
        if not isinstance(cfg, RunConfig):
            raise TypeError(f"cfg_by_method[{name!r}] is a {type(cfg).__name__}, not a RunConfig")
        model, tokenizer = prepared_model(cfg, seed)
        for s in sorted(set(ss)):
            for b in sorted(set(bs)):
                c = measure_vs_estimate(cfg, b, s, seed, model=model, tokenizer=tokenizer)
                rows += c.rows(name)
                if progress:
                    print(f"{name}: batch {b} x {s} tokens: activations measured {c.measured.activations / MB:.1f} MB, "
                          f"estimated {c.estimated.activations / MB:.1f} MB")
        del model, tokenizer
    return pd.DataFrame(rows, columns=["method", "kind", "rank", "batch_size", "seq_len", "component",
                                       "measured", "estimated"])


# --------------------------------------------------------------------------- activations

#: What each kind of saved tensor is (labels of ``estimate_activation_bytes`` without
#: their "layerN." prefix), and why backward needs it.
TENSOR_KINDS: dict[str, str] = {
    "input": "block input = input of query/key/value: kept for dW (or LoRA's dA) of a trained q/k/v",
    "q_copy": "attention's copy of Q: dK = dSᵀ Q",
    "k_copy": "attention's copy of K: dQ = dS K",
    "v_copy": "attention's copy of V: dP = dO Vᵀ",
    "q": "Q, handed to a fused attention kernel",
    "k": "K, handed to a fused attention kernel",
    "v": "V, handed to a fused attention kernel",
    "logsumexp": "per-row softmax normaliser of a fused kernel (it recomputes P in backward)",
    "attn_mask": "the fused kernel's copy of the attention mask (B x S x S)",
    "softmax": "attention probabilities P (B x heads x S x S): softmax backward needs its output",
    "attn_dropout_mask": "dropout mask on P (B x heads x S x S)",
    "dropped_probs": "dropout(P) (B x heads x S x S): dV = Pᵀ dO",
    "context": "attention output = input of attention.output.dense: kept only if that weight trains",
    "attn_out.dropout.mask": "dropout mask after attention.output.dense",
    "ln1_in": "input of the first LayerNorm (residual sum)",
    "ln1.stats": "mean and 1/std per token of the first LayerNorm",
    "ln1_out": "first LayerNorm's output = input of intermediate.dense: kept only if that weight trains",
    "act_in": "GELU input (T x FFN width): GELU's backward needs it, trained or not",
    "act_out": "GELU output = input of output.dense (T x FFN width): kept only if that weight trains",
    "ffn_out.dropout.mask": "dropout mask after output.dense",
    "ln2_in": "input of the second LayerNorm (residual sum)",
    "ln2.stats": "mean and 1/std per token of the second LayerNorm",
    "emb.sum": "sum of the three embeddings = input of the embedding LayerNorm",
    "emb.ln.stats": "mean and 1/std per token of the embedding LayerNorm",
    "emb.dropout.mask": "dropout mask after the embeddings",
    "input_ids": "token ids: the embedding table's gradient scatters into these rows",
    "token_type_ids": "token-type ids, for the token-type embedding's gradient",
    "position_ids": "position ids, for the position embedding's gradient",
    "final_hidden": "last block's output: the pooler reads its [CLS] vector (a view keeps it all)",
    "pooler.tanh_out": "pooler output: tanh's backward needs its output",
    "head.dropout.mask": "dropout mask before the classifier",
    "head.dropout_out": "dropped pooler output = the classifier's input",
    "loss.log_probs": "log-softmax of the logits, for the cross-entropy backward",
    "loss.labels": "the labels",
    "loss.total_weight": "the loss's normaliser (a scalar)",
}

_LAYER = re.compile(r"^layer(\d+)\.(.+)$")
_LORA = re.compile(r"^(.+)\.lora\d+\.(Ax|dropout_out|dropout_mask)$")


def _kind_of(label: str) -> tuple[str, str]:
    """(block, kind) of an estimate label: ("layer3", "act_in"), ("embeddings", "emb.sum"), ..."""
    m = _LAYER.match(label)
    if m:
        return f"layer{m.group(1)}", m.group(2)
    if label.startswith("emb.") or label in ("input_ids", "token_type_ids", "position_ids"):
        return "embeddings", label
    return "head", label


def _describe(kind: str) -> str:
    if kind in TENSOR_KINDS:
        return TENSOR_KINDS[kind]
    m = _LORA.match(kind)
    if m:
        layer, what = m.groups()
        return {"Ax": f"LoRA's A x on {layer} (T x r): dB = dYᵀ (A x)",
                "dropout_out": f"LoRA's dropped input on {layer}: dA needs it",
                "dropout_mask": f"LoRA's dropout mask on {layer}"}[what]
    return ""


def _growth(r_b: float, r_s: float) -> str:
    """How a size grows, from its ratios when B doubles (r_b) and when S doubles (r_s)."""
    b = {1: "", 2: "B"}.get(round(r_b, 6))
    s = {1: "", 2: "S", 4: "S²"}.get(round(r_s, 6))
    if b is None or s is None:
        return f"x{r_b:.3g} per 2B, x{r_s:.3g} per 2S"
    return "·".join(x for x in (b, s) if x) or "constant"


def activation_table(model: nn.Module, batch_size: int, seq_len: int, *, dropout: bool = True,
                     device: str = "cpu", padded: bool = False) -> pd.DataFrame:
    """The estimate's saved activations, one row per tensor, with what it is and how it grows.

    Columns: ``label`` (as ``estimate_activation_bytes`` names it), ``block``
    ("embeddings", "layer0", ..., "head"), ``kind`` (the label without its block), ``bytes``,
    ``MB``, ``grows with`` ("B·S", "B·S²", ...: read off the estimate at 2B and at 2S),
    ``what`` (what the tensor is and why backward needs it).  The model's
    ``requires_grad`` flags say what trains, so the same model before and after LoRA
    gives the two tables to compare.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("seq_len", seq_len)
    kw = dict(dropout=dropout, device=device, padded=padded)
    base = estimate_activation_bytes(model, batch_size, seq_len, **kw)
    twice_b = estimate_activation_bytes(model, 2 * batch_size, seq_len, **kw)
    twice_s = estimate_activation_bytes(model, batch_size, 2 * seq_len, **kw)
    rows = []
    for label, nbytes in base.items():
        block, kind = _kind_of(label)
        grows = _growth(twice_b.get(label, 0) / nbytes, twice_s.get(label, 0) / nbytes) if nbytes else ""
        rows.append({"label": label, "block": block, "kind": kind, "bytes": int(nbytes), "MB": nbytes / MB,
                     "grows with": grows, "what": _describe(kind)})
    return pd.DataFrame(rows, columns=["label", "block", "kind", "bytes", "MB", "grows with", "what"])


def activation_kinds(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Several ``activation_table``s side by side, summed over blocks: MB per kind of tensor.

    Index: the kind of tensor; one MB column per table (its key), "grows with" and
    "what".  A kind missing from a table is 0 there: that method saves no such tensor.
    Rows are ordered by the largest value, so the big items come first; a ``total``
    row ends the table.
    """
    if not isinstance(tables, Mapping) or not tables:
        raise ValueError("tables must be a non-empty mapping {name: activation_table(...)}")
    sums, info = {}, {}
    for name, t in tables.items():
        missing = {"kind", "bytes", "grows with", "what"} - set(t.columns)
        if missing:
            raise ValueError(f"tables[{name!r}] is not an activation_table: missing {sorted(missing)}")
        sums[name] = t.groupby("kind", sort=False)["bytes"].sum() / MB
        for row in t.itertuples(index=False):
            info.setdefault(row.kind, (row[t.columns.get_loc("grows with")], row.what))
    out = pd.DataFrame(sums).fillna(0.0)
    out = out.loc[out.max(axis=1).sort_values(ascending=False, kind="stable").index]
    out["grows with"] = [info[k][0] for k in out.index]
    out["what"] = [info[k][1] for k in out.index]
    total = {name: float(out[name].sum()) for name in tables}
    out.loc["total"] = {**total, "grows with": "", "what": "all saved activations"}
    out.index.name = "kind"
    return out


def effective_seq_len(model: nn.Module, batch_size: int, activation_bytes: int, max_seq_len: int = 512, *,
                      dropout: bool = True, device: str = "cpu", padded: bool = True) -> int | None:
    """The sequence length at which the estimate gives exactly ``activation_bytes``, or None.

    Why: a real batch is padded to its longest sentence, so a run's measured activations
    belong to that length, not to ``max_length``.  The estimate grows strictly with S, so
    a binary search over 1..``max_seq_len`` finds the S that reproduces the measurement
    (None when no length gives exactly that many bytes, and when the estimate does not
    depend on S at all, as for head-only training, whose saved tensors are B x H).
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("max_seq_len", max_seq_len)
    kw = dict(dropout=dropout, device=device, padded=padded)

    def act(s: int) -> int:
        return sum(estimate_activation_bytes(model, batch_size, s, **kw).values())

    if act(1) == act(max_seq_len):
        return None  # the length leaves no trace in the activations
    lo, hi = 1, max_seq_len
    while lo < hi:  # the smallest s with act(s) >= target
        mid = (lo + hi) // 2
        if act(mid) < activation_bytes:
            lo = mid + 1
        else:
            hi = mid
    return lo if act(lo) == activation_bytes else None


def kinds_summary(kinds: pd.DataFrame, lora: str, full: str) -> pd.DataFrame:
    """``activation_kinds``' rows gathered into what LoRA does to them, MB per method.

    Groups (the ``total`` row left out): "dropped under LoRA" (saved by full fine-tuning,
    not under LoRA: the inputs of frozen linear layers), "kept alike" (the same bytes under
    both: what backprop must pass through), "more under LoRA" (the adapters' own inputs
    and thin products) and "less under LoRA" (any other kind); each with its number of
    kinds.  Groups with no kind are left out.  A short view of the long table for a first
    lesson; the table itself stays the reference.
    """
    for col in (lora, full):
        if col not in kinds.columns:
            raise ValueError(f"{col!r} is not a column of the kinds table; columns: {list(kinds.columns)}")
    rows = kinds.drop(index="total", errors="ignore")
    a, b = rows[lora].astype(float), rows[full].astype(float)
    group = np.select([(a == 0) & (b > 0), (a == b) & (a > 0), a > b], ["dropped under LoRA", "kept alike", "more under LoRA"],
                      default="less under LoRA")
    order = ["dropped under LoRA", "kept alike", "more under LoRA", "less under LoRA"]
    out = pd.DataFrame({"kinds": rows.groupby(group).size(), lora: a.groupby(group).sum(), full: b.groupby(group).sum()})
    out = out.reindex([g for g in order if g in out.index])
    out.loc["total"] = [int(out["kinds"].sum()), float(a.sum()), float(b.sum())]
    out["kinds"] = out["kinds"].astype(int)
    out.index.name = "group"
    return out
