"""One table of toy setups that every LoRA check runs through, and the helpers they share.

In the style of PEFT's ``tests/test_custom_models.py``: a row is (id, a builder of a toy
model, a ``LoRAConfig``), and the checks in ``test_lora_core.py`` and ``test_variants.py``
are parametrized over ``TOYS``.  A new variant or layer type is a new row here; a check
that applies to some rows only runs over those (``where``).

The toy models are built from configs (no download): a 2-block BERT classifier (Linear
layers), a 2-block GPT-2 language model and classifier (Conv1D layers, weights stored
in x out), and the bundled MiniLM (rows marked ``slow``).  Further down: the planner's and
the memory tests' toy shapes, and the generative core's tiny language models (``ARCHS``,
with a word-level tokenizer ``TOK``).  Classification heads get
unit-scale weights so that logits are O(1) and a change inside the model shows in them.

The comparisons the LoRA checks make (tolerances, PEFT's names) are in ``tests/lora/lora_checks.py``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from peft import LoraConfig
from torch import nn

import workbench as wb
from workbench.lora.config import LoRAConfig
from workbench.lora.paths import head_names

TASK_TYPE = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


# ---- toy models ----------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _cached(name: str, task: str) -> nn.Module:
    model = wb.load_base(name, task=task)[0].eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for h in head_names(model):
            w = model.get_submodule(h).weight
            w.copy_(torch.randn(w.shape, generator=g))
    return model


def _builder(name: str, task: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = copy.deepcopy(_cached(name, task)).eval()
        model.workbench_name = name
        return model

    build.model_name, build.task = name, task  # type: ignore[attr-defined]
    return build


tiny_bert_classifier = _builder("tiny-bert", "classification")
tiny_gpt2_lm = _builder("tiny-gpt2", "causal-lm")
tiny_gpt2_classifier = _builder("tiny-gpt2", "classification")
minilm_classifier = _builder("minilm", "classification")
story_lm = _builder("story-lm", "causal-lm")  # the bundled language model (about 4 MB): the panel's generate mode


@dataclass(frozen=True)
class Toy:
    """A row of the table: an id, a builder of a fresh toy model, and the LoRA settings."""

    id: str
    build: Callable[[], nn.Module]
    config: LoRAConfig

    @property
    def task(self) -> str:
        return self.build.task  # type: ignore[attr-defined]

    @property
    def slow(self) -> bool:
        return self.build.model_name == "minilm"  # type: ignore[attr-defined]

    def ours(self, base: nn.Module) -> nn.Module:
        """A copy of ``base`` with our LoRA layers, in eval mode (new modules start in train mode)."""
        model = copy.deepcopy(base)
        wb.add_lora(model, self.config)
        return model.eval()

    def peft_config(self) -> LoraConfig:
        """PEFT's config for the same settings, written out field by field (not via to_peft)."""
        c = self.config
        return LoraConfig(
            r=c.rank, lora_alpha=c.alpha, lora_dropout=c.dropout, use_rslora=c.rslora, use_dora=c.dora,
            target_modules=c.targets if isinstance(c.targets, str) else list(c.targets),
            layers_to_transform=None if c.layers is None else list(c.layers),
            init_lora_weights={"kaiming": True, "gaussian": "gaussian", "pissa": "pissa"}[c.init],
            task_type=TASK_TYPE[self.task],
        )

    def peft(self, base: nn.Module) -> nn.Module:
        """A copy of ``base`` adapted by PEFT with the same settings, in eval mode."""
        from peft import get_peft_model

        return get_peft_model(copy.deepcopy(base), self.peft_config()).eval()


def _row(id: str, build: Callable[[], nn.Module], **settings) -> Toy:
    return Toy(id, build, LoRAConfig(**settings))


QV = ("query", "value")
GPT2_BOTH = ("c_attn", "mlp.c_proj")
TOYS: list[Toy] = [
    # plain LoRA
    _row("minilm-cls-qv-r8", minilm_classifier, rank=8, alpha=16, targets=QV),
    _row("bert-cls-all-linear-r4", tiny_bert_classifier, rank=4, alpha=8, targets="all-linear"),
    _row("bert-cls-qv-block1-r2-rslora", tiny_bert_classifier, rank=2, alpha=4, targets=QV, layers=(1,), rslora=True),
    _row("bert-cls-regex-ffn-out-r3", tiny_bert_classifier, rank=3, alpha=6, targets=r".*\.\d+\.output\.dense"),
    _row("bert-cls-qv-r4-gaussian", tiny_bert_classifier, rank=4, alpha=8, targets=QV, init="gaussian"),
    _row("bert-cls-qv-r2-dropout", tiny_bert_classifier, rank=2, alpha=4, targets=QV, dropout=0.3),
    _row("gpt2-lm-c_attn-r8", tiny_gpt2_lm, rank=8, alpha=16, targets=("c_attn",)),
    _row("gpt2-cls-c_attn+c_proj-r4-rslora", tiny_gpt2_classifier, rank=4, alpha=4, targets=GPT2_BOTH, rslora=True),
    # DoRA
    _row("bert-cls-qv-r4-dora", tiny_bert_classifier, rank=4, alpha=8, targets=QV, dora=True),
    _row("bert-cls-qv+ffn-out-block1-r2-rslora-dora", tiny_bert_classifier, rank=2, alpha=4,
         targets=QV + ("output.dense",), layers=(1,), rslora=True, dora=True),
    _row("bert-cls-qv-r4-dora-dropout", tiny_bert_classifier, rank=4, alpha=8, targets=QV, dora=True, dropout=0.3),
    _row("gpt2-lm-c_attn-r4-dora", tiny_gpt2_lm, rank=4, alpha=8, targets=("c_attn",), dora=True),
    _row("gpt2-cls-c_attn+c_proj-r2-rslora-dora", tiny_gpt2_classifier, rank=2, alpha=4, targets=GPT2_BOTH,
         rslora=True, dora=True),
    # PiSSA
    _row("bert-cls-qv-r4-pissa", tiny_bert_classifier, rank=4, alpha=8, targets=QV, init="pissa"),
    _row("bert-cls-all-linear-r2-rslora-pissa", tiny_bert_classifier, rank=2, alpha=2, targets="all-linear",
         rslora=True, init="pissa"),
    _row("gpt2-lm-c_attn-r4-pissa", tiny_gpt2_lm, rank=4, alpha=8, targets=("c_attn",), init="pissa"),
    _row("gpt2-cls-c_attn+c_proj-block0-r3-rslora-pissa", tiny_gpt2_classifier, rank=3, alpha=6, targets=GPT2_BOTH,
         layers=(0,), rslora=True, init="pissa"),
    # PiSSA start with DoRA's magnitude
    _row("bert-cls-qv-r4-pissa-dora", tiny_bert_classifier, rank=4, alpha=8, targets=QV, init="pissa", dora=True),
    # LoRA+ (B learns ratio times faster than A: an optimizer setting)
    _row("bert-cls-qv-r4-loraplus16", tiny_bert_classifier, rank=4, alpha=8, targets=QV, loraplus_ratio=16.0),
    _row("bert-cls-qv-r4-dora-loraplus8", tiny_bert_classifier, rank=4, alpha=8, targets=QV, dora=True,
         loraplus_ratio=8.0),
    _row("gpt2-lm-c_attn-r4-loraplus4", tiny_gpt2_lm, rank=4, alpha=8, targets=("c_attn",), loraplus_ratio=4.0),
    _row("gpt2-cls-c_attn+c_proj-r4-dora-loraplus2.5", tiny_gpt2_classifier, rank=4, alpha=8, targets=GPT2_BOTH,
         dora=True, loraplus_ratio=2.5),
]
assert len({t.id for t in TOYS}) == len(TOYS), "toy ids must be unique"


def params(rows: list[Toy] | None = None) -> list:
    """The rows as ``pytest.param``s, the MiniLM ones marked ``slow``."""
    return [pytest.param(t, id=t.id, marks=[pytest.mark.slow] if t.slow else []) for t in (rows or TOYS)]


def where(keep: Callable[[LoRAConfig], bool]) -> list[Toy]:
    """The rows a check applies to, chosen by their settings (``where(lambda c: c.dora)``)."""
    rows = [t for t in TOYS if keep(t.config)]
    assert rows, "no row of the table has these settings"
    return rows


# ---- weights ------------------------------------------------------------------------------------------------------

def randomize_lora(model: nn.Module, seed: int = 0, scale: float = 0.1, magnitudes: bool = True) -> None:
    """Non-trivial A, B (``scale`` N(0, 1)) and, with ``magnitudes``, DoRA magnitudes m = m0 * exp(0.3 z),
    so the update shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wb.lora_layers(model).values():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * scale)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * scale)
            if magnitudes and layer.config.dora:
                m = layer.lora_magnitude_vector
                m.mul_(torch.exp(0.3 * torch.randn(m.shape, generator=g)))



# ---- toy configs: the planner's tiny shapes ------------------------------------------------------------------------
# ``plan`` takes a transformers config, not a model: it builds the shapes on the meta device, and
# ``measure`` builds them with random weights.  Keyword arguments of ``BertConfig`` / ``LlamaConfig``
# (``Qwen2Config`` takes the Llama ones) / ``GPT2Config``; small enough that a measured step takes
# well under a second.

TINY_BERT_CONFIG = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
TINY_LLAMA_CONFIG = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                         eos_token_id=2)
TINY_GPT2_CONFIG = dict(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=1,
                        eos_token_id=2)


# ---- toy transformers of a given shape, built from configs (the memory tests) --------------------------------------
# The memory formulas are checked against hand counts of these shapes (``workbench.engine.memory``), so the sizes
# are fixed here: hidden 32, FFN 64, 2 heads, 2 blocks, a vocabulary of 100, 64 positions; the Llama-style ones have
# 4 query heads sharing 2 key/value heads (grouped-query attention) and FFN 48.  A batch is B x S = 4 x 16 tokens.

@dataclass(frozen=True)
class Shape:
    """The sizes of the shaped toys and their batches (the memory tests' hand counts use them)."""

    hidden: int = 32
    ffn: int = 64
    heads: int = 2
    blocks: int = 2
    vocab: int = 100
    positions: int = 64
    llama_heads: int = 4
    llama_kv_heads: int = 2
    llama_ffn: int = 48
    batch: int = 4
    seq: int = 16


SHAPE = Shape()


def shaped_bert_config(dropout: float = 0.1, **kw):
    """A ``BertConfig`` of ``SHAPE`` for a 2-label classifier (``kw``: more config fields)."""
    from transformers import BertConfig

    s = SHAPE
    return BertConfig(hidden_size=s.hidden, num_hidden_layers=s.blocks, num_attention_heads=s.heads,
                      intermediate_size=s.ffn, vocab_size=s.vocab, max_position_embeddings=s.positions, num_labels=2,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **kw)


def shaped_bert(dropout: float = 0.1, attn: str = "sdpa") -> nn.Module:
    """A BERT classifier of ``SHAPE``, seeded (the same weights every call)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(shaped_bert_config(dropout), attn_implementation=attn)


def shaped_roberta() -> nn.Module:
    """A RoBERTa classifier of ``SHAPE`` (its own head and position ids), seeded."""
    from transformers import AutoModelForSequenceClassification, RobertaConfig

    s = SHAPE
    cfg = RobertaConfig(hidden_size=s.hidden, num_hidden_layers=s.blocks, num_attention_heads=s.heads,
                        intermediate_size=s.ffn, vocab_size=s.vocab, max_position_embeddings=s.positions,
                        num_labels=2, pad_token_id=1)
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(cfg)


def shaped_gpt2_lm(attn: str = "sdpa") -> nn.Module:
    """A GPT-2 language model of ``SHAPE`` (FFN 4 x hidden, as GPT-2's), with its KV cache on, seeded."""
    from transformers import AutoModelForCausalLM, GPT2Config

    s = SHAPE
    cfg = GPT2Config(n_layer=s.blocks, n_embd=s.hidden, n_head=s.heads, vocab_size=s.vocab, n_positions=s.positions,
                     bos_token_id=0, eos_token_id=0, use_cache=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


def shaped_llama_lm(dtype: torch.dtype = torch.float32, kind: str = "llama", kv_heads: int = SHAPE.llama_kv_heads,
                    tied: bool = False, blocks: int = SHAPE.blocks) -> nn.Module:
    """A Llama-style language model of ``SHAPE`` ("llama" or "qwen2"), in ``dtype``, seeded."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    s = SHAPE
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind](
        vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.llama_ffn, num_hidden_layers=blocks,
        num_attention_heads=s.llama_heads, num_key_value_heads=kv_heads, max_position_embeddings=s.positions,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(dtype)


def shaped_opt_lm() -> nn.Module:
    """An OPT language model of ``SHAPE``: a decoder without a Llama-style block."""
    from transformers import AutoModelForCausalLM, OPTConfig

    s = SHAPE
    cfg = OPTConfig(vocab_size=s.vocab, hidden_size=s.hidden, num_hidden_layers=s.blocks, ffn_dim=s.ffn,
                    num_attention_heads=s.heads, max_position_embeddings=s.positions, word_embed_proj_dim=s.hidden)
    return AutoModelForCausalLM.from_config(cfg)


def wrap_lora(model: nn.Module, targets: tuple[str, ...] = ("query", "value"), layers=None,
              head: str = "classifier") -> nn.Module:
    """Freeze everything, wrap the children named ``targets`` in ``LoRALayer`` (r=8, alpha=16), train ``head``.

    By hand (not ``add_lora``), so the memory tests see exactly which layers hold adapters.
    """
    from workbench.lora.layer import LoRALayer

    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and not isinstance(child, LoRALayer):
                if layers is not None and not any(f".{i}." in f"{name}." for i in layers):
                    continue
                setattr(module, child_name, LoRALayer(child, rank=8, alpha=16))
    for name, p in model.named_parameters():
        if name.startswith(head):
            p.requires_grad_(True)
    return model


def cls_batch(padded: bool = True) -> dict:
    """A classification batch of ``SHAPE`` (B x S ids, 2 labels); ``padded``: the first row ends at 10 tokens."""
    s = SHAPE
    torch.manual_seed(1)
    mask = torch.ones(s.batch, s.seq, dtype=torch.long)
    if padded:
        mask[0, 10:] = 0
    return dict(input_ids=torch.randint(5, s.vocab, (s.batch, s.seq)), attention_mask=mask,
                labels=torch.tensor([0, 1, 1, 0]))


def lm_batch(padded: bool) -> dict:
    """A language-model batch of ``SHAPE``; ``padded``: the last row's second half is padding (labels -100)."""
    s = SHAPE
    torch.manual_seed(1)
    ids = torch.randint(5, s.vocab, (s.batch, s.seq))
    mask = torch.ones_like(ids)
    if padded:
        mask[-1, s.seq // 2:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


def measured_step(model: nn.Module, batch: dict):
    """One AdamW training step of ``model`` in train mode, accounted by ``measure_train_step``."""
    from workbench.engine.memory import measure_train_step

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return measure_train_step(model, opt, batch)


# ---- toy language models: the generative core's table ----------------------------------------------------------------
# Tiny GPT-2, Llama and Qwen2 language models (and a BERT classifier) built from configs, with a word-level
# tokenizer built here (64 words, BOS first): no download.  Each row (``Arch``) also writes out by hand, from
# each family's modelling code, the module paths of every role and the (in, out) of each.  Used by
# tests/engine/test_generative_core.py and tests/lora/test_multi_adapter.py.

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: E402
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,  # noqa: E402
                          LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

H, FFN, HEADS, KV_HEADS, BLOCKS, POSITIONS = 32, 48, 4, 2, 2, 48
KV = H // HEADS * KV_HEADS  # Llama/Qwen2 grouped-query attention: k and v have KV_HEADS heads of H / HEADS
WORDS = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(60)]
PAD, BOS, EOS = 0, 1, 2


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per word, BOS before every text (as Llama's tokenizers do), decode joins with spaces."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


TOK = word_tokenizer()
IDS = dict(vocab_size=len(WORDS), bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """A fresh copy of one model built once under seed 0 (the global RNG left as it was)."""
    cache: list[nn.Module] = []

    def fresh() -> nn.Module:
        if not cache:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                cache.append(build().eval())
        return copy.deepcopy(cache[0])

    return fresh


@dataclass(frozen=True)
class Arch:
    """A row: a tiny model, and its role -> {path inside a block: (in, out)} written out by hand."""

    id: str
    build: Callable[[], nn.Module]
    prefix: str  # the path of block i, with {i}
    roles: dict[str, dict[str, tuple[int, int]]]

    def names(self, role: str) -> list[str]:
        return [f"{self.prefix.format(i=i)}.{p}" for i in range(BLOCKS) for p in self.roles[role]]


LLAMA_ROLES = {
    "query": {"self_attn.q_proj": (H, H)}, "key": {"self_attn.k_proj": (H, KV)},
    "value": {"self_attn.v_proj": (H, KV)}, "attention output": {"self_attn.o_proj": (H, H)},
    "FFN in": {"mlp.gate_proj": (H, FFN), "mlp.up_proj": (H, FFN)}, "FFN out": {"mlp.down_proj": (FFN, H)},
}
LLAMA_SIZES = dict(hidden_size=H, intermediate_size=FFN, num_hidden_layers=BLOCKS, num_attention_heads=HEADS,
                   num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS, initializer_range=0.2, **IDS)
# initializer_range 0.2 (not 0.02): logits far apart, so greedy choices do not hinge on the last bits.
ARCHS = [
    Arch("gpt2", seeded(lambda: GPT2LMHeadModel(GPT2Config(
        n_embd=H, n_inner=FFN, n_layer=BLOCKS, n_head=HEADS, n_positions=POSITIONS, initializer_range=0.2, **IDS))),
        "transformer.h.{i}", {
            "query": {"attn.c_attn": (H, 3 * H)}, "key": {"attn.c_attn": (H, 3 * H)},
            "value": {"attn.c_attn": (H, 3 * H)}, "attention output": {"attn.c_proj": (H, H)},
            "FFN in": {"mlp.c_fc": (H, FFN)}, "FFN out": {"mlp.c_proj": (FFN, H)}}),
    Arch("llama", seeded(lambda: LlamaForCausalLM(LlamaConfig(**LLAMA_SIZES))), "model.layers.{i}", LLAMA_ROLES),
    Arch("qwen2", seeded(lambda: Qwen2ForCausalLM(Qwen2Config(**LLAMA_SIZES))), "model.layers.{i}", LLAMA_ROLES),
]
BERT = Arch("bert-classifier", seeded(lambda: BertForSequenceClassification(BertConfig(
    vocab_size=len(WORDS), hidden_size=H, num_hidden_layers=BLOCKS, num_attention_heads=HEADS, intermediate_size=FFN,
    max_position_embeddings=POSITIONS, num_labels=2))), "bert.encoder.layer.{i}", {
    "query": {"attention.self.query": (H, H)}, "key": {"attention.self.key": (H, H)},
    "value": {"attention.self.value": (H, H)}, "attention output": {"attention.output.dense": (H, H)},
    "FFN in": {"intermediate.dense": (H, FFN)}, "FFN out": {"output.dense": (FFN, H)}})
ALL = ARCHS + [BERT]
PROMPTS = ["w1 w2 w3", "w4", "w5 w6 w7 w8 w9 w10 w11", "w12 w13", "w14 w15 w16 w17 w18"]


# ---- toy models to quantize (tests/lora/test_qlora.py) ---------------------------------------------------------------

def quant_bert() -> nn.Module:
    """A 2-block BERT classifier with 128 x 128 and 128 x 256 layers: whole blocks of 256 x 64 weights
    (NF4's absmax blocks and their blocks of 256; see the byte tests).  No dropout."""
    cfg = BertConfig(vocab_size=2100, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, max_position_embeddings=32, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg)


def quant_llama() -> nn.Module:
    """A 2-block Llama language model (grouped-query attention, 2 key/value heads of 4)."""
    cfg = LlamaConfig(vocab_size=2100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


# ---- toy models over a real tokenizer's vocabulary (tests/engine/test_data.py, test_generative_runs.py) -------------
# A run loads its model by name with the tokenizer beside it, so these take the vocabulary and special ids of a real
# tokenizer (the bundled MiniLM's or story-lm's): hidden 32, 2 heads.

def vocab_bert(vocab_size: int, blocks: int = 1) -> nn.Module:
    """A BERT classifier (2 labels) over ``vocab_size`` tokens, seeded 0, in eval mode."""
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=blocks,
                                                    num_attention_heads=2, intermediate_size=64, num_labels=2)).eval()


def vocab_lm_config(kind: str, tokenizer) -> object:
    """The config of a 2-block language model of family ``kind`` ("llama", "qwen2" with one key/value head of two,
    "gpt2") over ``tokenizer``'s vocabulary and special ids, 128 positions."""
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    return {
        "llama": lambda: LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=2, max_position_embeddings=128, **ids),
        "qwen2": lambda: Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=1, max_position_embeddings=128, **ids),
        "gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **ids),
    }[kind]()


# ---- narrow toys for the lesson tests (tests/lessons/) -------------------------------------------------------------
# The lessons' closed forms and hand counts (test_variant_study, test_inspect_runs) use a BERT classifier 16 wide
# (FFN 32, 2 heads, a vocabulary of 50, 32 positions); test_delta_w needs two LoRA layers wrapped by hand, one over a
# Linear and one over GPT-2's Conv1D (stored in x out), whose updates it sets to known singular values.

NARROW_HIDDEN = 16


def narrow_bert(blocks: int = 2, seed: int = 0) -> nn.Module:
    """A BERT classifier ``NARROW_HIDDEN`` wide with ``blocks`` blocks, seeded ``seed`` (the same weights per seed),
    in eval mode."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=NARROW_HIDDEN, num_hidden_layers=blocks, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=2)).eval()


class LinearAndConv1D(nn.Module):
    """One Linear (6 -> 5, r = 2, s = 2) and one Conv1D (6 -> 4, stored 6 x 4, r = 3, s = 0.5), each wrapped by
    LoRA by hand; seeded 0, the Conv1D's weight drawn from N(0, 1)."""

    def __init__(self) -> None:
        from transformers.pytorch_utils import Conv1D

        from workbench.lora.layer import LoRALayer

        super().__init__()
        torch.manual_seed(0)
        self.lin = LoRALayer(nn.Linear(6, 5), rank=2, alpha=4)  # s = 2
        self.conv = LoRALayer(Conv1D(4, 6), rank=3, alpha=1.5)  # s = 0.5
        nn.init.normal_(self.conv.base_layer.weight)


# ---- a toy model's tokenizer ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def toy_tokenizer(name: str):
    """The tokenizer that ``load_base(name)`` returns beside the model (``tiny-bert``, ``tiny-gpt2``, ...), for
    tests that draw token ids from a toy model's vocabulary without its special tokens (the planted-rank task)."""
    from workbench.engine.models import load_tokenizer

    return load_tokenizer(name)
