"""LoRA Workbench: learn, teach and compare Low-Rank Adaptation (Hu et al. 2021).

    import workbench as wb
    model, tokenizer = wb.load_base("minilm", num_labels=2)
    wb.add_lora(model, rank=8, alpha=16, targets=["query", "value"])
    wb.count_parameters(model)

The package is layered; an import only ever points down this list (``tests/test_layout.py``
checks it):

    lessons   studies built on the rest: memory, planner, planted rank, inside delta W
    ui        the widget panel (a widget-free state plus a thin view) and the CLI
    records   the run store and reports
    viz       figures from results, one house style
    engine    models, data, optimizer, the training loop, sweeps, memory accounting
    lora      the idea itself: LoRAConfig, the layer and its variants, targets, injection, counting, adapter files
    util      atomic files, checks on user input, units

This module re-exports the public API.  The LoRA core loads at once; the rest loads on
first use, so ``import workbench`` stays quick.  A lazily loaded name is cached here the
first time, and no subpackage shares a name with a public function, so every public name
stays what it is however often it is used and whatever was imported before.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Sequence

#: ``python -m workbench COMMAND``: the commands that train (each run in the worker).
_TRAINING_COMMANDS = ("train", "sweep", "search")


def _worker_wanted_soon(argv: Sequence[str], modules: Any) -> bool:
    """Whether this process will soon ask for a training run: a notebook's kernel (where
    someone will click Train), or the command line started for a command that trains.

    While ``python -m workbench`` imports this package, ``sys.argv`` is ``["-m", COMMAND,
    ...]`` (Python names the module's file only once the package is imported)."""
    return "ipykernel" in modules or (len(argv) > 1 and argv[0] == "-m" and argv[1] in _TRAINING_COMMANDS)


def _warm_the_worker_early() -> None:
    """Start the training worker now, in the background, where a run will soon be asked for.

    A CPU run trains in a process forked from a server that must first import torch and
    transformers (``workbench.engine.fork_server``: about 8 s on 2 cores).  Started here,
    before this package's own imports of torch and transformers (about 4 s), the two
    imports run side by side on two cores: in a notebook the worker is ready before the
    panel is drawn, and on the command line a first run waits about 4 s less.  A script or
    a test starts it when its first run asks.  The cost here is a thread and a
    ``subprocess.Popen`` (the fork server's module imports only the standard library); a
    process that ends before the worker is ready kills it rather than wait."""
    if _worker_wanted_soon(sys.argv, sys.modules):
        from workbench.engine.fork_server import prewarm

        prewarm()


_warm_the_worker_early()  # first: the imports below take seconds, and the worker starts beside them

from workbench.lora.adapters import AdapterError, load_adapter, read_adapter, save_adapter
from workbench.lora.config import LoRAConfig, lora_scaling
from workbench.lora.inject import LoRASettings, add_lora, lora_layers, merge_lora, remove_lora, unmerge_lora
from workbench.lora.layer import LoRALayer
from workbench.lora.targets import describe_layers, find_targets
from workbench.lora.params import ParamCounts, ParameterReport, count_parameters, lora_parameter_count

__version__ = "0.1.0"


# Public name -> the module that defines it (loaded on first use).
_LAZY: dict[str, str] = {
    "METHODS": "workbench.engine.config",
    "RunConfig": "workbench.engine.config",
    "RunResult": "workbench.engine.config",
    "Timing": "workbench.engine.config",
    "preset": "workbench.engine.config",
    "load_base": "workbench.engine.models",
    "load_tokenizer": "workbench.engine.models",
    "StepInfo": "workbench.engine.events",
    "generate": "workbench.engine.generation",
    "exact_match": "workbench.engine.generation",
    "load_prompts": "workbench.engine.sft",
    "run_outcome": "workbench.engine.outcome",
    "distinct_labels": "workbench.engine.labels",
    "delete_run": "workbench.records.store",
    "export_merged": "workbench.lora.export",
    "model_roles": "workbench.lora.roles",
    "set_adapter": "workbench.lora.serving",
    "adapter_names": "workbench.lora.serving",
    "active_adapter": "workbench.lora.serving",
    "sweep_configs": "workbench.engine.sweep",
    "train": "workbench.records.recording",  # the engine's train with the run store listening
    "run_sweep": "workbench.records.recording",
    "search": "workbench.records.search",
    "evaluate": "workbench.engine.text_metrics",
    "chrf": "workbench.engine.text_metrics",
    "run_model": "workbench.records.run_models",
    "adapter_model": "workbench.records.run_models",
    "loguniform": "workbench.records.search",
    "uniform": "workbench.records.search",
    "runs": "workbench.records.store",
    "load_runs": "workbench.records.store",
    "export_report": "workbench.records.report",
    "Workbench": "workbench.ui.panel",
    "quantize_model": "workbench.lora.quantize",
    "dequantize_model": "workbench.lora.quantize",
    "is_quantized": "workbench.lora.quantize",
    "quantized_bytes_per_weight": "workbench.lora.quantize",
    "plan": "workbench.lessons.planner",
    "fit_table": "workbench.lessons.planner",
    "fit_figure": "workbench.lessons.planner",
    "shipped_architectures": "workbench.lessons.planner",
}

__all__ = [
    "AdapterError", "LoRAConfig", "LoRALayer", "LoRASettings", "ParamCounts", "ParameterReport",
    "add_lora", "count_parameters", "describe_layers", "find_targets", "load_adapter", "lora_layers",
    "lora_parameter_count", "lora_scaling", "merge_lora", "read_adapter", "remove_lora", "save_adapter",
    "unmerge_lora", *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cached: later lookups never come back here
        return value
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
