"""Every destructive action asks first: y / enter on "Yes" confirms, n / esc / q cancels.

Keys typed ahead cannot answer it: for ARM_SECONDS after the dialog opens, and again after each
early answer, "yes" and the buttons do nothing (keys typed in one burst, such as `d` `y` `enter`,
arrive within milliseconds; an operator reading the question takes longer). n, esc and q work at
once. Enter typed ahead is ignored whichever button has focus by the time it arrives, so the
outcome of a burst does not depend on how fast the dialog mounted."""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button

from tui.widgets.contained import PlainStatic

ARM_SECONDS = 0.5


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
        self._armed_at = time.monotonic() + ARM_SECONDS

    @property
    def armed(self) -> bool:
        """Whether "yes" is accepted now."""
        return time.monotonic() >= self._armed_at

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="confirm"):
            yield PlainStatic(Text(self._title, style="bold"), id="dialog-title")
            yield PlainStatic(Text(self._question), id="dialog-question")
            with Horizontal(id="dialog-buttons"):
                yield Button("%s (y)" % self._yes, variant="error", id="yes")
                yield Button("Cancel (n)", variant="default", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # the safe answer is the default
        self._armed_at = time.monotonic() + ARM_SECONDS

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if not self.armed:
            self._armed_at = time.monotonic() + ARM_SECONDS
            return
        self.action_answer(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        if yes and not self.armed:
            self._armed_at = time.monotonic() + ARM_SECONDS  # a burst keeps it unarmed
            return
        self.dismiss(yes)
