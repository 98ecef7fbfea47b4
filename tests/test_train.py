"""The training engine on tiny models: losses fall, only what should train trains,
runs reproduce, stopped and diverged runs keep their records, the CLI writes its files."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.engine.config import preset
from workbench.records.store import load_run, runs
from workbench.engine.training import train

ROOT = Path(__file__).resolve().parents[1]


def tiny(**kw) -> wb.RunConfig:
    return preset("tiny", bf16=False, **kw)


@pytest.mark.parametrize(
    "method,lr,expected_trainable",
    [
        # 2 layers x r(4) x (32 + 32) for query and value, plus the head 32*2+2
        ("lora", 1e-2, 2 * 2 * 4 * (32 + 32) + 66),
        ("full", 3e-3, None),
    ],
)
def test_short_run_learns_and_trains_only_what_it_should(method, lr, expected_trainable, tmp_path):
    # One batch of 8 examples seen 40 times: a randomly initialised tiny BERT must start to fit it.
    cfg = tiny(method=method, rank=4, alpha=8, lr=lr, steps=40, eval_every=0, warmup_ratio=0.0,
               max_train_examples=8, batch_size=8)
    steps_seen = []
    result = train(cfg, on_step=lambda info: steps_seen.append(info.step), runs_dir=str(tmp_path), progress=False)
    assert result.status == "completed"
    h = result.history
    assert list(h["step"]) == steps_seen == list(range(1, 41))
    assert h["train_loss"].iloc[-5:].mean() < 0.85 * h["train_loss"].iloc[:3].mean()
    if expected_trainable is not None:
        assert result.params.trainable == expected_trainable
    else:
        assert result.params.trainable == result.params.total


def test_gradients_reach_only_lora_and_head():
    from workbench.engine.training import prepare_model

    model, tok = wb.load_base("tiny-bert")
    cfg = tiny(method="lora", rank=2, alpha=4)
    prepare_model(cfg, model)
    batch = tok(["a short sentence", "another one here"], return_tensors="pt", padding=True)
    model(**batch, labels=torch.tensor([0, 1])).loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad and all(".lora_" in n or n.startswith("classifier.") for n in with_grad)
    head_model, _ = wb.load_base("tiny-bert")
    prepare_model(tiny(method="head"), head_model)
    assert {n for n, p in head_model.named_parameters() if p.requires_grad} == {"classifier.weight", "classifier.bias"}


def test_same_config_and_seed_give_identical_histories():
    cfg = tiny(method="lora", steps=8, eval_every=4)
    a = train(cfg, runs_dir=None, progress=False).history
    b = train(cfg, runs_dir=None, progress=False).history
    assert a["train_loss"].tolist() == b["train_loss"].tolist()
    assert a["eval_loss"].dropna().tolist() == b["eval_loss"].dropna().tolist()
    c = train(tiny(method="lora", steps=8, eval_every=4, seed=1), runs_dir=None, progress=False).history
    assert a["train_loss"].tolist() != c["train_loss"].tolist()


def test_stopped_run_keeps_its_record(tmp_path):
    stop = threading.Event()

    def stop_after_three(info):
        if info.step == 3:
            stop.set()

    result = train(tiny(steps=50, eval_every=0), on_step=stop_after_three, stop=stop, runs_dir=str(tmp_path), progress=False)
    assert result.status == "stopped" and "after 3 of 50" in result.message
    stored = load_run(result.path)
    assert stored.status == "stopped"
    assert stored.history["step"].tolist() == [1, 2, 3]
    assert np.allclose(stored.history["train_loss"], result.history["train_loss"])


def test_keyboard_interrupt_is_a_stop(tmp_path):
    def interrupt(info):
        if info.step == 2:
            raise KeyboardInterrupt

    result = train(tiny(steps=20, eval_every=0), on_step=interrupt, runs_dir=str(tmp_path), progress=False)
    assert result.status == "stopped"
    assert load_run(result.path).history["step"].tolist() == [1, 2]


def test_diverged_run_is_marked_and_kept(tmp_path):
    result = train(tiny(method="full", lr=1e6, steps=40, eval_every=0, warmup_ratio=0.0, max_grad_norm=0.0),
                   runs_dir=str(tmp_path), progress=False)
    assert result.status == "diverged"
    assert "lower learning rate" in result.message
    stored = load_run(result.path)
    assert stored.status == "diverged"
    losses = stored.history["train_loss"]
    assert len(losses) >= 2 and not np.isfinite(losses.iloc[-1]) and np.isfinite(losses.iloc[0])


def test_bad_config_is_refused_before_anything_runs(tmp_path):
    for kwargs, msg in [
        (dict(method="qlora"), "method must be one of"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(lr=-1.0), "lr"),
        (dict(method="lora", targets=[]), "at least one target"),
        (dict(rank=0), "rank must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=msg):
            train(tiny(**kwargs), runs_dir=str(tmp_path), progress=False)
    assert not any(tmp_path.iterdir())


def test_memory_of_a_run_matches_exact_accounting(tmp_path):
    result = train(tiny(method="lora", rank=4, alpha=8, steps=2, eval_every=0), runs_dir=None, progress=False)
    m = result.memory
    total_params = result.params.total
    assert m.weights == 4 * total_params  # fp32
    assert m.gradients == 4 * result.params.trainable
    # AdamW keeps exp_avg and exp_avg_sq (2 x trainable floats) plus a scalar step per tensor.
    assert 8 * result.params.trainable <= m.optimizer <= 8 * result.params.trainable + 4 * 64
    assert m.activations > 0 and m.peak and m.peak > m.weights


def test_cli_train_and_sweep_write_their_files(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    common = ["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--quiet", "--bf16", "off"]
    out = subprocess.run([sys.executable, "-m", "workbench", "train", "--method", "lora", "--rank", "2",
                          "--alpha", "4", "--targets", "query,value", "--steps", "4", *common],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "trainable" in out.stdout and "LoRA r=2" in out.stdout
    table = runs(tmp_path / "runs")
    assert len(table) == 1 and table.loc[0, "status"] == "completed" and table.loc[0, "rank"] == 2
    out = subprocess.run([sys.executable, "-m", "workbench", "sweep", "--ranks", "1,2", "--with-full", "--with-head",
                          "--steps", "3", "--out", str(tmp_path / "rep"), *common],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    names = {p.name for p in (tmp_path / "rep").iterdir()}
    for fig in ("loss_curves", "params_vs_rank", "memory_breakdown", "accuracy_vs_params"):
        assert {f"{fig}.png", f"{fig}.svg"} <= names
    assert {"runs.csv", "runs.md"} <= names
    import pandas as pd

    csv = pd.read_csv(tmp_path / "rep" / "runs.csv")
    assert list(csv["method"]) == ["lora", "lora", "full", "lora".replace("lora", "head")]
    assert len(runs(tmp_path / "runs")) == 5


def test_cli_reports_bad_input_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "workbench", "train", "--preset", "tiny", "--targets", "qurey",
                          "--runs-dir", str(tmp_path), "--quiet", "--steps", "2"],
                         capture_output=True, text=True, cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
                         timeout=300)
    assert out.returncode == 2
    assert "error: target 'qurey' matches no module" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("overrides", [dict(dora=True), dict(init="pissa"), dict(loraplus_ratio=8.0), dict(rslora=True)],
                         ids=["dora", "pissa", "loraplus", "rslora"])
def test_variants_run_through_the_engine(overrides):
    result = train(tiny(method="lora", rank=2, alpha=4, steps=3, eval_every=0, **overrides), runs_dir=None,
                   progress=False, keep_model=True)
    assert result.status == "completed"
    layers = wb.lora_layers(result.model)
    if overrides.get("dora"):
        assert all(l.dora for l in layers.values())
        # DoRA's closed form: r * (in + out) + out per layer, plus the head
        assert result.params.trainable == 2 * 2 * (2 * (32 + 32) + 32) + 66


def test_variant_sweep_configs():
    from workbench.engine.sweep import sweep_configs

    configs = sweep_configs(tiny(), [2, 4], with_full=False, with_head=False, variants=["lora", "dora", "pissa"])
    assert [(c.rank, c.dora, c.init) for c in configs] == [
        (2, False, "kaiming"), (4, False, "kaiming"), (2, True, "kaiming"), (4, True, "kaiming"),
        (2, False, "pissa"), (4, False, "pissa")]
    with pytest.raises(ValueError, match="unknown LoRA variant 'vera'"):
        sweep_configs(tiny(), [2], variants=["vera"])
    with pytest.raises(ValueError, match="loraplus_ratio must be a positive number"):
        train(tiny(loraplus_ratio=-1.0), runs_dir=None, progress=False)
    with pytest.raises(ValueError, match="init must be one of"):
        train(tiny(init="zeros"), runs_dir=None, progress=False)
