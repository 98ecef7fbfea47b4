"""What a run is asked to do (``RunConfig``) and what it measured (``RunResult``).

One dataclass each, so that the engine, the run store, the CLI, the plots and the
notebook panel all speak about runs in the same words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import pandas as pd

from workbench.engine.memory import MemoryBreakdown
from workbench.lora.config import LoRAConfig, split_settings
from workbench.lora.params import ParamCounts
from workbench.lora.quantize import check_quantize

# How a quantized base is named in labels and legends.
QUANTIZE_LABELS: dict[str, str] = {"nf4": "NF4", "int8": "int8"}
Method = Literal["lora", "full", "head"]
METHODS: tuple[str, ...] = ("lora", "full", "head")
# The columns of a run's curve (``RunResult.history``, the store's history.csv): one row per
# optimizer step, the evaluation columns filled at the steps that evaluated (NaN elsewhere).
# A language model's run (task "causal-lm") also fills the generative columns:
#   eval_exact_match  share of evaluation prompts whose greedy completion equals the reference
#   eval_perplexity   exp(eval_loss): the completion tokens' perplexity
#   heldout_loss      loss on held-out pretraining text (what adaptation made the model forget)
# and its eval_accuracy is the completion tokens' next-token accuracy.
GENERATIVE_COLUMNS: tuple[str, ...] = ("eval_exact_match", "eval_perplexity", "heldout_loss")
HISTORY_COLUMNS: tuple[str, ...] = ("step", "train_loss", "lr", "eval_loss", "eval_accuracy") + GENERATIVE_COLUMNS


@dataclass
class RunConfig:
    """Everything that determines a run; the same config and seed give the same loss curve.

    ``method``: "lora" (frozen base, low-rank updates on ``targets``, trained head),
    "full" (every weight trains) or "head" (frozen base, only the classifier head trains;
    classification only: a language model has no head of its own to train apart).

    ``task``: "classification" (a label per text) or "causal-lm" (a model that writes:
    prompt/completion pairs with the loss on the completion, chats, or plain text; see
    ``workbench.engine.sft``).
    """

    method: Method = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # LoRA settings (ignored for "full" and "head")
    # QLoRA: the frozen base's block linears stored quantized with bitsandbytes ("nf4": 4-bit
    # NormalFloat with double quantization; "int8": LLM.int8), LoRA trains in float on top.
    # None: a float base.  Not with method "full" (quantized weights cannot train).
    quantize: str | None = None
    model_dropout: float | None = None  # the base model's own dropout layers; None keeps the checkpoint's (0.1 for BERT)
    # Model and data.
    model: str = "minilm"  # "minilm" (bundled), a tiny preset, a Hub name or a local folder
    task: Literal["classification", "causal-lm"] = "classification"
    data: str = "default"  # the bundled task, a CSV/TSV/JSONL path, or a `datasets` name
    eval_data: str | None = None  # None: a held-out split of `data` (or the bundled validation set)
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 64
    max_train_examples: int | None = None
    max_eval_examples: int | None = 500
    # Language models (task "causal-lm") only.
    heldout_data: str | None = "auto"  # text to measure forgetting on; "auto": the bundled LM's held-out text
    max_generate_examples: int | None = 100  # evaluation prompts answered by greedy generation (exact match)
    max_new_tokens: int = 24  # the longest answer generated at evaluation
    # Optimisation.
    steps: int = 100
    lr: float = 5e-4
    batch_size: int = 16
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    eval_every: int = 50  # 0: evaluate only at the end
    seed: int = 0
    # Hardware.
    device: str = "auto"  # "auto": CUDA when present, else CPU
    bf16: bool | str = "auto"  # "auto": on CUDA with bf16 support and on CPUs with AMX/AVX512-bf16
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    name: str | None = None  # a label for tables and legends; default built from the settings

    def __post_init__(self) -> None:
        if not isinstance(self.lora, LoRAConfig):
            raise TypeError(f"lora must be a LoRAConfig (e.g. LoRAConfig(rank=8)), got {type(self.lora).__name__}")
        check_quantize(self.quantize)
        if self.quantize is not None and self.method == "full":
            raise ValueError(f"quantize={self.quantize!r} stores the frozen base in {self.quantize}, and full "
                             "fine-tuning trains every weight, which quantized weights cannot: use method 'lora' "
                             "(QLoRA) or 'head' with quantize, or quantize=None for full fine-tuning")

    def label(self) -> str:
        """A short human label: 'LoRA r=8 (query,value)', 'full fine-tuning', 'head only'."""
        if self.name:
            return self.name
        if self.method == "full":
            return "full fine-tuning"
        base = f", {QUANTIZE_LABELS[self.quantize]} base" if self.quantize else ""
        if self.method == "head":
            return "head only" + base
        if self.quantize:  # QLoRA: the same label, the quantized base named
            return "Q" + self.lora.label() + base
        return self.lora.label()

    def slug(self) -> str:
        """The settings part of a run id: 'lora-r8', 'dora-r8-pissa', 'full', 'head' ('-nf4' with quantize)."""
        slug = self.lora.slug() if self.method == "lora" else self.method
        return f"{slug}-{self.quantize}" if self.quantize else slug

    def with_changes(self, **changes: Any) -> "RunConfig":
        """A copy with fields changed; LoRA settings (``rank=4``) go into ``lora``."""
        lora_changes, rest = split_settings(changes)
        if lora_changes and "lora" in rest:
            raise TypeError("give either lora=LoRAConfig(...) or LoRA settings such as rank=, not both")
        if lora_changes:
            rest["lora"] = self.lora.replace(**lora_changes)
        return replace(self, **rest)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = self.lora.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        """Build from a dict, ignoring keys this version does not know.

        Records written before ``lora`` was one field kept the LoRA settings at the top
        level (``rank``, ``alpha``, ...); those are read into ``lora``.
        """
        known = {f.name for f in fields(cls)}
        lora_flat, _ = split_settings(d)
        lora = d.get("lora")
        lora = LoRAConfig.from_dict(lora) if isinstance(lora, dict) else LoRAConfig.from_dict(lora_flat)
        return cls(**{k: v for k, v in d.items() if k in known and k != "lora"}, lora=lora)


@dataclass
class Timing:
    seconds_per_step: float  # median over training steps (excluding the first)
    tokens_per_second: float  # non-padding tokens per second of training
    total_seconds: float  # wall time of the run, loading and evaluation included


@dataclass
class RunResult:
    """A finished (or stopped, or diverged) run: its config, curve and measurements."""

    config: RunConfig
    status: Literal["running", "completed", "stopped", "diverged", "failed"]
    history: pd.DataFrame  # HISTORY_COLUMNS: step, train_loss, lr, eval_loss, eval_accuracy (NaN between evals)
    params: ParamCounts
    memory: MemoryBreakdown | None  # measured; None only for a stored run whose record has none
    timing: Timing
    message: str = ""
    run_id: str = ""
    path: str | None = None  # where the run store put it
    environment: dict[str, Any] = field(default_factory=dict)
    memory_estimate: MemoryBreakdown | None = None  # predicted from shapes alone, for the measured batch
    model: Any = field(default=None, repr=False)  # the trained model, when train(keep_model=True)
    # Language models: at each evaluation a few prompts with the model's answers
    # (dicts: step, prompt, reference, answer), so a run shows how its answers changed.
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        losses = self.history["train_loss"].dropna() if len(self.history) else []
        return float(losses.iloc[-1]) if len(losses) else float("nan")

    def last(self, column: str) -> float:
        """The last value a history column took (NaN when it has none)."""
        if not len(self.history) or column not in self.history:
            return float("nan")
        values = self.history[column].dropna()
        return float(values.iloc[-1]) if len(values) else float("nan")

    @property
    def eval_accuracy(self) -> float:
        return self.last("eval_accuracy")

    @property
    def eval_exact_match(self) -> float:
        return self.last("eval_exact_match")


# Ready-made sizes.  "default": the bundled model (a LoRA run took 6 to 7 s on an idle
# 2-core CPU, benchmarks/sweep.py; each run's time is measured and stored); on the bundled task LoRA (r=8, q,v) at lr 1e-3 leaves chance late (B starts at
# zero), so the preset runs 150 steps.  model_dropout=0: 150 steps see each of the 3,000
# examples at most once, so the base model's dropout has nothing to guard against, and with
# it LoRA reached 0.98 and 0.71 (seeds 0, 1) instead of 1.00 and 0.99 (data/README.md).
# "tiny": a few seconds, a 2-layer model built from a config (tests, smoke checks).
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(model="minilm", steps=150, batch_size=16, max_length=64, eval_every=50, lr=1e-3,
                    model_dropout=0.0),
    "tiny": dict(model="tiny-bert", steps=6, batch_size=8, max_length=32, eval_every=3,
                 max_train_examples=96, max_eval_examples=32, lr=1e-3),
    # A model that writes: the bundled story-lm learns the bundled skill (data/skill: turn a
    # statement into its yes/no question), exact match on held-out statements.
    # LoRA on every role of every block: on query and value alone the skill was learned to
    # 0.18 (lr 3e-3) and 0.51 (lr 1e-2) exact match in as many steps (data/README.md).
    "generate": dict(model="story-lm", task="causal-lm", data="skill", steps=250, batch_size=16, max_length=64,
                     eval_every=50, lr=3e-3,
                     lora=LoRAConfig(rank=8, alpha=16, targets=("query", "key", "value", "attention output",
                                                                "FFN in", "FFN out"))),
    # Real language models by name (downloaded once into the Hugging Face cache; needs a
    # network the first time): the same skill, LoRA on the attention's query and value
    # (GPT-2 computes q, k and v in one fused layer, so there all three).
    "smollm2": dict(model="HuggingFaceTB/SmolLM2-135M", task="causal-lm", data="skill", steps=200, batch_size=8,
                    max_length=64, eval_every=100, lr=5e-4, lora=LoRAConfig(rank=8, alpha=16,
                                                                            targets=("query", "value"))),
    "qwen2.5": dict(model="Qwen/Qwen2.5-0.5B", task="causal-lm", data="skill", steps=200, batch_size=8,
                    max_length=64, eval_every=100, lr=5e-4, lora=LoRAConfig(rank=8, alpha=16,
                                                                            targets=("query", "value"))),
    "gpt2": dict(model="gpt2", task="causal-lm", data="skill", steps=200, batch_size=8, max_length=64,
                 eval_every=100, lr=5e-4, lora=LoRAConfig(rank=8, alpha=16, targets=("query", "key", "value"))),
}


def preset(which: str, /, **overrides: Any) -> RunConfig:
    """A RunConfig from a named preset, with any field (``name`` too) overridden.

    LoRA settings may be given by name (``preset("default", rank=4, alpha=8)``): they go
    into the config's ``lora``, as ``RunConfig.with_changes`` does.
    """
    if which not in PRESETS:
        raise ValueError(f"unknown preset {which!r}; presets: {', '.join(PRESETS)}")
    return RunConfig(**PRESETS[which]).with_changes(**overrides)
