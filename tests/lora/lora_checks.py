"""What the LoRA core's checks compare with: inputs, PEFT's names for our weights, tolerances.

Shared by the tests of ``tests/lora/`` (the toy models themselves are in ``tests/toy_models.py``).
Every tolerance here is relative to the size of what is compared (``assert_close``): these
machines differ in the last bits (Intel with AMX, AMD Zen 5).
"""

from __future__ import annotations

import math

import torch
from torch import nn

import workbench as wb
from workbench.lora.config import LoRAConfig

PEFT_PREFIX = "base_model.model."


def inputs(batch: int = 3, seq: int = 7) -> dict:
    """Token ids in 1000..1999 (ordinary tokens in every toy vocabulary), one padded row."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model: nn.Module, x: dict) -> torch.Tensor:
    return model(**x).logits


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
