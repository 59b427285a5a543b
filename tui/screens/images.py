"""Images: every image of the site in a table, a `/` filter, and a detail pane (properties and
locations) for the highlighted row."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Input, Static

from tui.display import EMPTY, human_bytes, human_pair, short_id, status_text, visible
from tui.widgets.contained import PlainStatic
from tui.widgets.filtering import FilterLine
from tui.widgets.keyed_table import KeyedTable, Values

Json = dict[str, Any]
# The store name an edge gives the hub's copy of a mirrored image: the cache can hold those.
UPSTREAM_STORE = "central"

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
# Attributes every image has; the rest are the image's custom properties.
BASE_KEYS = frozenset({
    "id", "name", "status", "visibility", "protected", "os_hidden", "checksum", "os_hash_algo",
    "os_hash_value", "owner", "size", "virtual_size", "disk_format", "container_format", "min_disk",
    "min_ram", "created_at", "updated_at", "tags", "self", "file", "schema", "stores", "locations",
    "direct_url",
})


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
    hay = " ".join(visible(image.get(k) or "") for k in ("name", "id", "status", "disk_format", "container_format", "stores"))
    return needle.lower() in hay.lower()


def store_list(image: Json) -> list[str]:
    return [s for s in str(image.get("stores") or "").split(",") if s]


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
        notes[str(entry["image_id"])] = "cached copy, %s · %s hit(s)" % (human_bytes(entry.get("size")), visible(entry.get("hits", 0)))
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
    text.append(" · disk %s · container %s · %s" % (field("disk_format"), field("container_format"), field("visibility")))
    if image.get("protected"):
        text.append(" · ")
        text.append("protected", style="bold yellow")
    text.append("\nsize %s · virtual %s · stores %s\n" % (
        human_bytes(image.get("size")), human_bytes(image.get("virtual_size")), field("stores")))
    if image.get("checksum"):
        text.append("md5 %s · %s %s…\n" % (field("checksum"), visible(image.get("os_hash_algo") or "hash"),
                                            visible(str(image.get("os_hash_value") or "")[:16])), style="dim")
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


class ImagesPane(FilterLine, Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.images: dict[str, Json] = {}
        self.loaded = False
        self.filter_text = ""
        self._detail_for: str | None = None
        self._locations: list[Json] | None = None
        self._detail_error = ""
        self._cache_notes: dict[str, str] | None = None  # None: this site has no cache

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter by name, id, status, format or store (enter: keep, esc: clear)", id="image-filter", classes="-hidden")
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
        return [(str(i["id"]), image_row(i)) for i in shown]

    def add_page(self, page: list[Json]) -> None:
        """First load only: a page in table order goes at the bottom, in bulk."""
        fresh = [i for i in page if str(i["id"]) not in self.images]
        for image in fresh:
            self.images[str(image["id"])] = image
        self.table.add_keyed_rows([(str(i["id"]), image_row(i)) for i in fresh if matches(i, self.filter_text)])

    def show_images(self, images: list[Json]) -> bool:
        """Show a fresh image list; returns True if the highlighted image changed (the caller
        reloads its locations)."""
        before = self.selected_image()
        self.images = {str(i["id"]): i for i in images}
        self.loaded = True
        self.table.sync_rows(self._rows())
        after = self.selected_image()
        if after is None:
            self._render_empty()
            return False
        changed = before is None or before != after
        if changed:
            self.show_selected(after)
        return changed

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

    def _cache_note(self, image: Json) -> str:
        if self._cache_notes is None:
            return ""
        note = self._cache_notes.get(str(image["id"]))
        if note is None and UPSTREAM_STORE in store_list(image):
            note = "not cached · p caches it"
        return note or ""

    def _render_detail(self, image: Json) -> None:
        note = self._cache_note(image)
        self.query_one("#image-detail", Static).update(detail_text(image, self._locations, self._detail_error, note))

    def show_cache(self, view: Json) -> None:
        """The cache view arrived: the highlighted image's `cache` line may have changed."""
        image = self.images.get(self._detail_for or "")
        before = self._cache_note(image) if image is not None else ""
        self._cache_notes = cache_notes(view)
        if image is not None and self._cache_note(image) != before:
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
