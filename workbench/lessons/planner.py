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
memory study's one measure-beside-estimate path (``workbench.lessons.memory_study``:
``measure_step`` and ``compare_breakdowns``).

Units: the tables write GB = 10**9 bytes and MB = 10**6 bytes (decimal, as the LoRA paper's
"350GB" = 175e9 parameters x 2 bytes).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from workbench.engine.memory import (
    OPTIMIZERS,
    MemoryBreakdown,
    estimate_activation_bytes,
    optimizer_state_estimate,
)
from workbench.engine.bundled import bundled_model_path
from workbench.engine.models import BUNDLED
from workbench.lessons.memory_study import compare_breakdowns, measure_step
from workbench.engine.data import TASKS as ENGINE_TASKS
from workbench.lora.config import LoRAConfig
from workbench.lora.inject import add_lora
from workbench.lora.layer import LoRALayer
from workbench.lora.quantize import (
    NF4_LAYER_TABLE_BYTES,
    check_quantize,
    int8_bits_per_weight,
    nf4_bits_per_weight,
    quantized_bytes_per_weight,
)
from workbench.lora.targets import OUTPUT_NAMES, head_names, layer_index
from workbench.util.checks import check_choice, check_positive_int
from workbench.util.units import GB, format_bytes, format_count
from workbench.viz.plots import FULL_COLOR, MEMORY_COMPONENTS, STYLE, rank_color, style_axes

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
    "fit_table",
    "fit_figure",
]

TASKS = ENGINE_TASKS + ("base",)  # what a plan builds: a head for one of the engine's tasks, or the bare model
_STEP_COUNTER_BYTES = 4  # torch.optim.Adam/AdamW keep `step` as a float32 0-dim tensor
_ADAM = ("adam", "adamw")

#: Names accepted for ``dtype``.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
_DTYPE_LABEL = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

# Model types that are encoders: their natural fine-tuning task is classification.
_ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra",
                  "deberta", "deberta-v2", "mpnet", "camembert", "modernbert")

# The paper's W_q, W_k, W_v by their names in the common architectures.  A target that
# matches nothing in a model is looked up here and replaced by the name that model uses.
# GPT-2 fuses all three into one Conv1D, c_attn: LoRA on it adapts query, key and value
# with one A (r x H) and one B (3H x r).
_ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "query": ("query", "q_proj", "c_attn"),
    "key": ("key", "k_proj", "c_attn"),
    "value": ("value", "v_proj", "c_attn"),
}

#: The LoRA paper's GPT-3 175B numbers (Hu et al. 2021, section 4.2 "Practical benefits").
LORA_PAPER_GPT3: dict[str, Any] = {
    "full_training_vram": 1.2e12,  # "we reduce the VRAM consumption during training from 1.2TB
    "lora_training_vram": 350e9,   #  to 350GB"
    "full_checkpoint": 350e9,      # "the checkpoint size is reduced by roughly 10,000x
    "lora_checkpoint": 35e6,       #  (from 350GB to 35MB)"
    "rank": 4,                     # "with r = 4 and only the query and value projection
    "targets": ("query", "value"),  #  matrices being adapted"
    "trainable_r8_qv": 37_748_736,  # Table 4: 37.7M (r = 8 on W_q, W_v)
}


# ------------------------------------------------------------------ architectures


@dataclass
class Architecture:
    """A shipped architecture: a ``transformers`` config written from published sizes."""

    name: str
    description: str
    source: str
    published_parameters: int | None
    published_as: str
    default_task: str
    config: dict[str, Any]
    lora_paper: str = ""

    def to_config(self):
        """The ``transformers`` config object (``AutoConfig.for_model(model_type, **rest)``)."""
        from transformers import AutoConfig

        rest = dict(self.config)
        model_type = rest.pop("model_type")
        return AutoConfig.for_model(model_type, **rest)


def _architectures_dir():
    """The folder of shipped JSON configs, found as package data (works from a wheel too)."""
    return resources.files("workbench.lessons").joinpath("architectures")


def shipped_architectures() -> list[str]:
    """Names ``plan`` accepts without a network: the shipped JSON configs and ``"minilm"``."""
    names = sorted(p.name[: -len(".json")] for p in _architectures_dir().iterdir()
                   if p.name.endswith(".json"))
    return names + [BUNDLED]


def architecture(name: str) -> Architecture:
    """The shipped architecture ``name`` (raises ``ValueError`` listing the shipped names)."""
    if name == BUNDLED:
        path = Path(bundled_model_path())
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return Architecture(
            name=BUNDLED,
            description="all-MiniLM-L6-v2, the project's bundled offline model (BERT, 6 layers, hidden 384, 12 heads, FFN 1536).",
            source=f"the bundled checkpoint's own config.json ({path})",
            published_parameters=22_700_000, published_as="22.7M", default_task="classification",
            config=cfg,
        )
    file = _architectures_dir().joinpath(f"{name}.json")
    if not file.is_file():
        raise ValueError(_unknown_message(name, "not a shipped architecture"))
    d = json.loads(file.read_text(encoding="utf-8"))
    return Architecture(
        name=d["name"], description=d.get("description", ""), source=d.get("source", ""),
        published_parameters=d.get("published_parameters"), published_as=d.get("published_as", ""),
        default_task=d.get("default_task", "classification"), config=d["config"],
        lora_paper=d.get("lora_paper", ""),
    )


def _unknown_message(name: str, why: str) -> str:
    names = shipped_architectures()
    close = difflib.get_close_matches(name, names, n=2)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"unknown architecture {name!r}: {why}.{hint} Shipped (offline) names: "
            f"{', '.join(names)}; or pass a transformers config, a local folder or config.json, "
            "or a Hugging Face Hub name (needs a network).")


def load_config(config: Any) -> tuple[Any, str, str | None]:
    """(a private copy of the ``transformers`` config, a label, its natural task or None).

    ``config``: a ``PretrainedConfig`` (copied: ``plan`` sets ``num_labels`` on it), a
    shipped name, ``"minilm"``, a local folder or ``.json`` file, or a Hub name.
    """
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return copy.deepcopy(config), _config_label(config), None
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config must be a transformers PretrainedConfig or a name/path string, "
                        f"not {type(config).__name__}")
    name = os.fspath(config)
    if not name:
        raise ValueError(_unknown_message(name, "an empty name"))
    if name in shipped_architectures():
        arch = architecture(name)
        if name == BUNDLED:
            return AutoConfig.from_pretrained(bundled_model_path()), name, arch.default_task
        return arch.to_config(), name, arch.default_task
    path = Path(name).expanduser()
    if path.is_file():
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a JSON config file: {e}") from None
        if isinstance(d, dict) and isinstance(d.get("config"), dict):  # our shipped format
            arch = Architecture(name=d.get("name", path.stem), description=d.get("description", ""),
                                source=str(path), published_parameters=d.get("published_parameters"),
                                published_as=d.get("published_as", ""),
                                default_task=d.get("default_task", "classification"), config=d["config"])
            return arch.to_config(), arch.name, arch.default_task
        if not isinstance(d, dict) or "model_type" not in d:
            raise ValueError(f"{path} is not a transformers config: it needs a 'model_type' key")
        rest = dict(d)
        return AutoConfig.for_model(rest.pop("model_type"), **rest), path.stem, None
    try:
        return AutoConfig.from_pretrained(name), (path.name if path.is_dir() else name), None
    except (OSError, ValueError, KeyError) as e:
        why = ("a local folder without a loadable config.json" if path.is_dir() else
               "not a local folder, and the Hugging Face Hub could not provide it (offline?)")
        raise ValueError(_unknown_message(name, why) + f" ({type(e).__name__}: {str(e)[:200]})") from None


def _config_label(config: Any) -> str:
    """A short name for a config object: its Hub name, "minilm" for the bundled folder, or the model type."""
    source = str(getattr(config, "name_or_path", "") or "")
    if source:
        try:
            if Path(source).resolve() == Path(bundled_model_path()).resolve():
                return BUNDLED
        except ImportError:  # pragma: no cover - the bundled model is a requirement
            pass
        if not Path(source).exists():
            return source  # a Hub name
    return f"{getattr(config, 'model_type', 'model')} config"


def _natural_task(config: Any) -> str:
    """classification for encoders, causal-lm for decoders (by ``architectures`` or model type)."""
    for arch in getattr(config, "architectures", None) or []:
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal-lm"
        if arch.endswith("ForSequenceClassification"):
            return "classification"
    return "classification" if getattr(config, "model_type", "") in _ENCODER_TYPES else "causal-lm"


def _parse_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_LABEL:
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
    _quiet()
    try:
        with torch.device("meta"):
            model = auto.from_config(cfg)
    except ValueError as e:
        raise ValueError(f"task {task!r} has no model class for model_type "
                         f"{getattr(cfg, 'model_type', '?')!r}; choose another task from {TASKS} ({e})") from None
    return model.to(dtype=dtype)


def _quiet() -> None:
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


# ------------------------------------------------------------------ results


@dataclass
class MethodPlan:
    """One side of a plan: what trains and the memory of a training step.

    ``trainable`` counts every trained number (for LoRA: the adapters *and* a
    classification head, which must learn its task); ``adapter_params`` counts the LoRA
    matrices alone (the LoRA paper's "trainable parameters"); ``head_params`` the trained
    head.  ``memory.activations`` is 0 when ``activations_known`` is False (no formula for
    this architecture): read ``activations``, which is None then.  A quantized base
    (``plan(..., quantize=...)``): ``quantized_params`` weights in ``quantized_layers``
    layers cost ``quantized_bytes`` (inside ``memory.weights``).
    """

    method: str
    trainable: int
    total: int
    memory: MemoryBreakdown
    activations_known: bool = True
    adapter_params: int = 0
    head_params: int = 0
    trainable_tensors: int = 0
    bytes_per_element: int = 4
    wrapped: list[str] = field(default_factory=list)
    activation_items: dict[str, int] = field(default_factory=dict, repr=False)
    quantized_params: int = 0
    quantized_bytes: int = 0
    quantized_layers: int = 0

    @property
    def activations(self) -> int | None:
        """Estimated saved-activation bytes, or None when the architecture has no formula."""
        return self.memory.activations if self.activations_known else None

    @property
    def static_bytes(self) -> int:
        """weights + gradients + optimizer state: exact closed forms, any architecture."""
        return self.memory.weights + self.memory.gradients + self.memory.optimizer

    @property
    def total_bytes(self) -> int | None:
        """All four parts, or None when the activations are unknown."""
        return self.memory.total if self.activations_known else None

    @property
    def checkpoint_bytes(self) -> int:
        """What must be saved after training: the trained numbers (LoRA: adapters + head)."""
        return self.trainable * self.bytes_per_element


@dataclass
class PlanSettings:
    """The question a plan answers (what ``plan`` was called with, targets resolved).

    ``lora``: the LoRA settings, with the targets as this architecture names them
    (``resolve_targets``).  ``dropout``: whether the activation estimate counts the base
    model's dropout masks (LoRA's own dropout is ``lora.dropout``).  ``defaulted``: which of
    "dtype" and "optimizer" ``plan`` chose by its defaults (``plan``'s docstring).
    """

    architecture: str
    model_class: str
    task: str
    method: str
    lora: LoRAConfig
    batch_size: int
    seq_len: int
    dtype: str
    optimizer: str
    num_labels: int
    device: str
    dropout: bool
    padded: bool
    quantize: str | None = None
    gradient_checkpointing: bool = False
    defaulted: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        return d


@dataclass
class Plan:
    """LoRA and full fine-tuning of one model, side by side.

    ``.trainable``, ``.total`` and ``.memory`` are those of the method asked for
    (``settings.method``); ``.lora`` and ``.full`` hold both.  ``notes`` says what was
    assumed or could not be estimated.
    """

    settings: PlanSettings
    lora: MethodPlan
    full: MethodPlan
    config: Any = field(repr=False, default=None)
    notes: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> MethodPlan:
        return self.lora if self.settings.method == "lora" else self.full

    @property
    def trainable(self) -> int:
        return self.chosen.trainable

    @property
    def total(self) -> int:
        return self.chosen.total

    @property
    def memory(self) -> MemoryBreakdown:
        return self.chosen.memory

    @property
    def lora_label(self) -> str:
        """'LoRA r=8 (query,value)' (``LoRAConfig.label``: DoRA, rsLoRA, PiSSA say so)."""
        return self.settings.lora.label()

    def table(self) -> pd.DataFrame:
        """Memory in GB (10**9 bytes), one row per component, LoRA and full side by side.

        Unknown activations are NaN, and the last row is then the total of the other three
        (named so).  ``full / LoRA`` is how many times more memory full fine-tuning takes.
        """
        rows = []
        for attr, label, _ in MEMORY_COMPONENTS:
            vals = [getattr(m.memory, attr) if (attr != "activations" or m.activations_known) else np.nan
                    for m in (self.lora, self.full)]
            rows.append((label, *vals))
        known = self.lora.activations_known and self.full.activations_known
        rows.append(("total" if known else "total without activations",
                     self.lora.memory.total if known else self.lora.static_bytes,
                     self.full.memory.total if known else self.full.static_bytes))
        df = pd.DataFrame(rows, columns=["component", "LoRA", "full"]).set_index("component")
        df = df.astype(float) / GB
        with np.errstate(divide="ignore", invalid="ignore"):
            df["full / LoRA"] = df["full"] / df["LoRA"]
        df.columns = ["LoRA (GB)", "full (GB)", "full / LoRA"]
        return df

    def breakdown(self, method: str | None = None) -> pd.DataFrame:
        """One side's memory itemised, each row with how it is computed (GB = 10**9 bytes).

        ``method``: "lora" or "full" (default: the plan's).  Rows: the weights (split into
        the quantized block weights, the other frozen weights and the trained ones), the
        gradients, the optimizer state, the activations (with gradient checkpointing: the
        checkpointed block inputs, what is saved outside the blocks, and the block being
        recomputed; without: inside and outside the blocks), then ``total``.  The rows
        other than ``total`` add up to ``memory.total`` (to ``static_bytes`` when the
        activations are not estimated: their rows are then absent).
        """
        method = method or self.settings.method
        check_choice("method", method, ("lora", "full"))
        m, st = getattr(self, method), self.settings
        e, dt = m.bytes_per_element, st.dtype
        rows: list[tuple[str, int, str]] = []
        if m.quantized_params:
            tables = (f" + {m.quantized_layers} layers x {NF4_LAYER_TABLE_BYTES:,} bytes of code books"
                      if st.quantize == "nf4" else "")
            rows.append((f"weights: quantized block Linear weights ({st.quantize})", m.quantized_bytes,
                         f"{m.quantized_params:,} weights x {_quantized_rate(st.quantize)}{tables}"))
        frozen = m.total - m.trainable - m.quantized_params
        if frozen:
            rows.append((f"weights: other frozen weights ({dt})", frozen * e,
                         f"{frozen:,} x {e} bytes (embeddings, norms, biases, output layer"
                         f"{'' if m.quantized_params else ', block weights'})"))
        rows.append((f"weights: trained ({dt})", m.trainable * e, f"{m.trainable:,} x {e} bytes"))
        rows.append((f"gradients ({dt})", m.memory.gradients, f"{m.trainable:,} x {e} bytes"))
        rows.append((f"optimizer ({st.optimizer})", m.memory.optimizer, _optimizer_rate(st.optimizer, e)))
        if m.activations_known:
            items = m.activation_items
            if st.gradient_checkpointing:
                inputs = {k: v for k, v in items.items() if k.endswith(".input") and k.startswith("layer")}
                recompute = {k: v for k, v in items.items() if k.startswith("recompute.")}
                rest = sum(items.values()) - sum(inputs.values()) - sum(recompute.values())
                T = st.batch_size * st.seq_len
                hidden = getattr(self.config, "hidden_size", None) or getattr(self.config, "n_embd", 0)
                rows += [("activations: checkpointed block inputs", sum(inputs.values()),
                          f"{len(inputs)} blocks x {T:,} tokens x {hidden:,} hidden x {e} bytes"),
                         ("activations: one block recomputed in backward", sum(recompute.values()),
                          "the largest block's saved tensors, its input excluded"),
                         ("activations: outside the blocks", rest,
                          "embeddings, final norm, head, loss (float32 log-probabilities), rotary tables")]
            else:
                inside = sum(v for k, v in items.items() if k.startswith("layer"))
                rows += [("activations: inside the blocks", inside, "every block's saved tensors"),
                         ("activations: outside the blocks", sum(items.values()) - inside,
                          "embeddings, final norm, head, loss")]
        total = sum(b for _, b, _ in rows)
        rows.append(("total", total, "the sum of the rows above" + ("" if m.activations_known else
                                                                    " (activations not estimated)")))
        df = pd.DataFrame(rows, columns=["component", "bytes", "how"])
        df.insert(2, "GB", df["bytes"] / GB)
        return df

    def assumptions(self) -> list[str]:
        """What the numbers assume, in sentences (each true of this plan's settings)."""
        st = self.settings
        e = DTYPES[st.dtype].itemsize
        out = [f"one training step on one device, batch {st.batch_size} x {st.seq_len} tokens, every tensor in "
               f"{st.dtype} ({e} bytes per number) unless said otherwise; GB = 10**9 bytes",
               f"optimizer {st.optimizer}: {OPTIMIZERS[st.optimizer]}"]
        out += [_default_reason(d, st) for d in st.defaulted]
        if st.quantize is not None:
            rate = _quantized_rate(st.quantize)
            out.append(f"LoRA side: the frozen nn.Linear weights inside the transformer blocks are stored in "
                       f"{st.quantize} at {rate} (workbench.lora.quantize.quantized_bytes_per_weight); the "
                       f"embeddings, norms, biases, output layer and the adapters stay in {st.dtype}"
                       + (f"; each NF4 layer also keeps {NF4_LAYER_TABLE_BYTES:,} bytes of code books"
                          if st.quantize == "nf4" else ""))
            out.append("full side: not quantized (full fine-tuning trains every weight, which quantized weights "
                       "cannot be)")
        if st.gradient_checkpointing:
            out.append("gradient checkpointing on every block: activations = each block's input (B x S x H) + what "
                       "is saved outside the blocks + the largest block's activations, recomputed in backward")
        else:
            out.append("no gradient checkpointing: every block's activations are held until backward")
        out.append(f"activations for device {st.device!r} kernels (sdpa's fused attention for Llama-style models), "
                   f"{'a padded' if st.padded else 'an unpadded'} batch"
                   + (", dropout as in the config" if st.dropout else ", no dropout"))
        out.append("not counted: the CUDA context and allocator fragmentation, temporaries that live within one "
                   "operation (a dequantized weight during its matmul, the bf16 logits before their float32 copy), "
                   "and gradients in flight during backward")
        return out

    def summary(self) -> str:
        """A few lines for people: counts, then memory."""
        s = self.settings
        extra = (f", {s.quantize} base" if s.quantize else "") + (", gradient checkpointing" if s.gradient_checkpointing else "")
        lines = [
            f"{s.architecture} ({s.model_class}, {s.task}), batch {s.batch_size} x {s.seq_len} tokens, "
            f"{s.dtype}, {s.optimizer}, {s.device}{extra}",
            f"  total parameters      {self.full.total:>18,}",
            f"  {self.lora_label}: trainable {self.lora.trainable:,} "
            f"(adapters {self.lora.adapter_params:,} + head {self.lora.head_params:,}), "
            f"{100 * self.lora.trainable / max(self.lora.total, 1):.4f}% of {self.lora.total:,}",
            f"  full fine-tuning: trainable {self.full.trainable:,}",
        ]
        for side, m in (("LoRA", self.lora), ("full", self.full)):
            act = "n/a" if m.activations is None else f"{m.memory.activations / GB:.3f}"
            total = f"{m.total_bytes / GB:.3f} GB" if m.total_bytes is not None else \
                f"{m.static_bytes / GB:.3f} GB without activations"
            lines.append(f"  {side:>4}: weights {m.memory.weights / GB:.3f} + gradients {m.memory.gradients / GB:.3f}"
                         f" + optimizer {m.memory.optimizer / GB:.3f} + activations {act} = {total}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def compare(self, measured: Mapping[str, MemoryBreakdown]) -> pd.DataFrame:
        """Estimate against a measurement (``measure(plan)``): MB (10**6 bytes) and error in %.

        One block per method ("lora", "full") of ``memory_study.compare_breakdowns``, the
        one measure-beside-estimate table: columns ``method``, ``component``, ``measured MB``,
        ``estimated MB``, ``error %`` = 100 * (estimate - measured) / measured.  Unknown
        activations (no formula for the architecture) are NaN, and so is their total.
        """
        blocks = []
        for method in ("lora", "full"):
            if method not in measured:
                continue
            est = getattr(self, method)
            table = compare_breakdowns(measured[method], est.memory,
                                       unestimated=() if est.activations_known else ("activations",))
            table.insert(0, "method", method)
            blocks.append(table)
        if not blocks:
            raise ValueError(f"measured must hold 'lora' and/or 'full' (from measure(plan)), got {sorted(measured)}")
        return pd.concat(blocks, ignore_index=True)

    def figure(self) -> Figure:
        """Stacked bars, LoRA beside full fine-tuning: weights, gradients, optimizer, activations (GB).

        When the architecture has no activation formula, the bars hold the three exact
        parts and say "activations: no estimate".
        """
        s = self.settings
        fig = Figure(figsize=(6.4, 4.4), layout="constrained", facecolor=STYLE["face_color"])
        ax = fig.add_subplot()
        style_axes(ax, grid_axis="y")
        sides = (self.lora, self.full)
        x = np.arange(2, dtype=float)
        bottoms = np.zeros(2)
        for attr, label, color in MEMORY_COMPONENTS:
            h = np.array([getattr(m.memory, attr) / GB for m in sides], dtype=float)
            ax.bar(x, h, 0.55, bottom=bottoms, color=color, label=label, edgecolor="white", linewidth=0.6)
            bottoms += h
        for i, m in enumerate(sides):
            note = format_bytes(bottoms[i] * GB) + ("" if m.activations_known else "\n+ activations: no estimate")
            ax.annotate(note, (x[i], bottoms[i]), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=STYLE["annotation_size"], color=STYLE["text_color"])
        edge = [rank_color(s.lora.rank), FULL_COLOR]
        ticks = [f"{self.lora_label}\n{format_count(self.lora.trainable)} trainable",
                 f"full fine-tuning\n{format_count(self.full.trainable)} trainable"]
        ax.set_xticks(x, ticks)
        for tick, c in zip(ax.get_xticklabels(), edge):
            tick.set_color(c)
        ax.set_xlim(-0.7, 1.7)
        ax.set_ylim(0, max(float(bottoms.max()), 1e-12) * 1.25)
        ax.set_title(f"{s.architecture}: memory of one training step\nbatch {s.batch_size} x {s.seq_len} tokens, "
                     f"{s.dtype}, {s.optimizer} (estimate)", fontsize=STYLE["title_size"],
                     color=STYLE["text_color"], loc="left")
        ax.set_ylabel("memory (GB, 1 GB = 10⁹ bytes)", fontsize=STYLE["label_size"], color=STYLE["text_color"])
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], fontsize=STYLE["legend_size"], framealpha=0.9,
                  edgecolor=STYLE["grid_color"], loc="upper left")
        return fig


# ------------------------------------------------------------------ planning


def quantized_linears(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{path: (numel, in_features)} of the weights a quantized base stores in 4 or 8 bits.

    The rule of ``workbench.lora.quantize.quantize_model`` (and of transformers'
    bitsandbytes loading): every plain ``nn.Linear`` inside the numbered transformer blocks;
    embeddings, norms, biases, the pooler and the output layer (``lm_head``, a classifier)
    stay in the compute dtype.  Read on the base model, before LoRA is injected.
    """
    return {n: (m.weight.numel(), m.in_features) for n, m in model.named_modules()
            if type(m) is nn.Linear and layer_index(n) is not None and n.rpartition(".")[2] not in OUTPUT_NAMES}


def _quantized_weight_bytes(linears: Mapping[str, tuple[int, int]], quantize: str) -> int:
    """sum over the quantized weights of numel * ``quantized_bytes_per_weight`` (codes and block
    constants), plus for NF4 the code books every layer keeps (``NF4_LAYER_TABLE_BYTES``, 1,092)."""
    per_weight = sum(n * quantized_bytes_per_weight(quantize, fan_in) for n, fan_in in linears.values())
    tables = NF4_LAYER_TABLE_BYTES * len(linears) if quantize == "nf4" else 0
    return round(per_weight) + tables


def _side(model: nn.Module, method: str, s: torch.dtype, optimizer: str, batch_size: int, seq_len: int,
          *, dropout: bool, device: str, padded: bool, gradient_checkpointing: bool = False,
          quantize: str | None = None, linears: Mapping[str, tuple[int, int]] | None = None,
          ) -> tuple[MethodPlan, str | None]:
    """Count and estimate the model as it stands (its requires_grad flags say what trains).

    ``quantize`` with ``linears`` (``quantized_linears`` of the base): those frozen weights
    cost ``quantized_bytes_per_weight`` instead of ``s`` bytes each."""
    params = list(model.parameters())  # a tied weight appears once
    train = [p for p in params if p.requires_grad]
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in train)
    weights = sum(p.numel() * p.element_size() for p in params)
    q_params = q_bytes = 0
    if quantize is not None:
        q_params = sum(n for n, _ in linears.values())
        q_bytes = _quantized_weight_bytes(linears, quantize)
        weights += q_bytes - q_params * s.itemsize
    grads = sum(p.numel() * p.element_size() for p in train)
    opt = optimizer_state_estimate(optimizer, [p.numel() for p in train], s.itemsize)
    adapters = sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and ".lora_" in name)
    heads = head_names(model)
    head = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters() if p.requires_grad)
    note = None
    try:
        items = estimate_activation_bytes(model, batch_size, seq_len, dropout=dropout, device=device,
                                          dtype=s, padded=padded, gradient_checkpointing=gradient_checkpointing)
        known = True
    except ValueError as e:  # no formula for this architecture (inputs were checked before)
        items, known, note = {}, False, str(e)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALayer)]
    mem = MemoryBreakdown(weights=weights, gradients=grads, optimizer=opt,
                          activations=sum(items.values()), peak=None, peak_kind="estimate")
    return MethodPlan(method=method, trainable=trainable, total=total, memory=mem, activations_known=known,
                      adapter_params=adapters, head_params=head if method == "lora" else 0,
                      trainable_tensors=len(train), bytes_per_element=s.itemsize, wrapped=wrapped,
                      activation_items=items, quantized_params=q_params, quantized_bytes=q_bytes,
                      quantized_layers=len(linears) if quantize is not None else 0), note


def plan(
    config: Any,
    lora: LoRAConfig | None = None,
    /,
    *,
    method: str = "lora",
    batch_size: int = 1,
    seq_len: int = 512,
    dtype: torch.dtype | str | None = None,
    optimizer: str | None = None,
    task: str | None = None,
    num_labels: int = 2,
    device: str = "cpu",
    dropout: bool = True,
    padded: bool = True,
    name: str | None = None,
    quantize: str | None = None,
    gradient_checkpointing: bool = False,
    **lora_settings: Any,
) -> Plan:
    """Parameters and training memory of LoRA and of full fine-tuning, from a config alone.

    ``config``: a ``transformers`` config, a shipped name (``shipped_architectures()``), a
    local folder or config file, or a Hub name (needs a network).  The LoRA settings come
    as a ``LoRAConfig`` or as its fields by name (``plan("gpt2", rank=8, alpha=16,
    targets=("query", "value"))``; LoRA's own dropout only through ``LoRAConfig(dropout=...)``,
    since ``dropout`` here is the base model's).  The roles "query", "key", "value" in the
    targets are mapped to this architecture's names (``q_proj``, GPT-2's fused ``c_attn``).
    ``method`` picks which side ``.trainable``/``.total``/``.memory`` report; both are
    always computed.  ``task``: None for the architecture's natural one (classification
    for encoders, causal-lm for decoders), or one of ``TASKS``.  ``dtype``: the weights,
    gradients and activations are in that dtype (the optimizer state as ``optimizer``
    says).  Default (None): bf16 when ``quantize`` is given (QLoRA computes in bf16 on its
    quantized base), fp32 otherwise.  ``device``, ``dropout``, ``padded``: the
    activation estimate's assumptions (``workbench.engine.memory.estimate_memory``).
    ``name`` labels the plan (default: the shipped name, the Hub name, or the config's
    model type).

    ``optimizer``: one of ``workbench.engine.memory.OPTIMIZERS``: torch's "adamw" keeps its
    moments in the parameters' dtype; bitsandbytes' "adamw-32bit" keeps them in float32
    (the usual mixed-precision accounting), "adamw-8bit" in blockwise 8 bits, and the
    "paged-" ones have the same bytes (counted on the GPU; they can spill to CPU memory).
    Default (None): "adamw-32bit" for a 16-bit plan (bf16/fp16), because 16-bit training
    keeps AdamW's moments in float32 (2 + 2 + 8 = 12 bytes per trained parameter for weight,
    gradient and moments, the QLoRA paper's "16-bit finetuning" count); "adamw" for fp32,
    where both keep float32 moments (torch's adds a 4-byte step counter per tensor).  Pass
    ``optimizer="adamw"`` for torch's AdamW on 16-bit parameters (moments in 16 bits).
    ``Plan.assumptions()`` says which settings were defaulted, and to what.
    ``quantize``: None, "nf4" or "int8": QLoRA's frozen base.  The frozen ``nn.Linear``
    weights of the transformer blocks (``quantized_linears``) cost
    ``workbench.lora.quantize.quantized_bytes_per_weight`` bytes each (NF4 with double
    quantization: 4.127 bits; int8: 8 + 32 / in_features bits); embeddings, norms, biases,
    the output layer and the adapters stay in ``dtype``.  Applies to the LoRA side only:
    full fine-tuning cannot train quantized weights (``method="full"`` with ``quantize`` is
    refused; the ``full`` side of a quantized plan is unquantized).
    ``gradient_checkpointing``: every block checkpointed; activations per
    ``workbench.engine.memory.checkpointed_activations``.  ``Plan.breakdown()`` and
    ``Plan.assumptions()`` state the result and what it assumes.
    """
    lora = LoRAConfig.build(lora, **lora_settings)
    check_choice("method", method, ("lora", "full"))
    for what, value in (("batch_size", batch_size), ("seq_len", seq_len), ("num_labels", num_labels)):
        check_positive_int(what, value)
    if optimizer is not None:
        check_choice("optimizer", optimizer, tuple(OPTIMIZERS))
    quantize = check_quantize(quantize)
    if quantize is not None and method == "full":
        raise ValueError(f"quantize={quantize!r} needs method='lora': full fine-tuning trains every weight, and "
                         "quantized weights cannot be trained (QLoRA trains LoRA adapters on a frozen quantized "
                         "base); plan full fine-tuning with quantize=None")
    if not isinstance(gradient_checkpointing, bool):
        raise ValueError(f"gradient_checkpointing must be True or False, not {gradient_checkpointing!r}")
    if task is not None:
        check_choice("task", task, TASKS)
    check_choice("device", device, ("cpu", "cuda"))
    s, optimizer, defaulted = _resolve_defaults(dtype, optimizer, quantize)
    cfg, label, natural = load_config(config)
    label = name or label
    task = task or natural or _natural_task(cfg)
    if task == "classification":
        cfg.num_labels = num_labels  # cfg is the plan's own copy
    model = build_meta_model(cfg, task, num_labels, s)
    notes: list[str] = []
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    if isinstance(limit, int) and seq_len > limit:
        notes.append(f"seq_len {seq_len} is longer than the model's {limit} positions: the shapes are "
                     "planned as asked, but the real model cannot take such sequences")

    for p in model.parameters():
        p.requires_grad_(True)
    kw = dict(dropout=dropout, device=device, padded=padded, gradient_checkpointing=gradient_checkpointing)
    full, full_note = _side(model, "full", s, optimizer, batch_size, seq_len, **kw)
    linears = quantized_linears(model) if quantize is not None else None
    if quantize is not None and not linears:
        raise ValueError(f"{label} has no nn.Linear layers inside its transformer blocks to quantize (GPT-2 "
                         "style models use Conv1D, which bitsandbytes does not quantize)")

    resolved, target_notes = resolve_targets(model, lora.targets)
    notes += target_notes
    lora = lora.replace(targets=resolved)
    add_lora(model, lora)
    lora_side, lora_note = _side(model, "lora", s, optimizer, batch_size, seq_len, quantize=quantize,
                                 linears=linears, **kw)
    for note in dict.fromkeys(n for n in (full_note, lora_note) if n):  # each message once
        notes.append(f"activations not estimated: {note}")
    if not (lora_side.activations_known and full.activations_known):
        notes.append("weights, gradients and optimizer state are exact closed forms for any architecture; "
                     "workbench.engine.memory has activation formulas for BERT-style encoders, GPT-2-style decoders "
                     "and Llama-style decoders (Llama, Qwen2, Mistral)")
    settings = PlanSettings(
        architecture=label, model_class=type(model).__name__, task=task, method=method, lora=lora,
        batch_size=batch_size, seq_len=seq_len, dtype=_DTYPE_LABEL[s], optimizer=optimizer,
        num_labels=num_labels, device=device, dropout=dropout, padded=padded, quantize=quantize,
        gradient_checkpointing=gradient_checkpointing, defaulted=defaulted,
    )
    return Plan(settings=settings, lora=lora_side, full=full, config=cfg, notes=notes)


def _resolve_defaults(dtype: Any, optimizer: str | None, quantize: str | None
                      ) -> tuple[torch.dtype, str, tuple[str, ...]]:
    """(dtype, optimizer, the names of those that were defaulted), as ``plan`` documents:
    dtype None -> bf16 with ``quantize`` (QLoRA's compute dtype), else fp32; optimizer None ->
    "adamw-32bit" for a 16-bit dtype (float32 moments, as mixed precision keeps them), else
    "adamw"."""
    defaulted: list[str] = []
    if dtype is None:
        s = torch.bfloat16 if quantize is not None else torch.float32
        defaulted.append("dtype")
    else:
        s = _parse_dtype(dtype)
    if optimizer is None:
        optimizer = "adamw-32bit" if s.itemsize == 2 else "adamw"
        defaulted.append("optimizer")
    return s, optimizer, tuple(defaulted)


def _default_reason(setting: str, st: "PlanSettings") -> str:
    """Why a defaulted setting has its value, in words (for ``Plan.assumptions``)."""
    if setting == "dtype":
        why = ("with quantize: QLoRA computes in bf16 on its quantized base" if st.quantize is not None
               else "without quantize")
        return f"dtype {st.dtype} is the default {why} (pass dtype= to change it)"
    if st.optimizer == "adamw-32bit":
        return (f"optimizer adamw-32bit is the default for a 16-bit plan: mixed-precision training keeps AdamW's "
                f"moments in float32, so weight + gradient + moments = 2 + 2 + 8 = 12 bytes per trained parameter "
                f"(pass optimizer='adamw' for torch's AdamW, whose moments would be {st.dtype})")
    return "optimizer adamw is the default for an fp32 plan (torch's AdamW: float32 moments)"


def _quantized_rate(quantize: str) -> str:
    """The bytes per quantized weight in words, from ``workbench.lora.quantize``'s constants."""
    if quantize == "nf4":
        return (f"{nf4_bits_per_weight():.3f} bits = 4-bit code + 8-bit absmax per 64 + fp32 scale per 64 x 256 "
                f"(NF4 with double quantization)")
    return "(8 + 32 / in_features) bits = int8 code + fp32 scale per output row (LLM.int8)"


def _optimizer_rate(optimizer: str, e: int) -> str:
    """How ``optimizer_state_estimate`` counts, in a few words, for parameters of ``e`` bytes."""
    return {"adamw": f"2 moments x {e} bytes per trained number + 4 bytes per tensor",
            "adam": f"2 moments x {e} bytes per trained number + 4 bytes per tensor",
            "sgd": "no state", "sgd-momentum": f"1 buffer x {e} bytes per trained number",
            "adamw-32bit": "2 moments x 4 bytes (float32) per trained number",
            "paged-adamw-32bit": "2 moments x 4 bytes (float32) per trained number, paged",
            "adamw-8bit": "2 moments x 1 byte + 2 x 4 bytes per 256 numbers (absmax); float32 under 4096 numbers",
            "paged-adamw-8bit": "2 moments x 1 byte + 2 x 4 bytes per 256 numbers (absmax); float32 under 4096 "
                                "numbers; paged"}[optimizer]


def _adapted_roles(targets: Sequence[str] | str) -> str:
    """What the resolved targets adapt, in the paper's words: GPT-2's fused ``c_attn`` is
    query, key and value together (not the paper's W_q and W_v alone)."""
    if isinstance(targets, str):
        return targets
    names = {"c_attn": "query+key+value (fused c_attn)", "q_proj": "query", "k_proj": "key", "v_proj": "value"}
    return ", ".join(names.get(t, t) for t in targets)


def plan_table(plans: Iterable[Plan]) -> pd.DataFrame:
    """One row per plan: parameter counts and LoRA vs full memory in GB (10**9 bytes).

    ``published`` is the size the architecture's authors give (shipped architectures).
    Two memory comparisons, never mixed in one column: ``LoRA (GB)``, ``full (GB)`` and
    ``full / LoRA`` count weights + gradients + optimizer state (known for every
    architecture); the ``... + activations`` columns add the estimated activations, and are
    NaN where no activation formula exists (``activations`` says which).  ``LoRA adapts``
    names the layers the role names resolved to (GPT-2's fused ``c_attn`` is query, key
    and value together).
    """
    rows = []
    for p in plans:
        if not isinstance(p, Plan):
            raise TypeError(f"plan_table takes Plan objects, got {type(p).__name__}")
        s = p.settings
        try:
            published = architecture(s.architecture).published_as
        except ValueError:
            published = ""
        known = p.lora.activations_known and p.full.activations_known
        lora_gb, full_gb = p.lora.static_bytes / GB, p.full.static_bytes / GB
        lora_act = p.lora.memory.total / GB if known else np.nan
        full_act = p.full.memory.total / GB if known else np.nan
        rows.append({
            "architecture": s.architecture,
            "model class": s.model_class,
            "total params": p.full.total,
            "published": published,
            "LoRA targets": s.lora.targets_text(),
            "LoRA adapts": _adapted_roles(s.lora.targets),
            "LoRA adapter params": p.lora.adapter_params,
            "LoRA trainable": p.lora.trainable,
            "LoRA (GB)": lora_gb,
            "full (GB)": full_gb,
            "full / LoRA": full_gb / lora_gb if lora_gb else np.nan,
            "LoRA + activations (GB)": lora_act,
            "full + activations (GB)": full_act,
            "full / LoRA with activations": full_act / lora_act if known and lora_act else np.nan,
            "activations": "estimated" if known else "not estimated",
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ precision recipes


@dataclass(frozen=True)
class Recipe:
    """Bytes per parameter under a training precision recipe.

    weights: every parameter (frozen ones too) in the compute dtype; gradients and
    ``optimizer`` (which includes an fp32 master copy where the recipe keeps one) for the
    trained parameters only:  memory = total * weight + trainable * (gradient + optimizer).
    """

    name: str
    weight: int
    gradient: int
    optimizer: int
    description: str

    def bytes(self, total: int, trainable: int) -> int:
        return total * self.weight + trainable * (self.gradient + self.optimizer)


PRECISION_RECIPES: tuple[Recipe, ...] = (
    Recipe("fp32", 4, 4, 8, "everything in float32; Adam's two moments 4 + 4 bytes"),
    Recipe("16-bit", 2, 2, 4, "weights, gradients and both Adam moments in fp16/bf16 (what plan(dtype='fp16', "
                              "optimizer='adamw') assumes: torch's AdamW on 16-bit parameters)"),
    Recipe("mixed", 2, 2, 12, "fp16 weights and gradients; fp32 master copy and fp32 Adam moments of the "
                              "trained weights (4 + 4 + 4 bytes): the usual mixed-precision recipe"),
)


def precision_table(p: Plan, recipes: Sequence[Recipe] = PRECISION_RECIPES) -> pd.DataFrame:
    """Weights + gradients + optimizer state (no activations) under each recipe, in GB.

    Uses the plan's counts: full = total * (w + g + o); LoRA = total * w + trainable * (g + o).
    The Adam step counters (a few bytes per tensor) are left out.
    """
    rows = []
    for r in recipes:
        full = r.bytes(p.full.total, p.full.trainable)
        lora = r.bytes(p.lora.total, p.lora.trainable)
        rows.append({"recipe": r.name, "bytes per weight / gradient / optimizer": f"{r.weight} / {r.gradient} / {r.optimizer}",
                     "full (GB)": full / GB, "LoRA (GB)": lora / GB, "full / LoRA": full / lora,
                     "what it assumes": r.description})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ will it fit

#: The QLoRA paper's headline (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of
#: Quantized LLMs", arXiv:2305.14314, abstract and section 1): "regular 16-bit finetuning
#: of a LLaMA 65B parameter model requires more than 780 GB of GPU memory"; QLoRA
#: "reduces the average memory requirements of finetuning a 65B parameter model from
#: >780GB of GPU memory to <48GB".  The two plans that reproduce it from the config alone
#: are issue 11's calls, verbatim: ``plan(QLORA_PAPER_65B["architecture"], **QLORA_PAPER_65B["qlora"])``
#: (``method="lora", quantize="nf4", gradient_checkpointing=True, batch_size=1, seq_len=512``)
#: and ``**QLORA_PAPER_65B["full"]`` (``method="full", dtype="bf16"``, the same checkpointing,
#: batch and length).  Everything else is ``plan``'s defaults: with ``quantize`` the dtype is
#: bf16, a 16-bit plan's optimizer is AdamW with float32 moments ("adamw-32bit"), so full
#: fine-tuning costs 2 + 2 + 8 = 12 bytes per parameter (65.3B x 12 = 783 GB, the paper's
#: ">780 GB", which counts no activations: it holds with or without checkpointing), and the
#: LoRA settings are ``LoRAConfig``'s (r = 8 on query and value).  ``["qlora_recipe"]`` is
#: QLoRA as the paper trains it: LoRA r = 64 (alpha 16) on every linear layer of the blocks,
#: paged AdamW with 32-bit states, one unpadded sequence on CUDA's kernels; it is under
#: 48 GB too.  Left out: the paper's LoRA dropout (0.05 or 0.1), whose masks in the
#: recomputed block add under 0.1 GB at this size.
QLORA_PAPER_65B: dict[str, Any] = {
    "architecture": "llama-1-65b",
    "full_16bit_more_than": 780e9,
    "qlora_less_than": 48e9,
    "qlora": dict(method="lora", quantize="nf4", gradient_checkpointing=True, batch_size=1, seq_len=512),
    "full": dict(method="full", dtype="bf16", gradient_checkpointing=True, batch_size=1, seq_len=512),
    "qlora_recipe": dict(method="lora", quantize="nf4", gradient_checkpointing=True, batch_size=1, seq_len=512,
                         rank=64, alpha=16.0, targets="all-linear", optimizer="paged-adamw-32bit",
                         device="cuda", padded=False),
}

#: GPU memory sizes the "will it fit" table asks about (GB = 10**9 bytes, as the planner writes).
GPU_SIZES_GB: tuple[int, ...] = (16, 24, 48, 80)

#: The three ways of fine-tuning the "will it fit" table compares: full fine-tuning in 16 bits
#: (bf16 weights and gradients, float32 Adam moments), LoRA with the QLoRA paper's settings on
#: a bf16 base, and the same LoRA on an NF4 base (QLoRA).  All with gradient checkpointing.
FIT_METHODS: dict[str, dict[str, Any]] = {
    "full bf16": dict(method="full", dtype="bf16", optimizer="adamw-32bit", gradient_checkpointing=True),
    "LoRA bf16": dict(method="lora", dtype="bf16", optimizer="paged-adamw-32bit", gradient_checkpointing=True,
                      rank=64, alpha=16.0, targets="all-linear"),
    "QLoRA NF4": dict(method="lora", dtype="bf16", optimizer="paged-adamw-32bit", gradient_checkpointing=True,
                      rank=64, alpha=16.0, targets="all-linear", quantize="nf4"),
}


def fit_table(architectures: Sequence[str], *, methods: Mapping[str, Mapping[str, Any]] | None = None,
              gpus_gb: Sequence[float] = GPU_SIZES_GB, batch_size: int = 1, seq_len: int = 512,
              device: str = "cuda") -> pd.DataFrame:
    """Will it fit: one row per architecture x method, the planned memory and a column per GPU size.

    ``methods``: {name: ``plan`` keyword arguments} (default ``FIT_METHODS``).  Columns:
    ``architecture``, ``parameters``, ``method``, ``trainable``, ``weights (GB)``,
    ``gradients + optimizer (GB)``, ``activations (GB)``, ``total (GB)``, then
    ``fits N GB`` (total <= N * 10**9 bytes) for each GPU size.  A total is the plan's
    estimate of tensors alone (``Plan.assumptions``): a GPU also holds the CUDA context and
    allocator slack, so a row that fits with a small margin is a candidate, not a promise.
    An architecture without an activation formula is refused (its total would be unknown).
    Each batch is ``batch_size`` unpadded sequences of exactly ``seq_len`` tokens.
    """
    methods = dict(FIT_METHODS if methods is None else methods)
    if not methods:
        raise ValueError("fit_table needs at least one method")
    gpus = [float(g) for g in gpus_gb]
    if not gpus or any(not np.isfinite(g) or g <= 0 for g in gpus):
        raise ValueError(f"gpus_gb must be positive sizes in GB, got {list(gpus_gb)!r}")
    rows = []
    for arch in architectures:
        for name, kwargs in methods.items():
            p = plan(arch, **({"batch_size": batch_size, "seq_len": seq_len, "device": device, "padded": False}
                              | dict(kwargs)))
            m = p.chosen
            if not m.activations_known:
                raise ValueError(f"{arch}: no activation formula, so no total to compare with a GPU ({p.notes})")
            row = {"architecture": p.settings.architecture, "parameters": p.full.total, "method": name,
                   "trainable": m.trainable, "weights (GB)": m.memory.weights / GB,
                   "gradients + optimizer (GB)": (m.memory.gradients + m.memory.optimizer) / GB,
                   "activations (GB)": m.memory.activations / GB, "total (GB)": m.memory.total / GB}
            for g in gpus:
                row[f"fits {g:g} GB"] = bool(m.memory.total <= g * GB)
            rows.append(row)
    return pd.DataFrame(rows)


def fit_figure(table: pd.DataFrame, gpus_gb: Sequence[float] | None = None) -> Figure:
    """Horizontal bars of ``fit_table``'s totals (log scale), one group per architecture, with
    a vertical line at each GPU size: a bar left of a line fits that GPU."""
    needed = {"architecture", "method", "total (GB)"}
    if not needed <= set(table.columns):
        raise ValueError(f"fit_figure needs a fit_table with columns {sorted(needed)}, got {list(table.columns)}")
    if gpus_gb is None:
        gpus_gb = [float(c[len("fits "):-len(" GB")]) for c in table.columns if c.startswith("fits ")]
    archs = list(dict.fromkeys(table["architecture"]))
    methods = list(dict.fromkeys(table["method"]))
    colors = {m: c for m, c in zip(methods, (FULL_COLOR, rank_color(8), rank_color(64), "#7a7a7a", "#444444"))}
    fig = Figure(figsize=(8.6, 0.3 * len(archs) * len(methods) + 1.6), layout="constrained",
                 facecolor=STYLE["face_color"])
    ax = fig.add_subplot()
    style_axes(ax, grid_axis="x")
    height = 0.8 / len(methods)
    for i, arch in enumerate(archs):
        for j, method in enumerate(methods):
            sel = table[(table["architecture"] == arch) & (table["method"] == method)]
            if sel.empty:
                continue
            total = float(sel["total (GB)"].iloc[0])
            y = i + (j - (len(methods) - 1) / 2) * height
            ax.barh(y, total, height * 0.9, color=colors[method], label=method if i == 0 else None)
            ax.annotate(f"{total:,.1f}", (total, y), xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=STYLE["annotation_size"], color=STYLE["text_color"])
    for g in gpus_gb:
        ax.axvline(g, color=STYLE["text_color"], linewidth=0.8, linestyle="--", alpha=0.6)
        ax.annotate(f"{g:g}", (g, 1.0), xycoords=ax.get_xaxis_transform(), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom",
                    fontsize=STYLE["annotation_size"], color=STYLE["text_color"])
    ax.set_xscale("log")
    ax.set_yticks(range(len(archs)), archs)
    ax.invert_yaxis()
    ax.set_xlabel("memory of one training step (GB, 10⁹ bytes; log scale); dashed: GPU sizes in GB",
                  fontsize=STYLE["label_size"], color=STYLE["text_color"])
    ax.set_title("Will it fit? Planned memory of one step (estimate, tensors only)", pad=16,
                 fontsize=STYLE["title_size"], color=STYLE["text_color"], loc="left")
    ax.legend(fontsize=STYLE["legend_size"], framealpha=0.9, edgecolor=STYLE["grid_color"], loc="center left",
              bbox_to_anchor=(1.01, 0.5))
    return fig


# ------------------------------------------------------------------ measuring


_MAX_MEASURE_BYTES = 2 * 10**9  # a real model above this is not built here


def _batch(p: Plan, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Random token ids; when ``padded``, the last sequence is half padding (mask 0)."""
    s = p.settings
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, max(vocab, 6), (s.batch_size, s.seq_len), generator=g)
    mask = torch.ones_like(ids)
    if s.padded:
        mask[-1, max(1, s.seq_len // 2):] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if s.task == "classification":
        batch["labels"] = torch.randint(0, s.num_labels, (s.batch_size,), generator=g)
    elif s.task == "causal-lm":
        batch["labels"] = ids.masked_fill(mask == 0, -100)
    return batch


def measure(p: Plan, model: nn.Module | None = None, seed: int = 0) -> dict[str, MemoryBreakdown]:
    """One real training step for each side of a plan, accounted exactly: {"lora", "full"}.

    ``model``: a real model of the plan's config (e.g. the bundled MiniLM, loaded with its
    weights); it is copied, not changed.  Without it the model is built from the plan's
    config with random weights: memory depends on shapes, not values.  Small models
    only (weights up to 2 GB).  Each side is measured by ``memory_study.measure_step``
    (the memory study's measured step): forward with the model in train mode (dropout on
    when ``settings.dropout``), backward, one step of ``settings.optimizer``; with
    ``settings.gradient_checkpointing`` every block is checkpointed and the recomputation
    in backward is measured too; with ``settings.quantize`` the LoRA side's base is
    quantized by bitsandbytes first (``workbench.lora.quantize.quantize_model``).  On
    CUDA (``plan(..., device="cuda")``) each side also reports the allocator's peak (max
    allocated after a reset), which ``Plan.compare`` lists beside the tensor accounting.
    """
    if not isinstance(p, Plan):
        raise TypeError(f"measure takes a Plan, got {type(p).__name__}")
    s = p.settings
    if p.full.memory.weights > _MAX_MEASURE_BYTES:
        raise ValueError(f"{s.architecture} has {p.full.memory.weights / GB:.1f} GB of weights: too big to "
                         f"measure here (limit {_MAX_MEASURE_BYTES / GB:.0f} GB); the plan is the estimate")
    if s.task == "base":
        raise ValueError("a 'base' plan has no head and no loss to train: plan with task='classification' "
                         "or 'causal-lm' to measure")
    if s.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("the plan is for device='cuda' but no CUDA device is available")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = DTYPES[s.dtype]
    if model is None:
        auto = AutoModelForSequenceClassification if s.task == "classification" else AutoModelForCausalLM
        cfg = copy.deepcopy(p.config)
        if s.task == "classification":
            cfg.num_labels = s.num_labels
        _quiet()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto.from_config(cfg)
    if getattr(model.config, "pad_token_id", None) is None and s.task == "classification":
        model.config.pad_token_id = 0  # GPT-2 classifiers need one to find the last token
    vocab = int(getattr(model.config, "vocab_size", 1000))
    batch = _batch(p, vocab, seed)
    out: dict[str, MemoryBreakdown] = {}
    for method in ("lora", "full"):
        m = copy.deepcopy(model).to(device=s.device, dtype=dtype)
        # Train mode runs dropout; eval mode is training with every dropout p = 0 (the
        # functional attention dropout of transformers reads self.training too).
        if s.dropout:
            m.train()
        else:
            m.eval()
        if method == "lora":
            if s.quantize is not None:
                from workbench.lora.quantize import quantize_model

                quantize_model(m, s.quantize, compute_dtype=dtype)
            add_lora(m, s.lora)
        else:
            m.requires_grad_(True)
        out[method] = measure_step(m, {k: v.to(s.device) for k, v in batch.items()}, s.optimizer, seed,
                                   gradient_checkpointing=s.gradient_checkpointing)
        del m
    return out


if __name__ == "__main__":  # pragma: no cover - a quick look: python -m workbench.lessons.planner NAME
    import sys

    for name in sys.argv[1:] or shipped_architectures():
        print(plan(name), end="\n\n")
