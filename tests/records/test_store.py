"""The run store: round trips, the runs() table, damaged files, atomic and repeated saves."""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from workbench.engine.config import ParamCounts, RunConfig, RunResult, Timing
from workbench.engine.memory import MemoryBreakdown
from workbench.lora.config import LoRAConfig
from workbench.records import store


def lora_run(**settings) -> RunConfig:
    """A LoRA RunConfig with these LoRA settings (the rest RunConfig's defaults)."""
    return RunConfig().with_changes(method="lora", **settings)


def _history(n: int, eval_every: int = 2) -> pd.DataFrame:
    steps = np.arange(1, n + 1)
    train = 0.7 - 0.01 * steps + 1e-9 / 3  # digits that a lossy float format would lose
    evaluated = steps % eval_every == 0
    return pd.DataFrame(
        {
            "step": steps,
            "train_loss": train,
            "lr": 1e-4 * steps / n,
            "eval_loss": np.where(evaluated, train + 0.05, np.nan),
            "eval_accuracy": np.where(evaluated, 0.5 + steps / (2.0 * n), np.nan),
        }
    )


def _result(config: RunConfig | None = None, n: int = 6, status: str = "completed", **kw) -> RunResult:
    return RunResult(
        config=config or lora_run(rank=4, alpha=8.0, targets=["query", "key"], steps=50, seed=3),
        status=status,
        history=_history(n),
        params=ParamCounts(trainable=74_498, total=22_788_484),
        memory=MemoryBreakdown(86_900_000, 280_000, 570_000, 161_000_000, 798_000_000, "process"),
        timing=Timing(seconds_per_step=0.492, tokens_per_second=1234.5, total_seconds=61.0, eval_seconds=3.5,
                      train_seconds=50.25, load_seconds=1.75),  # every field a number: NaN != NaN would hide a lost one
        **kw,
    )


def _started(minutes: int) -> dict:
    t = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc) + timedelta(minutes=minutes)
    return {"started": t.isoformat()}


# --------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    cfg = lora_run(rank=4, alpha=8.0, targets=["query", "key"], layers=[0, 5], rslora=True, steps=50, seed=3)
    result = _result(cfg, message="fine", environment={"device": "cpu", "threads": 2})
    folder = store.save_run(result, tmp_path)

    assert folder.parent == tmp_path and folder.name == result.run_id
    assert result.path == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["history.csv", "run.json"]

    loaded = store.load_run(folder)
    assert loaded.config == cfg
    assert loaded.status == "completed" and loaded.message == "fine"
    assert loaded.params == result.params
    assert loaded.timing == result.timing
    assert loaded.memory == result.memory
    assert loaded.run_id == result.run_id and loaded.path == str(folder)
    assert loaded.environment["device"] == "cpu" and loaded.environment["threads"] == 2
    # Floats come back bit for bit; NaN between evaluations stays NaN.  Columns the curve
    # did not have (the generative task's) load as NaN.
    pd.testing.assert_frame_equal(loaded.history[list(result.history.columns)], result.history, check_exact=True)
    extra = [c for c in loaded.history.columns if c not in result.history.columns]
    assert loaded.history[extra].isna().all().all()
    assert loaded.final_loss == result.final_loss
    # load_run also accepts the path of run.json itself.
    assert store.load_run(folder / "run.json").run_id == result.run_id


def test_memory_none_round_trips_and_anything_else_is_refused(tmp_path):
    none = _result()
    none.memory = None
    assert store.load_run(store.save_run(none, tmp_path)).memory is None
    as_dict = _result()
    as_dict.memory = {"weights": 1, "gradients": 2, "optimizer": 3, "activations": 4}  # type: ignore[assignment]
    with pytest.raises(TypeError, match="must be a workbench.engine.memory.MemoryBreakdown or None, got dict"):
        store.save_run(as_dict, tmp_path)


def test_memory_loads_as_memory_breakdown(tmp_path):
    loaded = store.load_run(store.save_run(_result(), tmp_path))
    assert isinstance(loaded.memory, MemoryBreakdown)
    assert (loaded.memory.weights, loaded.memory.peak, loaded.memory.peak_kind) == (86_900_000, 798_000_000, "process")


def test_record_is_strict_json_with_summary(tmp_path):
    result = _result()
    result.timing = Timing(seconds_per_step=float("nan"), tokens_per_second=10.0, total_seconds=1.0)
    folder = store.save_run(result, tmp_path)

    def refuse(token):
        raise AssertionError(f"non-standard JSON constant {token} in run.json")

    record = json.loads((folder / "run.json").read_text(), parse_constant=refuse)
    h = result.history
    assert record["timing"]["seconds_per_step"] is None
    assert record["summary"]["final_loss"] == h["train_loss"].iloc[-1]
    assert record["summary"]["eval_loss"] == h["eval_loss"].dropna().iloc[-1]
    assert record["summary"]["steps_done"] == h["step"].iloc[-1]
    assert record["summary"]["trainable_share"] == 74_498 / 22_788_484
    assert record["label"] == result.config.label()
    # ... and NaN comes back as NaN.
    assert math.isnan(store.load_run(folder).timing.seconds_per_step)


def test_stopped_run_round_trips_with_end_time(tmp_path):
    result = _result(status="stopped", message="stopped by the user at step 6")
    folder = store.save_run(result, tmp_path)
    loaded = store.load_run(folder)
    assert loaded.status == "stopped"
    assert loaded.message == "stopped by the user at step 6"
    assert "started" in loaded.environment and "ended" in loaded.environment

    running = _result(status="running")
    loaded_running = store.load_run(store.save_run(running, tmp_path))
    assert loaded_running.status == "running"
    assert "started" in loaded_running.environment and "ended" not in loaded_running.environment


def test_save_rejects_unknown_status_and_bad_run_id(tmp_path):
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        store.save_run(_result(status="done"), tmp_path)
    with pytest.raises(ValueError, match="invalid run id"):
        store.save_run(_result(run_id="../escape"), tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- repeated saves


def test_repeated_save_keeps_latest_and_skips_unchanged(tmp_path, monkeypatch):
    writes: list[str] = []
    real_write = store.atomic_write_text

    def counting_write(path, text):
        writes.append(path.name)
        return real_write(path, text)

    monkeypatch.setattr(store, "atomic_write_text", counting_write)

    result = _result(status="running", n=0)
    result.history = _history(10).iloc[:0]
    folder = store.save_run(result, tmp_path)
    run_id = result.run_id
    assert store.load_run(folder).history.empty
    for n in (3, 7, 10):
        result.history = _history(10).iloc[:n]
        assert store.save_run(result, tmp_path) == folder
        assert result.run_id == run_id
        loaded = store.load_run(folder)
        assert len(loaded.history) == n
        assert loaded.history["step"].tolist() == list(range(1, n + 1))
    assert len(writes) == 8  # each save wrote both files: the curve and its summary changed

    writes.clear()
    store.save_run(result, tmp_path)  # nothing changed: nothing written
    assert writes == []
    result.status, result.message = "completed", "done"
    store.save_run(result, tmp_path)  # only the record changed
    assert writes == ["run.json"]
    (folder / "history.csv").unlink()  # a file gone behind our back is written again
    writes.clear()
    store.save_run(result, tmp_path)
    assert writes == ["history.csv"]
    assert len(list(tmp_path.iterdir())) == 1
    pd.testing.assert_frame_equal(store.load_run(folder).history[list(_history(10).columns)], _history(10),
                                  check_exact=True)


def test_atomic_writes_leave_no_temp_files(tmp_path):
    result = _result(status="running")
    for n in range(1, 6):
        result.history = _history(n)
        store.save_run(result, tmp_path)
    folder = tmp_path / result.run_id
    assert sorted(p.name for p in folder.iterdir()) == ["history.csv", "run.json"]


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path):
    result = _result(status="running")
    folder = store.save_run(result, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    result.history = "not a table"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="history must be a pandas DataFrame"):
        store.save_run(result, tmp_path)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --------------------------------------------------------------------------- run ids


def test_run_id_is_sortable_labelled_and_unique():
    early = datetime(2026, 11, 28, 9, 5, 1)
    late = datetime(2026, 11, 28, 13, 45, 1)
    lora = store.new_run_id(lora_run(rank=8), when=early)
    assert re.fullmatch(r"20261128-090501-lora-r8-[0-9a-f]{4}", lora)
    assert re.fullmatch(r"20261128-134501-full-[0-9a-f]{4}", store.new_run_id(RunConfig(method="full"), when=late))
    assert re.fullmatch(r"\d{8}-\d{6}-lora-r16-rslora-[0-9a-f]{4}", store.new_run_id(lora_run(rank=16, rslora=True)))
    assert store.new_run_id(RunConfig(name="My run: r=2 / try #3")).split("-", 2)[2][:-5] == "my-run-r-2-try-3"
    assert sorted([store.new_run_id(RunConfig(), when=late), lora])[0] == lora
    ids = {store.new_run_id(RunConfig(), when=late) for _ in range(50)}
    assert len(ids) > 40  # 16 random bits: 50 draws almost never collide more than a few times


@pytest.mark.parametrize(
    "settings, slug, label",
    [
        (dict(dora=True), "dora-r8", "DoRA r=8 (query,value)"),
        (dict(init="pissa"), "lora-r8-pissa", "LoRA r=8 PiSSA (query,value)"),
        (dict(rslora=True), "lora-r8-rslora", "LoRA r=8 rsLoRA (query,value)"),
        (dict(dora=True, rslora=True, init="pissa", loraplus_ratio=16.0), "dora-r8-rslora-pissa-plus16",
         "DoRA r=8 rsLoRA PiSSA LoRA+x16 (query,value)"),
    ],
    ids=["dora", "pissa", "rslora", "all"],
)
def test_a_variant_run_is_stored_with_its_own_id_label_and_settings(tmp_path, settings, slug, label):
    # Defect 4 of issue 9: a DoRA run was stored as "...-lora-r8-..." with plain LoRA's label.
    cfg = lora_run(rank=8, targets=["query", "value"], **settings)
    result = _result(cfg)
    folder = store.save_run(result, tmp_path)
    assert re.fullmatch(rf"\d{{8}}-\d{{6}}-{slug}-[0-9a-f]{{4}}", folder.name)
    assert json.loads((folder / "run.json").read_text())["label"] == label
    loaded = store.load_run(folder)
    assert loaded.config.lora == LoRAConfig(rank=8, targets=("query", "value"), **settings)
    row = store.runs(tmp_path).iloc[0]
    assert row["label"] == label
    expected = {"dora": False, "init": "kaiming", "rslora": False, "loraplus_ratio": float("nan"), **settings}
    for column, value in expected.items():
        assert (pd.isna(row[column]) if value != value else row[column] == value), column


def test_an_old_flat_record_still_loads(tmp_path):
    # Records written before the LoRA settings became one LoRAConfig kept them at the top
    # of "config".  Written by hand as that version wrote them.
    folder = tmp_path / "20261120-101010-rslora-r4-abcd"
    folder.mkdir()
    config = {
        "method": "lora", "rank": 4, "alpha": 8.0, "targets": ["query", "key"], "layers": [1], "dropout": 0.05,
        "model_dropout": None, "rslora": True, "init": "kaiming", "dora": False, "loraplus_ratio": None,
        "model": "minilm", "task": "classification", "data": "default", "eval_data": None, "text_column": "text",
        "label_column": "label", "max_length": 64, "max_train_examples": None, "max_eval_examples": 500,
        "steps": 100, "lr": 0.0005, "batch_size": 16, "weight_decay": 0.0, "warmup_ratio": 0.06,
        "max_grad_norm": 1.0, "eval_every": 50, "seed": 1, "device": "auto", "bf16": "auto", "threads": None,
        "name": None,
    }
    record = {
        "format": 1, "run_id": folder.name, "label": "rsLoRA r=4 (query,key)", "created": "2026-11-20T10:10:10+00:00",
        "status": "completed", "message": "", "config": config, "params": {"trainable": 12_290, "total": 22_726_276},
        "memory": {"weights": 90_905_104, "gradients": 49_160, "optimizer": 98_320, "activations": 1_000_000,
                   "peak": 700_000_000, "peak_kind": "process VmHWM", "total": 92_052_584},
        "memory_estimate": None,
        "timing": {"seconds_per_step": 0.25, "tokens_per_second": 900.0, "total_seconds": 30.0},
        "environment": {"started": "2026-11-20T10:10:10+00:00", "device": "cpu"},
    }
    (folder / "run.json").write_text(json.dumps(record))
    (folder / "history.csv").write_text("step,train_loss,lr,eval_loss,eval_accuracy\n1,0.7,0.0005,,\n2,0.6,0.0004,0.65,0.5\n")
    loaded = store.load_run(folder)
    assert loaded.config.lora == LoRAConfig(rank=4, alpha=8.0, targets=("query", "key"), layers=(1,), dropout=0.05,
                                            rslora=True)
    assert (loaded.config.method, loaded.config.steps, loaded.config.seed, loaded.config.lr) == ("lora", 100, 1, 5e-4)
    assert loaded.memory == MemoryBreakdown(90_905_104, 49_160, 98_320, 1_000_000, 700_000_000, "process VmHWM")
    row = store.runs(tmp_path).iloc[0]
    assert (row["rank"], row["alpha"], row["targets"], row["layers"], row["dropout"], row["rslora"]) == (
        4, 8.0, "query,key", "1", 0.05, True)
    assert row["label"] == "LoRA r=4 rsLoRA (query,key)" and row["eval_accuracy"] == 0.5


def test_same_second_saves_get_distinct_folders(tmp_path):
    a, b = _result(), _result()
    store.save_run(a, tmp_path)
    store.save_run(b, tmp_path)
    assert a.run_id != b.run_id
    assert len(store.load_runs(tmp_path)) == 2


# --------------------------------------------------------------------------- the table


def test_runs_table_columns_and_values(tmp_path):
    # Ids that sort the other way round from the creation times: the table follows creation.
    lora = _result(environment=_started(10), run_id="20261128-110000-lora-r4-aaaa")
    full = _result(RunConfig(method="full", steps=20, lr=5e-5), status="stopped", message="stop",
                   run_id="20261128-120000-full-bbbb")
    full.params = ParamCounts(trainable=22_713_986, total=22_713_986)
    full.environment.update(_started(5))  # created earlier, saved later
    store.save_run(lora, tmp_path)
    store.save_run(full, tmp_path)

    table = store.runs(tmp_path)
    assert list(table.columns) == list(store.RUN_COLUMNS)
    assert table["run_id"].tolist() == [full.run_id, lora.run_id]  # by creation time

    f, l = table.iloc[0], table.iloc[1]
    h = lora.history
    assert l["method"] == "lora" and l["rank"] == 4 and l["alpha"] == 8.0
    assert l["targets"] == "query,key" and not l["rslora"]
    assert l["label"] == "LoRA r=4 (query,key)"
    assert l["steps"] == 50 and l["steps_done"] == 6 and l["seed"] == 3
    assert l["trainable"] == 74_498 and l["total"] == 22_788_484
    assert l["trainable_share"] == pytest.approx(74_498 / 22_788_484)
    assert l["final_loss"] == h["train_loss"].iloc[-1]
    assert l["eval_loss"] == h.loc[h["step"] == 6, "eval_loss"].item()
    assert l["eval_accuracy"] == h.loc[h["step"] == 6, "eval_accuracy"].item()
    assert l["seconds_per_step"] == 0.492 and l["tokens_per_second"] == 1234.5
    assert l["peak_bytes"] == 798_000_000 and l["peak_kind"] == "process"
    assert (l["weights_bytes"], l["gradients_bytes"], l["optimizer_bytes"], l["activations_bytes"]) == (
        86_900_000, 280_000, 570_000, 161_000_000,
    )
    assert l["status"] == "completed" and l["path"] == str(tmp_path / lora.run_id)
    assert l["created"] == pd.Timestamp(datetime.fromisoformat(_started(10)["started"]).astimezone().replace(tzinfo=None))

    # No LoRA in full fine-tuning: every LoRA setting is empty, not "8".
    assert f["method"] == "full" and f["status"] == "stopped" and f["message"] == "stop"
    assert all(pd.isna(f[c]) for c in store.LORA_COLUMNS)
    assert list(store.LORA_COLUMNS) == list(LoRAConfig.field_names())  # one column per LoRA setting, same names
    assert l["dora"] == False and l["init"] == "kaiming" and pd.isna(l["layers"]) and l["dropout"] == 0.0  # noqa: E712
    assert f["trainable_share"] == 1.0 and f["lr"] == 5e-5
    assert table["created"].is_monotonic_increasing

    loaded = store.load_runs(tmp_path)
    assert [r.run_id for r in loaded] == [full.run_id, lora.run_id]


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_empty_or_missing_folder_gives_empty_table(tmp_path, make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = store.runs(make(tmp_path))
        assert store.load_runs(make(tmp_path)) == []
    assert table.empty and list(table.columns) == list(store.RUN_COLUMNS)
    assert str(table["trainable"].dtype) == "Int64" and str(table["created"].dtype).startswith("datetime64")


def test_foreign_folders_are_ignored_silently(tmp_path):
    store.save_run(_result(), tmp_path)
    tb = tmp_path / "Nov28_13-45-01_vm"  # what a TensorBoard SummaryWriter puts in ./runs
    tb.mkdir()
    (tb / "events.out.tfevents.1.vm").write_bytes(b"\x00\x01")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(store.runs(tmp_path)) == 1


# --------------------------------------------------------------------------- damaged files


def _three_runs(root):
    results = [_result(environment=_started(i)) for i in range(3)]
    folders = [store.save_run(r, root) for r in results]
    return results, folders


def _skipped(root, expected_warnings: int):
    with pytest.warns(store.RunStoreWarning) as caught:
        table = store.runs(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, store.RunStoreWarning)]
    assert len(messages) == expected_warnings, messages
    return table, messages


def test_garbage_and_truncated_run_json_are_skipped_with_warning(tmp_path):
    results, folders = _three_runs(tmp_path)
    garbage, truncated = folders[0] / "run.json", folders[2] / "run.json"
    garbage.write_bytes(bytes(range(256)) * 4)
    text = truncated.read_text()
    truncated.write_text(text[: len(text) // 2])

    table, messages = _skipped(tmp_path, 2)
    assert table["run_id"].tolist() == [results[1].run_id]
    assert any(str(garbage) in m and "not UTF-8" in m for m in messages)
    assert any(str(truncated) in m and "not valid JSON" in m for m in messages)
    with pytest.raises(store.RunStoreError, match="not valid JSON"):
        store.load_run(folders[2])


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: d.pop("params"), "missing field.*params"),
        (lambda d: d.pop("config"), "missing field.*config"),
        (lambda d: d.update(status="exploded"), "unknown status 'exploded'"),
        (lambda d: d.update(params={"trainable": 1}), "'params' must be an object with"),
        (lambda d: d["timing"].pop("tokens_per_second"), "'timing' lacks tokens_per_second"),
        (lambda d: d.update(memory=[1, 2]), "'memory' must be an object"),
    ],
)
def test_run_json_with_missing_or_wrong_fields_is_skipped(tmp_path, damage, reason):
    results, folders = _three_runs(tmp_path)
    file = folders[1] / "run.json"
    record = json.loads(file.read_text())
    damage(record)
    file.write_text(json.dumps(record))

    table, messages = _skipped(tmp_path, 1)
    assert table["run_id"].tolist() == [results[0].run_id, results[2].run_id]
    assert str(file) in messages[0] and re.search(reason, messages[0])


def test_json_that_is_not_an_object_is_skipped(tmp_path):
    results, folders = _three_runs(tmp_path)
    (folders[0] / "run.json").write_text("[1, 2, 3]")
    table, messages = _skipped(tmp_path, 1)
    assert len(table) == 2 and "expected a JSON object, found list" in messages[0]


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"step,train_loss\n1,0.5\n2,oops\n", "column 'train_loss' has a non-number at line 3"),
        (b"when,what\n1,2\n", "header lacks 'step'"),
        (b'step,train_loss\n1,"0.5\n', "not a readable CSV"),
    ],
)
def test_corrupt_history_is_skipped_with_warning(tmp_path, content, reason):
    results, folders = _three_runs(tmp_path)
    file = folders[2] / "history.csv"
    file.write_bytes(content)
    table, messages = _skipped(tmp_path, 1)
    assert table["run_id"].tolist() == [results[0].run_id, results[1].run_id]
    assert str(file) in messages[0] and reason in messages[0]


def test_missing_history_loads_with_empty_curve_and_warning(tmp_path):
    results, folders = _three_runs(tmp_path)
    (folders[1] / "history.csv").unlink()
    table, messages = _skipped(tmp_path, 1)
    assert len(table) == 3
    assert str(folders[1] / "history.csv") in messages[0] and "missing" in messages[0]
    row = table.set_index("run_id").loc[results[1].run_id]
    assert row["steps_done"] == 0 and math.isnan(row["final_loss"])
    assert row["trainable"] == 74_498  # the record's measurements are still there


def test_curve_without_record_is_skipped_with_warning(tmp_path):
    results, folders = _three_runs(tmp_path)
    (folders[0] / "run.json").unlink()  # interrupted during the very first save
    table, messages = _skipped(tmp_path, 1)
    assert len(table) == 2 and str(folders[0] / "run.json") in messages[0]


def test_history_without_eval_columns_gets_nan_columns(tmp_path):
    result = _result()
    folder = store.save_run(result, tmp_path)
    (folder / "history.csv").write_text("step,train_loss,lr\n1,0.5,0.001\n2,0.25,0.001\n")
    h = store.load_run(folder).history
    assert list(h.columns) == list(store.HISTORY_COLUMNS)
    assert h["train_loss"].tolist() == [0.5, 0.25] and h["eval_loss"].isna().all()


# --------------------------------------------------------------------------- delete, environment


def test_delete_run(tmp_path):
    a, b = _result(), _result()
    store.save_run(a, tmp_path)
    store.save_run(b, tmp_path)
    store.delete_run(a.run_id, tmp_path)
    assert [r.run_id for r in store.load_runs(tmp_path)] == [b.run_id]
    with pytest.raises(FileNotFoundError, match="no run"):
        store.delete_run(a.run_id, tmp_path)
    with pytest.raises(ValueError, match="invalid run id"):
        store.delete_run("..", tmp_path)
    (tmp_path / "not-a-run").mkdir()
    with pytest.raises(ValueError, match="not a run folder"):
        store.delete_run("not-a-run", tmp_path)
    # A deleted run saved again is written again (the skip-unchanged cache was cleared).
    store.save_run(a, tmp_path)
    assert len(store.load_runs(tmp_path)) == 2


def test_environment_records_versions_device_threads():
    import platform

    import torch

    from workbench.engine.provenance import environment

    env = environment(device="cpu", threads=3)
    assert env["python"] == platform.python_version()
    assert env["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["transformers"] and env["hostname"]
    assert env["device"] == "cpu" and env["threads"] == 3
    assert datetime.fromisoformat(env["started"]).tzinfo is not None
    assert environment()["threads"] == torch.get_num_threads()
    json.dumps(env)  # the record must be able to hold it


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    """mkstemp makes 0600 files; an atomic write must end with 0o666 & ~umask, as open() gives."""
    import stat

    from workbench.util.fileio import atomic_write_text, default_file_mode

    for umask in (0o022, 0o077, 0o002):
        old = os.umask(umask)
        try:
            plain = tmp_path / f"plain-{umask:o}"
            plain.write_text("x")
            atomic = atomic_write_text(tmp_path / f"atomic-{umask:o}", "x")
            assert default_file_mode() == 0o666 & ~umask
        finally:
            os.umask(old)
        assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
