"""Bad data files, as a new user gives them: each ends in a ValueError naming the file and what is allowed.

Every reader of the engine's data (``workbench.engine.files``: the classification task's
``load_texts``, the generative task's ``load_prompts``, the held-out text of a language
model's run) is tried with real files written to ``tmp_path``: empty, not UTF-8, and
holding something other than records.  None may fall through to Python's own
``IndexError`` or ``UnicodeDecodeError``.
"""

from __future__ import annotations

import pytest

from workbench.engine.config import preset
from workbench.engine.data import DataError, load_texts
from workbench.engine.files import read_lines, read_rows
from workbench.engine.launch import train
from workbench.engine.models import load_tokenizer
from workbench.engine.sft import load_prompt_task, load_prompts

NOT_UTF8 = "caf\xe9 cr\xe8me".encode("latin-1")  # é and è as Latin-1 bytes: not UTF-8
SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# ---- the generative path --------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_an_empty_jsonl_file_names_the_file_and_the_records_allowed(tmp_path, content):
    path = write(tmp_path, "train.jsonl", content)
    with pytest.raises(ValueError) as e:
        load_prompts(str(path))
    assert isinstance(e.value, DataError) and not isinstance(e.value, IndexError)
    assert str(path) in str(e.value) and "empty" in str(e.value)
    assert '"prompt" and "completion"' in str(e.value) and '"messages"' in str(e.value)


@pytest.mark.parametrize("suffix", SUFFIXES + (".txt",))
def test_a_file_that_is_not_utf8_names_the_file_on_the_generative_path(tmp_path, suffix):
    body = b'{"prompt": "' + NOT_UTF8 + b'", "completion": "x"}\n' if "json" in suffix else b"prompt,completion\n" + \
        NOT_UTF8 + b",x\n"
    path = write(tmp_path, "data" + suffix, body)
    with pytest.raises(ValueError) as e:
        load_prompts(str(path))
    assert isinstance(e.value, DataError) and not isinstance(e.value, UnicodeDecodeError)
    message = str(e.value)
    assert str(path) in message and "not UTF-8" in message and "save it as UTF-8" in message
    assert '"prompt" and "completion"' in message


def test_an_empty_json_list_and_an_empty_txt_file_are_refused_with_their_names(tmp_path):
    for name, content, words in [("data.json", "[]", "empty"), ("data.txt", "\n \n", "holds no text"),
                                 ("data.csv", "prompt,completion\n", "but no rows")]:
        path = write(tmp_path, name, content)
        with pytest.raises(DataError, match=words) as e:
            load_prompts(str(path))
        assert str(path) in str(e.value)


def test_records_that_are_not_objects_are_refused_on_the_generative_path(tmp_path):
    path = write(tmp_path, "data.jsonl", '[1, 2]\n["a"]\n')
    with pytest.raises(DataError, match=r"record 1 is a list, not an object with named fields") as e:
        load_prompts(str(path))
    assert str(path) in str(e.value)


def test_a_chat_file_that_is_not_utf8_or_empty_is_refused_by_name(tmp_path):
    tok = load_tokenizer("story-lm")
    chat = write(tmp_path, "chat.jsonl", b'{"messages": [{"role": "user", "content": "' + NOT_UTF8 + b'"}]}\n')
    with pytest.raises(DataError, match="not UTF-8") as e:
        load_prompts(str(chat), tokenizer=tok)
    assert str(chat) in str(e.value)
    empty = write(tmp_path, "empty_chat.jsonl", "")
    with pytest.raises(DataError, match="empty") as e:
        load_prompt_task(str(empty), tokenizer=tok)
    assert str(empty) in str(e.value)


def test_a_folder_whose_split_file_is_empty_names_that_file(tmp_path):
    write(tmp_path, "train.jsonl", '{"prompt": "a", "completion": "b"}\n')
    write(tmp_path, "validation.jsonl", "")
    with pytest.raises(DataError, match="empty") as e:
        load_prompt_task(str(tmp_path))
    assert str(tmp_path / "validation.jsonl") in str(e.value)


def test_held_out_text_that_is_empty_or_not_utf8_is_refused_by_name(tmp_path):
    for name, content, words in [("heldout.txt", "", "holds no text"), ("latin.txt", NOT_UTF8, "not UTF-8"),
                                 ("missing.txt", None, "no such file")]:
        path = tmp_path / name if content is None else write(tmp_path, name, content)
        with pytest.raises(DataError, match=words) as e:
            read_lines(path, "heldout_data: a UTF-8 text file")
        assert str(path) in str(e.value) and "heldout_data" in str(e.value)


def test_a_generative_run_on_an_empty_file_fails_before_training_with_the_file_named(tmp_path):
    path = write(tmp_path, "train.jsonl", "")
    with pytest.raises(ValueError, match="is empty") as e:
        train(preset("generate", data=str(path), steps=1), progress=False, fresh_process=False)
    assert str(path) in str(e.value)


# ---- the classification path, and the shared reader -----------------------------------------------------------


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_file_that_is_not_utf8_names_the_file_on_the_classification_path(tmp_path, suffix):
    body = b'{"text": "' + NOT_UTF8 + b'", "label": 1}\n' if "json" in suffix else (
        b"text\tlabel\n" + NOT_UTF8 + b"\t1\n" if suffix == ".tsv" else b"text,label\n" + NOT_UTF8 + b",1\n")
    path = write(tmp_path, "data" + suffix, body)
    with pytest.raises(DataError) as e:
        load_texts(str(path))
    assert str(path) in str(e.value) and "not UTF-8" in str(e.value) and ".jsonl" in str(e.value)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_an_empty_file_names_the_file_and_what_a_data_file_holds(tmp_path, suffix):
    path = write(tmp_path, "data" + suffix, "  \n")
    with pytest.raises(DataError, match="is empty: it holds no rows") as e:
        load_texts(str(path))
    assert str(path) in str(e.value) and "accepted:" in str(e.value)


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_csv_file_csv_cannot_read_names_the_file_and_the_line(tmp_path, suffix):
    sep = "\t" if suffix == ".tsv" else ","
    huge = "x" * 200_000  # a field longer than Python's csv module reads (131,072 characters)
    path = write(tmp_path, "data" + suffix, f"text{sep}label\nfine{sep}1\n{huge}{sep}0\n")
    with pytest.raises(DataError, match=r"line 3: not readable as") as e:
        load_texts(str(path))
    assert str(path) in str(e.value) and "accepted:" in str(e.value)
    with pytest.raises(DataError, match=r"line 3: not readable as"):
        load_prompts(str(path))


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write(tmp_path, "data.csv", "\ufefftext,label\nhello,1\n")
    assert read_rows(path) == [{"text": "hello", "label": "1"}]
    assert load_texts(str(path)).texts == ["hello"]


def test_an_empty_hub_split_is_refused_by_name(monkeypatch):
    import datasets

    empty = datasets.Dataset.from_dict({"text": [], "label": [], "prompt": [], "completion": []})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: empty)
    with pytest.raises(DataError, match=r"dataset 'someone/empty' split 'train' holds no rows"):
        load_texts("someone/empty")
    with pytest.raises(DataError, match=r"dataset 'someone/empty' split 'train' holds no records \(accepted:"):
        load_prompts("someone/empty")
