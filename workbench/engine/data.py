"""From a data source to tokenized, dynamically padded batches: one code path for every run.

(Files are opened in ``workbench.engine.files``; a run's batches are made by
``workbench.engine.batches.run_batches``, which calls the steps below.)  The steps, in the
order a run takes them:

1. ``load_texts`` reads texts and integer labels from one source: the bundled task
   ("default"), a local .csv / .tsv / .jsonl / .json file (or a folder holding
   ``train.*`` and ``validation.*``/``dev.*`` files), or a Hugging Face ``datasets`` name.
2. ``load_task`` picks the training and evaluation sets. With no evaluation data it uses
   the bundled validation split, or holds out a seeded share of the training file
   (``train_eval_split``).
3. ``tokenize_dataset`` tokenizes every text once, up front, truncated to ``max_length``
   but NOT padded: padding every example to ``max_length`` would make the model process
   ``max_length`` positions even when the longest sentence in a batch is far shorter.
4. ``make_batches`` returns a ``torch.utils.data.DataLoader`` whose ``PadCollator`` pads
   each batch to its own longest sequence (dynamic padding) and builds the attention mask
   and the labels. Shuffling uses a ``torch.Generator`` seeded from ``seed``, so the same
   seed gives the same batches in the same order, epoch after epoch.

Each batch also says how many real (non-padding) tokens it holds, the honest numerator
for a tokens-per-second figure: ``num_tokens = sum(attention_mask)``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence, get_args

import torch
from torch.utils.data import DataLoader, Dataset

from workbench.engine.bundled import bundled_data_dir
from workbench.engine.files import (FILE_SUFFIXES, SPLIT_ALIASES, DataError, has_split, looks_like_path, read_rows,
                                    split_file)
from workbench.util.checks import check_choice, check_integer, check_number, check_positive_int, is_integer

# --------------------------------------------------------------------------------------
# The bundled task
# --------------------------------------------------------------------------------------

DEFAULT_TASK = "who_acts"
DATA_DIR = bundled_data_dir()  # the checkout's data/, or the copy an installed package carries
DEFAULT_TASK_DIR = DATA_DIR / DEFAULT_TASK

ACCEPTED_SOURCES = (
    '"default" (the bundled task, splits "train", "validation", "test"); '
    "a path to a .csv, .tsv, .jsonl or .json file; a folder holding train.* and "
    "validation.* (or dev.*) files of those kinds; or a Hugging Face datasets name such "
    'as "stanfordnlp/sst2" (optionally "name:config", e.g. "glue:sst2"), which needs '
    "network access or a local datasets cache"
)

# The tasks a run can have, declared here once (RunConfig, the models, the planner and the panel take them from here).
Task = Literal["classification", "causal-lm"]
TASKS: tuple[str, ...] = get_args(Task)
IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy (and Hugging Face) skip


@dataclass
class TextDataset:
    """Texts with integer labels (``labels`` is empty for unlabelled text, e.g. causal LM).

    ``label_names[i]`` is the name of label ``i`` when the source had names (string labels
    in a file, a ``ClassLabel`` column, the bundled task); ``None`` when labels were
    integers to begin with.
    """

    texts: list[str]
    labels: list[int] = field(default_factory=list)
    label_names: list[str] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.labels and len(self.labels) != len(self.texts):
            raise DataError(
                f"{self.name or 'dataset'}: {len(self.texts)} texts but {len(self.labels)} "
                "labels; every text needs one label (or pass no labels at all)"
            )

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def has_labels(self) -> bool:
        return bool(self.labels)

    @property
    def num_labels(self) -> int:
        """Number of classes: the named labels, else the largest label + 1."""
        if self.label_names:
            return len(self.label_names)
        return max(self.labels) + 1 if self.labels else 0

    def label_counts(self) -> dict[int, int]:
        """How many examples carry each label (to check balance at a glance)."""
        counts: dict[int, int] = {}
        for y in self.labels:
            counts[y] = counts.get(y, 0) + 1
        return dict(sorted(counts.items()))

    def select(self, indices: Sequence[int], name: str | None = None) -> "TextDataset":
        """The examples at ``indices``, in that order, with the same label names."""
        return TextDataset(
            texts=[self.texts[i] for i in indices],
            labels=[self.labels[i] for i in indices] if self.labels else [],
            label_names=self.label_names,
            name=self.name if name is None else name,
        )

    def head(self, n: int | None) -> "TextDataset":
        """The first ``n`` examples (all of them when ``n`` is None or larger)."""
        if n is None:
            return self
        check_positive_int("n", n, what="the number of examples to keep, or None for all")
        return self if n >= len(self) else self.select(range(n))


# --------------------------------------------------------------------------------------
# Reading one source
# --------------------------------------------------------------------------------------


def _check_columns(columns: Sequence[str], wanted: dict[str, str | None], where: str) -> None:
    missing = [(role, col) for role, col in wanted.items() if col is not None and col not in columns]
    if missing:
        what = " and ".join(f"no {role} column {col!r}" for role, col in missing)
        how = ", ".join(f"{role}_column=..." for role, _ in missing)
        raise DataError(f"{where}: {what}. Columns present: {', '.join(map(str, columns))}. "
                        f"Choose the right ones with {how}.")


_INT_RE = re.compile(r"^\s*-?\d+\s*$")


def _as_int(value: Any) -> int | None:
    """``value`` as an int if it is one (3, 3.0, "3"); ``None`` otherwise."""
    if is_integer(value):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_RE.match(value):
        return int(value)
    return None


def encode_labels(raw: Sequence[Any], where: str,
                  label_names: Sequence[str] | None = None) -> tuple[list[int], list[str] | None]:
    """Turn raw label values into class ids 0..K-1.

    - Integer labels (also "1" in a CSV) are kept as they are.
    - String labels become ids in sorted order: names = sorted(set(labels)), id = index.
    - When ``label_names`` is given (an evaluation set must use the training set's ids),
      string labels are looked up in it, and integer labels must lie in 0..K-1.
    """
    for i, value in enumerate(raw):
        if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
            raise DataError(f"{where}: row {i + 1} has no label")
    ints = [_as_int(v) for v in raw]
    if all(v is not None for v in ints):
        ids = [int(v) for v in ints]  # type: ignore[arg-type]
        if min(ids) < 0:
            raise DataError(f"{where}: label {min(ids)} is negative; class ids must be "
                            "0, 1, 2, ... (a -1 usually marks an unlabelled test split)")
        if label_names is not None and max(ids) >= len(label_names):
            raise DataError(f"{where}: label {max(ids)} is out of range for the "
                            f"{len(label_names)} classes {list(label_names)}")
        return ids, (list(label_names) if label_names is not None else None)
    as_str = [str(v).strip() for v in raw]
    if label_names is None:
        names = sorted(set(as_str))
    else:
        names = list(label_names)
        unknown = sorted(set(as_str) - set(names))
        if unknown:
            raise DataError(f"{where}: labels {unknown} do not occur in the training data, "
                            f"whose labels are {names}")
    index = {n: i for i, n in enumerate(names)}
    return [index[s] for s in as_str], names


def _dataset_from_rows(rows: list[dict[str, Any]], text_column: str, label_column: str | None,
                       where: str, name: str,
                       label_names: Sequence[str] | None) -> TextDataset:
    columns = list(rows[0].keys())
    _check_columns(columns, {"text": text_column, "label": label_column}, where)
    texts = []
    for i, row in enumerate(rows):
        if text_column not in row or label_column is not None and label_column not in row:
            raise DataError(f"{where}: record {i + 1} lacks column "
                            f"{text_column if text_column not in row else label_column!r}; "
                            f"it has {', '.join(map(str, row))}")
        value = row[text_column]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError(f"{where}: row {i + 1} has no text in column {text_column!r}")
        texts.append(str(value))
    if label_column is None:
        return TextDataset(texts=texts, labels=[], label_names=None, name=name)
    labels, names = encode_labels([row[label_column] for row in rows], where, label_names)
    return TextDataset(texts=texts, labels=labels, label_names=names, name=name)


def load_default(split: str = "train") -> TextDataset:
    """A split of the bundled task (see data/README.md): "train", "validation" or "test"."""
    if split not in SPLIT_ALIASES:
        raise DataError(f'the bundled task has splits "train", "validation" and "test", '
                        f"not {split!r}")
    path = DEFAULT_TASK_DIR / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"the bundled task file {path} is missing; regenerate it with "
                        f"`python {DATA_DIR / 'make_task.py'}`")
    meta = json.loads((DEFAULT_TASK_DIR / "labels.json").read_text(encoding="utf-8"))
    return _dataset_from_rows(read_rows(path), "text", "label", str(path),
                              f"{DEFAULT_TASK}/{split}", meta["label_names"])


def _load_hub(source: str, split: str, text_column: str, label_column: str | None,
              label_names: Sequence[str] | None) -> TextDataset:
    """A Hugging Face ``datasets`` split; "name:config" selects a configuration."""
    name, _, config = source.partition(":")
    try:
        import datasets  # imported here: only hub sources need it

        hf = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # offline, unknown name, unknown split: all end here
        raise DataError(
            f"{source!r} is not a local file or folder, and loading it as a Hugging Face "
            f"dataset (split {split!r}) failed: {type(err).__name__}: {err}. "
            f"Accepted data sources: {ACCEPTED_SOURCES}."
        ) from err
    where = f"dataset {source!r} split {split!r}"
    if len(hf) == 0:
        raise DataError(f"{where} holds no rows: choose a split with examples")
    _check_columns(list(hf.column_names), {"text": text_column, "label": label_column}, where)
    texts = [str(t) for t in hf[text_column]]
    if label_column is None:
        return TextDataset(texts=texts, name=f"{source}[{split}]")
    feature = hf.features.get(label_column)
    names = getattr(feature, "names", None)  # a ClassLabel column knows its class names
    labels, found = encode_labels(list(hf[label_column]), where, label_names or names)
    return TextDataset(texts=texts, labels=labels, label_names=found, name=f"{source}[{split}]")


def load_texts(source: str, split: str = "train", text_column: str = "text",
               label_column: str | None = "label",
               label_names: Sequence[str] | None = None) -> TextDataset:
    """Read one split of one data source as texts and integer labels.

    ``source``: "default" (the bundled task), a .csv/.tsv/.jsonl/.json path (``split`` is
    then ignored), a folder with ``<split>.<ext>`` files, or a Hugging Face datasets name.
    ``label_column=None`` reads texts only (causal language modelling).
    ``label_names``: impose an existing label-to-id mapping (the training set's) instead of
    building one from this split's string labels.
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"no data source given ({source!r}); accepted: {ACCEPTED_SOURCES}")
    source = source.strip()
    if source == "default":
        ds = load_default(split)  # its files always use the columns "text" and "label"
        if label_column is None:
            return TextDataset(texts=ds.texts, name=ds.name)
        return ds
    if looks_like_path(source):
        path = Path(source).expanduser()
        if path.is_dir():
            path = split_file(path, split)
        elif not path.exists():
            raise DataError(f"no such file: {path}. Accepted data sources: {ACCEPTED_SOURCES}.")
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise DataError(f"{path}: unknown file type {path.suffix!r}; accepted: "
                            f"{', '.join(FILE_SUFFIXES)}")
        return _dataset_from_rows(read_rows(path), text_column, label_column, str(path),
                                  path.name, label_names)
    return _load_hub(source, split, text_column, label_column, label_names)


# --------------------------------------------------------------------------------------
# Choosing training and evaluation data
# --------------------------------------------------------------------------------------


def train_eval_split(ds: TextDataset, eval_fraction: float = 0.1,
                     seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """Hold out a seeded random share of ``ds`` for evaluation.

    n_eval = max(1, round(eval_fraction * n)); the permutation comes from
    ``torch.randperm`` with a generator seeded by ``seed``, so the same seed always holds
    out the same examples. Both parts keep the original order of their examples.
    """
    check_number("eval_fraction", eval_fraction, 0, 1, low_open=True, high_open=True)
    n = len(ds)
    if n < 2:
        raise DataError(f"{ds.name or 'dataset'} has {n} example(s): need at least 2 to hold "
                        "one out for evaluation")
    n_eval = min(n - 1, max(1, round(eval_fraction * n)))
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen).tolist()
    eval_idx, train_idx = sorted(perm[:n_eval]), sorted(perm[n_eval:])
    return (ds.select(train_idx, name=f"{ds.name} (train part)"),
            ds.select(eval_idx, name=f"{ds.name} (held-out {eval_fraction:.0%})"))


def load_task(data: str = "default", eval_data: str | None = None, text_column: str = "text",
              label_column: str | None = "label", seed: int = 0,
              eval_fraction: float = 0.1) -> tuple[TextDataset, TextDataset]:
    """The (train, eval) pair a run uses.

    - "default" with no ``eval_data``: the bundled train and validation splits.
    - A file with no ``eval_data``: a held-out ``eval_fraction`` of it (``train_eval_split``).
    - A folder or a hub dataset with no ``eval_data``: its validation (or dev) split, else a
      held-out share of its training split.
    - ``eval_data`` given: read with the same columns and the training set's label ids.
    """
    train = load_texts(data, "train", text_column, label_column)
    names = train.label_names
    if eval_data is not None:
        eval_ds = load_texts(eval_data, "validation", text_column, label_column, names)
        return train, eval_ds
    if data.strip() == "default":
        return train, load_texts("default", "validation", text_column, label_column)
    path = Path(data.strip()).expanduser()
    is_file = looks_like_path(data.strip()) and not path.is_dir()
    if not is_file:
        try:
            return train, load_texts(data, "validation", text_column, label_column, names)
        except DataError:
            if has_split(path, "validation"):
                raise  # the folder's validation file is there and could not be read: say so
            # no validation split: hold out part of train below
    return train_eval_split(train, eval_fraction, seed)


# --------------------------------------------------------------------------------------
# Tokenizing once, padding per batch
# --------------------------------------------------------------------------------------


@dataclass
class TokenizedDataset(Dataset):
    """Token ids per example (unpadded, truncated to ``max_length``) and their labels."""

    input_ids: list[list[int]]
    labels: list[int]
    max_length: int
    name: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"input_ids": self.input_ids[i]}
        if self.labels:
            item["label"] = self.labels[i]
        return item

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)


def tokenize_dataset(ds: TextDataset, tokenizer: Any, max_length: int) -> TokenizedDataset:
    """Tokenize every text once (special tokens added, truncated, not padded)."""
    check_integer("max_length", max_length, 2, what="tokens per example")
    if len(ds) == 0:
        raise DataError(f"{ds.name or 'dataset'} has no examples to tokenize")
    enc = tokenizer(list(ds.texts), truncation=True, max_length=max_length, padding=False)
    return TokenizedDataset(input_ids=[list(ids) for ids in enc["input_ids"]],
                            labels=list(ds.labels), max_length=max_length, name=ds.name)


def by_length(tokens: TokenizedDataset) -> TokenizedDataset:
    """The same examples, shortest first (a stable sort, so ties keep their order).

    For evaluation, where order does not matter: batches of similar lengths pad less, so
    dynamic padding wastes almost nothing.  (Training keeps its shuffled order.)
    """
    order = sorted(range(len(tokens)), key=lambda i: len(tokens.input_ids[i]))
    return TokenizedDataset(input_ids=[tokens.input_ids[i] for i in order],
                            labels=[tokens.labels[i] for i in order] if tokens.labels else [],
                            max_length=tokens.max_length, name=tokens.name)


def pad_token_id(tokenizer: Any) -> int:
    """The id padding positions get: the tokenizer's pad token, else its end-of-text token
    (GPT-2 has no pad token; the attention mask hides those positions either way)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise DataError("the tokenizer has neither a pad token nor an end-of-sequence token; "
                    "set tokenizer.pad_token before batching")


@dataclass
class Batch:
    """One padded batch. ``model(**batch.model_inputs())`` runs the model on it.

    ``labels``: class ids of shape (B,) for classification; for causal LM a copy of
    ``input_ids`` of shape (B, T) with -100 at padding positions, and at the prompt's
    positions when the examples carry a ``prompt_length`` (``workbench.engine.sft``); the
    model shifts it by one inside, so position t is scored on predicting token t+1.
    ``num_tokens`` = sum of ``attention_mask``: the real tokens, padding left out.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    num_tokens: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: str | torch.device) -> "Batch":
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            num_tokens=self.num_tokens,
        )

    def model_inputs(self) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.labels is not None:
            inputs["labels"] = self.labels
        return inputs


@dataclass
class PadCollator:
    """Pads a list of examples to the longest among them (right padding).

    For a batch with lengths L_1..L_B, T = max(L_i); example i gets T - L_i pad ids after
    its tokens and an attention mask of L_i ones followed by T - L_i zeros.
    """

    pad_id: int
    task: Task = "classification"

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> Batch:
        if not examples:
            raise DataError("cannot collate an empty list of examples")
        longest = max(len(ex["input_ids"]) for ex in examples)
        ids = torch.full((len(examples), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, ex in enumerate(examples):
            n = len(ex["input_ids"])
            ids[row, :n] = torch.tensor(ex["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
        if self.task == "causal-lm":
            labels: torch.Tensor | None = ids.masked_fill(mask == 0, IGNORE_INDEX)
            for row, ex in enumerate(examples):  # prompt/completion pairs: only the completion is learned
                labels[row, : ex.get("prompt_length", 0)] = IGNORE_INDEX
        elif all("label" in ex for ex in examples):
            labels = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)
        else:
            labels = None
        return Batch(input_ids=ids, attention_mask=mask, labels=labels,
                     num_tokens=int(mask.sum()))


def make_batches(ds: TextDataset | Dataset, tokenizer: Any, batch_size: int = 16,
                 max_length: int = 64, shuffle: bool = True, seed: int = 0,
                 task: Task = "classification", drop_last: bool = False) -> DataLoader:
    """A DataLoader of dynamically padded ``Batch`` objects.

    A ``TextDataset`` is tokenized here (once); pass a ``TokenizedDataset`` to reuse
    tokens across loaders. With ``shuffle``, the order comes from a ``torch.Generator``
    seeded with ``seed``: each pass over the loader draws the next permutation from it, so
    the whole sequence of batches, over all epochs, is fixed by the seed.
    """
    check_positive_int("batch_size", batch_size)
    check_choice("task", task, TASKS)
    # A TextDataset is tokenized here; token sets (TokenizedDataset, sft.PromptTokens) are used as they are.
    tokens = tokenize_dataset(ds, tokenizer, max_length) if isinstance(ds, TextDataset) else ds
    if task == "classification" and not tokens.labels:
        raise DataError(f"{tokens.name or 'dataset'} has no labels: classification needs a "
                        "label column (causal-lm needs texts only)")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(tokens, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=PadCollator(pad_token_id(tokenizer), task),
                      drop_last=drop_last, num_workers=0)


def repeat_batches(loader: DataLoader, num_steps: int) -> Iterator[Batch]:
    """Exactly ``num_steps`` batches, starting a new (reshuffled) pass when one ends:
    training is counted in optimizer steps, not epochs."""
    check_integer("num_steps", num_steps, 0)
    if len(loader) == 0:
        raise DataError("the loader yields no batches (fewer examples than batch_size "
                        "with drop_last=True?)")
    step = 0
    while step < num_steps:
        for batch in loader:
            if step >= num_steps:
                return
            yield batch
            step += 1
