"""The report's take-home bundle: its README says how to rebuild each run's base for its adapter.

A QLoRA run's adapter was trained on the quantized weights, so the ``wb.load_base`` line must
quantize the base the same way; the line is run here and the base it builds compared with one
built directly.
"""

from __future__ import annotations

import re
import zipfile

import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.engine.config import RunResult, Timing, preset
from workbench.lora.params import ParamCounts
from workbench.records.report import export_bundle, load_base_call
from workbench.records.store import ADAPTER_FOLDER


def result(cfg, run_id: str, folder=None) -> RunResult:
    return RunResult(config=cfg, status="completed", history=pd.DataFrame(), params=ParamCounts(1, 2), memory=None,
                     timing=Timing(0.0, 0.0, 0.0), run_id=run_id, path=None if folder is None else str(folder))


def test_the_load_line_of_a_float_run_is_the_plain_one():
    assert load_base_call(preset("tiny", model="tiny-bert")) == 'wb.load_base("tiny-bert", num_labels=2)'
    assert (load_base_call(preset("tiny", model="tiny-gpt2", task="causal-lm"))
            == 'wb.load_base("tiny-gpt2", task="causal-lm")')


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_the_load_line_of_a_qlora_run_rebuilds_the_same_quantized_base(quantize):
    pytest.importorskip("bitsandbytes")
    from workbench.lora.quantize import is_quantized_layer, model_quantization

    call = load_base_call(preset("tiny", model="tiny-bert", quantize=quantize))
    assert call == f'wb.load_base("tiny-bert", num_labels=2, quantize="{quantize}")'
    rebuilt, _ = eval(call, {"wb": wb})
    direct, _ = wb.load_base("tiny-bert", num_labels=2, quantize=quantize)
    assert model_quantization(rebuilt) == quantize
    quantized = [n for n, m in direct.named_modules() if is_quantized_layer(m)]
    assert quantized and quantized == [n for n, m in rebuilt.named_modules() if is_quantized_layer(m)]
    for (n, a), (_, b) in zip(rebuilt.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), n  # the same codes, constants and float weights


def test_the_bundle_readme_gives_one_load_line_per_base(tmp_path):
    runs = []
    for i, cfg in enumerate([preset("tiny", model="tiny-bert"), preset("tiny", model="tiny-bert", quantize="nf4"),
                             preset("tiny", model="tiny-bert", rank=4)]):
        folder = tmp_path / f"run{i}"
        (folder / ADAPTER_FOLDER).mkdir(parents=True)
        (folder / ADAPTER_FOLDER / "adapter_config.json").write_text("{}")
        runs.append(result(cfg, f"run{i}", folder))
    bundle = export_bundle([], runs, tmp_path / "bundle.zip")
    with zipfile.ZipFile(bundle) as z:
        readme = z.read("README.txt").decode()
        assert {"adapters/run0/adapter_config.json", "adapters/run1/adapter_config.json"} <= set(z.namelist())
    lines = re.findall(r"model, tokenizer = (wb\.load_base\(.*?\))(?:  # for (.*))?$", readme, flags=re.M)
    assert lines == [('wb.load_base("tiny-bert", num_labels=2)', "run0, run2"),
                     ('wb.load_base("tiny-bert", num_labels=2, quantize="nf4")', "run1")]
    # One base for all: the single line of before, without a "for" note.
    single = export_bundle([], runs[::2], tmp_path / "single.zip")
    with zipfile.ZipFile(single) as z:
        readme = z.read("README.txt").decode()
    assert re.findall(r"model, tokenizer = (.*)$", readme, flags=re.M) == ['wb.load_base("tiny-bert", num_labels=2)']


def test_the_report_has_a_column_for_every_lora_setting():
    """The LoRA columns come from ``LoRAConfig``'s fields: a setting added there is reported."""
    from dataclasses import fields

    from workbench.lora.config import LoRAConfig
    from workbench.records.report import REPORT_COLUMNS, report_table

    names = [f.name for f in fields(LoRAConfig)]
    assert [c for c in REPORT_COLUMNS if c in names] == names
    table = report_table([result(preset("tiny", model="tiny-bert", rank=4, rslora=True), "run0")])
    row = table.iloc[0]
    assert row["rank"] == 4 and bool(row["rslora"]) and row["targets"] == "query,value"
    assert row["run"] == "LoRA r=4 rsLoRA (query,value)"
