"""Images: every image of the site in a table, a `/` filter, and a detail pane (properties and
locations) for the highlighted row; the first actions on an image (import from a URL, copy to a
store, delete a store's copy, delete, queue for caching) with their dialogs (the others are in
`tui.panes.image_actions`)."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import Input, Static

from tui.client import DaemonError, DaemonUnavailable
from tui.dialogs.choose import StoreChoiceScreen
from tui.dialogs.confirm import ConfirmScreen
from tui.dialogs.import_url import ImportUrlScreen, UrlImport
from tui.display import EMPTY, human_bytes, human_pair, short_id, status_text, visible
from tui.guard import while_running
from tui.imagefacts import BASE_KEYS, HUB_STORE, image_label, store_list
from tui.messages import (
    ActionFailed,
    CacheLoaded,
    CacheQueued,
    CopyStarted,
    ImageDeleted,
    ImportStarted,
    StoreCopyDeleted,
    UriRefused,
)
from tui.panes.image_actions import ImageActions
from tui.session import Session, cache_enabled
from tui.widgets.contained import PlainStatic
from tui.widgets.filtering import FilterLine
from tui.widgets.keyed_table import KeyedTable, Values

Json = dict[str, Any]

COLUMNS = [
    ("name", "Name", 15),
    ("id", "ID", 8),
    ("status", "Status", 11),
    ("disk", "Disk", 5),
    ("size", "Size", 8),
    ("virtual", "Virtual", 8),
    ("stores", "Stores", 10),
]
# Readable at 80 columns; a wider terminal gives names, then stores, more room.
GROW = [("name", 25), ("stores", 14)]


def image_row(image: Json) -> Values:
    return (
        image.get("name") or EMPTY,
        short_id(str(image["id"])),
        str(image.get("status") or "?"),
        image.get("disk_format") or EMPTY,
        human_bytes(image.get("size")),
        human_bytes(image.get("virtual_size")),
        image.get("stores") or EMPTY,
    )


def sort_key(image: Json) -> tuple[str, str]:
    """The daemon's order for sort_key=name,id (so pages append in place)."""
    return (str(image.get("name") or ""), str(image["id"]))


def matches(image: Json, needle: str) -> bool:
    if not needle:
        return True
    # As shown: a name with control characters is found by its escapes.
    hay = " ".join(
        visible(image.get(k) or "") for k in ("name", "id", "status", "disk_format", "container_format", "stores")
    )
    return needle.lower() in hay.lower()


def cache_notes(view: Json) -> dict[str, str]:
    """What the site's cache holds of each image, as the detail's `cache` location says it."""
    notes: dict[str, str] = {}
    for item in view.get("queue") or []:
        attempts = int(item.get("attempts") or 0)
        note = "queued for caching"
        if attempts:
            note += " · %d failed attempt(s): %s" % (attempts, visible(item.get("last_error") or "?"))
        notes[str(item["image_id"])] = note
    for fill in view.get("fills") or []:
        notes[str(fill["image_id"])] = "filling %s" % human_pair(fill.get("bytes_done"), fill.get("bytes_total"))
    for entry in view.get("entries") or []:
        notes[str(entry["image_id"])] = "cached copy, %s · %s hit(s)" % (
            human_bytes(entry.get("size")),
            visible(entry.get("hits", 0)),
        )
    return notes


def detail_text(image: Json, locations: list[Json] | None, error: str = "", cache: str = "") -> Text:
    """Every value is the daemon's text: `visible` (`cache` is the caller's, already visible)."""

    def field(key: str) -> str:
        return visible(image.get(key) or EMPTY)

    text = Text()
    text.append(visible(image.get("name") or "(no name)"), style="bold")
    text.append("  %s\n" % visible(image["id"]), style="dim")
    text.append("status ")
    text.append_text(status_text(str(image.get("status"))))
    text.append(
        " · disk %s · container %s · %s" % (field("disk_format"), field("container_format"), field("visibility"))
    )
    if image.get("protected"):
        text.append(" · ")
        text.append("protected", style="bold yellow")
    text.append(
        "\nsize %s · virtual %s · stores %s\n"
        % (human_bytes(image.get("size")), human_bytes(image.get("virtual_size")), field("stores"))
    )
    if image.get("checksum"):
        text.append(
            "md5 %s · %s %s…\n"
            % (
                field("checksum"),
                visible(image.get("os_hash_algo") or "hash"),
                visible(str(image.get("os_hash_value") or "")[:16]),
            ),
            style="dim",
        )
    text.append("created %s · updated %s" % (field("created_at"), field("updated_at")), style="dim")
    if image.get("tags"):
        text.append("\ntags %s" % ", ".join(visible(t) for t in image["tags"]))
    custom = sorted((str(k), v) for k, v in image.items() if k not in BASE_KEYS)
    text.append("\n\nProperties", style="bold")
    if not custom:
        text.append(" none", style="dim")
    for key, value in custom:
        text.append("\n  %s" % visible(key), style="cyan")
        text.append(" = %s" % visible(value))
    text.append("\n\nLocations", style="bold")
    if error:
        text.append(" %s" % visible(error), style="red")
    elif locations is None:
        text.append(" loading…", style="dim")
    elif not locations:
        text.append(" none (no data yet)", style="dim")
    for location in locations or ():
        store = (location.get("metadata") or {}).get("store", "?")
        text.append("\n  %s" % visible(store), style="bold")
        text.append(" %s" % visible(location.get("url", "")))
    if cache:
        text.append("\n  cache", style="bold")
        text.append(" %s" % cache)
    return text


class ImageTable(KeyedTable):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(COLUMNS, grow=GROW, id=id)

    def render_value(self, column: str, value: Any) -> Any:
        return status_text(value) if column == "status" else super().render_value(column, value)


class ImagesPane(FilterLine, ImageActions, Vertical):
    # The app's keys call these actions (one key map: see ApplianceTui.BINDINGS); the second
    # set (upload, protect, edit, ...) is ImageActions'.
    FIRST_ACTIONS = frozenset({"import_url", "copy_to_store", "delete_from_store", "delete_image", "cache_image"})
    ACTIONS = FIRST_ACTIONS | ImageActions.MORE_ACTIONS
    NEEDS_SELECTION = frozenset({"copy_to_store", "delete_from_store", "delete_image", "cache_image"})

    def __init__(self, session: Session, *, id: str | None = None) -> None:
        super().__init__(session, id=id)
        self.images: dict[str, Json] = {}
        self.loaded = False
        self.filter_text = ""
        self._detail_for: str | None = None
        self._locations: list[Json] | None = None
        self._detail_error = ""
        self._cache_notes: dict[str, str] | None = None  # None: this site has no cache

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter by name, id, status, format or store (enter: keep, esc: clear)",
            id="image-filter",
            classes="-hidden",
        )
        yield ImageTable(id="images")
        with VerticalScroll(id="image-detail-pane"):
            yield PlainStatic(Text("Loading images…", style="dim"), id="image-detail")

    @property
    def table(self) -> ImageTable:
        return self.query_one(ImageTable)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#image-filter", Input)

    def selected_image(self) -> Json | None:
        key = self.table.highlighted_key
        return self.images.get(key) if key is not None else None

    def _rows(self) -> list[tuple[str, Values]]:
        shown = sorted((i for i in self.images.values() if matches(i, self.filter_text)), key=sort_key)
        self.show_match_count(len(shown), len(self.images), "images")
        return [(str(i["id"]), image_row(i)) for i in shown]

    def add_page(self, page: list[Json]) -> None:
        """First load only: a page in table order goes at the bottom, in bulk."""
        fresh = [i for i in page if str(i["id"]) not in self.images]
        for image in fresh:
            self.images[str(image["id"])] = image
        self.table.add_keyed_rows([(str(i["id"]), image_row(i)) for i in fresh if matches(i, self.filter_text)])

    def show_images(self, images: list[Json], paged: bool = False) -> bool:
        """Show a fresh image list; returns True if the highlighted image changed (the caller
        reloads its locations). `paged`: its pages came to add_page first."""
        before = self.selected_image()
        fresh = {str(i["id"]): self._kept(i) for i in images}
        shown = paged and fresh.keys() == self.images.keys()
        self.images = fresh
        self.loaded = True
        if shown:  # the pages put these rows in the table, in order: sorting and comparing them all again finds nothing
            self.show_match_count(self.table.row_count, len(self.images), "images")
        else:
            self.table.sync_rows(self._rows())
        after = self.selected_image()
        if after is None:
            self._render_empty()
            return False
        changed = before is None or before != after
        if changed:
            self.show_selected(after)
        return changed

    def _kept(self, image: Json) -> Json:
        """The list's record of an image (the daemon's image row: a few fields), with what a
        detail load added to it (properties, checksums, tags) while the image is unchanged, so
        a reload does not blank the detail pane until the next detail load."""
        known = self.images.get(str(image["id"]))
        if known is None or known.keys() <= image.keys() or known.get("updated_at") != image.get("updated_at"):
            return image
        return {**known, **image}

    def apply_filter(self, text: str) -> None:
        if text == self.filter_text:
            return
        self.filter_text = text
        self.table.replace_rows(self._rows())
        image = self.selected_image()
        if image is None:
            self._render_empty()
        elif image["id"] != self._detail_for:
            self.show_selected(image)

    def _render_empty(self) -> None:
        self._detail_for = None
        if not self.loaded:
            message = "Loading images…"
        elif self.filter_text:
            message = "No image matches %r." % self.filter_text  # repr escapes control characters
        else:
            message = "No images on this site yet. Press n to import one from a URL."
        self.query_one("#image-detail", Static).update(Text(message, style="dim"))

    def show_selected(self, image: Json) -> None:
        """The highlighted image from the list; its locations follow in `show_detail`."""
        if image["id"] != self._detail_for:
            self._locations, self._detail_error = None, ""
        self._detail_for = str(image["id"])
        self._render_detail(image)

    def cache_note(self, image: Json) -> str:
        if self._cache_notes is None:
            return ""
        note = self._cache_notes.get(str(image["id"]))
        if note is None and HUB_STORE in store_list(image):
            note = "not cached · p caches it"
        return note or ""

    def _render_detail(self, image: Json) -> None:
        note = self.cache_note(image)
        self.query_one("#image-detail", Static).update(detail_text(image, self._locations, self._detail_error, note))

    def show_cache(self, view: Json) -> None:
        """The cache view arrived: the highlighted image's `cache` line may have changed."""
        image = self.images.get(self._detail_for or "")
        before = self.cache_note(image) if image is not None else ""
        self._cache_notes = cache_notes(view)
        if image is not None and self.cache_note(image) != before:
            self._render_detail(image)

    def has_detail(self, image_id: str) -> bool:
        return self._detail_for == image_id and (self._locations is not None or bool(self._detail_error))

    def show_detail(self, image_id: str, image: Json | None, locations: list[Json], error: str = "") -> None:
        if image_id != self._detail_for:
            return  # the cursor moved on meanwhile
        if image is not None:
            self.images[image_id] = {**self.images.get(image_id, {}), **image}
        self._locations, self._detail_error = (None if error else locations), error
        record = self.images.get(image_id)
        if record is not None:
            self._render_detail(record)

    @property
    def filter_returns_to(self) -> ImageTable:
        return self.table

    # -- actions: ask, then a worker does it and reports back -------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in self.ACTIONS:
            return True
        if self.session.read_only:
            return False
        if action == "cache_image" and not cache_enabled(self.session.status):
            return False
        if action in self.MORE_ACTIONS:
            return self.offer(action, self._selected_or_none())
        if action in self.NEEDS_SELECTION and self._selected_or_none() is None:
            return None  # shown greyed out: no row highlighted
        return True

    def _selected_or_none(self) -> Json | None:
        try:
            return self.selected_image()
        except NoMatches:  # bindings are checked while the app is still composing
            return None

    def _target_image(self) -> Json | None:
        image = self.selected_image()
        if image is None:
            self.notify("Highlight an image on the Images screen first.", severity="warning", markup=False)
        return image

    def from_hub(self, image: Json) -> str | None:
        """At an edge, the hub's URL if `image` is the hub's (it has the hub's copy, `central`),
        as the daemon tells them apart; else None."""
        url = self.session.hub_url()
        return url if url is not None and HUB_STORE in store_list(image) else None

    def action_delete_image(self) -> None:
        if self.session.read_only:
            return
        image = self._target_image()
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)
        stores = store_list(image)
        hub = self.from_hub(image)
        if hub is not None and not self.session.has_token:
            # The daemon would answer 409: it forwards a hub image's delete with the caller's
            # Keystone token only, and over the Unix socket there is none.
            self.notify(
                "%s belongs to the hub %s; this site only mirrors it. The daemon deletes a hub image only by "
                "forwarding the caller's Keystone token to the hub, and this TUI (on the Unix socket) has none: "
                "delete it at the hub; this site follows within a sync." % (name, visible(hub)),
                title="Delete not offered",
                severity="warning",
                markup=False,
            )
            return
        question = "Delete image %s (%s)?" % (name, visible(image_id))
        if hub is not None:
            question += (
                "\nIt belongs to the hub %s: the daemon forwards this delete there with your token, and with a "
                "Keystone token the hub deletes it for every site. With a static token the daemon refuses (409): "
                "delete it at the hub instead." % visible(hub)
            )
        elif stores:
            question += "\nIts data goes from every store: %s." % visible(", ".join(stores))
        else:
            question += "\nIt has no data yet."
        if image.get("protected"):
            question += "\nIt is protected: the daemon will refuse."

        def answered(yes: bool | None) -> None:
            if yes:
                self.act(
                    "Delete %s" % name,
                    partial(self.session.client.delete_image, image_id),
                    ImageDeleted(image_id, name),
                )

        self.app.push_screen(ConfirmScreen("Delete image", question, yes="Delete"), answered)

    def action_delete_from_store(self) -> None:
        if self.session.read_only:
            return
        image = self._target_image()
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)
        held = store_list(image)
        if not held:
            self.notify("%s has no data in any store." % name, severity="warning", markup=False)
            return
        described = dict(self.session.store_targets())
        refused: dict[str, str] = {}
        if self.session.hub_url() is not None and HUB_STORE in held:
            # The daemon answers 409: `central` is not a store of this site.
            refused[HUB_STORE] = "the hub's copy: not a store of this site (delete it at the hub)"
        if not [s for s in held if s not in refused]:
            self.notify(
                "%s has no copy in a store of this site; its data is the hub's (delete it at the hub)." % name,
                title="Delete from store not offered",
                severity="warning",
                markup=False,
            )
            return

        def chosen(store: str | None) -> None:
            if not store:
                return
            question = "Delete the copy of %s (%s) in store %s?" % (name, visible(image_id), visible(store))
            if len([s for s in held if s not in refused]) == 1:
                question += "\nIt is the only copy: the daemon will refuse."

            def answered(yes: bool | None) -> None:
                if yes:
                    self.act(
                        "Delete %s from %s" % (name, store),
                        partial(self.session.client.delete_from_store, store, image_id),
                        StoreCopyDeleted(image_id, name, store),
                    )

            self.app.push_screen(ConfirmScreen("Delete from store", question, yes="Delete copy"), answered)

        self.app.push_screen(
            StoreChoiceScreen(
                "Delete %s from which store?" % name,
                [(s, refused.get(s) or described.get(s, "")) for s in held],
                disabled=set(refused),
            ),
            chosen,
        )

    def action_copy_to_store(self) -> None:
        if self.session.read_only:
            return
        image = self._target_image()
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)
        if image.get("status") != "active":
            # The daemon answers 409: copy-image reads an active image's data.
            self.notify(
                "%s is %s: the daemon copies active images only." % (name, visible(image.get("status"))),
                title="Copy not offered",
                severity="warning",
                markup=False,
            )
            return
        held = set(store_list(image))
        candidates = [(store, about) for store, about in self.session.store_targets() if store not in held]
        if not candidates:
            self.notify("%s is already in every store of this site." % name, severity="warning", markup=False)
            return
        if not held & set(self.session.own_stores()):
            # copy-image reads a copy in this site's stores (not the hub's, not the cache): the
            # daemon refuses (to the hub) or the task fails ("No readable copy").
            self.notify(
                "%s has no copy in a store of this site for the daemon to copy from%s."
                % (name, " (the hub's copy is not read; p caches it)" if HUB_STORE in held else ""),
                title="Copy not offered",
                severity="warning",
                markup=False,
            )
            return

        def chosen(store: str | None) -> None:
            if store:
                self.act(
                    "Copy %s to %s" % (name, store),
                    partial(self.session.client.copy_to_store, image_id, store),
                    CopyStarted(image_id, name, store),
                )

        self.app.push_screen(StoreChoiceScreen("Copy %s to which store?" % name, candidates), chosen)

    def action_import_url(self) -> None:
        if self.session.read_only:
            return

        def submitted(request: UrlImport | None) -> None:
            if request is not None:
                self.import_from_url(request)

        self.app.push_screen(ImportUrlScreen(), submitted)

    def action_cache_image(self) -> None:
        if self.session.read_only:
            return
        image = self._target_image()
        if image is not None:
            self.cache_image(str(image["id"]), image_label(image))

    @work(group="actions", exit_on_error=False)
    async def import_from_url(self, request: UrlImport) -> None:
        client = self.session.client
        try:
            allowed, reason = await client.check_uri(request.uri)
            if not allowed:
                self.post_message(UriRefused(request.uri, reason))
                return
            image = await client.create_image(request.name, request.disk_format, request.container_format)
            try:
                await client.import_web_download(str(image["id"]), request.uri)
            except (DaemonError, DaemonUnavailable):
                with contextlib.suppress(DaemonError, DaemonUnavailable):
                    await client.delete_image(str(image["id"]))  # leave no empty image behind
                raise
        except (DaemonError, DaemonUnavailable) as exc:
            self.post_message(ActionFailed("Import %s" % request.name, str(exc)))
        else:
            self.post_message(ImportStarted(str(image["id"]), request.name, request.uri))

    @work(group="actions", exit_on_error=False)
    async def cache_image(self, image_id: str, name: str) -> None:
        """Queue, then look: the daemon answers 202 even when it has nothing to do (the image is
        cached already, or held in this site's stores), so the cache view says what happened."""
        client = self.session.client
        try:
            await client.cache_image(image_id)
            view = await client.cache_view()
        except (DaemonError, DaemonUnavailable) as exc:
            self.post_message(ActionFailed("Cache %s" % name, str(exc)))
            return
        if any(e["image_id"] == image_id for e in view.get("entries") or ()):
            outcome = "cached"
        elif any(f["image_id"] == image_id for f in view.get("fills") or ()):
            outcome = "filling"
        elif any(q["image_id"] == image_id for q in view.get("queue") or ()):
            outcome = "queued"
        else:
            outcome = "not queued"
        self.app.post_message(CacheLoaded(view))  # the app shows it (on Cache and in the detail)
        self.post_message(CacheQueued(image_id, name, outcome))

    @while_running
    def on_cache_queued(self, message: CacheQueued) -> None:
        if message.outcome == "not queued":
            self.notify(
                "The daemon did not queue %s: its data is in this site's own stores, not at the hub." % message.name,
                title="Cache",
                severity="warning",
                markup=False,
            )
            return
        said = {
            "cached": "%s is in the cache.",
            "filling": "Caching %s now; follow it on Cache (4).",
            "queued": "Queued %s for caching; follow it on Cache (4).",
        }[message.outcome]
        self.notify(said % message.name, title="Cache", markup=False)
        self.changed(full=False)

    @while_running
    def on_image_deleted(self, message: ImageDeleted) -> None:
        self.notify("Deleted image %s." % message.name, title="Delete", markup=False)
        self.changed(full=True)

    @while_running
    def on_store_copy_deleted(self, message: StoreCopyDeleted) -> None:
        self.notify(
            "Deleted the copy of %s in store %s." % (message.name, message.store),
            title="Delete from store",
            markup=False,
        )
        self.changed(full=True)

    @while_running
    def on_copy_started(self, message: CopyStarted) -> None:
        self.notify(
            "Copying %s to store %s; follow it on Queues (3)." % (message.name, message.store),
            title="Copy",
            markup=False,
        )
        self.changed(full=True)

    @while_running
    def on_import_started(self, message: ImportStarted) -> None:
        self.notify(
            "Importing %s from %s; follow it on Queues (3)." % (message.name, message.uri), title="Import", markup=False
        )
        self.changed(full=True)

    @while_running
    def on_uri_refused(self, message: UriRefused) -> None:
        self.notify(
            "The daemon refuses %s: %s. Nothing was created." % (message.uri, message.reason),
            title="URL refused",
            severity="error",
            markup=False,
        )
