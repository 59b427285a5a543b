"""Every destructive action asks first: y / enter on "Yes" confirms, n / esc / q cancels.

Keys typed ahead cannot answer it: for ARM_SECONDS after the dialog is first drawn, and again after
each early answer, "yes" and the buttons do nothing (keys typed in one burst, such as `d` `y` `enter`,
arrive within milliseconds; an operator reading the question takes longer). n, esc and q work at
once. A key is judged by when it arrived (`Key.time`), not when it is handled: on a loaded machine
a burst typed before the dialog existed may be handled after ARM_SECONDS have passed. Enter typed
ahead is ignored whichever button has focus by the time it arrives, so the outcome of a burst does
not depend on how fast the dialog mounted."""

from __future__ import annotations

import math
import time
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button

from tui.widgets.contained import PlainStatic

ARM_SECONDS = 0.5
# Keys that can answer "yes" (y, or enter on a button): judged by their arrival time.
_ANSWER_KEYS = frozenset({"y", "enter"})


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape,q", "answer(False)", "No"),
    ]

    def __init__(self, title: str, question: str, yes: str = "Yes") -> None:
        """`question`: shown as plain text; daemon strings in it must be `visible` already."""
        super().__init__()
        self._title = title
        self._question = question
        self._yes = yes
        self._armed_at = math.inf  # until the question has been drawn
        # A "y" the dialog saw arrive once armed: the binding may also be reached by a "y" sent to
        # the screen below before this one opened, which must not answer it.
        self._yes_seen = False

    @property
    def armed(self) -> bool:
        """Whether "yes" is accepted now."""
        return time.monotonic() >= self._armed_at

    def _rearm(self, since: float) -> None:
        self._armed_at = max(self._armed_at, since + ARM_SECONDS)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="confirm"):
            yield PlainStatic(Text(self._title, style="bold"), id="dialog-title")
            yield PlainStatic(Text(self._question), id="dialog-question")
            with Horizontal(id="dialog-buttons"):
                yield Button("%s (y)" % self._yes, variant="error", id="yes")
                yield Button("Cancel (n)", variant="default", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe answer is the default
        self.call_after_refresh(self._drawn)

    def _drawn(self) -> None:
        self._armed_at = time.monotonic() + ARM_SECONDS

    def on_key(self, event: events.Key) -> None:
        """Every key for the dialog bubbles through here before the bindings run."""
        if event.key not in _ANSWER_KEYS:
            return
        if event.time < self._armed_at:  # typed ahead: ignored, and a burst keeps it unarmed
            self._rearm(event.time)
            event.stop()
            event.prevent_default()
        elif event.key == "y":
            self._yes_seen = True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if not self.armed:
            self._rearm(time.monotonic())
            return
        self.dismiss(event.button.id == "yes")  # a click, or an enter that arrived armed

    def action_answer(self, yes: bool) -> None:
        if yes and not (self.armed and self._yes_seen):
            self._rearm(time.monotonic())
            return
        self.dismiss(yes)
