"""The model on PyTorch's meta device: every shape of a model too big to load, and no data.

``build_meta_model`` builds a ``transformers`` model from its config under
``with torch.device("meta")``: a meta tensor has a shape and a dtype but no data, so a
175-billion-parameter model costs nothing to build, and everything that depends only on
shapes can be read off it.  ``resolve_targets`` maps the LoRA paper's role names onto the
layer names this model uses, and ``quantized_linears`` lists the weights a quantized base
would store in 4 or 8 bits.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn

from workbench.engine.data import TASKS as ENGINE_TASKS
from workbench.lora.architectures import KEY, QUERY, VALUE, layer_names
from workbench.lora.paths import block_linear_names
from workbench.util.checks import check_choice

__all__ = ["TASKS", "DTYPES", "build_meta_model", "resolve_targets", "quantized_linears"]

TASKS = ENGINE_TASKS + ("base",)  # what a plan builds: a head for one of the engine's tasks, or the bare model

#: Names accepted for ``dtype``.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
DTYPE_LABEL = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# The paper's W_q, W_k, W_v by their names in the common architectures (the one table,
# ``workbench.lora.architectures``).  A target that matches nothing in a model is looked up
# here and replaced by the name that model uses.  GPT-2 fuses all three into one Conv1D,
# c_attn: LoRA on it adapts query, key and value with one A (r x H) and one B (3H x r).
_ROLE_NAMES: dict[str, tuple[str, ...]] = {role: layer_names(role) for role in (QUERY, KEY, VALUE)}


def parse_dtype(dtype: Any) -> torch.dtype:
    """A torch dtype from a dtype or one of the names of ``DTYPES`` (float32, bfloat16 or float16)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_LABEL:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, not {dtype}")
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be a torch dtype or one of {sorted(DTYPES)}, not {dtype!r}")


def build_meta_model(config: Any, task: str = "classification", num_labels: int = 2,
                     dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model of ``config`` on PyTorch's meta device: every shape, no data.

    ``task``: "classification" (``AutoModelForSequenceClassification`` with ``num_labels``),
    "causal-lm" (``AutoModelForCausalLM``) or "base" (``AutoModel``, no head).  Building
    allocates nothing, so a 175B model takes seconds.  ``config`` is not modified.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    check_choice("task", task, TASKS)
    auto = {"classification": AutoModelForSequenceClassification,
            "causal-lm": AutoModelForCausalLM, "base": AutoModel}[task]
    cfg = copy.deepcopy(config)
    if task == "classification":
        cfg.num_labels = num_labels
    quiet()
    try:
        with torch.device("meta"):
            model = auto.from_config(cfg)
    except ValueError as e:
        raise ValueError(f"task {task!r} has no model class for model_type "
                         f"{getattr(cfg, 'model_type', '?')!r}; choose another task from {TASKS} ({e})") from None
    return model.to(dtype=dtype)


def quiet() -> None:
    """transformers' logging down to errors: building from a config warns about untrained heads."""
    import transformers

    transformers.logging.set_verbosity_error()


def _matches(names: Sequence[str], target: str) -> bool:
    return any(n == target or n.endswith("." + target) for n in names)


def resolve_targets(model: nn.Module, targets: Sequence[str] | str) -> tuple[list[str] | str, list[str]]:
    """The targets with the paper's role names mapped onto this model's layer names.

    A name that matches a module is kept.  One that matches nothing and is a role
    ("query", "key", "value") becomes the name this architecture uses for it: ``q_proj``
    (OPT, Llama), ``query`` (BERT, RoBERTa) or GPT-2's fused ``c_attn``.  A regex string
    or "all-linear" is passed through.  Returns (targets, notes about what was mapped).
    """
    if isinstance(targets, str):
        return targets, []
    names = [n for n, _ in model.named_modules()]
    out: list[str] = []
    notes: list[str] = []
    for t in targets:
        new = t
        if isinstance(t, str) and not _matches(names, t):
            for role, aliases in _ROLE_NAMES.items():
                if t in aliases:
                    found = next((a for a in aliases if _matches(names, a)), None)
                    if found is not None:
                        new = found
                        notes.append(f"target {t!r} is called {found!r} in {type(model).__name__}")
                    break
        if new not in out:
            out.append(new)
    if "c_attn" in out and any(t in ("query", "key", "value") for t in targets):
        notes.append("GPT-2 fuses query, key and value into one Conv1D (c_attn): LoRA on it adapts all "
                     "three with one A (r x H) and one B (3H x r), r * (H + 3H) per layer - the same count "
                     "as separate query and value adapters, 2 * r * (H + H), but not the same update")
    return out, notes


def quantized_linears(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{path: (numel, in_features)} of the weights a quantized base stores in 4 or 8 bits.

    The rule of ``workbench.lora.quantize.quantize_model`` (and of transformers'
    bitsandbytes loading), ``workbench.lora.paths.block_linear_names``: every plain ``nn.Linear`` inside the numbered transformer blocks;
    embeddings, norms, biases, the pooler and the output layer (``lm_head``, a classifier)
    stay in the compute dtype.  Read on the base model, before LoRA is injected.
    """
    layers = {n: model.get_submodule(n) for n in block_linear_names(model)}
    return {n: (m.weight.numel(), m.in_features) for n, m in layers.items()}
