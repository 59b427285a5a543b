"""Import from a URL (web-download): URL, name, formats. The daemon's URI filter is asked
before anything is created."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from tui.display import visible

DISK_FORMATS = ("qcow2", "raw", "vmdk", "vhd", "vhdx", "vdi", "iso", "ploop", "aki", "ari", "ami")
CONTAINER_FORMATS = ("bare", "ovf", "ova", "docker", "compressed", "aki", "ari", "ami")


@dataclass(frozen=True)
class UrlImport:
    uri: str
    name: str
    disk_format: str
    container_format: str


def name_from_uri(uri: str) -> str:
    path = urlsplit(uri).path.rstrip("/")
    return unquote(path.rsplit("/", 1)[-1]) if path else ""


def guess_disk_format(uri: str) -> str:
    path = urlsplit(uri).path.lower()
    for ext, fmt in (
        (".qcow2", "qcow2"),
        (".img", "qcow2"),
        (".raw", "raw"),
        (".vmdk", "vmdk"),
        (".vhdx", "vhdx"),
        (".vhd", "vhd"),
        (".vdi", "vdi"),
        (".iso", "iso"),
    ):
        if path.endswith(ext) or ext + "." in path:
            return fmt
    return "qcow2"


def format_fields(disk_id: str, container_id: str) -> ComposeResult:
    """The disk and container format choices, side by side (qcow2 / bare at first)."""
    with Horizontal(id="import-formats"):
        with Vertical():
            yield Label("Disk format")
            yield Select([(f, f) for f in DISK_FORMATS], value="qcow2", allow_blank=False, id=disk_id)
        with Vertical():
            yield Label("Container format")
            yield Select([(f, f) for f in CONTAINER_FORMATS], value="bare", allow_blank=False, id=container_id)


class ImportUrlScreen(ModalScreen[UrlImport | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="import"):
            yield Static(Text("Import an image from a URL (web-download)", style="bold"), id="dialog-title")
            yield Label("URL")
            yield Input(placeholder="https://example.org/images/disk.qcow2", id="import-uri")
            yield Label("Name (default: the file name)")
            yield Input(id="import-name")
            yield from format_fields("import-disk", "import-container")
            yield Static("", id="import-error", classes="-hidden")
            with Horizontal(id="dialog-buttons"):
                yield Button("Import", variant="primary", id="import")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#import-uri", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "import-uri":
            # visible: the URL's %-escapes may decode to control characters
            self.query_one("#import-name", Input).placeholder = visible(name_from_uri(event.value)) or "image name"
            self.query_one("#import-disk", Select).value = guess_disk_format(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "import":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        uri = self.query_one("#import-uri", Input).value.strip()
        if not uri:
            error = self.query_one("#import-error", Static)
            error.update(Text("Enter the URL to import from.", style="red"))
            error.remove_class("-hidden")
            self.query_one("#import-uri", Input).focus()
            return
        name = self.query_one("#import-name", Input).value.strip() or name_from_uri(uri) or "imported-image"
        self.dismiss(
            UrlImport(
                uri=uri,
                name=name,
                disk_format=str(self.query_one("#import-disk", Select).value),
                container_format=str(self.query_one("#import-container", Select).value),
            )
        )

    def action_cancel(self) -> None:
        self.dismiss(None)
