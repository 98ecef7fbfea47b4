"""Data for language models that write: prompt/completion pairs, chat messages, plain text.

Supervised fine-tuning (SFT) as people run it with TRL's ``SFTTrainer``: each example is a
prompt and the completion the model should write after it.  The loss counts the
completion's tokens only; the prompt is context, not something to learn to say:

    tokens  = prompt_ids + completion_ids + [EOS]
    labels  = [-100] * len(prompt_ids) + completion_ids + [EOS]
    loss    = mean over labelled positions t of  -log p(token_t | tokens_<t)

The end-of-sequence token is appended so that the model learns to stop: generation ends
when it writes EOS (``workbench.engine.generation.generate``).

Three kinds of source, told apart by their fields:

- ``{"prompt": ..., "completion": ...}`` records (JSONL, JSON, CSV, or a ``datasets`` name);
- ``{"messages": [{"role": ..., "content": ...}, ...]}``: a chat; the last message is the
  assistant's answer (the completion), the ones before it are formatted with the
  tokenizer's chat template (``add_generation_prompt=True``) into the prompt;
- plain text (a ``.txt`` file: one example per non-empty line, or ``text`` records):
  continued pretraining, every token of the text is learned (the prompt is empty).

The bundled generative task is ``"skill"`` (``data/skill/``, see data/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from workbench.engine.bundled import bundled_data_dir
from workbench.engine.data import IGNORE_INDEX, TextDataset, load_texts, train_eval_split
from workbench.engine.files import (FILE_SUFFIXES, DataError, has_split, looks_like_path, read_lines, read_rows,
                                    split_file)
from workbench.util.checks import check_integer

BUNDLED_SKILL = "skill"  # the bundled generative task: data/skill/{train,validation}.jsonl
TEXT_SUFFIXES = (".txt",)
ACCEPTED_SFT_SOURCES = (
    f'"{BUNDLED_SKILL}" (the bundled generative task); a .jsonl/.json/.csv file (or a folder with train.* and '
    'validation.* files) whose records have "prompt" and "completion", or "messages" (a chat), or "text"; '
    'a .txt file (one text per line, for continued pretraining); or a Hugging Face datasets name with those columns'
)
# What a generative data file may hold, said in the errors about one that holds nothing readable.
SFT_RECORDS = ('accepted: UTF-8 records with "prompt" and "completion", or "messages" (a chat), or "text", in a '
               '.jsonl (one JSON object per line), .json, .csv or .tsv file; or a .txt file, one text per line')


@dataclass
class PromptDataset:
    """Prompt/completion pairs (``prompts[i] == ""`` for plain text: every token is learned)."""

    prompts: list[str]
    completions: list[str]
    name: str = ""
    chat: list[bool] = field(default_factory=list)  # per example: the prompt came from a chat template

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.completions):
            raise DataError(f"{self.name or 'dataset'}: {len(self.prompts)} prompts but "
                            f"{len(self.completions)} completions")

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices: Sequence[int], name: str | None = None) -> "PromptDataset":
        return PromptDataset([self.prompts[i] for i in indices], [self.completions[i] for i in indices],
                             self.name if name is None else name,
                             [self.chat[i] for i in indices] if self.chat else [])

    def head(self, n: int | None) -> "PromptDataset":
        """The first ``n`` examples (all of them when ``n`` is None or larger)."""
        return self if n is None or n >= len(self) else self.select(range(n))


# --------------------------------------------------------------------------- reading


def format_chat(messages: Any, tokenizer: Any, where: str) -> tuple[str, str]:
    """(prompt, completion) of one chat: every message but the last through the chat
    template, with the assistant's turn opened; the last message (the assistant's) as the
    completion."""
    if not isinstance(messages, list) or len(messages) < 2 or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise DataError(f"{where}: 'messages' must be a list of at least two "
                        '{"role": ..., "content": ...} objects, the last one the assistant\'s answer')
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message is the {messages[-1]['role']!r}'s; it must be the "
                        "assistant's answer, which the model learns to write")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "this tokenizer")
        raise DataError(f"{where}: chat 'messages' need a tokenizer with a chat template, and {name} has none; "
                        "give the data as prompt/completion records instead")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return prompt, str(messages[-1]["content"])


def _from_rows(rows: list[dict[str, Any]], where: str, name: str, tokenizer: Any) -> PromptDataset:
    if not rows:
        raise DataError(f"{where} holds no records ({SFT_RECORDS})")
    columns = set(rows[0])
    prompts, completions, chat = [], [], []
    if {"prompt", "completion"} <= columns:
        for i, row in enumerate(rows):
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
                raise DataError(f"{where}: record {i + 1} needs string 'prompt' and 'completion' fields")
            if not row["completion"].strip():
                raise DataError(f"{where}: record {i + 1} has an empty completion: nothing to learn")
            prompts.append(row["prompt"])
            completions.append(row["completion"])
            chat.append(False)
    elif "messages" in columns:
        for i, row in enumerate(rows):
            p, c = format_chat(row.get("messages"), tokenizer, f"{where}, record {i + 1}")
            prompts.append(p)
            completions.append(c)
            chat.append(True)
    elif "text" in columns:
        for i, row in enumerate(rows):
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: record {i + 1} has no text")
            prompts.append("")
            completions.append(text)
            chat.append(False)
    else:
        raise DataError(f"{where}: records need 'prompt' and 'completion', or 'messages', or 'text'; "
                        f"they have {', '.join(map(str, sorted(columns)))}")
    return PromptDataset(prompts, completions, name, chat)


def _read_text_file(path: Path) -> PromptDataset:
    texts = read_lines(path, SFT_RECORDS)
    return PromptDataset([""] * len(texts), texts, path.name, [False] * len(texts))


def _read_path(path: Path, tokenizer: Any) -> PromptDataset:
    if path.suffix.lower() in TEXT_SUFFIXES:
        return _read_text_file(path)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; accepted: "
                        f"{', '.join(FILE_SUFFIXES + TEXT_SUFFIXES)}")
    return _from_rows(read_rows(path, SFT_RECORDS), str(path), path.name, tokenizer)


def _load_hub_prompts(source: str, split: str, tokenizer: Any) -> PromptDataset:
    name, _, config = source.partition(":")
    try:
        import datasets

        hf = datasets.load_dataset(name, config or None, split=split)
    except Exception as err:  # offline, unknown name, unknown split
        raise DataError(f"{source!r} is not a local file or folder, and loading it as a Hugging Face dataset "
                        f"(split {split!r}) failed: {type(err).__name__}: {err}. "
                        f"Accepted: {ACCEPTED_SFT_SOURCES}.") from err
    return _from_rows([dict(r) for r in hf], f"dataset {source!r} split {split!r}", f"{source}[{split}]", tokenizer)


def skill_dir() -> Path:
    return bundled_data_dir() / BUNDLED_SKILL


def load_prompts(source: str, split: str = "train", tokenizer: Any = None) -> PromptDataset:
    """One split of a generative data source (see the module docstring for what is accepted).

    ``tokenizer`` is needed only for chat ``messages`` (its chat template makes the prompt).
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"no data source given ({source!r}); accepted: {ACCEPTED_SFT_SOURCES}")
    source = source.strip()
    if source == BUNDLED_SKILL:
        folder = skill_dir()
        if not folder.is_dir():
            raise DataError(f"the bundled generative task {folder} is missing; regenerate it with "
                            f"`python {bundled_data_dir() / 'make_skill.py'}`")
        return _read_path(split_file(folder, split), tokenizer)
    if source == "default":  # the classification task's sentences, as plain text
        texts = load_texts("default", split, label_column=None)
        return PromptDataset([""] * len(texts), list(texts.texts), texts.name, [False] * len(texts))
    if looks_like_path(source) or source.lower().endswith(TEXT_SUFFIXES):
        path = Path(source).expanduser()
        if path.is_dir():
            return _read_path(split_file(path, split), tokenizer)
        if not path.exists():
            raise DataError(f"no such file: {path}. Accepted: {ACCEPTED_SFT_SOURCES}.")
        return _read_path(path, tokenizer)
    return _load_hub_prompts(source, split, tokenizer)


def load_prompt_task(data: str, eval_data: str | None = None, tokenizer: Any = None,
                     seed: int = 0, eval_fraction: float = 0.1) -> tuple[PromptDataset, PromptDataset]:
    """The (train, eval) pair of a generative run, chosen as ``data.load_task`` does."""
    train = load_prompts(data, "train", tokenizer)
    if eval_data is not None:
        return train, load_prompts(eval_data, "validation", tokenizer)
    source = data.strip()
    path = Path(source).expanduser()
    single_file = (looks_like_path(source) or source.lower().endswith(TEXT_SUFFIXES)) and not path.is_dir()
    if not single_file:
        try:
            return train, load_prompts(data, "validation", tokenizer)
        except DataError:
            if has_split(path, "validation"):
                raise  # the folder's validation file is there and could not be read: say so
            # no validation split: hold out part of train
    as_text = TextDataset(texts=[str(i) for i in range(len(train))], name=train.name)
    kept, held = train_eval_split(as_text, eval_fraction, seed)
    return (train.select([int(t) for t in kept.texts], f"{train.name} (train part)"),
            train.select([int(t) for t in held.texts], f"{train.name} (held-out {eval_fraction:.0%})"))


# --------------------------------------------------------------------------- tokenizing with the prompt masked


@dataclass
class PromptTokens:
    """Token ids of prompt + completion + EOS per example, and where each completion starts.

    ``labels_for(i)`` is what the loss sees: IGNORE_INDEX (-100) on the prompt's positions;
    with ``completion_only=False`` every token is learned, the prompt's too.
    """

    input_ids: list[list[int]]
    prompt_lengths: list[int]
    max_length: int
    name: str = ""
    completion_only: bool = True  # the loss counts the completion only (RunConfig.completion_only_loss)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "prompt_length": self.prompt_lengths[i] if self.completion_only else 0}

    def labels_for(self, i: int) -> list[int]:
        ids, n = self.input_ids[i], self.prompt_lengths[i] if self.completion_only else 0
        return [IGNORE_INDEX] * n + ids[n:]

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)


def shortest_first(tokens: PromptTokens) -> PromptTokens:
    """The same examples, shortest first: for evaluation, where order does not matter and
    batches of similar lengths pad less (as ``data.by_length`` for classification)."""
    order = sorted(range(len(tokens)), key=lambda i: len(tokens.input_ids[i]))
    return PromptTokens([tokens.input_ids[i] for i in order], [tokens.prompt_lengths[i] for i in order],
                        tokens.max_length, tokens.name, tokens.completion_only)


def prompt_ids(tokenizer: Any, prompt: str, chat: bool = False) -> list[int]:
    """The prompt's token ids as the model will see them: the tokenizer's special start
    tokens (BOS) first, unless a chat template already wrote them into the text."""
    return batch_prompt_ids(tokenizer, [prompt], [chat])[0]


def batch_prompt_ids(tokenizer: Any, prompts: list[str], chat: list[bool]) -> list[list[int]]:
    """``prompt_ids`` of many prompts, with one tokenizer call per kind (plain, chat).

    One call for all the texts lets a fast tokenizer encode them in one go; a call per
    text spent most of a run's loading time in the tokenizer's Python wrapper (0.6 s of
    the generate preset's 0.9 s to its first step, AMD EPYC Zen 3)."""
    ids: list[list[int]] = [[] for _ in prompts]
    for is_chat in (False, True):
        picked = [i for i, (p, c) in enumerate(zip(prompts, chat)) if bool(c) == is_chat and (p or is_chat)]
        if picked:
            encoded = tokenizer([prompts[i] for i in picked], add_special_tokens=not is_chat)["input_ids"]
            for i, e in zip(picked, encoded):
                ids[i] = list(e)
    eos, bos = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "bos_token_id", None)
    for i, is_chat in enumerate(chat):
        if is_chat:
            continue
        if len(ids[i]) > 1 and eos is not None and ids[i][-1] == eos:
            ids[i] = ids[i][:-1]  # tokenizers that close every text with EOS: the prompt is not finished
        if not ids[i] and bos is not None:
            ids[i] = [bos]  # plain text: condition the first token on BOS
    return ids


def tokenize_prompts(ds: PromptDataset, tokenizer: Any, max_length: int, completion_only: bool = True) -> PromptTokens:
    """prompt_ids + completion_ids + [EOS] per example, at most ``max_length`` tokens.

    ``completion_only``: the loss counts the completion only (the default); False: the prompt too.

    Too long: the prompt loses tokens from its start (the completion, what is learned, is
    kept whole); a completion longer than ``max_length`` - 1 by itself is cut at its end.
    """
    check_integer("max_length", max_length, 2, what="tokens per example")
    if len(ds) == 0:
        raise DataError(f"{ds.name or 'dataset'} has no examples to tokenize")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError("the tokenizer has no end-of-sequence token; a generative run appends EOS to every "
                        "completion so that the model learns to stop (set tokenizer.eos_token)")
    all_ids, lengths = [], []
    chat = [bool(ds.chat and ds.chat[i]) for i in range(len(ds))]
    prompts = batch_prompt_ids(tokenizer, list(ds.prompts), chat)
    completions = tokenizer(list(ds.completions), add_special_tokens=False)["input_ids"]
    for p, completion_ids in zip(prompts, completions):
        c = list(completion_ids) + [eos]
        if len(c) > max_length - 1:
            c = c[: max_length - 1]
        p = p[len(p) - min(len(p), max_length - len(c)):]
        if not p:  # at least one token of context, so the first completion token has a prediction
            p = [getattr(tokenizer, "bos_token_id", None) or eos]
        all_ids.append(p + c)
        lengths.append(len(p))
    return PromptTokens(all_ids, lengths, max_length, ds.name, completion_only)


def read_text_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a text file (held-out pretraining text, for measuring forgetting)."""
    return read_lines(path, "heldout_data: a UTF-8 text file of pretraining text, one text per line")

