"""The planner's counts: shipped architectures, the LoRA paper's parameter counts, published
sizes, and the meta device that builds a 175B model without memory (``workbench.lessons.planner``:
``shipped``, ``meta``, ``planning``)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig
from toy_models import TINY_BERT_CONFIG

from workbench.lessons.planner import Plan, architecture, build_meta_model, load_config, plan, shipped_architectures

SHIPPED = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-175b", "gpt3-175b-gpt2", "llama-1-65b",
           "llama-3-8b", "llama-3-70b", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b",
           "roberta-base", "roberta-large", "minilm"]


@pytest.fixture(scope="module")
def gpt3() -> Plan:
    """GPT-3 175B (OPT-style, separate q/v), LoRA r=8 on query and value, wholly fp16 (torch's AdamW:
    fp16 moments, as the "16-bit" precision recipe counts)."""
    return plan("gpt3-175b", rank=8, targets=("query", "value"), dtype="fp16", optimizer="adamw", batch_size=1,
                seq_len=2048)


# ----------------------------------------------------------- shipped models, and where a config comes from


def test_shipped_architectures_are_found_as_package_data():
    assert sorted(shipped_architectures()) == sorted(SHIPPED)
    for name in SHIPPED:
        arch = architecture(name)
        assert arch.name == name and arch.source and arch.published_parameters


@pytest.mark.parametrize("name", ["robera-base", "no-such/model-anywhere"])
def test_unknown_names_list_the_shipped_ones(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        plan(name)
    msg = str(e.value)
    assert repr(name) in msg and all(n in msg for n in SHIPPED)
    if name == "robera-base":
        assert "Did you mean 'roberta-base'" in msg


def test_a_config_object_is_copied_not_changed(tmp_path):
    cfg = BertConfig(**TINY_BERT_CONFIG)
    p = plan(cfg, num_labels=5)
    assert cfg.num_labels == 2 and p.config.num_labels == 5
    cfg.save_pretrained(tmp_path)
    assert plan(str(tmp_path), num_labels=5).full.total == p.full.total


# ----------------------------------------------------------- the LoRA paper's counts


def test_roberta_base_query_value_r8_is_the_papers_294912():
    p = plan("roberta-base", rank=8, targets=("query", "value"))
    # 12 layers x 2 matrices x r (in + out), in = out = 768 (Hu et al. 2021, Table 2: 0.3M)
    assert 12 * 2 * 8 * (768 + 768) == 294_912
    assert p.lora.adapter_params == 294_912
    # The trained classifier head (dense 768x768 + out_proj 768x2, with biases) comes on top.
    assert p.lora.head_params == 768 * 768 + 768 + 768 * 2 + 2
    assert p.lora.trainable == 294_912 + p.lora.head_params
    assert len(p.lora.wrapped) == 24


def test_roberta_large_query_value_r8_is_786432():
    p = plan("roberta-large", rank=8, targets=("query", "value"))
    assert p.lora.adapter_params == 24 * 2 * 8 * (1024 + 1024) == 786_432


def test_gpt3_query_value_r8_is_the_papers_37748736(gpt3):
    # 96 layers x 2 matrices (W_q, W_v: 12288 x 12288) x r (in + out); Table 4: 37.7M
    assert gpt3.lora.adapter_params == 96 * 2 * 8 * (12288 + 12288) == 37_748_736
    assert gpt3.lora.trainable == 37_748_736  # a language model: no new head
    assert gpt3.settings.lora.targets == ("q_proj", "v_proj")
    assert all(w.endswith(("self_attn.q_proj", "self_attn.v_proj")) for w in gpt3.lora.wrapped)


def test_llama_grouped_query_value_projection_counts_its_own_shape():
    p = plan("llama-3-8b", rank=8, targets=("query", "value"))
    # q_proj 4096 -> 4096, v_proj 4096 -> 1024 (8 key/value heads of 128)
    assert p.lora.adapter_params == 32 * 8 * ((4096 + 4096) + (4096 + 1024))


def test_gpt2_query_value_map_to_the_fused_c_attn_and_say_so():
    p = plan("gpt2", rank=4, targets=("query", "value"))
    assert p.settings.lora.targets == ("c_attn",)
    assert p.lora.adapter_params == 12 * 4 * (768 + 3 * 768)
    assert any("fuses" in n for n in p.notes)


# ----------------------------------------------------------- published sizes

# Sizes as their authors publish them; the planner's totals must lie within 1 %.
PUBLISHED = {
    "gpt2": (124e6, "causal-lm"),  # OpenAI's released checkpoints: 124M, 355M, 774M, 1558M
    "gpt2-medium": (355e6, "causal-lm"),
    "gpt2-large": (774e6, "causal-lm"),
    "gpt2-xl": (1558e6, "causal-lm"),
    "roberta-base": (125e6, "base"),  # Liu et al. 2019: 125M, 355M
    "roberta-large": (355e6, "base"),
    "llama-3-8b": (8.03e9, "causal-lm"),  # Meta's released checkpoints: 8.03B, 70.6B
    "llama-3-70b": (70.6e9, "causal-lm"),
    "llama-1-65b": (65.2e9, "causal-lm"),  # Touvron et al. 2023, Table 2
    "qwen2.5-0.5b": (0.49e9, "causal-lm"),  # Qwen2.5 technical report, Table 1 / model cards
    "qwen2.5-1.5b": (1.54e9, "causal-lm"),
    "qwen2.5-3b": (3.09e9, "causal-lm"),
    "qwen2.5-7b": (7.61e9, "causal-lm"),
    "gpt3-175b": (175.0e9, "causal-lm"),  # Brown et al. 2020, Table 2.1
    "gpt3-175b-gpt2": (175.0e9, "causal-lm"),
    "minilm": (22.7e6, "base"),  # the bundled all-MiniLM-L6-v2
}
TOLERANCE = 0.01


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_totals_match_published_sizes(name):
    published, task = PUBLISHED[name]
    p = plan(name, task=task, method="full")
    assert p.total == p.full.total == p.full.trainable
    assert abs(p.total - published) / published < TOLERANCE, f"{name}: {p.total:,} vs {published:,.0f}"


def test_totals_equal_hand_counts():
    # GPT-2: tied embeddings V x H, positions 1024 x H, per block 12 H^2 + 13 H, final LayerNorm 2 H.
    V, P, H, L = 50257, 1024, 768, 12
    assert plan("gpt2", method="full").total == V * H + P * H + L * (12 * H * H + 13 * H) + 2 * H
    # Llama: untied embeddings and head, q/o H x H, k/v H x 1024, SwiGLU 3 H I, two RMSNorms per block.
    V, H, I, L, KV = 128256, 4096, 14336, 32, 1024
    block = H * H + 2 * H * KV + H * H + 3 * H * I + 2 * H
    assert plan("llama-3-8b", method="full").total == 2 * V * H + L * block + H
    # MiniLM as bundled: its classification model has 22,713,986 parameters (ml-stack guide).
    assert plan("minilm", task="classification").full.total == 22_713_986


# ----------------------------------------------------------- the meta device


def test_a_175b_model_is_built_on_meta_without_memory(gpt3):
    cfg, _, _ = load_config("gpt3-175b")
    model = build_meta_model(cfg, task="causal-lm", dtype=torch.float16)
    params = list(model.parameters())
    assert all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) > 1.7e11
    # storage on meta is no allocation at all: no data pointer behind any parameter
    assert all(p.untyped_storage().data_ptr() == 0 for p in params[:10])
    # the plan ran add_lora on such a model: the adapters were made on meta too
    assert gpt3.lora.memory.weights == 2 * gpt3.lora.total
