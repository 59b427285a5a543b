"""Pick a store (copy to / delete from): enter picks, esc / q cancels; or several targets (copy
to sites). A store the daemon would refuse is listed greyed out, its description saying why, and
cannot be picked."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, SelectionList
from textual.widgets.option_list import Option
from textual.widgets.selection_list import Selection

from tui.display import visible
from tui.widgets.contained import PlainStatic


class StoreChoiceScreen(ModalScreen[str | None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "cancel", "Cancel"),
        Binding("j", "cursor_down", show=False),
        Binding("k", "cursor_up", show=False),
    ]

    def __init__(self, title: str, stores: list[tuple[str, str]], disabled: AbstractSet[str] = frozenset()) -> None:
        """`stores`: (id, description), the daemon's text (shown `visible`); `title` is visible already;
        `disabled`: the ids shown but not offered."""
        super().__init__()
        self._title = title
        self._stores = stores
        self._disabled = disabled

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="choose"):
            yield PlainStatic(Text(self._title, style="bold"), id="dialog-title")
            yield OptionList(
                *(
                    Option(
                        Text.assemble(
                            (visible(sid), "strike" if sid in self._disabled else "bold"), "  ", (visible(desc), "dim")
                        ),
                        id=sid,
                        disabled=sid in self._disabled,
                    )
                    for sid, desc in self._stores
                ),
                id="store-choice",
            )
            yield PlainStatic(Text("enter: choose · esc: cancel", style="dim"))

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_cursor_down(self) -> None:
        self.query_one(OptionList).action_cursor_down()

    def action_cursor_up(self) -> None:
        self.query_one(OptionList).action_cursor_up()


class ManyChoiceScreen(ModalScreen[list[str] | None]):
    """Pick any number of targets (copy to sites): space toggles, enter confirms, esc cancels.
    A target the daemon would refuse is listed greyed out with the reason."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "cancel", "Cancel"),
        Binding("enter", "confirm", "Confirm", priority=True),
    ]

    def __init__(self, title: str, targets: list[tuple[str, str]], disabled: AbstractSet[str] = frozenset()) -> None:
        """`targets`: (id, description), shown `visible`; `title` is visible already."""
        super().__init__()
        self._title = title
        self._targets = targets
        self._disabled = disabled

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="choose"):
            yield PlainStatic(Text(self._title, style="bold"), id="dialog-title")
            yield SelectionList[str](
                *(
                    Selection(
                        Text.assemble(
                            (visible(tid), "strike" if tid in self._disabled else "bold"), "  ", (visible(desc), "dim")
                        ),
                        tid,
                        disabled=tid in self._disabled,
                    )
                    for tid, desc in self._targets
                ),
                id="many-choice",
            )
            yield PlainStatic(Text("space: pick · enter: copy to the picked · esc: cancel", style="dim"))

    def on_mount(self) -> None:
        self.query_one(SelectionList).focus()

    def action_confirm(self) -> None:
        picked = list(self.query_one(SelectionList).selected)
        if picked:
            self.dismiss(picked)

    def action_cancel(self) -> None:
        self.dismiss(None)
