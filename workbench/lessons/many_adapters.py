"""One base, many adapters: what serving several fine-tunes from one model costs and gives.

A LoRA fine-tune is a small pair of matrices per adapted layer; the base model's weights
are the same for all of them.  A server that holds the base once and swaps or mixes
adapters per request (LoRAX, S-LoRA, vLLM's multi-LoRA) pays for the base once:

    one base + N adapters:  |W| + sum_k |A_k, B_k|        N merged copies:  N |W|

and can put requests for different adapters in one batch: each LoRA layer computes
``W x`` once for all rows and adds each row's own ``s_k B_k A_k x`` (``workbench.lora.serving``).

This module builds what notebook 08 shows on the bundled story-lm:

* small tasks derived from the bundled skill (``data/skill``: statement -> yes/no
  question): **negation** (``Mia is happy.`` -> ``Mia is not happy.``) and **tense**
  (``Mia is happy.`` -> ``Mia was happy.`` and back), written as prompt/completion files;
* an adapter trained and saved by PEFT itself (``get_peft_model`` + ``save_pretrained``),
  to show that adapters in PEFT's format join the same base;
* the measurements: bytes from the tensors, a mixed batch against one adapter at a time
  (interleaved medians, ``workbench.engine.timing``), and each mixed-batch answer against
  the adapter applied alone.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from workbench.engine.data import PadCollator, pad_token_id
from workbench.engine.generation import exact_match, generate
from workbench.engine.sft import load_prompts, skill_dir, tokenize_prompts
from workbench.engine.timing import interleave
from workbench.lora.adapters import load_adapter
from workbench.lora.export import merged_copy
from workbench.lora.serving import adapter_bytes, adapter_names, set_adapter, tensor_bytes
from workbench.util.checks import check_positive_int, check_positive_number
from workbench.util.fileio import atomic_write_text
from workbench.util.units import MB
from workbench.viz.style import (FULL_COLOR, MEMORY_COMPONENTS, RUN_PALETTE, label_axes, legend, new_figure,
                                  style_axes)

__all__ = ["TASKS", "negate", "swap_tense", "derive_records", "write_task", "train_peft_adapter", "load_all",
           "memory_table", "memory_figure", "mixed_vs_alone", "latency", "Latency", "task_scores"]

VERBS = {"is": "was", "was": "is"}
STATEMENT, QUESTION = "Statement: ", "\nQuestion:"


def _statement(prompt: str) -> str:
    """The statement of a bundled skill prompt (``Statement: Mia is happy.\\nQuestion:`` -> ``Mia is happy.``)."""
    if not (prompt.startswith(STATEMENT) and prompt.endswith(QUESTION)):
        raise ValueError(f"not a prompt of the bundled skill (expected {STATEMENT!r}...{QUESTION!r}): {prompt!r}")
    return prompt[len(STATEMENT):-len(QUESTION)]


def _verb_at(words: list[str], statement: str) -> int:
    found = [i for i, w in enumerate(words) if w.rstrip(".,;:!?") in VERBS]
    if len(found) != 1:
        raise ValueError(f"expected exactly one 'is' or 'was' in the statement, found {len(found)}: {statement!r}")
    return found[0]


def negate(statement: str) -> str:
    """The statement negated: 'not' after its verb (``Tom's dog was very hungry.`` -> ``Tom's dog was not very hungry.``)."""
    words = statement.split(" ")
    i = _verb_at(words, statement)
    return " ".join(words[:i + 1] + ["not"] + words[i + 1:])


def swap_tense(statement: str) -> str:
    """The statement in the other tense: 'is' <-> 'was' (``Mia is happy.`` -> ``Mia was happy.``)."""
    words = statement.split(" ")
    i = _verb_at(words, statement)
    verb = words[i].rstrip(".,;:!?")
    words[i] = VERBS[verb] + words[i][len(verb):]
    return " ".join(words)


# A derived task: its prompt's last line, and the completion from the statement.
TASKS: dict[str, tuple[str, Callable[[str], str]]] = {
    "negation": ("Negation:", negate),
    "tense": ("Other tense:", swap_tense),
}


def derive_records(records: Sequence[dict[str, str]], task: str) -> list[dict[str, str]]:
    """The bundled skill's records turned into ``task``'s (same statements, same train/validation split)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; derived tasks: {', '.join(TASKS)}")
    cue, answer = TASKS[task]
    out = []
    for r in records:
        statement = _statement(r["prompt"])
        out.append({"prompt": f"{STATEMENT}{statement}\n{cue}", "completion": " " + answer(statement)})
    return out


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_task(folder: str | os.PathLike, task: str) -> Path:
    """Write ``task`` derived from the bundled skill as ``train.jsonl`` and ``validation.jsonl`` in ``folder``
    (a data source that ``RunConfig(data=folder)`` and ``load_prompts`` read)."""
    folder = Path(folder)
    for split in ("train", "validation"):
        records = derive_records(_read_jsonl(skill_dir() / f"{split}.jsonl"), task)
        atomic_write_text(folder / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return folder


def train_peft_adapter(folder: str | os.PathLike, data: str | os.PathLike, steps: int = 150, rank: int = 4,
                       alpha: float = 8.0, targets: Sequence[str] = ("q_proj", "v_proj", "down_proj"),
                       lr: float = 3e-3, batch_size: int = 16, seed: int = 0, max_train_examples: int | None = None
                       ) -> list[float]:
    """Train LoRA on the bundled story-lm with PEFT itself and save it with ``save_pretrained``.

    A plain loop (AdamW, the loss on the completion only, as a workbench run computes it),
    so the adapter's file is PEFT's own, not ours.  Returns the training loss of each step.
    """
    from peft import LoraConfig, get_peft_model

    from workbench.engine.models import load_base

    check_positive_int("steps", steps)
    check_positive_int("batch_size", batch_size)
    check_positive_number("lr", lr)
    torch.manual_seed(seed)
    base, tokenizer = load_base("story-lm", task="causal-lm")
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                            task_type="CAUSAL_LM"))
    ds = load_prompts(str(data), "train", tokenizer)
    tokens = tokenize_prompts(ds, tokenizer, max_length=64)
    n = len(tokens) if max_train_examples is None else min(len(tokens), max_train_examples)
    collate = PadCollator(pad_token_id(tokenizer), task="causal-lm")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    losses = []
    model.train()
    for step in range(steps):
        start = (step * batch_size) % n
        rows = [order[(start + j) % n] for j in range(min(batch_size, n))]
        batch = collate([tokens[i] for i in rows])
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    model.save_pretrained(str(folder))
    return losses


def load_all(folders: dict[str, str | os.PathLike]) -> tuple[nn.Module, Any]:
    """The bundled story-lm with every adapter of ``folders`` (name -> folder) loaded under its name."""
    from workbench.engine.models import load_base

    if not folders:
        raise ValueError("give at least one adapter folder (name -> folder)")
    model, tokenizer = load_base("story-lm", task="causal-lm")
    for name, folder in folders.items():
        load_adapter(model, folder, name=name)
    return model.eval(), tokenizer


# ---- memory ---------------------------------------------------------------------------------------------------------


def memory_table(model: nn.Module, folders: dict[str, str | os.PathLike]) -> pd.DataFrame:
    """Bytes, measured from the tensors, of the first N adapters served from one base against N merged copies.

    ``model``: the base with the adapters loaded (``load_all``).  Each merged copy is built
    for real (the adapter alone on a fresh base, merged, LoRA removed) and measured.
    Rows N = 1 .. len(folders); columns: the adapters, base bytes, the adapters' bytes,
    one base + N adapters, N merged copies, and their ratio.
    """
    from workbench.engine.models import load_base

    names = adapter_names(model)
    sizes = adapter_bytes(model)
    base_bytes = tensor_bytes(p for n, p in model.named_parameters()
                              if ".lora_" not in n and ".extra_adapters." not in n)
    merged = {}
    for name in names:
        alone, _ = load_base("story-lm", task="causal-lm")
        load_adapter(alone, folders[name])
        merged[name] = tensor_bytes(merged_copy(alone).parameters())
    rows = []
    for k in range(1, len(names) + 1):
        served = base_bytes + sum(sizes[n] for n in names[:k])
        copies = sum(merged[n] for n in names[:k])
        rows.append({"adapters": k, "names": ", ".join(names[:k]), "base_bytes": base_bytes,
                     "adapter_bytes": sum(sizes[n] for n in names[:k]), "one_base_bytes": served,
                     "merged_copies_bytes": copies, "ratio": copies / served})
    return pd.DataFrame(rows)


def memory_figure(table: pd.DataFrame) -> Figure:
    """Bars: one base + N adapters (base and adapters stacked) against N merged copies, in MB.

    The house style (``workbench.viz.style``): the base is weights (the memory figures' weights
    colour), the adapters the run palette's second colour (orange: it must stand apart from the base's blue), the merged copies full fine-tuning's red
    (each copy is a whole model, as full fine-tuning's checkpoints are).
    """
    fig, ax = new_figure((7.0, 3.6))
    style_axes(ax, grid_axis="y")
    ax.grid(False, axis="x")
    x = table["adapters"].to_numpy(dtype=float)
    weights_color = next(c for attr, _, c in MEMORY_COMPONENTS if attr == "weights")
    ax.bar(x - 0.2, table["base_bytes"] / MB, width=0.38, color=weights_color, label="one base (shared)")
    ax.bar(x - 0.2, table["adapter_bytes"] / MB, width=0.38, bottom=table["base_bytes"] / MB, color=RUN_PALETTE[1],
           label="adapters (A, B)")
    ax.bar(x + 0.2, table["merged_copies_bytes"] / MB, width=0.38, color=FULL_COLOR, label="N merged copies")
    ax.set_xticks(x, [f"N = {int(k)}" for k in table["adapters"]])
    label_axes(ax, "Serving N fine-tunes: one base + adapters vs merged copies", "adapters served",
               "weights (MB, 1 MB = 10⁶ bytes)")
    legend(ax, loc="upper left")
    return fig


# ---- answers and latency --------------------------------------------------------------------------------------------


def mixed_vs_alone(model: nn.Module, tokenizer: Any, prompts: Sequence[str], adapters: Sequence[str | None],
                   max_new_tokens: int = 16) -> pd.DataFrame:
    """Each prompt answered in one mixed batch (``adapters[i]`` for prompt i) and by its adapter alone
    (``set_adapter``, then that prompt alone); greedy.  The active adapter is given back as it was."""
    from workbench.lora.serving import active_adapter

    mixed = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens, adapters=list(adapters),
                     batch_size=len(prompts))
    was = active_adapter(model)
    alone = []
    try:
        for p, name in zip(prompts, adapters):
            set_adapter(model, name)
            alone.append(generate(model, tokenizer, p, max_new_tokens=max_new_tokens)[0])
    finally:
        set_adapter(model, was)
    return pd.DataFrame({"adapter": [a or "(base)" for a in adapters], "prompt": list(prompts),
                         "mixed batch": mixed, "adapter alone": alone,
                         "equal": [m == a for m, a in zip(mixed, alone)]})


@dataclass
class Latency:
    """Seconds per call of serving the same requests two ways, interleaved; medians and their ratio."""

    mixed: list[float]  # one generate over all prompts, each row its adapter
    one_at_a_time: list[float]  # per adapter: set_adapter, then generate over its prompts

    @property
    def mixed_median(self) -> float:
        return statistics.median(self.mixed)

    @property
    def one_at_a_time_median(self) -> float:
        return statistics.median(self.one_at_a_time)

    @property
    def ratio(self) -> float:
        """One adapter at a time over the mixed batch (> 1: the mixed batch is faster)."""
        return self.one_at_a_time_median / self.mixed_median

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"way": ["mixed batch", "one adapter at a time"],
                             "median_ms": [1000 * self.mixed_median, 1000 * self.one_at_a_time_median],
                             "min_ms": [1000 * min(self.mixed), 1000 * min(self.one_at_a_time)],
                             "repeats": [len(self.mixed), len(self.one_at_a_time)]})


def latency(model: nn.Module, tokenizer: Any, prompts: Sequence[str], adapters: Sequence[str | None],
            max_new_tokens: int = 16, repeats: int = 5, warmup: int = 1) -> Latency:
    """Time the same requests served as one mixed batch and one adapter at a time (interleaved repeats).

    Both write the same answers (``mixed_vs_alone`` checks it); what differs is the number
    of forward passes: one batch of all rows per step, against one batch per adapter.
    """
    from workbench.lora.serving import active_adapter

    prompts, adapters = list(prompts), list(adapters)
    groups: dict[str | None, list[str]] = {}
    for p, a in zip(prompts, adapters):
        groups.setdefault(a, []).append(p)
    was = active_adapter(model)

    def mixed() -> None:
        generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, adapters=adapters,
                 batch_size=len(prompts))

    def one_at_a_time() -> None:
        for name, group in groups.items():
            set_adapter(model, name)
            generate(model, tokenizer, group, max_new_tokens=max_new_tokens, batch_size=len(group))

    try:
        times = interleave({"mixed": mixed, "one_at_a_time": one_at_a_time}, repeats=repeats, warmup=warmup)
    finally:
        set_adapter(model, was)
    return Latency(times["mixed"], times["one_at_a_time"])


def task_scores(model: nn.Module, tokenizer: Any, tasks: dict[str, str | os.PathLike], n: int = 16,
                max_new_tokens: int = 16) -> pd.DataFrame:
    """Exact match of every adapter on every task's first ``n`` validation prompts, all in one mixed batch
    per task (rows: tasks; columns: the base and each adapter).  ``tasks``: task name -> data source."""
    check_positive_int("n", n)
    names: list[str | None] = [None, *adapter_names(model)]
    rows = []
    for task, source in tasks.items():
        ds = load_prompts(str(source), "validation", tokenizer)
        prompts, refs = ds.prompts[:n], ds.completions[:n]
        k = len(prompts)
        answers = generate(model, tokenizer, prompts * len(names), max_new_tokens=max_new_tokens,
                           adapters=[a for a in names for _ in range(k)], batch_size=k * len(names))
        row = {"task": task}
        for j, a in enumerate(names):
            row[a or "(base)"] = exact_match(answers[j * k:(j + 1) * k], refs)
        rows.append(row)
    return pd.DataFrame(rows).set_index("task")


def mixed_batch(tasks: dict[str, str | os.PathLike], per_task: int = 4,
                base_source: str = "skill") -> tuple[list[str], list[str | None]]:
    """The requests of notebook 08's mixed batch: ``per_task`` validation prompts of each task (for that task's
    adapter) and one for the base model alone (``None``), mixed through the batch so that neighbouring rows
    use different adapters.  Returns (prompts, adapter per prompt)."""
    check_positive_int("per_task", per_task)
    prompts: list[str] = []
    names: list[str | None] = []
    for task, source in tasks.items():
        prompts += load_prompts(str(source), "validation").prompts[:per_task]
        names += [task] * per_task
    prompts.append(load_prompts(base_source, "validation").prompts[per_task])
    names.append(None)  # the base model alone
    order = sorted(range(len(prompts)), key=lambda i: (i * 7) % len(prompts))
    return [prompts[i] for i in order], [names[i] for i in order]


# ---- what notebook 08 says, as data (every sentence formatted from these numbers) -------------------------------

#: An adapter "does its task" at this exact match or more, and "does not" at ``DOES_NOT`` or less.
DOES = 0.9
DOES_NOT = 0.1


@dataclass
class MemoryFindings:
    """The last row of ``memory_table`` (all adapters loaded) and each adapter's bytes."""

    base_bytes: int
    adapter_bytes: dict[str, int]
    adapters: int
    one_base_bytes: int
    merged_copies_bytes: int
    ratio: float  # merged copies over one base with the adapters

    def markdown(self) -> str:
        return (f"The base holds **{self.base_bytes / MB:.2f} MB**; the adapters hold "
                + ", ".join(f"**{n}** {b / 1e3:.0f} kB ({100 * b / self.base_bytes:.1f} % of the base)"
                            for n, b in self.adapter_bytes.items())
                + f". Serving all {self.adapters} from one base takes **{self.one_base_bytes / MB:.2f} MB**; "
                f"{self.adapters} merged copies take **{self.merged_copies_bytes / MB:.2f} MB**, {self.ratio:.2f} times "
                "as much. Each further adapter costs its own A and B, each further merged copy the whole model.")


def memory_findings(memory: pd.DataFrame, sizes: dict[str, int]) -> MemoryFindings:
    """``MemoryFindings`` of ``memory_table`` and ``adapter_bytes``."""
    last = memory.iloc[-1]
    return MemoryFindings(int(last.base_bytes), dict(sizes), int(last.adapters), int(last.one_base_bytes),
                          int(last.merged_copies_bytes), float(last.ratio))


@dataclass
class ScoreFindings:
    """``task_scores`` read: each adapter on its own task, the base model, and adapters on others' tasks."""

    own: dict[str, float]
    base_max: float
    others_max: float

    @property
    def each_only_its_own(self) -> bool:
        """Every adapter does its own task (``DOES``) and none does another's (``DOES_NOT``)."""
        return min(self.own.values()) >= DOES and self.others_max <= DOES_NOT

    def markdown(self) -> str:
        return ("Each adapter on its own task: " + ", ".join(f"**{t}** {v:.2f}" for t, v in self.own.items())
                + f"; the base model scores {self.base_max:.2f} at most on any task, and on another adapter's task an "
                f"adapter scores {self.others_max:.2f} at most"
                + (": each fine-tune does its own task, and only its own." if self.each_only_its_own else "."))


def score_findings(scores: pd.DataFrame) -> ScoreFindings:
    """``ScoreFindings`` of ``task_scores``' table (an adapter per task, named after it)."""
    tasks = list(scores.index)
    return ScoreFindings({t: float(scores.loc[t, t]) for t in tasks}, float(scores["(base)"].max()),
                         max((float(scores.loc[t, a]) for t in tasks for a in tasks if a != t), default=float("nan")))


@dataclass
class MixedFindings:
    """``mixed_vs_alone`` read: how many answers of the mixed batch equal the adapter's answer alone."""

    equal: int
    rows: int
    adapters: int  # distinct adapters in the batch (the base model not counted)

    def markdown(self) -> str:
        return (f"**{self.equal} of {self.rows}** answers of the mixed batch equal the adapter's answer alone "
                f"({self.adapters} adapters and the base model in one batch).")


def mixed_findings(same: pd.DataFrame, names: Sequence[str | None]) -> MixedFindings:
    return MixedFindings(int(same["equal"].sum()), len(same), len({n for n in names if n is not None}))


@dataclass
class LatencyFindings:
    """``Latency`` read: which way was faster, with a band for a busy machine's noise."""

    latency: Latency
    groups: int  # forward passes per step one adapter at a time (the base counts as a group)
    cpus: int | None

    @property
    def verdict(self) -> str:
        """'faster', 'slower' or 'same': the mixed batch against one adapter at a time (10 % band)."""
        return "faster" if self.latency.ratio > 1.1 else "slower" if self.latency.ratio < 0.9 else "same"

    def markdown(self) -> str:
        lat = self.latency
        why = {"faster": "the mixed batch was faster: it runs one forward pass per step for all rows (as many steps as "
                         "its longest answer), one adapter at a time runs one per group and step (per group, as many as "
                         "that group's longest answer)",
               "slower": "the mixed batch was slower here",
               "same": "about the same time: the difference is within what a busy machine varies by"}[self.verdict]
        return (f"Median of {len(lat.mixed)} rounds: mixed batch **{1000 * lat.mixed_median:.0f} ms**, one adapter at a "
                f"time (**{self.groups}** groups) **{1000 * lat.one_at_a_time_median:.0f} ms**: one at a time took "
                f"**{lat.ratio:.2f}×** the mixed batch's time; {why}. Measured in this run, on this machine "
                f"({self.cpus} logical CPUs, with whatever else ran on them): compare the two ways within one run, never "
                "absolute times across runs.")


def latency_findings(lat: Latency, names: Sequence[str | None]) -> LatencyFindings:
    return LatencyFindings(lat, len(set(names)), os.cpu_count())


__all__ += ["mixed_batch", "MemoryFindings", "memory_findings", "ScoreFindings", "score_findings", "MixedFindings",
            "mixed_findings", "LatencyFindings", "latency_findings", "DOES", "DOES_NOT"]
