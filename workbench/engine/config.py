"""What a run is asked to do (``RunConfig``) and what it measured (``RunResult``).

One dataclass each, so that the engine, the run store, the CLI, the plots and the
notebook panel all speak about runs in the same words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

import pandas as pd

from workbench.engine import labels  # a run's names (label, slug) are built there
from workbench.engine.data import TASKS, Task
from workbench.engine.memory import MemoryBreakdown
from workbench.lora.config import LoRAConfig, split_settings
from workbench.lora.params import ParamCounts
from workbench.lora.quantize import check_quantize
from workbench.util.checks import (check_choice, check_integer, check_number, check_positive_int,
                                   check_positive_number, is_probability)

Method = Literal["lora", "full", "head"]
METHODS: tuple[str, ...] = get_args(Method)
# The columns of a run's curve (``RunResult.history``, the store's history.csv): one row per
# optimizer step, the evaluation columns filled at the steps that evaluated (NaN elsewhere).
# A language model's run (task "causal-lm") also fills the generative columns:
#   eval_exact_match  share of evaluation prompts whose greedy completion equals the reference
#   eval_perplexity   exp(eval_loss): the completion tokens' perplexity
#   heldout_loss      loss on held-out pretraining text (what adaptation made the model forget)
# and its eval_accuracy is the completion tokens' next-token accuracy.
GENERATIVE_COLUMNS: tuple[str, ...] = ("eval_exact_match", "eval_perplexity", "heldout_loss")
HISTORY_COLUMNS: tuple[str, ...] = ("step", "train_loss", "lr", "eval_loss", "eval_accuracy") + GENERATIVE_COLUMNS


def history_row(step: int, train_loss: float, lr: float, evaluation: dict[str, float] | None = None) -> dict[str, Any]:
    """One row of a run's curve, built here only (the loop, the worker and the Ray sweep all call this).

    A step that evaluated adds its ``evaluation`` (eval_loss, eval_accuracy and, for a
    language model, the generative columns); a step that did not leaves them out, and the
    curve's frame shows NaN there.
    """
    return {"step": step, "train_loss": train_loss, "lr": lr, **(evaluation or {})}


def history_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A run's curve (``RunResult.history``) from its rows: the HISTORY_COLUMNS, NaN where a step has no value."""
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


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
    task: Task = "classification"
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
    # Prompts answered at the evaluations before the last (None: as many as at the last, which
    # answers them all): the panel answers fewer while a run trains, so an evaluation is a
    # short pause, and every prompt at the end.
    interim_generate_examples: int | None = None
    max_new_tokens: int = 24  # the longest answer generated at evaluation
    # The training loss counts the completion's tokens only (TRL's completion_only_loss); False: the
    # prompt's tokens are learned too.  Evaluation always scores the completion only, so runs compare.
    completion_only_loss: bool = True
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
    bf16: bool | str = "auto"  # "auto": on CUDA with bf16; on AMX/AVX512-bf16 CPUs where a probe measured it faster
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    name: str | None = None  # a label for tables and legends; default built from the settings

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Every check a config allows without loading a model; say what is wrong and what is allowed.

        Runs when the config is made (and ``replace``/``with_changes`` make a new one); ``train``
        runs it again, since a dataclass's fields can be set after it was made.  What needs the
        model itself (does a target name match a layer, is a rank above a layer's width) is
        checked where the model is loaded.
        """
        if not isinstance(self.lora, LoRAConfig):
            raise TypeError(f"lora must be a LoRAConfig (e.g. LoRAConfig(rank=8)), got {type(self.lora).__name__}")
        check_choice("method", self.method, METHODS)
        check_choice("task", self.task, TASKS)
        check_quantize(self.quantize)
        if self.quantize is not None and self.method == "full":
            raise ValueError(f"quantize={self.quantize!r} stores the frozen base in {self.quantize}, and full "
                             "fine-tuning trains every weight, which quantized weights cannot: use method 'lora' "
                             "(QLoRA) or 'head' with quantize, or quantize=None for full fine-tuning")
        if self.quantize is not None and self.method == "lora" and (self.lora.dora or self.lora.init == "pissa"):
            variant = "DoRA" if self.lora.dora else "PiSSA"
            raise ValueError(f"{variant} reads and rewrites the base weight W in full precision, which a "
                             f"{self.quantize} base does not keep: use plain LoRA or LoRA+ on a quantized base "
                             "(dora=False, init='kaiming' or 'gaussian'), or quantize=None")
        if self.method == "head" and self.task != "classification":
            raise ValueError("method 'head' trains a classification head, and a language model (task 'causal-lm') "
                             "has none to train apart: choose method 'lora' or 'full'")
        for name in ("model", "data", "text_column", "label_column"):
            _check_text(name, getattr(self, name))
        for name in ("eval_data", "heldout_data", "name"):
            if getattr(self, name) is not None:
                _check_text(name, getattr(self, name), what="or None")
        check_positive_number("lr", self.lr, what="learning rate")  # first: the panel shows lr, steps, batch, seed
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size, what="batch size")
        check_positive_int("max_length", self.max_length)
        check_integer("max_length", self.max_length, 2, what="tokens per example: at least a token and its next")
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name), what="None keeps every example")
        check_number("warmup_ratio", self.warmup_ratio, 0, 1, high_open=True)
        check_number("weight_decay", self.weight_decay, 0)
        check_number("max_grad_norm", self.max_grad_norm, 0, what="0 turns clipping off")
        check_integer("eval_every", self.eval_every, 0, what="0 evaluates only at the end")
        check_integer("seed", self.seed)
        if self.threads is not None:
            check_positive_int("threads", self.threads, what="None keeps torch's default")
        if self.model_dropout is not None and not is_probability(self.model_dropout):
            raise ValueError("model_dropout must be None (the checkpoint's own) or a probability in [0, 1), "
                             f"got {self.model_dropout!r}")
        if not isinstance(self.completion_only_loss, bool):
            raise ValueError(f"completion_only_loss must be True (the loss counts the completion only) or False "
                             f"(the prompt's tokens are learned too), got {self.completion_only_loss!r}")
        if self.bf16 != "auto" and not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be True, False or 'auto', got {self.bf16!r}")
        _check_device(self.device)
        if self.task == "causal-lm":
            if self.max_generate_examples is not None:
                check_integer("max_generate_examples", self.max_generate_examples, 0,
                              what="0 or None: None answers every evaluation prompt, 0 none")
            check_positive_int("max_new_tokens", self.max_new_tokens, what="the longest answer generated")
            if self.interim_generate_examples is not None:
                check_integer("interim_generate_examples", self.interim_generate_examples, 0,
                              what="prompts answered before the last evaluation; None: all of them")

    def label(self) -> str:
        """A short human label: 'LoRA r=8 (query,value)', 'full fine-tuning', 'head only' (``labels.label``)."""
        return labels.label(self)

    def slug(self) -> str:
        """The settings part of a run id: 'lora-r8', 'dora-r8-pissa', 'full', 'head' (``labels.slug``)."""
        return labels.slug(self)

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

    @classmethod
    def from_yaml(cls, path: Any) -> "RunConfig":
        """The config of a YAML recipe; unknown keys, wrong types and bad values are refused
        with the key's path (``workbench.engine.recipes``)."""
        from workbench.engine.recipes import read_recipe

        return read_recipe(path).config

    def to_yaml(self, path: Any = None) -> str:
        """This config as a YAML recipe (every key); written to ``path`` too when given."""
        from workbench.engine.recipes import recipe_text, write_recipe

        if path is not None:
            write_recipe(self, path)
        return recipe_text(self)


def validate(cfg: RunConfig) -> None:
    """Check a config before anything loads: a RunConfig, and its own checks (``RunConfig.check``)."""
    if not isinstance(cfg, RunConfig):
        raise TypeError(f"train needs a RunConfig (e.g. wb.preset('default', rank=8)), got {type(cfg).__name__}")
    cfg.check()


def _check_text(name: str, value: object, what: str | None = None) -> None:
    """A non-empty string (a name, a path, a column)."""
    if not isinstance(value, str) or not value.strip():
        say = f"{name} ({what})" if what else name
        raise ValueError(f"{say} must be a non-empty string, got {value!r}")


def _check_device(device: object) -> None:
    """'auto', or a name torch reads as a device ('cpu', 'cuda', 'cuda:1', ...).  Whether that
    device is there is asked when the run starts: a config may be made here for a cluster's GPU."""
    import torch

    if device == "auto":
        return
    try:
        torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device must be 'auto' (CUDA when present, else the CPU) or a torch device such as "
                         f"'cpu', 'cuda' or 'cuda:1', got {device!r}") from None


@dataclass
class Timing:
    seconds_per_step: float  # median over training steps (excluding the first)
    tokens_per_second: float  # non-padding tokens per second of training
    total_seconds: float  # wall time of the run, loading and evaluation included
    eval_seconds: float = float("nan")  # of which evaluating (NaN: a record written before it was measured)
    train_seconds: float = float("nan")  # of which in training steps
    # of which loading the model and the data, before the first step; the rest is between the
    # steps: the next batch, and what listens to the run (a panel's live curve, the record)
    load_seconds: float = float("nan")


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
    # The trained LoRA adapter's files (workbench.lora.adapters.AdapterFiles), only while the
    # sinks' on_finish runs and only when one of them asked for it (RunSink.needs_adapter).
    adapter: Any = field(default=None, repr=False)
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
# Every linear role of a block, by role (workbench.lora.roles): what the language-model presets adapt.
EVERY_ROLE: tuple[str, ...] = ("query", "key", "value", "attention output", "FFN in", "FFN out")
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
                     lora=LoRAConfig(rank=8, alpha=16, targets=EVERY_ROLE)),
    # Real language models by name (downloaded once into the Hugging Face cache; needs a
    # network the first time): the same skill, LoRA on every role of every block, as QLoRA
    # found necessary to match full fine-tuning (on story-lm, 120 steps, q and v alone reached
    # 0.31 exact match where every role reached 0.93: notebook 09 measures it).
    "smollm2": dict(model="HuggingFaceTB/SmolLM2-135M", task="causal-lm", data="skill", steps=200, batch_size=8,
                    max_length=64, eval_every=100, lr=5e-4, lora=LoRAConfig(rank=8, alpha=16, targets=EVERY_ROLE)),
    "qwen2.5": dict(model="Qwen/Qwen2.5-0.5B", task="causal-lm", data="skill", steps=200, batch_size=8,
                    max_length=64, eval_every=100, lr=5e-4, lora=LoRAConfig(rank=8, alpha=16, targets=EVERY_ROLE)),
    "gpt2": dict(model="gpt2", task="causal-lm", data="skill", steps=200, batch_size=8, max_length=64,
                 eval_every=100, lr=5e-4, lora=LoRAConfig(rank=8, alpha=16, targets=EVERY_ROLE)),
}


def preset(which: str, /, **overrides: Any) -> RunConfig:
    """A RunConfig from a named preset, with any field (``name`` too) overridden.

    LoRA settings may be given by name (``preset("default", rank=4, alpha=8)``): they go
    into the config's ``lora``, as ``RunConfig.with_changes`` does.
    """
    if which not in PRESETS:
        raise ValueError(f"unknown preset {which!r}; presets: {', '.join(PRESETS)}")
    return RunConfig(**PRESETS[which]).with_changes(**overrides)
