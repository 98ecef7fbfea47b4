"""Plan a fine-tuning run of a model too big to load: parameters and memory, LoRA beside full.

``plan("gpt3-175b", rank=8, targets=("query", "value"))`` (or ``plan("gpt3-175b", LoRAConfig(...))``) answers, in seconds and without
a single weight in memory, the two questions the LoRA paper (Hu et al. 2021,
arXiv:2106.09685) is about: how many numbers train, and how much memory training takes.

How: the model is built from its ``transformers`` config under ``with torch.device("meta")``.
A meta tensor has a shape and a dtype but no data, so a 175-billion-parameter model costs
nothing to build, and everything that depends only on shapes can be read off it:

* parameters: ``total`` = sum of numel over the parameters (a tied weight once); LoRA is
  injected with ``add_lora`` on the meta model itself (the adapters are created on the
  base weight's device: meta), so the trainable count is exactly what ``add_lora`` would
  train on the real model: r * (in + out) per adapted layer, plus the classifier head;
* memory, per training step, with s bytes per element of ``dtype``:

    weights     = total * s
    gradients   = trainable * s                       (a frozen weight has no .grad)
    optimizer   = k * trainable * s + 4 * (trainable tensors)
                  k = 2 for Adam/AdamW (two moments), 1 for SGD with momentum, 0 for SGD;
                  the 4 bytes are PyTorch's float32 ``step`` counter per parameter tensor
                  (torch's AdamW; bitsandbytes' optimizers count as ``OPTIMIZERS`` says)
    activations = ``workbench.engine.memory.estimate_activation_bytes``: the forward pass
                  replayed on paper (BERT-style encoders, GPT-2-style decoders and
                  Llama-style decoders such as Llama and Qwen2; for other architectures
                  it is ``None`` and the plan says so).

  Defaults: ``dtype`` bf16 when ``quantize`` is given (QLoRA's compute dtype), else fp32;
  ``optimizer`` "adamw-32bit" (float32 moments, 8 bytes a number) for a 16-bit dtype, as
  mixed precision keeps them, else torch's "adamw".

"Will it fit" for real LLMs: ``quantize="nf4" | "int8"`` (QLoRA's frozen base, at the
bytes of ``workbench.lora.quantize``), ``gradient_checkpointing=True``, bitsandbytes'
32-bit, 8-bit and paged AdamW (``workbench.engine.memory.OPTIMIZERS``);
``Plan.breakdown()`` itemises a side with how each number is computed and
``Plan.assumptions()`` says what it assumes; ``QLORA_PAPER_65B`` reproduces the QLoRA
paper's headline (LLaMA 65B: > 780 GB in 16-bit full fine-tuning, < 48 GB with QLoRA);
``fit_table`` / ``fit_figure`` set models x methods against GPU sizes.

Where a config comes from: a shipped architecture (JSON files in ``architectures/`` next
to this module, written from the published sizes: ``shipped_architectures()``), the
bundled MiniLM (``"minilm"``), any ``transformers.PretrainedConfig``, a local folder or
config file, or a Hugging Face Hub name when a network is there.

``measure(plan)`` runs one real training step of the same configuration (small models
only) and ``Plan.compare`` sets the estimate beside the measurement, both through the
memory study's one measure-beside-estimate path (``workbench.engine.memory``:
``measure_step`` and ``compare_breakdowns``).

Units: the tables write GB = 10**9 bytes and MB = 10**6 bytes (decimal, as the LoRA paper's
"350GB" = 175e9 parameters x 2 bytes).

The rooms of this package, one idea each (``from workbench.lessons.planner import ...``
reaches every public name):

* ``shipped``   where a config comes from: the shipped architectures, ``load_config``;
* ``meta``      the model on the meta device, the role names mapped onto its layers;
* ``plans``     the answer: ``Plan``, ``MethodPlan``, ``PlanSettings``, and their settings in words;
* ``planning``  how the answer is made: ``plan``;
* ``tables``    plans side by side, precision recipes, "will it fit";
* ``figures``   a plan's memory bars and the will-it-fit figure, on the house style;
* ``measuring`` one real training step to check a plan against;
* ``papers``    the LoRA and QLoRA papers' numbers;
* ``findings``  what notebook 06 concludes (the QLoRA headline, will it fit), as data.
"""

from workbench.lessons.planner.figures import fit_figure
from workbench.lessons.planner.findings import FitFindings, QLoRAFindings, findings, qlora_findings
from workbench.lessons.planner.measuring import measure
from workbench.lessons.planner.meta import DTYPES, TASKS, build_meta_model, quantized_linears, resolve_targets
from workbench.lessons.planner.papers import LORA_PAPER_GPT3, QLORA_PAPER_65B
from workbench.lessons.planner.planning import plan
from workbench.lessons.planner.plans import MethodPlan, Plan, PlanSettings
from workbench.lessons.planner.shipped import Architecture, architecture, load_config, shipped_architectures
from workbench.lessons.planner.tables import (
    FIT_METHODS,
    GPU_SIZES_GB,
    MIXED_PRECISION_FULL,
    PRECISION_RECIPES,
    Recipe,
    fit_table,
    plan_table,
    precision_table,
)

__all__ = [
    "TASKS",
    "DTYPES",
    "Architecture",
    "shipped_architectures",
    "architecture",
    "load_config",
    "build_meta_model",
    "resolve_targets",
    "MethodPlan",
    "PlanSettings",
    "Plan",
    "plan",
    "plan_table",
    "Recipe",
    "PRECISION_RECIPES",
    "precision_table",
    "LORA_PAPER_GPT3",
    "measure",
    "quantized_linears",
    "QLORA_PAPER_65B",
    "GPU_SIZES_GB",
    "FIT_METHODS",
    "MIXED_PRECISION_FULL",
    "fit_table",
    "fit_figure",
    "QLoRAFindings",
    "qlora_findings",
    "FitFindings",
    "findings",
]
