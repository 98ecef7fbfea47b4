"""The planner's "will it fit": the QLoRA paper's LLaMA 65B headline to the byte, quantized and
checkpointed plans, the will-it-fit table and figure, and the findings notebook 06 shows
(``workbench.lessons.planner``: ``papers``, ``planning``, ``tables``, ``figures``, ``findings``)."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.lessons.planner import plan


# ----------------------------------------------------------- the QLoRA paper's headline


@pytest.fixture(scope="module")
def qlora65():
    """Issue 11's two calls, verbatim (config = the shipped LLaMA 65B)."""
    import workbench as wb

    config = "llama-1-65b"
    q = wb.plan(config, method="lora", quantize="nf4", gradient_checkpointing=True, batch_size=1, seq_len=512)
    f = wb.plan(config, method="full", dtype="bf16", gradient_checkpointing=True, batch_size=1, seq_len=512)
    return q, f


@pytest.fixture(scope="module")
def qlora65_recipe():
    """QLoRA as the paper trains it: r = 64 on every linear layer, paged 32-bit AdamW, CUDA, unpadded."""
    from workbench.lessons.planner import QLORA_PAPER_65B

    return plan(QLORA_PAPER_65B["architecture"], **QLORA_PAPER_65B["qlora_recipe"])


def test_qlora_65b_fits_in_48_gb_and_full_16bit_needs_more_than_780(qlora65, qlora65_recipe):
    """Dettmers et al. 2023: ">780GB of GPU memory to <48GB", from the config alone, by the issue's calls."""
    from workbench.lessons.planner import QLORA_PAPER_65B

    q, f = qlora65
    assert q.memory.total < 48e9 < 780e9 < f.memory.total
    assert f.full.static_bytes > 780e9  # weights, gradients and Adam alone already pass it
    # the constant holds exactly the issue's calls, and reproduces the same plans
    assert QLORA_PAPER_65B["qlora"] == dict(method="lora", quantize="nf4", gradient_checkpointing=True,
                                            batch_size=1, seq_len=512)
    assert QLORA_PAPER_65B["full"] == dict(method="full", dtype="bf16", gradient_checkpointing=True,
                                           batch_size=1, seq_len=512)
    assert plan("llama-1-65b", **QLORA_PAPER_65B["qlora"]).memory == q.memory
    # the paper's figure counts no activations: without checkpointing full fine-tuning is over 780 GB too
    no_ckpt = plan("llama-1-65b", method="full", dtype="bf16", gradient_checkpointing=False, batch_size=1,
                   seq_len=512)
    assert no_ckpt.memory.total > f.memory.total > 780e9
    assert no_ckpt.full.static_bytes == f.full.static_bytes
    # QLoRA with the paper's own LoRA settings (r = 64 on all linear layers) is under 48 GB too
    assert q.memory.total < qlora65_recipe.memory.total < 48e9


def test_issue_calls_take_the_stated_defaults(qlora65):
    """With quantize the dtype defaults to bf16; a 16-bit plan's optimizer to AdamW with float32
    moments; fp32 plans keep torch's AdamW; optimizer="adamw" on bf16 is torch's (bf16 moments)."""
    q, f = qlora65
    assert (q.settings.dtype, q.settings.optimizer, q.settings.defaulted) == ("bf16", "adamw-32bit",
                                                                               ("dtype", "optimizer"))
    assert (f.settings.dtype, f.settings.optimizer, f.settings.defaulted) == ("bf16", "adamw-32bit", ("optimizer",))
    assert any("dtype bf16 is the default with quantize" in a for a in q.assumptions())
    assert any("2 + 2 + 8 = 12 bytes" in a for a in f.assumptions())
    explicit = plan("llama-1-65b", method="lora", quantize="nf4", gradient_checkpointing=True, batch_size=1,
                    seq_len=512, dtype="bf16", optimizer="adamw-32bit")
    assert explicit.memory == q.memory and explicit.settings.defaulted == ()
    torch_adamw = plan("llama-1-65b", method="full", dtype="bf16", optimizer="adamw", batch_size=1, seq_len=8)
    n = torch_adamw.full.total
    assert torch_adamw.full.memory.optimizer == 2 * 2 * n + 4 * torch_adamw.full.trainable_tensors  # bf16 moments
    assert f.full.memory.optimizer == 8 * n
    plain = plan("minilm")
    assert (plain.settings.dtype, plain.settings.optimizer) == ("fp32", "adamw")
    assert plan("minilm", dtype="fp16").settings.optimizer == "adamw-32bit"
    assert plan("llama-3-8b", quantize="int8", dtype="fp32").settings.optimizer == "adamw"


def test_qlora_65b_breakdown_equals_a_hand_computation(qlora65):
    """The issue's calls: LoRAConfig's defaults (r = 8 on q_proj and v_proj), bf16, AdamW with
    float32 moments, CPU kernels, a padded batch (plan's defaults), checkpointing on."""
    from workbench.lora.quantize import NF4_LAYER_TABLE_BYTES

    q, f = qlora65
    H, I, L, V, heads, r, T = 8192, 22016, 80, 32000, 64, 8, 512
    block_linears = 4 * H * H + 3 * H * I
    assert q.lora.quantized_params == L * block_linears == 64_760_053_760
    nf4 = L * block_linears * (4 + 8 / 64 + 32 / (64 * 256)) / 8 + L * 7 * NF4_LAYER_TABLE_BYTES
    other = 2 * V * H + L * 2 * H + H  # embeddings, lm_head, two RMSNorms a block, the final norm
    adapters = L * r * (2 * (H + H))  # q_proj and v_proj, 8192 -> 8192
    assert q.settings.lora.targets == ("q_proj", "v_proj")
    assert q.lora.adapter_params == q.lora.trainable == adapters == 20_971_520
    assert q.full.total == L * block_linears + other == 65_285_660_672
    bd = q.breakdown().set_index("component")["bytes"]
    assert bd["weights: quantized block Linear weights (nf4)"] == pytest.approx(nf4, abs=1)
    assert bd["weights: other frozen weights (bf16)"] == 2 * other
    assert bd["weights: trained (bf16)"] == bd["gradients (bf16)"] == 2 * adapters
    assert bd["optimizer (adamw-32bit)"] == 8 * adapters  # float32 m and v
    assert bd["activations: checkpointed block inputs"] == L * T * H * 2
    recompute = (T * H * 4 + T * 4            # RMSNorm 1: input in float32, 1/rms
                 + T * H * 2 + 2 * T * r * 2  # q/k/v input (shared by the adapters), A x for q and v
                 + 4 * T * H * 2 + heads * T * 4  # rotated q, k, v and the output; log-sum-exp
                 + T * T * 2                  # the padded batch's additive attention mask (bf16, CPU)
                 + T * H * 4 + T * 4          # RMSNorm 2
                 + 3 * T * I * 2)             # gate out, up out, SiLU out (frozen gate/up/down save no input)
    assert bd["activations: one block recomputed in backward"] == recompute
    outside = 2 * T * 128 * 2 + T * H * 4 + T * 4 + T * V * 4 + T * 8 + 4  # rotary, final norm, loss
    assert bd["activations: outside the blocks"] == outside
    assert bd["total"] == q.memory.total == sum(bd.drop("total"))
    assert q.memory.total / 1e9 == pytest.approx(35.61, abs=0.01)
    fb = f.breakdown().set_index("component")["bytes"]
    assert fb["weights: trained (bf16)"] == fb["gradients (bf16)"] == 2 * q.full.total
    assert fb["optimizer (adamw-32bit)"] == 8 * q.full.total  # 2 + 2 + 8 = 12 bytes per parameter
    assert f.full.static_bytes == 12 * q.full.total
    assert fb["total"] == f.memory.total
    assert f.memory.total / 1e9 == pytest.approx(784.39, abs=0.01)


def test_qlora_65b_recipe_breakdown_equals_a_hand_computation(qlora65_recipe):
    """The paper's LoRA settings: r = 64 on every linear layer, paged 32-bit AdamW, CUDA, unpadded."""
    from workbench.lora.quantize import NF4_LAYER_TABLE_BYTES

    q = qlora65_recipe
    H, I, L, V, heads, r, T = 8192, 22016, 80, 32000, 64, 64, 512
    block_linears = 4 * H * H + 3 * H * I
    nf4 = L * block_linears * (4 + 8 / 64 + 32 / (64 * 256)) / 8 + L * 7 * NF4_LAYER_TABLE_BYTES
    other = 2 * V * H + L * 2 * H + H
    adapters = L * r * (4 * (H + H) + 2 * (H + I) + (I + H))
    assert q.lora.adapter_params == q.lora.trainable == adapters == 799_539_200
    bd = q.breakdown().set_index("component")["bytes"]
    assert bd["weights: quantized block Linear weights (nf4)"] == pytest.approx(nf4, abs=1)
    assert bd["weights: other frozen weights (bf16)"] == 2 * other
    assert bd["weights: trained (bf16)"] == bd["gradients (bf16)"] == 2 * adapters
    assert bd["optimizer (paged-adamw-32bit)"] == 8 * adapters  # float32 m and v
    assert bd["activations: checkpointed block inputs"] == L * T * H * 2
    recompute = (T * H * 4 + T * 4          # RMSNorm 1: input in float32, 1/rms
                 + T * H * 2 + 3 * T * r * 2  # q/k/v input (shared by the adapters), A x for q, k, v
                 + 4 * T * H * 2 + heads * T * 4  # rotated q, k, v and the output; log-sum-exp
                 + T * r * 2                  # o_proj's A x (its input is the attention output)
                 + T * H * 4 + T * 4          # RMSNorm 2
                 + T * H * 2 + 2 * T * r * 2  # gate/up input, A x for gate and up
                 + 4 * T * I * 2 + T * r * 2)  # gate out, SiLU out, up out, product; down's A x
    assert bd["activations: one block recomputed in backward"] == recompute
    outside = 2 * T * 128 * 2 + T * H * 4 + T * 4 + T * V * 4 + T * 8 + 4  # rotary, final norm, loss
    assert bd["activations: outside the blocks"] == outside
    assert bd["total"] == q.memory.total == sum(bd.drop("total"))
    assert q.memory.total / 1e9 == pytest.approx(44.98, abs=0.01)


def test_assumptions_state_the_constants(qlora65_recipe):
    text = "\n".join(qlora65_recipe.assumptions())
    assert "4.127 bits" in text and "paged" in text and "gradient checkpointing" in text
    assert "embeddings, norms, biases, output layer and the adapters stay in bf16" in text
    assert "checkpointing" not in "\n".join(plan("minilm").assumptions()).replace("no gradient checkpointing", "")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"quantize": "nf4", "method": "full"}, "needs method='lora'"),
        ({"quantize": "fp4"}, "quantize must be one of"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing must be True or False"),
    ],
)
def test_bad_quantize_and_checkpointing_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan("llama-3-8b", **kwargs)


def test_gpt2_has_nothing_to_quantize():
    with pytest.raises(ValueError, match="Conv1D"):
        plan("gpt2", quantize="nf4")


# ----------------------------------------------------------- will it fit


def test_fit_table_and_figure():
    from workbench.lessons.planner import FIT_METHODS, GPU_SIZES_GB, fit_figure, fit_table

    t = fit_table(["qwen2.5-0.5b", "llama-1-65b"])
    assert list(t["method"]) == list(FIT_METHODS) * 2
    for g in GPU_SIZES_GB:
        assert (t[f"fits {g} GB"] == (t["total (GB)"] <= g)).all()
    parts = t["weights (GB)"] + t["gradients + optimizer (GB)"] + t["activations (GB)"]
    np.testing.assert_allclose(parts, t["total (GB)"], rtol=1e-12)
    row = t.set_index(["architecture", "method"]).loc[("llama-1-65b", "QLoRA NF4")]
    assert row["fits 48 GB"] and not row["fits 24 GB"]
    assert not t.set_index(["architecture", "method"]).loc[("llama-1-65b", "full bf16"), "fits 80 GB"]
    fig = fit_figure(t)
    ax = fig.axes[0]
    widths = sorted(round(b.get_width(), 9) for b in ax.patches)
    assert widths == sorted(round(w, 9) for w in t["total (GB)"])
    assert sorted(line.get_xdata()[0] for line in ax.lines) == list(GPU_SIZES_GB)
    with pytest.raises(ValueError, match="no activation formula"):
        fit_table(["gpt3-175b"])
    with pytest.raises(ValueError, match="gpus_gb"):
        fit_table(["qwen2.5-0.5b"], gpus_gb=(0,))


# ----------------------------------------------------------- findings: what notebook 06 shows


def test_fit_findings_read_the_table():
    from workbench.lessons.planner import FIT_METHODS, GPU_SIZES_GB, findings, fit_table

    t = fit_table(["qwen2.5-0.5b", "llama-1-65b"])
    f = findings(t)
    assert f.architectures == ("qwen2.5-0.5b", "llama-1-65b") and f.methods == tuple(FIT_METHODS)
    assert f.gpus_gb == tuple(float(g) for g in GPU_SIZES_GB)
    by = t.set_index(["architecture", "method"])["total (GB)"]
    for g in GPU_SIZES_GB:
        for m in FIT_METHODS:
            assert f.fitting[g][m] == [a for a in f.architectures if by[(a, m)] <= g]
    assert f.fitting[48]["QLoRA NF4"] == ["qwen2.5-0.5b", "llama-1-65b"] and f.fitting[24]["QLoRA NF4"] == ["qwen2.5-0.5b"]
    assert f.smallest.loc["llama-1-65b", "QLoRA NF4"] == "48 GB"
    assert f.smallest.loc["llama-1-65b", "full bf16"] == "more than 80 GB"
    assert f.qlora_least is True
    assert "* **48 GB** fits full bf16: " in f.text and "QLoRA's plan is the smallest of the three" in f.text
    # without the three standard methods there is no QLoRA < LoRA < full verdict to give
    one = findings(t[t["method"] == "QLoRA NF4"])
    assert one.qlora_least is None and "smallest of the three" not in one.text
    with pytest.raises(ValueError, match="fit_table"):
        findings(t.drop(columns="total (GB)"))


def test_qlora_findings_add_up_to_the_plans(qlora65, qlora65_recipe):
    from workbench.lessons.planner import qlora_findings
    from workbench.util.units import GB

    q, f = qlora65
    no_ckpt = plan("llama-1-65b", method="full", dtype="bf16", gradient_checkpointing=False, batch_size=1,
                   seq_len=512)
    h = qlora_findings(q, f, no_ckpt, qlora65_recipe)
    bd = q.breakdown().set_index("component")["bytes"]
    assert h.nf4_gb == bd["weights: quantized block Linear weights (nf4)"] / GB
    assert (h.qlora_gb, h.full_gb, h.recipe_gb) == (q.memory.total / GB, f.memory.total / GB,
                                                    qlora65_recipe.memory.total / GB)
    assert h.full_no_checkpointing_gb == no_ckpt.memory.total / GB and h.activations_gb == q.memory.activations / GB
    assert f"**QLoRA: {q.memory.total / GB:.1f} GB, under the paper's 48 GB.**" in h.text
    assert f"**Full 16-bit fine-tuning: {f.memory.total / GB:.0f} GB, over the paper's 780 GB.**" in h.text


def test_mixed_precision_full_fine_tuning_adds_a_float32_master_copy():
    """Standard mixed precision: 16 bytes per trained parameter before activations, 4 more than 'full bf16'."""
    from workbench.lessons.planner import FIT_METHODS, MIXED_PRECISION_FULL, fit_table

    t = fit_table(["qwen2.5-1.5b", "qwen2.5-3b"],
                  methods={"full bf16": FIT_METHODS["full bf16"], "mixed": MIXED_PRECISION_FULL}).set_index(
                      ["architecture", "method"])
    for arch in ("qwen2.5-1.5b", "qwen2.5-3b"):
        bf16, mixed = t.loc[(arch, "full bf16")], t.loc[(arch, "mixed")]
        extra = 4 * bf16["trainable"] / 1e9  # GB
        assert mixed["total (GB)"] == pytest.approx(bf16["total (GB)"] + extra, rel=1e-12)
        assert mixed["gradients + optimizer (GB)"] == pytest.approx(bf16["gradients + optimizer (GB)"] + extra, rel=1e-12)
        per_param = (mixed["weights (GB)"] + mixed["gradients + optimizer (GB)"]) * 1e9 / bf16["trainable"]
        assert per_param == pytest.approx(16, abs=0.05)  # 2 + 2 + 8 + 4
    # the issue-19 reading: at 16 bytes qwen2.5-1.5b no longer fits 24 GB, nor qwen2.5-3b 48 GB
    assert t.loc[("qwen2.5-1.5b", "full bf16"), "fits 24 GB"] and not t.loc[("qwen2.5-1.5b", "mixed"), "fits 24 GB"]
    assert t.loc[("qwen2.5-3b", "full bf16"), "fits 48 GB"] and not t.loc[("qwen2.5-3b", "mixed"), "fits 48 GB"]
