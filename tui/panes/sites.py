"""Sites (on a hub): the edge sites registered with it, online or not, when last heard from,
their free space, version and cache; below, the highlighted site's stores and the images placed
there (the images whose `stores` name the site), the copies on their way to it and those that
failed (Glance's os_glance_importing_to_stores / os_glance_failed_import)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from tui.display import EMPTY, ago, human_bytes, human_pair, iso_epoch, percent, progress_bar, visible
from tui.imagefacts import FAILED_IMPORT, IMPORTING_TO, split_list
from tui.widgets.contained import PlainStatic
from tui.widgets.keyed_table import KeyedTable, Values
from tui.widgets.steady import show_text

Json = dict[str, Any]

COLUMNS = [
    ("site", "Site", 12),
    ("state", "State", 7),
    ("seen", "Last seen", 9),
    ("free", "Free", 12),
    ("version", "Version", 7),
    ("images", "Images", 6),
    ("cache", "Cache/hit", 9),
]
GROW = [("site", 12), ("seen", 4), ("version", 8)]


def free_text(site: Json) -> str:
    free, total = site.get("free_bytes"), site.get("total_bytes")
    if free is None:
        return EMPTY
    return "%s %s" % (human_bytes(free), percent(free, total)) if total else human_bytes(free)


def cache_cell(site: Json) -> str:
    cache = site.get("cache") or {}
    if not cache:
        return EMPTY
    return "%s / %d%%" % (visible(cache.get("entries", 0)), round(100 * float(cache.get("hit_ratio") or 0)))


def placements(images: Iterable[Json], key: str = "stores") -> dict[str, list[Json]]:
    """Images by the stores (sites among them) named in `key`: one pass over the list. With
    `key` = os_glance_importing_to_stores, the copies on their way to each site; with
    os_glance_failed_import, those that failed (Glance's own record of a copy-image)."""
    found: dict[str, list[Json]] = {}
    for image in images:
        for store in split_list(image.get(key)):
            found.setdefault(store, []).append(image)
    return found


def images_cell(placed: int, pending: int) -> str:
    return "%d +%d" % (placed, pending) if pending else str(placed)


def site_row(site: Json, placed: int, now: float, pending: int = 0) -> Values:
    return (
        str(site.get("name")),
        "online" if site.get("online") else "offline",
        ago(iso_epoch(site.get("last_seen")), now, coarse=True),
        free_text(site),
        str(site.get("version") or EMPTY),
        images_cell(placed, pending),
        cache_cell(site),
    )


def image_lines(text: Text, images: list[Json], pulls: dict[str, Json] | None = None) -> None:
    """One line an image; with `pulls` (the site's pulls in progress by image id), how far each
    has come, or that the site has not started it yet."""
    for image in sorted(images, key=lambda i: str(i.get("name") or i["id"])):
        text.append("\n  %s" % visible(image.get("name") or image["id"]))
        text.append("  %s · %s" % (visible(image["id"]), human_bytes(image.get("size"))), style="dim")
        if pulls is None:
            continue
        pull = pulls.get(str(image["id"]))
        if pull is None:
            text.append("\n    waiting for the site's next sync", style="dim")
            continue
        text.append("\n    pulling ")
        text.append_text(progress_bar(pull.get("bytes_done"), pull.get("bytes_total") or image.get("size"), width=16))
        text.append(" %s" % human_pair(pull.get("bytes_done"), pull.get("bytes_total") or image.get("size")))


def site_detail(
    site: Json, images: list[Json], now: float, pending: list[Json] | None = None, failed: list[Json] | None = None
) -> Text:
    """`pending`: copies handed to the site and not reported yet; `failed`: those it reported failed."""
    text = Text()
    text.append(visible(site.get("name")), style="bold")
    text.append(" ")
    text.append("online" if site.get("online") else "offline", style="green" if site.get("online") else "bold red")
    text.append(
        " · last seen %s · version %s"
        % (ago(iso_epoch(site.get("last_seen")), now), visible(site.get("version") or EMPTY))
    )
    text.append("\nregistered %s" % visible(site.get("registered_at") or EMPTY), style="dim")
    if site.get("api_url"):
        text.append(" · api %s" % visible(site["api_url"]), style="dim")
    free, total = site.get("free_bytes"), site.get("total_bytes")
    stores = ", ".join(visible(s.get("id")) for s in site.get("stores") or []) or EMPTY
    text.append("\ndisk %s free of %s · stores %s" % (human_bytes(free), human_bytes(total), stores))
    cache = site.get("cache") or {}
    text.append("\ncache ")
    if cache:
        text.append(
            "%s in %s image(s) · hit ratio %d%%"
            % (
                human_bytes(cache.get("used_bytes")),
                visible(cache.get("entries", 0)),
                round(100 * float(cache.get("hit_ratio") or 0)),
            )
        )
    else:
        text.append("none reported", style="dim")
    text.append("\n\nImages placed here (%d)" % len(images), style="bold")
    if not images:
        text.append(" none: copy-image with this site as the store (c on Images) places one", style="dim")
    image_lines(text, images)
    if pending:
        text.append("\n\nCopies on the way (%d)" % len(pending), style="bold")
        text.append(" progress as of the site's last heartbeat", style="dim")
        pulls = {str(p.get("image_id")): p for p in site.get("pulls") or [] if isinstance(p, dict)}
        image_lines(text, pending, pulls)
    if failed:
        text.append("\n\nCopies that failed (%d)" % len(failed), style="bold red")
        text.append(" s on Images copies again", style="dim")
        image_lines(text, failed)
    return text


def sites_summary(sites: list[Json], now: float) -> Text:
    """One line for the Overview: how many sites are online, and which are not."""
    online = [s for s in sites if s.get("online")]
    offline = [s for s in sites if not s.get("online")]
    text = Text()
    if not sites:
        text.append("none registered yet", style="dim")
        return text
    text.append("%d online" % len(online), style="green" if online else "")
    text.append(" · ")
    text.append("%d offline" % len(offline), style="bold red" if offline else "")
    if offline:
        text.append(
            ": "
            + ", ".join(
                "%s (seen %s)" % (visible(s.get("name")), ago(iso_epoch(s.get("last_seen")), now)) for s in offline[:3]
            )
        )
        if len(offline) > 3:
            text.append(", …")
    return text


class SiteTable(KeyedTable):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(COLUMNS, grow=GROW, id=id)

    def render_value(self, column: str, value: Any) -> Any:
        if column == "state":
            return Text(value, style="green" if value == "online" else "bold red")
        return super().render_value(column, value)


class SitesPane(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.sites: dict[str, Json] = {}
        self.loaded = False
        self._placed: dict[str, list[Json]] = {}
        self._pending: dict[str, list[Json]] = {}
        self._failed: dict[str, list[Json]] = {}
        self._now = 0.0

    def compose(self) -> ComposeResult:
        yield SiteTable(id="sites")
        with VerticalScroll(id="site-detail-pane"):
            yield PlainStatic(Text("Loading sites…", style="dim"), id="site-detail")

    @property
    def table(self) -> SiteTable:
        return self.query_one(SiteTable)

    def show_sites(self, sites: list[Json], images: Iterable[Json], now: float) -> None:
        self.loaded = True
        self.sites = {str(s["name"]): s for s in sites}
        listed = list(images)
        self._placed = placements(listed)
        self._pending = placements(listed, IMPORTING_TO)
        self._failed = placements(listed, FAILED_IMPORT)
        self._now = now
        rows = [
            (name, site_row(site, len(self._placed.get(name, ())), now, len(self._pending.get(name, ()))))
            for name, site in sorted(self.sites.items())
        ]
        self.table.sync_rows(rows)
        self.show_highlighted()

    def show_highlighted(self) -> None:
        detail = self.query_one("#site-detail", Static)
        key = self.table.highlighted_key
        site = self.sites.get(key) if key else None
        if site is None:
            message = "No edge site has registered with this hub yet." if self.loaded else "Loading sites…"
            show_text(detail, Text(message, style="dim"))
            return
        name = str(site["name"])
        show_text(
            detail,
            site_detail(
                site, self._placed.get(name, []), self._now, self._pending.get(name, []), self._failed.get(name, [])
            ),
        )
