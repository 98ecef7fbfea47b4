"""A stored run, or an adapter folder, as a model again: what ``generate``, ``export`` and
``evaluate`` from the shell (and ``wb.evaluate`` on a saved run) start from.

A run keeps no weights of its own but its adapter (``<run folder>/adapter``, PEFT's
format; ``workbench.records.recording``): its model is the base it names, loaded as it
was when it trained (the same ``seed`` for a base built from a config, the same
quantization for a QLoRA run), with the adapter loaded onto it.  A full fine-tuning or
head-only run keeps no adapter, so it cannot be loaded again: the error says so.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.engine.config import RunResult
from workbench.lora.adapters import AdapterError, load_adapter, read_adapter
from workbench.records.store import ADAPTER_FOLDER, DEFAULT_ROOT, RUN_FILE, load_run

__all__ = ["find_run", "run_model", "adapter_model", "base_model"]


def find_run(run_id: str, runs_dir: str | os.PathLike = DEFAULT_ROOT) -> RunResult:
    """The stored run with this id, or the one run whose id starts with it."""
    root = Path(runs_dir)
    if not isinstance(run_id, str) or not run_id.strip() or "/" in run_id or ".." in run_id:
        raise ValueError(f"a run id is a folder name under the run store (e.g. 20261128-134501-lora-r8-ab12), "
                         f"got {run_id!r}")
    if (root / run_id / RUN_FILE).is_file():
        return load_run(root / run_id)
    ids = sorted(p.name for p in root.iterdir() if (p / RUN_FILE).is_file()) if root.is_dir() else []
    matches = [i for i in ids if i.startswith(run_id)]
    if len(matches) == 1:
        return load_run(root / matches[0])
    if matches:
        raise ValueError(f"{run_id!r} starts {len(matches)} run ids under {root}: {', '.join(matches[:5])}"
                         f"{' ...' if len(matches) > 5 else ''}; give more of the id")
    latest = f"; the latest are: {', '.join(ids[-3:])}" if ids else " (the store is empty)"
    raise FileNotFoundError(f"no run {run_id!r} under {root}{latest} (python -m workbench runs lists them)")


def base_model(name: str, task: str = "causal-lm", *, seed: int = 0, quantize: str | None = None,
               num_labels: int = 2) -> tuple[Any, Any]:
    """A base model and its tokenizer, in eval mode (``workbench.engine.models.load_base``)."""
    from workbench.engine.models import load_base

    model, tokenizer = load_base(name, num_labels=num_labels, task=task, seed=seed, quantize=quantize)
    return model.eval(), tokenizer


def _num_labels(folder: Path, config: dict) -> int:
    """The classifier's outputs, read off the trained head's weight in the adapter file."""
    _, state = read_adapter(folder)
    heads = tuple(config.get("modules_to_save") or ())
    for key, tensor in state.items():
        if key.endswith(".weight") and tensor.dim() == 2 and any(f".{h}." in f".{key}" for h in heads):
            return int(tensor.shape[0])
    return 2


def adapter_model(folder: str | os.PathLike, base: str | None = None, *, seed: int = 0,
                  quantize: str | None = None) -> tuple[Any, Any]:
    """The model an adapter folder adapts, with the adapter loaded: (model, tokenizer).

    ``base``: the base model's name or folder; None reads it from the adapter's
    ``base_model_name_or_path``.  ``seed``: for a base built from a config (tiny-bert,
    tiny-gpt2), the seed it was built with."""
    folder = Path(folder)
    config, _ = read_adapter(folder)  # refuses a folder that is not an adapter, naming what is missing
    name = base or config.get("base_model_name_or_path")
    if not name:
        raise AdapterError(f"{folder / 'adapter_config.json'} does not name its base model "
                           "(base_model_name_or_path): give the base (--base NAME)")
    task = "classification" if config.get("task_type") == "SEQ_CLS" else "causal-lm"
    num_labels = _num_labels(folder, config) if task == "classification" else 2
    model, tokenizer = base_model(name, task, seed=seed, quantize=quantize, num_labels=num_labels)
    load_adapter(model, folder)
    return model.eval(), tokenizer


def run_model(run: RunResult | str, runs_dir: str | os.PathLike = DEFAULT_ROOT) -> tuple[Any, Any]:
    """A stored run's trained model (its base with its adapter) and tokenizer, in eval mode.

    ``run``: a RunResult from the store, or a run id (``find_run``)."""
    result = find_run(run, runs_dir) if isinstance(run, str) else run
    folder = Path(result.path) / ADAPTER_FOLDER if result.path else None
    if folder is None or not folder.is_dir():
        why = (f"a {result.config.method} run keeps no adapter" if result.config.method != "lora"
               else "it stopped before a step trained" if result.status != "completed" else "its adapter is missing")
        raise FileNotFoundError(f"run {result.run_id} has no stored adapter ({why}), so its trained model cannot be "
                                "loaded again: only LoRA runs keep their weights (<run folder>/adapter)")
    c = result.config
    return adapter_model(folder, c.model, seed=c.seed, quantize=c.quantize)
