"""LoRA Workbench: learn, teach and compare Low-Rank Adaptation (Hu et al. 2021).

    import workbench as wb
    model, tokenizer = wb.load_base("minilm", num_labels=2)
    wb.add_lora(model, rank=8, alpha=16, targets=["query", "value"])
    wb.count_parameters(model)
"""

from workbench.lora.adapters import AdapterError, load_adapter, read_adapter, save_adapter
from workbench.engine.config import METHODS, ParamCounts, RunConfig, RunResult, Timing
from workbench.lora.inject import (
    LoRASettings,
    add_lora,
    describe_layers,
    find_targets,
    lora_layers,
    merge_lora,
    remove_lora,
    unmerge_lora,
)
from workbench.lora.layer import LoRALayer, lora_scaling
from workbench.engine.models import load_base, load_tokenizer
from workbench.lora.params import ParameterReport, count_parameters, lora_parameter_count

__version__ = "0.1.0"


def __getattr__(name: str):
    """Heavier parts load on first use, so ``import workbench`` stays quick."""
    lazy = {
        "train": ("workbench.engine.training", "train"),
        "StepInfo": ("workbench.engine.training", "StepInfo"),
        "runs": ("workbench.records.store", "runs"),
        "load_runs": ("workbench.records.store", "load_runs"),
        "preset": ("workbench.engine.config", "preset"),
        "sweep_configs": ("workbench.engine.sweep", "sweep_configs"),
        "run_sweep": ("workbench.engine.sweep", "run_sweep"),
        "export_report": ("workbench.records.report", "export_report"),
        "plan": ("workbench.lessons.planner", "plan"),
        "Workbench": ("workbench.ui.panel", "Workbench"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
