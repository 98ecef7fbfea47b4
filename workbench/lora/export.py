"""Export for use elsewhere: the adapted model as a plain ``transformers`` folder.

``export_merged`` folds every LoRA update into its weight,

    W' = W + s B A      (DoRA: W' = m (W + s B A) / ||W + s B A||)

on a *copy* of the model, puts the plain ``Linear``/``Conv1D`` layers back, and saves
that copy with ``save_pretrained`` beside the tokenizer.  The folder is an ordinary
model folder: ``AutoModelForCausalLM.from_pretrained(folder)`` (or
``AutoModelForSequenceClassification`` for a classifier) loads it with no workbench and
no PEFT installed, and it computes what the adapted model computes, at the base model's
cost.  The adapted model itself keeps its adapter (to train on, or to save in PEFT's
format with ``save_adapter``).  A quantized base (QLoRA) is exported only with
``dequantize=True`` (float32 weights: the dequantized base plus the merged update).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from workbench.lora.inject import lora_layers, remove_lora
from workbench.lora.quantize import dequantize_model, is_quantized, model_quantization
from workbench.util.checks import check_bool
from workbench.util.fileio import atomic_write_text, current_umask

__all__ = ["export_merged", "merged_copy"]


def merged_copy(model: nn.Module, *, dequantize: bool = False) -> nn.Module:
    """A copy of ``model`` with every LoRA update merged into its base weight and no LoRA
    modules left; ``model`` is not changed.  A model without LoRA is simply copied.

    A quantized base (QLoRA) cannot hold the merged weight in its 4/8-bit codes: it is
    refused unless ``dequantize=True``, which first turns every quantized layer of the copy
    into a float32 ``Linear`` holding the weights the quantized layer computed with, then
    merges:  W' = dequant(W_q) + s B A.
    """
    check_bool("dequantize", dequantize)
    if is_quantized(model) and not dequantize:
        raise ValueError(
            f"the model's base is quantized ({model_quantization(model)}): its LoRA update cannot be merged into "
            "the 4/8-bit codes. Pass dequantize=True to write a float model (the dequantized base with the update "
            "merged), or save the adapter alone with save_adapter")
    out = copy.deepcopy(model)
    if dequantize:
        dequantize_model(out)
    if lora_layers(out):
        remove_lora(out, merge=True)
    if hasattr(out, "lora_settings"):
        del out.lora_settings
    left = list(lora_layers(out))
    if left:  # pragma: no cover - remove_lora takes out every layer it finds
        raise RuntimeError(f"LoRA layers left after merging: {left}")
    return out


def _check_folder(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder; give a folder path to export into")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; give an empty or new folder, "
                              "or overwrite=True to replace what is there")


def _tokenizer_problem(tokenizer: Any, folder: Path) -> str | None:
    """Why ``AutoTokenizer.from_pretrained(folder)`` would not give back this tokenizer, or None.

    transformers picks a tokenizer class by the model's type, so a custom tokenizer saved
    beside, say, a Qwen2 model can come back as a ``Qwen2Tokenizer`` that splits text
    differently; the export is then right but the obvious way to load it is not.
    """
    from transformers import AutoTokenizer

    try:
        loaded = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # noqa: BLE001 - any failure is worth reporting, none is fatal
        return f"AutoTokenizer cannot load the tokenizer written to {folder.name}: {e}"
    probe = tokenizer.decode(list(range(min(len(tokenizer), 200))), skip_special_tokens=True) + " Hello, world 42"
    if loaded(probe)["input_ids"] != tokenizer(probe)["input_ids"]:
        cls = type(tokenizer).__name__
        return (f"AutoTokenizer.from_pretrained gives a {type(loaded).__name__} for this folder, which encodes "
                f"text differently from the {cls} given; load the tokenizer with {cls}.from_pretrained(folder)")
    return None


def _card(model: nn.Module) -> str:
    settings = getattr(model, "lora_settings", None)
    base = getattr(model, "workbench_name", None) or getattr(model, "name_or_path", None) or "a base model"
    what = (f"{settings.config.label()}, alpha {settings.config.alpha:g}, on {len(settings.wrapped)} layers"
            if settings is not None else "no LoRA layers (the model as it was)")
    quantized = model_quantization(model)
    if quantized:
        what += (f"; the base was stored in {quantized} and is written dequantized to float32, the weights the "
                 "quantized model computed with")
    return (
        "# Merged model\n\nWritten by LoRA Workbench: `"
        f"{base}` with its LoRA update merged into the weights ({what}).\n\n"
        "It is a plain `transformers` folder: no LoRA modules, no PEFT needed.\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(folder)  # a classifier: AutoModelForSequenceClassification\n"
        "tokenizer = AutoTokenizer.from_pretrained(folder)\n```\n"
    )


def export_merged(model: nn.Module, tokenizer: Any, folder: str | os.PathLike, *, overwrite: bool = False,
                  dequantize: bool = False) -> Path:
    """Write ``model`` with LoRA merged in (and ``tokenizer`` beside it) as a plain
    ``transformers`` folder; return the folder's path.

    The folder appears whole or not at all: everything is written into a temporary folder
    beside it, which is then renamed.  A non-empty folder is refused unless
    ``overwrite=True`` (then it is replaced, after the new one is complete).  ``model`` must
    be a ``transformers`` model (it has ``save_pretrained``); it is not changed.
    ``tokenizer`` may be None for a model used without one.

    A quantized base (QLoRA) is refused unless ``dequantize=True``: then the folder holds
    float32 weights, the dequantized base with the update merged (``merged_copy``), which
    compute what the quantized adapted model computes, at float size.
    """
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"export_merged needs a transformers model (with save_pretrained); got a "
                        f"{type(model).__name__}")
    if tokenizer is not None and not hasattr(tokenizer, "save_pretrained"):
        raise TypeError(f"tokenizer must be a transformers tokenizer (with save_pretrained) or None; got a "
                        f"{type(tokenizer).__name__}")
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False, got {overwrite!r}")
    folder = Path(folder)
    merged = merged_copy(model, dequantize=dequantize)  # refuses a quantized base before any file is touched
    _check_folder(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            problem = _tokenizer_problem(tokenizer, tmp)
            if problem:
                warnings.warn(problem, stacklevel=2)
        atomic_write_text(tmp / "README.md", _card(model))
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private (0700)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.rename(folder, old / "x")
            os.rename(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
