"""The panel's Try it tab (generate mode): a prompt, and the answers of the base model, the newest run
and a chosen stored run side by side (greedy); redone by itself after each run.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from workbench.ui.markup import ANSWER_CSS, safely
from workbench.ui.state import PanelState
from workbench.ui.try_it import TRY_MAX_NEW_TOKENS, Answer


class TryTab:
    """The Try it tab's widgets, bound to the state's Try it.

    Its controls (``prompt``, ``examples``: the held-out prompts, ``try_button``,
    ``try_run``: the stored run that answers too) and ``answers`` are attributes;
    ``page`` is the tab.
    """

    def __init__(self, state: PanelState) -> None:
        self.state = state
        self._syncing = False
        box = lambda width: widgets.Layout(width=width)  # noqa: E731
        self.prompt = widgets.Textarea(value=state.prompt, placeholder="Statement: The cat is happy.\nQuestion:",
                                       layout=widgets.Layout(width="420px", height="52px"))
        self.examples = widgets.Dropdown(options=[], description="held-out", style={"description_width": "60px"},
                                         layout=box("330px"), tooltip="prompts the runs never trained on")
        self.try_button = widgets.Button(description="Try it", button_style="info", icon="comment",
                                         layout=box("100px"),
                                         tooltip=f"answer the prompt greedily (at most {TRY_MAX_NEW_TOKENS} tokens) "
                                                 "with the base model, the newest run and the chosen stored run")
        self.try_run = widgets.Dropdown(options=[("(none)", "")], value="", description="also ask",
                                        style={"description_width": "60px"}, layout=box("420px"),
                                        tooltip="a stored run whose adapter answers the prompt too")
        self.answers = widgets.HTML()
        row = widgets.Layout(flex_flow="row wrap", align_items="center")
        self.page = widgets.VBox([
            widgets.HTML("<small>The same prompt, answered by the base model and by the adapted ones, side by side "
                         f"(greedy: temperature 0, at most {TRY_MAX_NEW_TOKENS} tokens; the answer's first line). "
                         "The newest run answers again by itself whenever a run ends.</small>"),
            widgets.HBox([self.prompt, widgets.VBox([self.examples, self.try_run])], layout=row),
            self.try_button,
            self.answers,
        ])
        self._bind()

    def _bind(self) -> None:
        s = self.state
        self.prompt.observe(lambda change: s.set_prompt(change["new"]), names="value")
        self.examples.observe(self._on_example, names="value")
        self.try_button.on_click(lambda _b: safely(s.say, s.try_it, self.prompt.value))
        self.try_run.observe(lambda change: None if self._syncing else safely(s.say, s.choose_run,
                                                                              change["new"] or None),
                             names="value")

    def _on_example(self, change: Any) -> None:
        if not self._syncing and change["new"]:
            self.prompt.value = change["new"]

    # ------------------------------------------------------------------ state -> widgets

    def show_task(self) -> None:
        """The task's prompt and its held-out examples (none in classify mode)."""
        s = self.state
        self._syncing = True
        try:
            self.prompt.value = s.prompt
            examples = s.prompt_examples() if s.task == "causal-lm" else []
            self.examples.options = [("(pick one)", "")] + [(e.replace("\n", " ⏎ "), e) for e in examples]
            self.examples.value = ""
        finally:
            self._syncing = False

    def show_runs(self) -> None:
        """The stored runs that can answer too, under 'also ask'."""
        s = self.state
        labels = s.labels(s.visible_results())
        self._syncing = True
        try:
            tries = [(f"{labels.get(r.run_id, r.config.label())} · {r.run_id}", r.run_id) for r in s.try_runs()]
            self.try_run.options = [("(none)", "")] + tries  # "": no run (None would show an empty box)
            self.try_run.value = s.try_run if s.try_run in {v for _, v in tries} else ""
        finally:
            self._syncing = False

    def _run_verdict(self, run_id: str | None) -> str:
        """" [did not learn]" (marked) for a run whose verdict is not "learned", else ""."""
        s = self.state
        result = next((r for r in s.results if r.run_id == run_id), None) if run_id else None
        if result is None and s.last_result is not None and s.last_result.run_id == run_id:
            result = s.last_result
        if result is None:
            return ""
        verdict = s.outcome(result).verdict
        return "" if verdict == "learned" else (f" <span class='workbench-run-verdict' style='color:#8a5a00'>"
                                                f"[{html.escape(verdict)}]</span>")

    def show_answers(self) -> None:
        """Try it's answers side by side: base model, newest run, chosen stored run (right/wrong when known)."""
        a = self.state.answers
        if a is None:
            self.answers.value = ("<small><i>Press Try it to see the answers here.</i></small>"
                                  if self.state.task == "causal-lm" else "")
            return

        def card(title: str, answer: Answer | None, empty: str) -> str:
            if answer is None:
                return (f"<div class='workbench-answer'><div class='who'>{html.escape(title)}</div>"
                        f"<i>{html.escape(empty)}</i></div>")
            mark = {True: " right", False: " wrong", None: ""}[answer.correct]
            verdict = {True: " ✓ exact", False: " ✗ not the reference", None: ""}[answer.correct]
            who = f"{answer.who} · {answer.run_id}" if answer.run_id else ""
            run = self._run_verdict(answer.run_id)  # a run that did not learn says so on its card
            empty = "(nothing: its first line is empty)"
            return (f"<div class='workbench-answer{mark}' data-who='{html.escape(title)}'><div class='who'>"
                    f"{html.escape(title)}{run}</div><small>{html.escape(who)}{verdict}</small>"
                    f"<pre>{html.escape(answer.text) or empty}</pre></div>")

        ref = (f"<div style='font-size:12px'>reference: <code>{html.escape(a.reference)}</code></div>"
               if a.reference is not None else
               "<div style='font-size:12px'><i>not a held-out prompt: no reference answer to compare with</i></div>")
        self.answers.value = (
            ANSWER_CSS + f"<div style='font-size:12px'>prompt: <code>{html.escape(a.prompt)}</code></div>{ref}"
            "<div class='workbench-answers'>"
            + card("base model", a.base, "")
            + card("newest run", a.adapted, "no run yet: press Train")
            + card("chosen stored run", a.stored, "choose one under 'also ask'")
            + "</div>")


__all__ = ["TryTab"]
