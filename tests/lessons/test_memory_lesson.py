"""Notebook 03's lesson (``workbench.lessons.memory``): one measured step beside the estimate, over a grid,
its figure, and the notebook's findings.

References are closed forms counted by hand from the tiny preset's shapes (tiny-bert:
vocab 30522, hidden 32, 2 blocks, 2 heads, FFN 64, 2 labels), not numbers copied from
a run.  Everything uses tiny-bert, so the file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from toy_models import shaped_llama_lm

from workbench.engine.config import preset
from workbench.engine.memory import (
    COMPONENTS,
    MemoryBreakdown,
    compare_breakdowns,
    estimate_activation_bytes,
    estimate_memory,
    measure_step,
)
from workbench.lessons.memory import (
    activation_kinds,
    activation_table,
    effective_seq_len,
    kinds_summary,
    measure_vs_estimate,
    memory_grid,
    prepared_model,
    synthetic_batch,
)
from workbench.util.units import FLOAT32_BYTES as F32
from workbench.viz.memory_figures import memory_scaling
from workbench.viz.style import is_message_figure

transformers.logging.set_verbosity_error()

H, LAYERS, HEADS, FFN, LABELS, R = 32, 2, 2, 64, 2, 8  # the tiny preset's tiny-bert, and LoRA's rank


def cfg_of(method: str, **kw):
    return preset("tiny", method=method, rank=R, targets=["query", "value"], **kw)


@pytest.fixture(scope="module")
def lora_model():
    return prepared_model(cfg_of("lora"))


@pytest.fixture(scope="module")
def full_model():
    return prepared_model(cfg_of("full"))


@pytest.fixture(scope="module")
def grid():
    cfgs = {"LoRA q,v": cfg_of("lora"), "full": cfg_of("full")}
    return memory_grid(cfgs, batch_sizes=[2, 4], seq_lens=[8, 16, 32])


# ----------------------------------------------------------------- one measured step


def test_lora_step_weights_gradients_optimizer_match_closed_forms(lora_model):
    model, tok = lora_model
    c = measure_vs_estimate(cfg_of("lora"), 4, 16, model=model, tokenizer=tok)
    # LoRA on query and value of 2 blocks: r * (in + out) each; the head (W 2x32, b 2) trains too.
    head = H * LABELS + LABELS
    trainable = LAYERS * 2 * R * (H + H) + head
    tensors = LAYERS * 2 * 2 + 2  # A and B per adapted layer, classifier weight and bias
    total = sum(p.numel() for p in model.parameters())
    assert c.trainable == trainable == 2114
    assert c.measured.weights == F32 * total
    assert c.measured.gradients == F32 * trainable
    assert c.measured.optimizer == 2 * F32 * trainable + 4 * tensors  # exp_avg, exp_avg_sq, step
    assert (c.batch_size, c.seq_len, c.method, c.rank) == (4, 16, "lora", R)


@pytest.mark.parametrize("method", ["full", "head"])
def test_full_and_head_steps_match_closed_forms(method):
    c = measure_vs_estimate(cfg_of(method), 2, 8)
    model, _ = prepared_model(cfg_of(method))
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    if method == "full":
        trainable, tensors = total, len(params)
    else:
        trainable, tensors = H * LABELS + LABELS, 2
    assert c.trainable == trainable
    assert c.measured.weights == F32 * total
    assert c.measured.gradients == F32 * trainable
    assert c.measured.optimizer == 2 * F32 * trainable + 4 * tensors


@pytest.mark.parametrize("method", ["lora", "full", "head"])
def test_estimate_agrees_with_measurement_on_tiny_bert(method):
    c = measure_vs_estimate(cfg_of(method), 3, 24)
    for comp in COMPONENTS:
        m, e = getattr(c.measured, comp), getattr(c.estimated, comp)
        assert abs(e - m) <= 1e-3 * max(m, 1), (method, comp, m, e)
    assert sum(c.activation_items.values()) == c.estimated.activations
    table = c.table()
    assert list(table["component"][:5]) == list(COMPONENTS)
    assert np.allclose(table["error %"][:5].fillna(0.0), 0.0, atol=0.1)


def test_reusing_a_model_changes_no_weight_and_leaves_no_gradient(lora_model):
    model, tok = lora_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    measure_vs_estimate(cfg_of("lora"), 2, 8, model=model, tokenizer=tok)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None


def test_a_cpu_step_reports_no_peak_that_earlier_work_would_inflate(lora_model):
    """On a CPU the only peak is this process's high-water mark, which keeps what ran
    before: a step measured here must not report it as its own (a run's own peak comes
    from ``train``'s worker process)."""
    model, tok = lora_model
    c = measure_vs_estimate(cfg_of("lora"), 2, 8, model=model, tokenizer=tok)
    assert c.measured.peak is None
    assert not any(str(comp).startswith("peak") for comp in c.table()["component"])


@pytest.mark.parametrize("optimizer,k,counter", [("adamw", 2, 4), ("adam", 2, 4), ("sgd-momentum", 1, 0), ("sgd", 0, 0)])
def test_measure_step_holds_each_optimizers_state_and_changes_nothing(lora_model, optimizer, k, counter):
    """optimizer state = k * trainable * 4 bytes (k moments) + a 4-byte step counter per
    tensor for Adam/AdamW; the planner measures through this same step."""
    model, tok = lora_model
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = measure_step(model, synthetic_batch(tok, 2, 8), optimizer)
    assert m.optimizer == k * F32 * sum(p.numel() for p in trainable) + counter * len(trainable)
    assert m.gradients == F32 * sum(p.numel() for p in trainable) and m.activations > 0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None, n
    with pytest.raises(ValueError, match="optimizer must be one of 'adamw', 'adam', 'sgd', 'sgd-momentum', "
                                         "'adamw-32bit', 'adamw-8bit', .*; got 'lion'"):
        measure_step(model, synthetic_batch(tok, 2, 8), "lion")


def test_measure_step_needs_something_to_train():
    model, tok = prepared_model(cfg_of("head"))
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        measure_step(model, synthetic_batch(tok, 2, 8))


def test_head_only_activations_are_a_few_batch_sized_tensors():
    b = 4
    c = measure_vs_estimate(cfg_of("head"), b, 16)
    # The classifier keeps its input (the dropped pooler output, B x H; the pooler is frozen,
    # so no dropout mask is needed), the loss its log-probabilities (B x labels), the int64
    # labels and a float32 normaliser.  Nothing depends on the sequence length.
    assert c.measured.activations == b * H * F32 + b * LABELS * F32 + b * 8 + 4
    assert c.measured.activations == c.estimated.activations


def test_synthetic_batch_has_the_exact_shape_and_no_padding_or_special_tokens(lora_model):
    _, tok = lora_model
    b = synthetic_batch(tok, 3, 17, seed=5)
    assert b["input_ids"].shape == (3, 17) and b["attention_mask"].shape == (3, 17)
    assert bool((b["attention_mask"] == 1).all())
    assert not set(b["input_ids"].flatten().tolist()) & set(tok.all_special_ids)
    assert b["labels"].shape == (3,) and set(b["labels"].tolist()) <= {0, 1}
    again = synthetic_batch(tok, 3, 17, seed=5)
    assert torch.equal(b["input_ids"], again["input_ids"])
    lm = synthetic_batch(tok, 2, 5, task="causal-lm")
    assert torch.equal(lm["labels"], lm["input_ids"])


def test_bad_inputs_say_what_is_wrong(lora_model):
    model, tok = lora_model
    with pytest.raises(ValueError, match="batch_size"):
        measure_vs_estimate(cfg_of("lora"), 0, 8, model=model, tokenizer=tok)
    with pytest.raises(ValueError, match="seq_len"):
        measure_vs_estimate(cfg_of("lora"), 2, 129, model=model, tokenizer=tok)  # 128 positions
    with pytest.raises(ValueError, match="both model and tokenizer"):
        measure_vs_estimate(cfg_of("lora"), 2, 8, model=model)
    with pytest.raises(TypeError, match="RunConfig"):
        measure_vs_estimate({"method": "lora"}, 2, 8)
    with pytest.raises(ValueError, match="method"):
        measure_vs_estimate(cfg_of("dora"), 2, 8)
    with pytest.raises(ValueError, match="non-empty"):
        memory_grid({}, [2], [8])
    with pytest.raises(ValueError, match="sequence length"):
        memory_grid({"x": cfg_of("head")}, [2], [0])


def test_compare_breakdowns_error_is_relative_to_the_measurement():
    m = MemoryBreakdown(weights=1000, gradients=0, optimizer=200, activations=400, peak=5000, peak_kind="process VmHWM")
    e = MemoryBreakdown(weights=1000, gradients=0, optimizer=200, activations=500)
    t = compare_breakdowns(m, e).set_index("component")
    assert t.loc["activations", "error %"] == pytest.approx(25.0)
    assert t.loc["total", "error %"] == pytest.approx(100 * 100 / 1600)
    assert np.isnan(t.loc["gradients", "error %"])  # nothing measured: no ratio
    assert t.loc["peak (process VmHWM)", "measured MB"] == pytest.approx(0.005)
    assert np.isnan(t.loc["peak (process VmHWM)", "estimated MB"])
    assert compare_breakdowns(m, None)["estimated MB"].isna().all()
    assert list(t.reset_index().columns) == ["component", "measured MB", "estimated MB", "error %"]
    partial = compare_breakdowns(m, e, unestimated=["activations"]).set_index("component")  # no formula
    assert partial["estimated MB"].isna().tolist() == [False, False, False, True, True, True]
    assert partial.loc["optimizer", "estimated MB"] == pytest.approx(200 / 1e6)
    with pytest.raises(TypeError):
        compare_breakdowns({"weights": 1}, e)
    with pytest.raises(ValueError, match="unestimated must name components"):
        compare_breakdowns(m, e, unestimated=["weight"])


# ----------------------------------------------------------------- the grid


def test_grid_has_one_row_per_method_size_and_component(grid):
    assert list(grid.columns) == ["method", "kind", "rank", "batch_size", "seq_len", "component",
                                  "measured", "estimated"]
    assert len(grid) == 2 * 2 * 3 * len(COMPONENTS)
    assert set(grid["method"]) == {"LoRA q,v", "full"}
    assert set(grid["kind"]) == {"lora", "full"}
    counts = grid.groupby(["method", "batch_size", "seq_len"]).size()
    assert (counts == len(COMPONENTS)).all() and len(counts) == 12
    wide = grid.pivot_table(index=["method", "batch_size", "seq_len"], columns="component", values="measured")
    parts = wide[["weights", "gradients", "optimizer", "activations"]].sum(axis=1)
    assert (parts == wide["total"]).all()
    assert np.allclose(grid["measured"], grid["estimated"], rtol=1e-3)


def _acts(grid, method, kind="measured"):
    a = grid[(grid["method"] == method) & (grid["component"] == "activations")]
    return a.set_index(["batch_size", "seq_len"])[kind]


@pytest.mark.parametrize("method", ["LoRA q,v", "full"])
def test_activations_grow_linearly_with_batch_size(grid, method):
    act = _acts(grid, method)
    for s in (8, 16, 32):
        assert act[(4, s)] == pytest.approx(2 * act[(2, s)], rel=0.01)


def test_full_fine_tuning_activations_grow_with_the_square_of_sequence_length(grid):
    # f(S) = k + a S + c S^2  =>  f(4S) - 3 f(2S) + 2 f(S) = 6 c S^2.
    # By hand, c per sequence: each of 2 blocks keeps softmax(P), its dropout mask and
    # dropout(P), heads x S x S float32 each: c = B * LAYERS * 3 * HEADS * 4 bytes.
    act = _acts(grid, "full")
    for b in (2, 4):
        f8, f16, f32 = act[(b, 8)], act[(b, 16)], act[(b, 32)]
        assert f16 > 2.05 * f8 and f32 > 2.05 * f16  # super-linear
        c = (f32 - 3 * f16 + 2 * f8) / (6 * 8**2)
        assert c == pytest.approx(b * LAYERS * 3 * HEADS * F32, rel=1e-6)


def test_gradients_and_optimizer_do_not_depend_on_the_batch(grid):
    for comp in ("weights", "gradients", "optimizer"):
        values = grid[grid["component"] == comp].groupby("method")["measured"].nunique()
        assert (values == 1).all(), comp


# ----------------------------------------------------------------- activation tables


def test_activation_table_sums_to_the_estimate_and_names_the_growth(full_model):
    model, _ = full_model
    t = activation_table(model, 4, 16)
    assert t["bytes"].sum() == sum(estimate_activation_bytes(model, 4, 16, padded=False).values())
    grows = t.set_index("label")["grows with"]
    assert grows["layer0.softmax"] == "B·S²"
    assert grows["layer1.act_in"] == "B·S"
    assert grows["loss.log_probs"] == "B"
    assert grows["token_type_ids"] == "S"  # one row of token types, broadcast over the batch
    assert t.set_index("label").loc["layer1.act_in", "bytes"] == 4 * 16 * FFN * F32
    assert (t["what"] != "").all()


def test_lora_keeps_the_nonlinearities_but_not_the_frozen_linear_inputs(lora_model, full_model):
    kinds = activation_kinds({"lora": activation_table(lora_model[0], 4, 16),
                              "full": activation_table(full_model[0], 4, 16)})
    # A frozen linear layer needs only W for dx: its input is not kept.
    for kind in ("context", "ln1_out", "act_out"):
        assert kinds.loc[kind, "lora"] == 0 and kinds.loc[kind, "full"] > 0
    # GELU, LayerNorm and the attention softmax must save their inputs/outputs for backprop
    # through them, trained or not: LoRA keeps them in every block above the first adapter.
    for kind in ("act_in", "softmax", "ln2_in"):
        assert kinds.loc[kind, "lora"] == kinds.loc[kind, "full"] > 0
    assert kinds.loc["total", "lora"] < kinds.loc["total", "full"]
    body = kinds.drop(index="total")
    assert kinds.loc["total", "full"] == pytest.approx(body["full"].sum())


def test_effective_seq_len_recovers_the_length_of_a_measurement(lora_model):
    model, tok = lora_model
    c = measure_vs_estimate(cfg_of("lora"), 4, 21, model=model, tokenizer=tok)
    assert effective_seq_len(model, 4, c.measured.activations, 128, padded=False) == 21
    assert effective_seq_len(model, 4, c.measured.activations + 4, 128, padded=False) is None
    head, _ = prepared_model(cfg_of("head"))
    assert effective_seq_len(head, 4, 1000, 128) is None  # head-only activations ignore S


# ----------------------------------------------------------------- the figure


@pytest.mark.parametrize("x, other, at", [("batch_size", "seq_len", 16), ("seq_len", "batch_size", 4)])
def test_figure_lines_hold_the_grid_numbers(grid, x, other, at):
    fig = memory_scaling(grid, x=x, at=at)
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    for method in ("LoRA q,v", "full"):
        for comp in ("activations", "total"):
            sub = grid[(grid["method"] == method) & (grid["component"] == comp) & (grid[other] == at)].sort_values(x)
            for kind in ("measured", "estimated"):
                line = lines[f"{method}|{comp}|{kind}"]
                assert np.array_equal(line.get_xdata(), sub[x].to_numpy(dtype=float))
                assert np.allclose(line.get_ydata(), sub[kind].to_numpy(dtype=float) / 1e6, rtol=0, atol=1e-12)
        ref = lines[f"{method}|activations|proportional"]
        first = grid[(grid["method"] == method) & (grid["component"] == "activations") & (grid[other] == at)]
        first = first.sort_values(x).iloc[0]
        slope = first["estimated"] / 1e6 / first[x]
        assert np.allclose(np.asarray(ref.get_ydata()), slope * np.asarray(ref.get_xdata()))
    assert f"{'sequence length' if other == 'seq_len' else 'batch size'} {at}" in fig.get_suptitle()


def test_figure_defaults_and_bad_input(grid):
    fig = memory_scaling(grid)  # seq_len held at the largest shared value
    assert "sequence length 32" in fig.get_suptitle() and len(fig.axes) == 2
    one = memory_scaling(grid, x="seq_len", components="activations", proportional=False)
    assert len(one.axes) == 1 and not any("proportional" in (ln.get_gid() or "") for ln in one.axes[0].get_lines())
    assert is_message_figure(memory_scaling(grid.iloc[0:0]))
    with pytest.raises(ValueError, match="x must be"):
        memory_scaling(grid, x="rank")
    with pytest.raises(ValueError, match="at=7"):
        memory_scaling(grid, at=7)
    with pytest.raises(ValueError, match="lacks the column"):
        memory_scaling(grid.drop(columns="estimated"))
    with pytest.raises(ValueError, match="not in the table"):
        memory_scaling(grid, components=["peak"])
    with pytest.raises(TypeError):
        memory_scaling([1, 2, 3])


def test_figure_colours_follow_the_house_colours(grid):
    from matplotlib.colors import to_hex

    from workbench.viz.style import FULL_COLOR, rank_color

    fig = memory_scaling(grid)
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines()}
    assert to_hex(lines["full|activations|measured"].get_color()) == FULL_COLOR
    assert to_hex(lines["LoRA q,v|activations|estimated"].get_color()) == rank_color(R)
    # Without kind/rank columns the methods still get distinct colours.
    plain = memory_scaling(grid.drop(columns=["kind", "rank"]))
    cols = {to_hex(ln.get_color()) for ln in plain.axes[0].get_lines() if ln.get_gid().endswith("measured")}
    assert len(cols) == 2


def test_figure_keeps_measured_and_estimated_apart():
    # A hand-made table where the estimate is off by a known amount.
    rows = []
    for b in (1, 2, 4):
        rows.append({"method": "m", "kind": "full", "rank": 0, "batch_size": b, "seq_len": 10,
                     "component": "activations", "measured": 1_000_000 * b, "estimated": 1_500_000 * b})
    df = pd.DataFrame(rows)
    fig = memory_scaling(df, components=["activations"])
    lines = {ln.get_gid(): ln for ln in fig.axes[0].get_lines()}
    assert list(lines["m|activations|measured"].get_ydata()) == [1.0, 2.0, 4.0]
    assert list(lines["m|activations|estimated"].get_ydata()) == [1.5, 3.0, 6.0]
    assert lines["m|activations|estimated"].get_linestyle() == "--"
    assert lines["m|activations|measured"].get_linestyle() == "None"


def test_kinds_summary_by_hand():
    kinds = pd.DataFrame({"lora": [0.0, 2.0, 3.0, 1.0, 6.0], "full": [4.0, 2.0, 0.0, 5.0, 11.0],
                          "grows with": ["B·S"] * 5, "what": ["x"] * 5},
                         index=pd.Index(["ctx", "gelu", "lora_x", "odd", "total"], name="kind"))
    out = kinds_summary(kinds, "lora", "full")
    assert list(out.index) == ["dropped under LoRA", "kept alike", "more under LoRA", "less under LoRA", "total"]
    assert out["kinds"].tolist() == [1, 1, 1, 1, 4]
    assert out["lora"].tolist() == [0.0, 2.0, 3.0, 1.0, 6.0] and out["full"].tolist() == [4.0, 2.0, 0.0, 5.0, 11.0]
    with pytest.raises(ValueError, match="'nope' is not a column"):
        kinds_summary(kinds, "nope", "full")


def test_kinds_summary_of_real_tables_adds_up(lora_model, full_model):
    kinds = activation_kinds({"lora": activation_table(lora_model[0], 4, 16),
                              "full": activation_table(full_model[0], 4, 16)})
    out = kinds_summary(kinds, "lora", "full")
    assert out.loc["total", "lora"] == pytest.approx(kinds.loc["total", "lora"])
    assert out.loc["total", "full"] == pytest.approx(kinds.loc["total", "full"])
    assert out.loc["total", "kinds"] == len(kinds) - 1
    assert out.loc["dropped under LoRA", "lora"] == 0 < out.loc["dropped under LoRA", "full"]


# ------------------------------------------------- gradient checkpointing, measured

def _lm_batch(batch_size: int, seq_len: int, padded: bool) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids)
    if padded:
        mask[-1, seq_len // 2:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("setup", ["full", "lora-all", "lora-qv"])
@pytest.mark.parametrize("batch_size,seq_len,padded", [(2, 8, False), (3, 12, True)])
def test_checkpointed_step_is_inputs_plus_one_recomputed_block(setup, dtype, batch_size, seq_len, padded):
    """The measured step under reentrant checkpointing: the forward pass saves each block's
    input and what lies outside the blocks; backward's recomputation of one block is
    measured on its own; their sum equals ``checkpointed_activations``."""
    from workbench.lora.inject import add_lora

    model = shaped_llama_lm(dtype, blocks=3)
    if setup == "lora-all":
        add_lora(model, rank=4, targets="all-linear")
    elif setup == "lora-qv":
        add_lora(model, rank=4, targets=("q_proj", "v_proj"))
    model.train()
    batch = _lm_batch(batch_size, seq_len, padded)
    plain = measure_step(model, batch)
    ckpt = measure_step(model, batch, gradient_checkpointing=True)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # switched off again
    assert (ckpt.weights, ckpt.gradients, ckpt.optimizer) == (plain.weights, plain.gradients, plain.optimizer)
    assert ckpt.activations < plain.activations
    est = estimate_memory(model, batch_size, seq_len, padded=padded, gradient_checkpointing=True)
    assert est.activations == pytest.approx(ckpt.activations, rel=0.01)
    assert estimate_memory(model, batch_size, seq_len, padded=padded).activations == pytest.approx(
        plain.activations, rel=0.01)


def test_checkpointing_needs_a_model_that_supports_it():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="does not support gradient checkpointing"):
        measure_step(model, {"input": torch.randn(2, 3)}, gradient_checkpointing=True)


# ------------------------------------------------- QLoRA: a quantized base, measured and estimated

def _nf4_layer_bytes(n: int) -> int:
    """What bitsandbytes keeps for an NF4 weight of n weights (n a multiple of 64), counted by hand:
    two 4-bit codes per byte, one uint8 absmax per block of 64 (double quantization), one fp32
    scale per 256 absmax values (a started block counts whole), and the per-layer tables."""
    from workbench.lora.quantize import NF4_LAYER_TABLE_BYTES

    blocks = n // 64
    return n // 2 + blocks + 4 * -(-blocks // 256) + NF4_LAYER_TABLE_BYTES


def test_a_qlora_step_counts_the_quantized_weights_as_stored_and_the_estimate_agrees(lora_model):
    from workbench.lora.params import count_parameters
    from workbench.lora.quantize import model_quantization

    cfg = cfg_of("lora", quantize="nf4")
    model, tok = prepared_model(cfg)
    assert model_quantization(model) == "nf4"
    float_model, float_tok = lora_model
    qlora = measure_vs_estimate(cfg, 2, 8, model=model, tokenizer=tok)
    lora = measure_vs_estimate(cfg_of("lora"), 2, 8, model=float_model, tokenizer=float_tok)
    # Per block: q, k, v and attention.output.dense (H x H), intermediate (H x FFN) and output (FFN x H).
    quantized = LAYERS * [H * H] * 4 + LAYERS * [H * FFN] * 2
    expected = lora.measured.weights - F32 * sum(quantized) + sum(_nf4_layer_bytes(n) for n in quantized)
    assert qlora.measured.weights == expected == qlora.estimated.weights
    assert qlora.measured.weights < lora.measured.weights
    # The weights are counted, not their storage: as many as the float model, and the same ones train.
    assert qlora.total_params == lora.total_params == count_parameters(float_model).total
    assert qlora.trainable == lora.trainable
    # LoRA's A and B, the head and what autograd saves do not change with the base's storage.
    for comp in ("gradients", "optimizer", "activations"):
        assert getattr(qlora.measured, comp) == getattr(lora.measured, comp) == getattr(qlora.estimated, comp), comp
    table = memory_grid({"QLoRA": cfg}, batch_sizes=[2], seq_lens=[8])
    row = table.set_index("component").loc["weights"]
    assert row["measured"] == row["estimated"] == expected and row["kind"] == "lora"
