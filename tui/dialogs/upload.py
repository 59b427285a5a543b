"""`u`: upload a local file as a new image. The first dialog asks for the file and the image's
name and formats; the second creates the image, sends the file (`PUT /v2/images/ID/file`) and
shows how far it got: bar, bytes, rate, ETA. Esc cancels: the request is dropped and the image
the TUI created is deleted again, so a cancelled or failed upload leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from tui.client import DaemonApi, DaemonError, DaemonUnavailable
from tui.dialogs.import_url import format_fields, guess_disk_format
from tui.display import human_bytes, human_duration, human_rate, progress_bar, visible
from tui.rate import TransferRates, eta_seconds
from tui.widgets.contained import PlainStatic

Json = dict[str, Any]
CHUNK = 1 << 20  # read from the file on a worker thread, a MiB at a time
TICK = 0.25  # how often the progress line is drawn


@dataclass(frozen=True)
class FileUpload:
    path: str
    size: int
    name: str
    disk_format: str
    container_format: str


@dataclass(frozen=True)
class UploadOutcome:
    """How an upload ended: `image_id` set on success, else `error` ("" when cancelled)."""

    name: str
    image_id: str | None
    error: str
    cancelled: bool = False


def check_file(path: str) -> tuple[int, str]:
    """The file's size, or (0, why it cannot be uploaded)."""
    if not path:
        return 0, "Enter the path of the file to upload."
    try:
        info = os.stat(path)
    except OSError as exc:
        return 0, "Cannot read %s: %s" % (path, exc.strerror or exc)
    if not os.path.isfile(path):
        return 0, "%s is not a regular file." % path
    if not os.access(path, os.R_OK):
        return 0, "%s is not readable by this user." % path
    if info.st_size == 0:
        return 0, "%s is empty." % path
    return info.st_size, ""


class UploadScreen(ModalScreen[FileUpload | None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="import"):
            yield PlainStatic(Text("Upload a local file as a new image", style="bold"), id="dialog-title")
            yield Label("File (on this machine)")
            yield Input(placeholder="/path/to/disk.qcow2", id="upload-path")
            yield Label("Name (default: the file name)")
            yield Input(id="upload-name")
            yield from format_fields("upload-disk", "upload-container")
            yield PlainStatic("", id="upload-error")
            with Horizontal(id="dialog-buttons"):
                yield Button("Upload", variant="primary", id="upload")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#upload-path", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "upload-path":
            self.query_one("#upload-name", Input).placeholder = visible(Path(event.value).name) or "image name"
            self.query_one("#upload-disk", Select).value = guess_disk_format("file:///" + event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "upload":
            self._submit()
        else:
            self.dismiss(None)

    def _submit(self) -> None:
        path = os.path.expanduser(self.query_one("#upload-path", Input).value.strip())
        size, problem = check_file(path)
        if problem:
            self.query_one("#upload-error", PlainStatic).update(Text(visible(problem), style="red"))
            self.query_one("#upload-path", Input).focus()
            return
        name = self.query_one("#upload-name", Input).value.strip() or Path(path).name
        self.dismiss(
            FileUpload(
                path=path,
                size=size,
                name=name,
                disk_format=str(self.query_one("#upload-disk", Select).value),
                container_format=str(self.query_one("#upload-container", Select).value),
            )
        )

    def action_cancel(self) -> None:
        self.dismiss(None)


class Progress:
    """Bytes handed to the connection so far (the worker counts, the timer reads)."""

    def __init__(self) -> None:
        self.sent = 0

    async def chunks(self, path: str) -> AsyncIterator[bytes]:
        # Opened and read on worker threads: a slow disk never blocks the screen.
        handle = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                self.sent += len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)


def progress_line(sent: int, total: int, rate: float | None) -> Text:
    text = progress_bar(sent, total, width=20)
    text.append(" %s of %s" % (human_bytes(sent), human_bytes(total)))
    text.append(" · %s" % (human_rate(rate) if rate else "…"))
    eta = eta_seconds(sent, total, rate)
    text.append(" · ETA %s" % (human_duration(eta) if eta is not None else "…"))
    return text


class UploadProgressScreen(ModalScreen[UploadOutcome]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel_upload", "Cancel upload")]

    def __init__(self, client: DaemonApi, upload: FileUpload) -> None:
        super().__init__()
        self._client = client
        self._upload = upload
        self._progress = Progress()
        self._rates = TransferRates()
        self._image_id: str | None = None
        self._cancelled = False

    def compose(self) -> ComposeResult:
        upload = self._upload
        with Vertical(id="dialog", classes="import"):
            yield PlainStatic(Text("Uploading %s" % visible(upload.name), style="bold"), id="dialog-title")
            yield PlainStatic(Text(visible(upload.path), style="dim"), id="upload-file")
            yield PlainStatic(Text("Creating the image…"), id="upload-progress")
            with Horizontal(id="dialog-buttons"):
                yield Button("Cancel upload (esc)", variant="error", id="cancel")

    def on_mount(self) -> None:
        self.set_interval(TICK, self._tick)
        self.run_upload()

    def _tick(self) -> None:
        if self._image_id is None:
            return
        sent = self._progress.sent
        rate = self._rates.observe("upload", sent, time.monotonic())
        line = progress_line(sent, self._upload.size, rate)
        if sent >= self._upload.size:
            line.append("\nThe daemon is writing and verifying the data…", style="dim")
        self.query_one("#upload-progress", PlainStatic).update(line)

    @work(exclusive=True, exit_on_error=False)
    async def run_upload(self) -> None:
        upload = self._upload
        try:
            image = await self._client.create_image(upload.name, upload.disk_format, upload.container_format)
            self._image_id = str(image["id"])
            self._tick()
            await self._client.upload(self._image_id, self._progress.chunks(upload.path), upload.size)
        except asyncio.CancelledError:
            await asyncio.shield(self._clean_up())
            self.dismiss(UploadOutcome(upload.name, None, "", cancelled=True))
            raise
        except (DaemonError, DaemonUnavailable, OSError) as exc:
            await self._clean_up()
            self.dismiss(UploadOutcome(upload.name, None, str(exc)))
        else:
            self.dismiss(UploadOutcome(upload.name, self._image_id, ""))

    async def _clean_up(self) -> None:
        """Delete the image this upload created: without its data it is of no use."""
        if self._image_id is not None:
            with contextlib.suppress(DaemonError, DaemonUnavailable):
                await self._client.delete_image(self._image_id)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.action_cancel_upload()

    def action_cancel_upload(self) -> None:
        if self._cancelled:
            return
        self._cancelled = True
        self.query_one("#upload-progress", PlainStatic).update(Text("Cancelling…", style="yellow"))
        self.workers.cancel_node(self)
