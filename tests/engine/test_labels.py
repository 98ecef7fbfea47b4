"""The naming module (``workbench.engine.labels``): every name of a run is built there.

The store's run ids, the figures' legends and point labels, the panel's label for a
regex or a layer range and the report's "run" column all come from these functions, so
one run reads the same everywhere.
"""

from __future__ import annotations

import pytest

from workbench.engine import labels
from workbench.engine.config import RunConfig, preset
from workbench.lora.config import LoRAConfig


def test_a_configs_label_and_slug_are_the_naming_modules():
    for cfg in [RunConfig(), RunConfig(method="full"), RunConfig(method="head", quantize="nf4"),
                RunConfig(quantize="int8", lora=LoRAConfig(rank=4, rslora=True)),
                RunConfig(lora=LoRAConfig(dora=True, init="pissa")),
                RunConfig(name="my run")]:
        assert cfg.label() == labels.label(cfg)
        assert cfg.slug() == labels.slug(cfg)
    assert labels.label(RunConfig(quantize="nf4")) == "QLoRA r=8 (query,value), NF4 base"
    assert labels.slug(RunConfig(quantize="nf4")) == "lora-r8-nf4"
    assert labels.label(RunConfig(method="head", quantize="int8")) == "head only, int8 base"


def test_short_labels_sit_next_to_points():
    assert [labels.short_label(c) for c in (RunConfig(lora=LoRAConfig(rank=16)), RunConfig(method="full"),
                                            RunConfig(method="head"), RunConfig(name="mine"))] == [
        "r=16", "full", "head", "mine"]


def test_id_labels_are_safe_folder_names():
    assert labels.id_label(RunConfig(lora=LoRAConfig(rank=16, rslora=True))) == "lora-r16-rslora"
    assert labels.id_label(RunConfig(name="My run: r=2 / try #3")) == "my-run-r-2-try-3"
    assert labels.path_slug("///") == "run"
    assert labels.path_slug("a" * 40) == "a" * 24


def test_label_for_kinds_names_the_targets_by_kind():
    cfg = preset("tiny", lora=LoRAConfig(rank=2, targets=r".*\.(query|dense)$", layers=(1,)))
    assert labels.label_for_kinds(cfg, "query,FFN out") == "LoRA r=2 (query,FFN out, layer 1)"
    many = cfg.with_changes(layers=(0, 1, 2, 3), quantize="nf4")
    assert labels.label_for_kinds(many, "query,value") == "QLoRA r=2 (query,value, layers 0-3, NF4 base)"
    assert labels.label_for_kinds(cfg.with_changes(layers=None, rslora=True), "query") == "LoRA r=2 rsLoRA (query)"


def test_distinct_labels_refuse_what_is_not_a_config():
    with pytest.raises(TypeError, match="distinct_labels needs RunConfigs, got str"):
        labels.distinct_labels(["LoRA r=8"])
    with pytest.raises(TypeError, match="got LoRAConfig"):
        labels.distinct_labels([LoRAConfig()])
