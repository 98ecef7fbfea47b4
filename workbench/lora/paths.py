"""Module paths in a model: block numbers, the path inside a block, heads, and swapping a module.

A transformers model names each module by its path (``bert.encoder.layer.3.output.dense``).
These few functions read such paths and replace the module at one; everything that needs
that imports them from here (LoRA's inject and serving, quantizing, the planner, the panel).
Only ``re`` and torch: a leaf.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["HEAD_NAMES", "OUTPUT_NAMES", "layer_index", "block_pattern", "block_path", "head_names",
           "block_linear_names", "replace_module"]

HEAD_NAMES = ("classifier", "score")  # classification heads of transformers models
OUTPUT_NAMES = ("lm_head",) + HEAD_NAMES  # output layers: never LoRA targets under "all-linear", never quantized
_LAYER_INDEX = re.compile(r"\.(\d+)(?:\.|$)")
_BLOCK = re.compile(r"\.(\d+)\.(.+)$")


def layer_index(name: str) -> int | None:
    """The block index in a module path: 4 for ``bert.encoder.layer.4.attention.self.query``."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def block_pattern(name: str) -> str:
    """The path with its block number shown as N: ``bert.encoder.layer.N.output.dense`` (a layer group's key)."""
    return _LAYER_INDEX.sub(lambda m: m.group(0).replace(m.group(1), "N"), name)


def block_path(name: str) -> str | None:
    """The path inside a block: ``output.dense`` for ``bert.encoder.layer.3.output.dense``; None outside blocks."""
    m = _BLOCK.search(name)
    return m.group(2) if m else None


def head_names(model: nn.Module) -> list[str]:
    """Names of the classification head modules of a ``...ForSequenceClassification`` model."""
    if not type(model).__name__.endswith(("ForSequenceClassification", "ForTokenClassification")):
        return []
    return [n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module)]


def block_linear_names(model: nn.Module) -> list[str]:
    """Paths of the plain ``nn.Linear`` layers inside the numbered transformer blocks.

    Only those: the classification head, a language model's ``lm_head`` and BERT's pooler sit
    outside the blocks (the head trains; the pooler and lm_head stay in float, as transformers'
    bitsandbytes loading keeps the output layer).  GPT-2's ``Conv1D`` is not a ``Linear`` and is
    not quantized.  What ``workbench.lora.quantize.quantize_model`` replaces.
    """
    return [n for n, m in model.named_modules()
            if type(m) is nn.Linear and layer_index(n) is not None and n.rpartition(".")[2] not in OUTPUT_NAMES]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` where the module at path ``name`` is; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old
