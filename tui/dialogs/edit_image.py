"""`e`: edit an image's name, tags and custom properties as text, saved as one JSON-patch.

The fields show the daemon's text through `visible`; only what the operator changed is sent
(a property or tag left as shown is not touched, even one whose value had to be escaped to be
shown). The daemon's refusal (a reserved property, a quota, a protected name...) is shown in
the dialog, as plain text, and the fields stay as typed so that the operator can fix them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, TextArea

from tui.client import DaemonError, DaemonUnavailable
from tui.display import visible
from tui.imagefacts import custom_properties
from tui.widgets.contained import PlainStatic

Json = dict[str, Any]
Save = Callable[[list[Json]], Awaitable[Json]]


class EditError(ValueError):
    """What the operator typed cannot be sent; the message says which line and why."""


@dataclass(frozen=True)
class Shown:
    """The fields as the dialog first shows them, and what each shown line stands for."""

    name: str
    tags: str
    properties: str
    tag_of: dict[str, str]  # shown tag → the image's tag
    property_of: dict[str, str]  # shown "key = value" line → the image's key


def shown_fields(image: Json) -> Shown:
    tags = [str(t) for t in image.get("tags") or []]
    tag_of = {visible(t): t for t in tags}
    props = custom_properties(image)
    property_of = {
        "%s = %s" % (visible(k), visible(v)): str(k) for k, v in sorted(props.items(), key=lambda kv: str(kv[0]))
    }
    return Shown(
        name=visible(image.get("name") or ""),
        tags=", ".join(tag_of),
        properties="\n".join(property_of),
        tag_of=tag_of,
        property_of=property_of,
    )


def patch_ops(image: Json, shown: Shown, name: str, tags: str, properties: str) -> list[Json]:
    """The JSON-patch for what changed between `shown` and the typed fields."""
    ops: list[Json] = []
    if name != shown.name:
        ops.append({"op": "replace", "path": "/name", "value": name or None})
    if tags != shown.tags:
        typed = [t.strip() for t in tags.split(",") if t.strip()]
        ops.append({"op": "replace", "path": "/tags", "value": [shown.tag_of.get(t, t) for t in typed]})
    if properties != shown.properties:
        kept: set[str] = set()
        wanted: dict[str, str] = {}
        for number, line in enumerate(properties.splitlines(), start=1):
            if not line.strip():
                continue
            if line in shown.property_of:
                kept.add(shown.property_of[line])
                continue
            key, sep, value = line.partition("=")
            key = key.strip()
            if not sep or not key:
                raise EditError("Property line %d: write it as key = value (got %r)" % (number, line))
            if key in wanted:
                raise EditError("Property line %d: %s is given twice" % (number, key))
            wanted[key] = value.strip()
        current = custom_properties(image)
        for key in sorted(current, key=str):
            if key not in kept and key not in wanted:
                ops.append({"op": "remove", "path": "/%s" % _pointer(key)})
        for key, value in wanted.items():
            if key in kept:
                raise EditError("Property %s is given twice" % key)
            op = "replace" if key in current else "add"
            if op == "replace" and current[key] == value:
                continue
            ops.append({"op": op, "path": "/%s" % _pointer(key), "value": value})
    return ops


def _pointer(key: str) -> str:
    """A JSON pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


class EditImageScreen(ModalScreen[Json | None]):
    """Dismisses with the image as the daemon answered, or None (nothing changed, cancelled)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]
    DEFAULT_CSS = """
    #edit-properties { height: 7; }
    #edit-error { height: auto; color: $error; }
    """

    def __init__(self, image: Json, label: str, save: Save) -> None:
        """`label`: the image's name, `visible`; `save` sends the patch and returns the image."""
        super().__init__()
        self._image = image
        self._label = label
        self._save = save
        self._shown = shown_fields(image)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="import"):
            yield PlainStatic(Text("Edit %s" % self._label, style="bold"), id="dialog-title")
            yield Label("Name")
            yield Input(self._shown.name, id="edit-name")
            yield Label("Tags (comma-separated)")
            yield Input(self._shown.tags, id="edit-tags")
            yield Label("Properties, one per line: key = value (delete a line to remove it)")
            yield TextArea(self._shown.properties, id="edit-properties", soft_wrap=False)
            yield PlainStatic("", id="edit-error")
            with Horizontal(id="dialog-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#edit-name", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def show_error(self, message: str) -> None:
        """Plain text: the daemon's words, control characters escaped."""
        self.query_one("#edit-error", PlainStatic).update(Text(visible(message)))

    def action_save(self) -> None:
        try:
            ops = patch_ops(
                self._image,
                self._shown,
                self.query_one("#edit-name", Input).value,
                self.query_one("#edit-tags", Input).value,
                self.query_one("#edit-properties", TextArea).text,
            )
        except EditError as exc:
            self.show_error(str(exc))
            return
        if not ops:
            self.dismiss(None)
            return
        self.show_error("Saving…")
        self.query_one("#save", Button).disabled = True
        self.send(ops)

    @work(exclusive=True, exit_on_error=False)
    async def send(self, ops: list[Json]) -> None:
        try:
            image = await self._save(ops)
        except DaemonError as exc:
            self.show_error("The daemon refused the change (%d): %s" % (exc.status, exc))
        except DaemonUnavailable as exc:
            self.show_error("Cannot reach the daemon: %s" % exc)
        else:
            self.dismiss(image)
            return
        self.query_one("#save", Button).disabled = False

    def action_cancel(self) -> None:
        self.dismiss(None)
