"""One table of toy setups that every LoRA check runs through, and the helpers they share.

In the style of PEFT's ``tests/test_custom_models.py``: a row is (id, a builder of a toy
model, a ``LoRAConfig``), and the checks in ``test_lora_core.py`` and ``test_variants.py``
are parametrized over ``TOYS``.  A new variant or layer type is a new row here; a check
that applies to some rows only runs over those (``where``).

The toy models are built from configs (no download): a 2-block BERT classifier (Linear
layers), a 2-block GPT-2 language model and classifier (Conv1D layers, weights stored
in x out), and the bundled MiniLM (rows marked ``slow``).  Classification heads get
unit-scale weights so that logits are O(1) and a change inside the model shows in them.

Every tolerance here is relative to the size of what is compared (``assert_close``):
these machines differ in the last bits (Intel with AMX, AMD Zen 5).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from peft import LoraConfig
from torch import nn

import workbench as wb
from workbench.lora.config import LoRAConfig
from workbench.lora.targets import head_names

TASK_TYPE = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}
PEFT_PREFIX = "base_model.model."


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


# ---- inputs, weights, comparisons ----------------------------------------------------------------------------------

def inputs(batch: int = 3, seq: int = 7) -> dict:
    """Token ids in 1000..1999 (ordinary tokens in every toy vocabulary), one padded row."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model: nn.Module, x: dict) -> torch.Tensor:
    return model(**x).logits


def randomize_lora(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial A, B (0.1 N(0, 1)) and DoRA magnitudes m = m0 * exp(0.3 z), so the update shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in wb.lora_layers(model).values():
            layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * 0.1)
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
            if layer.config.dora:
                m = layer.lora_magnitude_vector
                m.mul_(torch.exp(0.3 * torch.randn(m.shape, generator=g)))


def randomize_peft(peft_model: nn.Module, seed: int = 0) -> None:
    """The same kind of values in a PEFT model's LoRA weights, magnitudes and trained heads."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(torch.exp(0.3 * torch.randn(p.shape, generator=g)))
            elif "lora_" in n or "modules_to_save" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def train_head(model: nn.Module, amount: float = 0.5) -> None:
    """Move the trained heads (modules_to_save) away from their start, as training would."""
    with torch.no_grad():
        for h in model.lora_settings.modules_to_save:
            for p in model.get_submodule(h).parameters():
                p.add_(amount)


def peft_layer(peft_model: nn.Module, name: str) -> nn.Module:
    return peft_model.base_model.model.get_submodule(name)


def peft_wrapped(peft_model: nn.Module) -> list[str]:
    """Paths of the layers PEFT wrapped, in our naming."""
    return sorted(n[len(PEFT_PREFIX):-len(".lora_A")] for n, _ in peft_model.named_modules() if n.endswith(".lora_A"))


def lora_pairs(ours: nn.Module, peft_model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, our tensor, PEFT's tensor) for A, B and (DoRA) m of every LoRA layer."""
    out = []
    for n, layer in wb.lora_layers(ours).items():
        pl = peft_layer(peft_model, n)
        out += [(f"{n}.lora_A", layer.lora_A.weight, pl.lora_A["default"].weight),
                (f"{n}.lora_B", layer.lora_B.weight, pl.lora_B["default"].weight)]
        if layer.config.dora:
            out.append((f"{n}.lora_magnitude_vector", layer.lora_magnitude_vector,
                        pl.lora_magnitude_vector["default"].weight))
    return out


def copy_into_peft(ours: nn.Module, peft_model: nn.Module) -> None:
    """Our LoRA weights (and trained heads) into the PEFT model."""
    with torch.no_grad():
        for _, mine, theirs in lora_pairs(ours, peft_model):
            theirs.copy_(mine)
        for h in ours.lora_settings.modules_to_save:
            for pname, p in ours.get_submodule(h).named_parameters():
                peft_model.base_model.model.get_submodule(h).modules_to_save["default"].get_parameter(pname).copy_(p)


def peft_name(ours_name: str, heads) -> str:
    """Our parameter name -> PEFT's (adapter name 'default', heads under modules_to_save)."""
    for h in heads:
        if ours_name.startswith(h + "."):
            return f"{PEFT_PREFIX}{h}.modules_to_save.default.{ours_name[len(h) + 1:]}"
    for part in ("lora_A.weight", "lora_B.weight"):
        if ours_name.endswith(part):
            return PEFT_PREFIX + ours_name[: -len(part)] + part.replace(".weight", ".default.weight")
    if ours_name.endswith(".lora_magnitude_vector"):
        return PEFT_PREFIX + ours_name + ".default.weight"
    raise AssertionError(f"no PEFT counterpart for {ours_name}")


def scale_of(t: torch.Tensor) -> float:
    """The size of a tensor for a tolerance: its largest |entry|."""
    return float(t.detach().abs().max())


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, msg: str = "") -> None:
    """Elementwise |actual - expected| <= rel * (|expected| + max |expected|).

    ``torch.testing.assert_close`` with ``rtol = rel`` and ``atol = rel * max|expected|``:
    the tolerance follows the size of the tensor, so an entry near zero is judged on the
    tensor's scale, not on an absolute number that one CPU's rounding may cross.
    """
    expected = expected.detach()
    torch.testing.assert_close(actual.detach(), expected, rtol=rel, atol=rel * scale_of(expected),
                               msg=lambda m: f"{msg}: {m}" if msg else m)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (Frobenius): a norm-relative error."""
    return float((a.detach() - b.detach()).norm() / b.detach().norm())


def comparable(config: LoRAConfig) -> LoRAConfig:
    """The settings an adapter file can carry, targets in a fixed order: PEFT stores
    ``target_modules`` as a set, and LoRA+ is an optimizer setting it has no field for."""
    targets = config.targets if isinstance(config.targets, str) else tuple(sorted(config.targets))
    return config.replace(targets=targets, loraplus_ratio=None)


def hand_scaling(config: LoRAConfig) -> float:
    """s by the papers' formulas: alpha / r (Hu et al.), alpha / sqrt(r) (rsLoRA)."""
    return config.alpha / math.sqrt(config.rank) if config.rslora else config.alpha / config.rank
