"""QLoRA: LoRA on a quantized frozen base (bitsandbytes NF4 with double quantization, int8).

* our LoRA layer on bitsandbytes' ``Linear4bit`` / ``Linear8bitLt`` against PEFT's LoRA on the
  same quantized layers (``peft.tuners.lora.bnb``): the same quantized weights in both
  (quantized once, deep-copied), the same A and B (B non-zero), so logits and LoRA gradients
  must agree as closely as two float implementations of the same formula do;
* the bytes a quantized layer holds against the paper's formulas (``quantized_bytes_per_weight``);
* what is refused (merging into codes, DoRA/PiSSA, full fine-tuning, bad values) and the
  dequantize-merge-export path.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

import workbench as wb
from lora_checks import assert_close, scale_of
from toy_models import quant_bert, quant_llama
from workbench.engine.config import RunConfig, preset
from workbench.engine.memory import parameter_bytes
from workbench.lora.inject import add_lora, lora_layers, merge_lora, remove_lora
from workbench.lora.quantize import (
    NF4_LAYER_TABLE_BYTES,
    dequantize_model,
    dequantize_weight,
    float_dtype,
    is_quantized,
    is_quantized_layer,
    logical_numel,
    model_quantization,
    quantize_layer,
    quantize_model,
    quantized_layer_types,
    quantized_bytes_per_weight,
    quantized_layer_bytes,
)

bnb = pytest.importorskip("bitsandbytes")

# Ours and PEFT's run the same float32 operations on the same dequantized weights (in places
# in another order): as on a float base (tests/lora/test_lora_core.py), within 1e-5 of the scale.
REL = 1e-5
PEFT_PREFIX = "base_model.model."


MODELS = {"bert": (quant_bert, ["query", "value", "intermediate.dense"], "SEQ_CLS"),
          "llama": (quant_llama, ["q_proj", "v_proj", "down_proj"], "CAUSAL_LM")}
ROWS = [(m, q) for m in MODELS for q in ("nf4", "int8")]


def batch(seq: int = 7) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (3, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def quantized_pair(model_name: str, quantize: str):
    """(ours, PEFT's) on one quantized base: quantized once, deep-copied, the same non-zero A and B."""
    build, targets, task = MODELS[model_name]
    base = build()
    quantize_model(base, quantize)
    theirs_base = copy.deepcopy(base)
    ours = base
    add_lora(ours, rank=4, alpha=8, targets=targets)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_layers(ours).values():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.1)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
    # PEFT picks its bitsandbytes LoRA layers for models transformers loaded in 4/8 bit.
    setattr(theirs_base, "is_loaded_in_4bit" if quantize == "nf4" else "is_loaded_in_8bit", True)
    theirs = get_peft_model(theirs_base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type=task))
    with torch.no_grad():
        for n, layer in lora_layers(ours).items():
            pl = theirs.base_model.model.get_submodule(n)
            assert type(pl).__module__ == "peft.tuners.lora.bnb", type(pl)
            pl.lora_A["default"].weight.copy_(layer.lora_A.weight)
            pl.lora_B["default"].weight.copy_(layer.lora_B.weight)
    return ours, theirs


@pytest.mark.parametrize("model_name,quantize", ROWS, ids=[f"{m}-{q}" for m, q in ROWS])
def test_same_logits_and_lora_gradients_as_peft_on_the_same_quantized_base(model_name, quantize):
    ours, theirs = quantized_pair(model_name, quantize)
    wrapped = list(lora_layers(ours))
    assert wrapped and all(is_quantized_layer(layer.base_layer) for layer in lora_layers(ours).values())
    x = batch()
    for mode in ("train", "eval"):  # bitsandbytes' int8 takes another matmul path in eval mode
        ours.train(mode == "train"), theirs.train(mode == "train")
        ours.zero_grad(), theirs.zero_grad()
        a, b = ours(**x).logits, theirs(**x).logits
        assert_close(a, b, REL, f"{mode} logits")
        if mode == "eval":
            continue
        a.square().mean().backward()
        b.square().mean().backward()
        for n, layer in lora_layers(ours).items():
            pl = theirs.base_model.model.get_submodule(n)
            for ours_p, theirs_p, what in ((layer.lora_A.weight, pl.lora_A["default"].weight, "A"),
                                           (layer.lora_B.weight, pl.lora_B["default"].weight, "B")):
                assert ours_p.grad is not None and scale_of(ours_p.grad) > 0, (n, what)
                assert_close(ours_p.grad, theirs_p.grad, REL, f"{n} grad {what}")


def test_lora_on_a_quantized_base_trains_in_float_and_the_base_stays_frozen():
    model = quant_bert()
    names = quantize_model(model, "nf4")
    # Every block linear (6 per BERT block) and nothing outside: not the pooler, not the head.
    assert len(names) == 12 and all(".layer." in n for n in names)
    assert type(model.bert.pooler.dense) is nn.Linear and type(model.classifier) is nn.Linear
    add_lora(model, rank=4, alpha=8, targets=["query", "value"])
    for layer in lora_layers(model).values():
        assert layer.base_layer.weight.dtype == torch.uint8
        assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == torch.float32
        assert float_dtype(layer.base_layer) == torch.float32
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("classifier.") for n in trainable)
    # An eval forward without gradients, then training again: bitsandbytes' CPU repacking of
    # NF4 weights (no backward) must not have happened, or the gradient could not flow back
    # through the quantized layers above the lowest adapter (B starts at 0, so A's gradient
    # is 0 at first: B's is the one to look at).
    model.eval()
    with torch.no_grad():
        model(**batch())
    model.train()
    model(**batch()).logits.sum().backward()
    lowest = lora_layers(model)["bert.encoder.layer.0.attention.self.query"]
    assert lowest.lora_B.weight.grad is not None and scale_of(lowest.lora_B.weight.grad) > 0


# ---- bytes ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_quantized_layer_bytes_are_the_papers_bits_per_weight(quantize):
    # 256 x 128 = 32,768 weights: 512 NF4 blocks of 64, 2 blocks of 256 absmax values, so the
    # per-weight formula has no rounding; NF4 adds its two code books and the offset per layer.
    layer = quantize_layer(nn.Linear(128, 256), quantize)
    n = 128 * 256
    expected = n * quantized_bytes_per_weight(quantize, in_features=128)
    if quantize == "nf4":
        expected += NF4_LAYER_TABLE_BYTES  # (16 + 256) fp32 code-book entries + 1 fp32 offset
    assert quantized_layer_bytes(layer) == pytest.approx(expected, abs=0)
    assert logical_numel(layer.weight) == n
    # The counting holds after bitsandbytes moved its int8 scales from the weight to the layer state.
    layer(torch.randn(2, 128))
    assert quantized_layer_bytes(layer) == pytest.approx(expected, abs=0)


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_parameter_bytes_count_quantized_weights_as_stored(quantize):
    model = quant_bert()
    float_bytes = parameter_bytes(model)
    names = quantize_model(model, quantize)
    layers = [model.get_submodule(n) for n in names]
    quantized_weights = sum(l.in_features * l.out_features for l in layers)
    per_layer = NF4_LAYER_TABLE_BYTES if quantize == "nf4" else 0
    # Hand count: the float model less the float weights of the quantized layers (4 bytes each),
    # plus what the paper's formula says they cost quantized (every layer here holds a whole
    # number of 256 x 64-weight blocks, so the formula has no rounding).
    expected = (float_bytes - 4 * quantized_weights
                + sum(l.in_features * l.out_features * quantized_bytes_per_weight(quantize, l.in_features) + per_layer
                      for l in layers))
    assert parameter_bytes(model) == pytest.approx(expected, abs=0)
    assert model_quantization(model) == quantize and is_quantized(model)


# ---- refused, and the way round it ---------------------------------------------------------------------------------

def test_merging_into_a_quantized_base_is_refused_and_changes_nothing():
    model = quant_bert()
    quantize_model(model, "nf4")
    add_lora(model, rank=4, alpha=8, targets=["query", "value"])
    before = {n: p.detach().clone() for n, p in model.state_dict().items() if isinstance(p, torch.Tensor)}
    for attempt in (lambda: merge_lora(model), lambda: remove_lora(model, merge=True),
                    lambda: next(iter(lora_layers(model).values())).merge()):
        with pytest.raises(ValueError, match="dequantize"):
            attempt()
    assert not any(layer.merged for layer in lora_layers(model).values())
    after = model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)
    with pytest.raises(ValueError, match="dequantize=True"):
        wb.export_merged(model, None, "/nonexistent/never-written")


@pytest.mark.parametrize("settings", [dict(dora=True), dict(init="pissa")], ids=["dora", "pissa"])
def test_variants_that_rewrite_the_base_weight_are_refused_on_a_quantized_base(settings):
    model = quant_bert()
    quantize_model(model, "nf4")
    with pytest.raises(ValueError, match="quantized"):
        add_lora(model, rank=4, targets=["query"], **settings)
    assert getattr(model, "lora_settings", None) is None


def test_run_config_quantize_is_checked():
    assert preset("tiny", quantize="nf4").slug() == "lora-r8-nf4"
    assert "NF4" in preset("tiny", quantize="nf4").label() and "QLoRA" in preset("tiny", quantize="nf4").label()
    assert RunConfig.from_dict(preset("tiny", quantize="int8").to_dict()).quantize == "int8"
    with pytest.raises(ValueError, match="'nf4', 'int8' or None"):
        preset("tiny", quantize="nf2")
    with pytest.raises(ValueError, match="full fine-tuning"):
        preset("tiny", quantize="nf4", method="full")
    assert preset("tiny", quantize="nf4", method="head").label() == "head only, NF4 base"


def test_gpt2_conv1d_models_are_refused():
    model, _ = wb.load_base("tiny-gpt2", task="causal-lm")
    with pytest.raises(ValueError, match="Conv1D"):
        quantize_model(model, "nf4")


def test_cli_has_a_quantize_flag_with_its_choices():
    from workbench.ui.cli import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--preset", "tiny", "--quantize", "nf4"])
    assert config_from_args(args).quantize == "nf4"
    assert config_from_args(parser.parse_args(["train", "--preset", "tiny"])).quantize is None
    bad = subprocess.run([sys.executable, "-m", "workbench", "train", "--quantize", "fp8"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "--quantize" in bad.stderr and "'nf4'" in bad.stderr and "'int8'" in bad.stderr


def test_a_quantized_run_trains_and_counts_its_quantized_weights():
    result = wb.train(preset("tiny", quantize="nf4", steps=3, eval_every=0, threads=1, bf16=False),
                      runs_dir=None, progress=False, keep_model=True)
    assert result.status == "completed", result.message
    model = result.model
    assert model_quantization(model) == "nf4"
    assert result.memory.weights == parameter_bytes(model)
    float_run = wb.train(preset("tiny", steps=3, eval_every=0, threads=1, bf16=False), runs_dir=None,
                         progress=False)
    assert result.memory.weights < float_run.memory.weights


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_a_model_trained_in_a_worker_comes_back_quantized_and_exports(quantize, tmp_path):
    """The worker process pickles the trained model back; bitsandbytes' weight classes must survive
    it, or a copy (export_merged's) loses the quantization constants."""
    import bitsandbytes as bnb
    from transformers import AutoModelForSequenceClassification

    result = wb.train(preset("tiny", quantize=quantize, steps=3, eval_every=0, threads=1, bf16=False),
                      runs_dir=None, progress=False, keep_model=True)
    assert result.status == "completed", result.message
    # Train mode with dropout off: bitsandbytes' int8 evaluates with int8 inputs, and trains, as
    # the export computes, through the dequantized weight.
    model = result.model.train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    kind = bnb.nn.Params4bit if quantize == "nf4" else bnb.nn.Int8Params
    weights = [m.weight for m in model.modules() if isinstance(m, quantized_layer_types())]
    assert weights and all(type(w) is kind for w in weights)
    folder = wb.export_merged(model, wb.load_tokenizer(result.config.model), tmp_path / "merged", dequantize=True)
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    inputs = {"input_ids": torch.randint(5, 100, (2, 9)), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    with torch.no_grad():
        want, got = model(**inputs).logits, plain(**inputs).logits
    assert_close(got, want, 1e-5, "exported (dequantized, merged) against the returned quantized model")


# ---- dequantize, merge, export ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_dequantize_gives_the_weights_the_quantized_layer_computes_with(quantize):
    lin = nn.Linear(128, 256)
    layer = quantize_layer(lin, quantize).train()
    x = torch.randn(5, 128)
    w = dequantize_weight(layer)
    assert_close(layer(x), x @ w.T + lin.bias, REL, "quantized forward against dequantized weights")
    # The dequantized weight is within half a quantization step of the original.  NF4: the
    # widest gap between its levels is 1 - 0.6962 = 0.304 of a block's absmax, half of it 0.152,
    # plus the rounding of the absmax itself to 8 bits (double quantization): <= 0.16.  int8:
    # half a step of row_max / 127, plus the fp16 rounding bitsandbytes applies to W first
    # (2^-11 of |w| <= row_max, i.e. 127 / 2048 = 0.062 of a step): <= 0.57 of a step.
    err = (w - lin.weight).abs().detach()
    if quantize == "nf4":
        block_max = lin.weight.detach().reshape(-1, 64).abs().amax(1, keepdim=True)
        assert (err.reshape(-1, 64) <= 0.16 * block_max).all()
        assert (err.reshape(-1, 64) > 0.05 * block_max).any()  # and it is a 4-bit grid, not the float weight
    else:
        step = lin.weight.detach().abs().amax(1, keepdim=True) / 127
        assert (err <= 0.57 * step).all()
        assert (err > 0.25 * step).any()


def test_export_dequantized_loads_with_plain_transformers_and_computes_the_same(tmp_path):
    from transformers import AutoModelForCausalLM

    model = quant_llama()
    quantize_model(model, "nf4")
    add_lora(model, rank=4, alpha=8, targets=["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
    model.eval()
    folder = wb.export_merged(model, None, tmp_path / "merged", dequantize=True)
    assert is_quantized(model) and lora_layers(model)  # the adapted model itself is untouched
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not is_quantized(loaded)
    x = batch()
    with torch.no_grad():
        expected, got = model(**x).logits, loaded(**x).logits
    # The export holds W_dq + s B A in fp32, exactly what the quantized model's matmuls use
    # (the NF4 layer dequantizes to fp32 here): what is left is float rounding of merged
    # against separate products, as for a float base (test_lora_core's 1e-5 of the scale).
    assert_close(got, expected, REL, "exported against quantized adapted logits")
    # And the merge mattered: the base alone computes something else.
    base_only = copy.deepcopy(model)
    dequantize_model(base_only)
    remove_lora(base_only)
    with torch.no_grad():
        assert (base_only(**x).logits - expected).abs().max() > 100 * REL * scale_of(expected)


def test_the_memory_estimate_counts_quantized_weights_as_measured():
    from workbench.engine.memory import estimate_memory

    model = quant_bert()
    quantize_model(model, "int8")
    add_lora(model, rank=4, targets=["query", "value"])
    est = estimate_memory(model, batch_size=2, seq_len=8)
    assert est.weights == parameter_bytes(model)
    # Asked about bf16 training, the float parameters shrink to 2 bytes; the int8 codes and scales do not.
    codes = sum(p.numel() for p in model.parameters() if not p.is_floating_point())
    floats = sum(p.numel() for p in model.parameters() if p.is_floating_point())
    scales = parameter_bytes(model) - codes - 4 * floats
    assert estimate_memory(model, batch_size=2, seq_len=8, dtype=torch.bfloat16).weights == codes + 2 * floats + scales


# ---- counting parameters -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name,quantize", ROWS, ids=[f"{m}-{q}" for m, q in ROWS])
def test_count_parameters_counts_a_quantized_weight_as_the_weights_it_stands_for(model_name, quantize):
    from workbench.lora.params import count_parameters

    build, targets, _ = MODELS[model_name]
    plain, quantized = build(), build()
    names = quantize_model(quantized, quantize)
    if quantize == "nf4":  # two 4-bit codes per byte: numel() alone would count half of each quantized weight
        layer = quantized.get_submodule(names[0])
        assert layer.weight.numel() * 2 == layer.in_features * layer.out_features
    add_lora(plain, rank=4, alpha=8, targets=targets)
    add_lora(quantized, rank=4, alpha=8, targets=targets)
    ours, reference = count_parameters(quantized), count_parameters(plain)
    assert (ours.trainable, ours.total) == (reference.trainable, reference.total)
    assert ours.total == sum(p.numel() for p in plain.parameters())
    assert ours.table["total"].tolist() == reference.table["total"].tolist()


# ---- a bf16 model with a quantized base ------------------------------------------------------------------------------

def test_lora_on_a_bf16_model_with_an_nf4_base_keeps_the_hidden_state_in_bf16_and_matches_peft():
    """A model stored in bf16, quantized, then adapted: A and B are fp32 (float_dtype), so the
    LoRA update is fp32; added as it is it would turn the hidden state fp32 and the bf16
    lm_head would refuse it.  Cast back to the base output's dtype, as PEFT does, it runs
    without autocast and computes what PEFT's LoRA on the same quantized base computes."""
    base = quant_llama().to(torch.bfloat16)
    quantize_model(base, "nf4")
    theirs_base = copy.deepcopy(base)
    ours = base
    targets = ["q_proj", "v_proj", "down_proj"]
    add_lora(ours, rank=4, alpha=8, targets=targets)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_layers(ours).values():
            assert layer.lora_A.weight.dtype == torch.float32
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.1)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
    theirs_base.is_loaded_in_4bit = True
    theirs = get_peft_model(theirs_base, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, layer in lora_layers(ours).items():
            pl = theirs.base_model.model.get_submodule(n)
            pl.lora_A["default"].weight.copy_(layer.lora_A.weight)
            pl.lora_B["default"].weight.copy_(layer.lora_B.weight)
    x = batch()
    ours.train(), theirs.train()
    out = ours(**x, output_hidden_states=True)
    assert out.logits.dtype == torch.bfloat16 and all(h.dtype == torch.bfloat16 for h in out.hidden_states)
    expected = theirs(**x).logits
    # Both add the same fp32 update, rounded to bf16, to the same bf16 base output: any
    # difference is bf16 rounding (2^-8 relative) in another order, carried through 2 blocks.
    torch.testing.assert_close(out.logits.float(), expected.float(), rtol=0,
                               atol=2 ** -7 * scale_of(expected.float()))
    # And the adapter mattered: without it the logits differ by far more than that.
    with torch.no_grad(), theirs.disable_adapter():
        base_only = theirs(**x).logits.float()
    assert (base_only - expected.float()).abs().max() > 2 ** -4 * scale_of(expected.float())
    out.logits.float().square().mean().backward()
    for layer in lora_layers(ours).values():
        assert layer.lora_A.weight.grad.dtype == torch.float32 and scale_of(layer.lora_A.weight.grad) > 0
