"""How the panel's pieces tell the view what changed, and what the panel says to the user.

Each piece of the panel's state (settings, run control, run list, try-it) changes
something and then *emits* an event naming it; the widget view subscribes once and
redraws that part.  One ``Messages`` object is shared by the pieces, so there is one
message line, whichever piece speaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from workbench.util.checks import check_choice

MessageKind = Literal["info", "ok", "warn", "error"]
# What changed, as told to subscribers: the choices, the message, running or not, the
# progress of the run, its live curve, the runs in the store (or which are hidden), the
# comparison selection, a deletion waiting for confirmation (or no longer waiting).
# The task changed (model, toggles, methods, runs shown), and Try it's answers changed.
Event = Literal["choices", "message", "running", "progress", "live", "runs", "selection", "pending", "task",
                "answers"]


@dataclass(frozen=True)
class Message:
    """What the panel says to the user now (plain text; the view adds the markup).

    ``details``: what a reader needs only sometimes (folders on the server, how to load an
    adapter), shown behind a toggle so the message stays a line or two and Train stays
    where it was."""

    text: str
    kind: MessageKind = "info"
    details: str = ""


class Messages:
    """The panel's one message line and its listeners: ``say`` a message, ``emit`` an event.

    Listeners are called in the thread that changed something (the training thread
    too), after every change.
    """

    def __init__(self) -> None:
        self.message = Message("")
        self.last_error: str | None = None
        self._listeners: list[Callable[[Event], None]] = []

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` after every change (from the training thread too)."""
        self._listeners.append(listener)

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)

    def say(self, text: str, kind: MessageKind = "info", details: str = "") -> None:
        """Put a message in front of the user (an error is also kept as ``last_error``); ``details`` fold away."""
        check_choice("kind", kind, ("info", "ok", "warn", "error"))
        self.message = Message(text, kind, details)
        if kind == "error":
            self.last_error = text
        self.emit("message")


__all__ = ["Event", "Message", "MessageKind", "Messages"]
