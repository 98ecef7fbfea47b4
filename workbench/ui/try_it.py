"""Try it (generate mode): the same prompt answered by the base model and by trained runs, side by side.

``TryIt`` answers a prompt greedily with the base model, the newest run (its trained
model, or its stored adapter) and a stored run chosen with ``choose_run``; the panel
asks again by itself when a run ends.  The prompts it suggests, and the reference it
compares with, are the held-out prompts of the generate preset's data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

from workbench.engine.config import RunResult, preset as make_preset
from workbench.ui.events import Messages
from workbench.ui.run_list import RunList
from workbench.ui.settings import Settings

TRY_MAX_NEW_TOKENS = 24
# Try it keeps at most this many stored runs' models loaded (the base model besides); the oldest goes first.
TRY_CACHE_RUNS = 4


@dataclass(frozen=True)
class Answer:
    """One model's answer to Try it's prompt.

    ``who``: "base model" or the run's label; ``text``: the answer (its first line,
    stripped, as exact match reads it); ``correct``: whether it equals the reference
    (exact match) when the prompt is one of the task's, else None.
    """

    who: str
    text: str
    run_id: str | None = None
    correct: bool | None = None


@dataclass(frozen=True)
class Answers:
    """The same prompt answered by the base model, the newest run and a chosen stored run, side by side."""

    prompt: str
    reference: str | None
    base: Answer
    adapted: Answer | None = None  # the newest run of the task (None before any)
    stored: Answer | None = None  # the stored run chosen with ``choose_run`` (None when none is)

    def all(self) -> list[Answer]:
        return [a for a in (self.base, self.adapted, self.stored) if a is not None]


class TryIt:
    """Try it's prompt, the stored run chosen to answer it too, and the last answers.

    ``settings``: gives the ``Settings`` in use (Try it answers only in generate mode,
    with its model); ``data``: the generate task's (model, preset), whose held-out
    prompts are suggested; ``runs``: the run list (the runs that can answer);
    ``last_result``: the run that has just ended, whose trained model answers at once.
    """

    def __init__(self, messages: Messages, settings: Callable[[], Settings], data: tuple[str, str], runs: RunList,
                 last_result: Callable[[], RunResult | None]) -> None:
        self.messages = messages
        self._settings = settings
        self._data = data
        self._runs = runs
        self._last_result = last_result
        self.prompt: str = ""
        self.try_run: str | None = None
        self.answers: Answers | None = None
        self._models: dict[str, Any] = {}  # "base:<model>" or a run id -> (model, tokenizer), loaded once
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        """The language model Try it asks (the generate task's, once it is the task in use)."""
        return self._settings().model.name

    def prompt_examples(self, n: int = 8) -> list[str]:
        """The first ``n`` held-out prompts of the generative preset's data (validation split); [] when unreadable."""
        return list(self._held_out()[0][:n])

    def default_prompt(self) -> str:
        """The prompt Try it starts with: the first held-out prompt of the task's data ('' when there is none)."""
        examples = self.prompt_examples(1)
        return examples[0] if examples else ""

    def _held_out(self) -> tuple[list[str], list[str]]:
        from workbench.engine.sft import load_prompts

        data = self._data
        try:
            ds = load_prompts(make_preset(data[1], model=data[0]).data, "validation")
        except Exception:  # noqa: BLE001 - a data set without a validation split: no examples, no reference
            return [], []
        return ds.prompts, ds.completions

    def reference(self, prompt: str) -> str | None:
        """The expected answer when ``prompt`` is one of the held-out prompts (exactly), else None."""
        from workbench.engine.generation import normalize_answer

        prompts, completions = self._held_out()
        return next((normalize_answer(c) for p, c in zip(prompts, completions) if p == prompt), None)

    def set_prompt(self, text: str) -> None:
        """The prompt Try it answers (kept as typed; the model sees exactly this text)."""
        if not isinstance(text, str):
            raise TypeError(f"the prompt must be text, got {type(text).__name__}")
        self.prompt = text

    def try_runs(self) -> list[RunResult]:
        """Stored runs of the generate task, on this model, with an adapter to load: what ``choose_run`` takes."""
        from workbench.records.report import adapter_folder

        return [r for r in self._runs.visible_results() if r.config.task == "causal-lm"
                and r.config.model == self.model_name and adapter_folder(r) is not None]

    def choose_run(self, run_id: str | None) -> None:
        """The stored run (by id) whose adapter answers the prompt too; None for none.  Answers again."""
        if run_id is not None and run_id not in {r.run_id for r in self.try_runs()}:
            known = ", ".join(r.run_id for r in self.try_runs()) or "none yet"
            raise ValueError(f"run {run_id!r} is not a stored generative run of {self.model_name} with an "
                             f"adapter; those are: {known}")
        self.try_run = run_id
        if self.answers is not None or run_id is not None:
            self.ask()

    def _base_lm(self) -> tuple[Any, Any]:
        """The base language model and its tokenizer, loaded once (story-lm: about 4 MB)."""
        from workbench.engine.models import load_base

        key = f"base:{self.model_name}"
        if key not in self._models:
            model, tokenizer = load_base(self.model_name, task="causal-lm", seed=self._settings().defaults.seed)
            self._models[key] = (model.eval(), tokenizer)
        return self._models[key]

    def _run_lm(self, result: RunResult) -> Any:
        """A run's adapted model: the one it handed back (``keep_model``), else its stored adapter on the base."""
        from workbench.engine.models import load_base
        from workbench.lora.adapters import load_adapter
        from workbench.records.report import adapter_folder

        if result.model is not None:
            return result.model
        if result.run_id not in self._models:
            folder = adapter_folder(result)
            if folder is None:
                raise ValueError(f"run {result.run_id} has no stored adapter (a full fine-tuning run keeps none) "
                                 "and its trained model is gone: retrain it to ask it")
            # A QLoRA run's adapter goes onto the base quantized as it was when it trained.
            model, _ = load_base(result.config.model, task="causal-lm", seed=result.config.seed,
                                 quantize=result.config.quantize)
            load_adapter(model, folder)
            loaded = [k for k in self._models if not k.startswith("base:")]
            for key in loaded[:max(0, len(loaded) - TRY_CACHE_RUNS + 1)]:  # dicts keep insertion order
                del self._models[key]
            self._models[result.run_id] = model.eval()
        return self._models[result.run_id]

    def newest_run(self) -> RunResult | None:
        """The newest run of the generate task on this model that can answer (trained model or adapter)."""
        from workbench.records.report import adapter_folder

        last = self._last_result()
        if last is not None and last.model is not None and last.config.task == "causal-lm" \
                and last.config.model == self.model_name:
            return last
        runs = [r for r in self._runs.visible_results() if r.config.model == self.model_name
                and (r.model is not None or adapter_folder(r) is not None)]
        return runs[-1] if runs else None

    def ask(self, prompt: str | None = None, quiet: bool = False) -> Answers | None:
        """Answer the prompt with the base model, the newest run and the chosen stored run (greedy).

        Greedy decoding (temperature 0), at most ``TRY_MAX_NEW_TOKENS`` new tokens, as a
        run's evaluation writes; each answer is its first line, stripped (what exact match
        compares).  Runs in the calling thread: a CPU run trains in a worker process of its
        own, so answering meanwhile does not touch it.  Returns None (and says why) when it
        cannot answer; ``quiet`` leaves the message alone when all went well.
        """
        from workbench.engine.generation import generate, normalize_answer

        if self._settings().task != "causal-lm":
            self.messages.say("Try it is for a language model: choose 'generate' first.", "warn")
            return None
        if prompt is not None:
            self.set_prompt(prompt)
        text = self.prompt
        if not text.strip():
            self.messages.say("Type a prompt to try, e.g. " + repr(self.default_prompt() or "Statement: ...\nQuestion:"), "error")
            return None
        reference = self.reference(text)

        def answer(who: str, model: Any, tokenizer: Any, run_id: str | None = None) -> Answer:
            out = generate(model, tokenizer, [text], max_new_tokens=TRY_MAX_NEW_TOKENS, temperature=0.0)[0]
            said = normalize_answer(out)
            return Answer(who, said, run_id, None if reference is None else said == reference)

        try:
            with self._lock:
                base, tokenizer = self._base_lm()
                runs = self._runs.visible_results()
                labels = self._runs.labels(runs) if runs else {}
                newest = self.newest_run()
                adapted = stored = None
                if newest is not None:
                    adapted = answer(labels.get(newest.run_id, newest.config.label()), self._run_lm(newest),
                                     tokenizer, newest.run_id)
                chosen = next((r for r in self._runs.results if r.run_id == self.try_run), None)
                if chosen is not None:
                    stored = answer(labels.get(chosen.run_id, chosen.config.label()), self._run_lm(chosen),
                                    tokenizer, chosen.run_id)
                self.answers = Answers(text, reference, answer("base model", base, tokenizer), adapted, stored)
        except Exception as e:  # noqa: BLE001 - said in the panel
            self.messages.say(f"Try it failed: {type(e).__name__}: {e}", "error")
            return None
        self.messages.emit("answers")
        if not quiet:
            self.messages.say(f"Answered by {len(self.answers.all())} model(s), greedily (temperature 0, at most "
                     f"{TRY_MAX_NEW_TOKENS} tokens)." + ("" if newest is not None else
                                                         " Train a run to see the adapted model's answer beside it."))
        return self.answers


__all__ = ["TryIt", "Answer", "Answers", "TRY_MAX_NEW_TOKENS", "TRY_CACHE_RUNS"]
