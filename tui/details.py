"""`Enter` on a site, a cache entry or an event: what its full-screen detail shows (the image's and
the task's pages are beside DetailScreen, in tui.dialogs.detail). Every value is the daemon's
text, through `visible` / `plain`; long values wrap. A site and a cache entry are loaded again
while their detail is open: a heartbeat ages, a fill moves on (its rate and ETA come from the
successive samples, as on Queues)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tui.client import DaemonApi, DaemonError
from tui.dialogs.detail import heading
from tui.display import (
    EMPTY,
    ago,
    capacity_bar,
    human_bytes,
    human_duration,
    human_pair,
    human_rate,
    iso_epoch,
    percent,
    plain,
    progress_bar,
    visible,
)
from tui.panes.events import event_line, mentioned, with_names
from tui.rate import TransferRates, eta_seconds

Json = dict[str, Any]
NameOf = Callable[[str], str]  # an image id's name for display (`visible`)
IMPORTING_TO = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"


def _grid() -> Table:
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(style="bold", no_wrap=True, width=10)
    table.add_column(ratio=1, overflow="fold")
    return table


def _in(image: Json, key: str, site: str) -> bool:
    return site in str(image.get(key) or "").split(",")


def image_list(images: list[Json], name_of: NameOf, empty: str) -> RenderableType:
    if not images:
        return Text(empty, style="dim")
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(ratio=1, overflow="fold")
    table.add_column(no_wrap=True, width=36, style="dim")
    table.add_column(no_wrap=True, width=8, justify="right")
    for image in sorted(images, key=lambda i: name_of(str(i["id"]))):
        table.add_row(plain(name_of(str(image["id"]))), plain(image["id"]), plain(human_bytes(image.get("size"))))
    return table


def assignments_table(assignments: list[Json] | None, error: str, name_of: NameOf, now: float) -> RenderableType:
    if error:
        return plain(error, style="red")
    if not assignments:
        return Text("none: the site has done all it was asked", style="dim")
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True, width=6, style="bold")
    table.add_column(ratio=1, overflow="fold")
    table.add_column(no_wrap=True, width=10, style="dim")
    for item in assignments:
        image_id = str(item.get("image_id") or "")
        what = plain(name_of(image_id))
        what.append_text(plain("  %s" % visible(image_id), style="dim"))
        table.add_row(
            plain(item.get("action") or "?"), what, plain(ago(iso_epoch(item.get("created_at")), now, coarse=True))
        )
    return table


def site_page(
    site: Json,
    images: Iterable[Json],
    assignments: list[Json] | None,
    assignments_error: str,
    name_of: NameOf,
    now: float,
) -> Group:
    """A registered edge site: heartbeat, disk, stores, cache, what it is asked to do (its
    assignments), the copies to it under way or failed, the images it holds."""
    name = str(site.get("name") or "?")
    online = bool(site.get("online"))
    title = plain(name, style="bold")
    title.append("  ")
    title.append("online" if online else "offline", style="green" if online else "bold red")
    title.end = "\n"
    facts = _grid()
    seen = iso_epoch(site.get("last_seen"))
    facts.add_row(
        "Heartbeat", plain("%s (at %s)" % (ago(seen, now), visible(site.get("last_seen"))) if seen else EMPTY)
    )
    facts.add_row("Registered", plain(site.get("registered_at") or EMPTY))
    facts.add_row("Version", plain(site.get("version") or EMPTY))
    facts.add_row("API", plain(site.get("api_url") or "— (the hub cannot reach it: it pulls)"))
    free, total = site.get("free_bytes"), site.get("total_bytes")
    disk = Text("%s free of %s (%s free) " % (human_bytes(free), human_bytes(total), percent(free, total)))
    if isinstance(free, int) and isinstance(total, int):
        disk.append_text(capacity_bar(total, free, 0, width=20))
    facts.add_row("Disk", disk)
    cache = site.get("cache") or {}
    facts.add_row(
        "Cache",
        plain(
            "%s in %s image(s) · hit ratio %d%%"
            % (
                human_bytes(cache.get("used_bytes")),
                visible(cache.get("entries", 0)),
                round(100 * float(cache.get("hit_ratio") or 0)),
            )
        )
        if cache
        else Text("none reported", style="dim"),
    )
    stores = Table.grid(padding=(0, 1), expand=True)
    stores.add_column(style="bold", no_wrap=True, max_width=20, overflow="ellipsis")
    stores.add_column(ratio=1, overflow="fold")
    for store in site.get("stores") or []:
        rest = {k: v for k, v in store.items() if k != "id"} if isinstance(store, dict) else {}
        stores.add_row(
            plain(store.get("id") if isinstance(store, dict) else store),
            plain(" · ".join("%s %s" % (visible(k), visible(v)) for k, v in sorted(rest.items())) or EMPTY),
        )
    held = list(images)
    pending = [i for i in held if _in(i, IMPORTING_TO, name)]
    failed = [i for i in held if _in(i, FAILED_IMPORT, name)]
    placed = [i for i in held if _in(i, "stores", name)]
    return Group(
        title,
        facts,
        heading("Stores (%d)" % len(site.get("stores") or [])),
        stores if stores.row_count else Text("none reported", style="dim"),
        heading("Assignments: what the site is asked to do"),
        assignments_table(assignments, assignments_error, name_of, now),
        heading("Copies under way (%d)" % len(pending)),
        image_list(pending, name_of, "none"),
        heading("Copies that failed (%d)" % len(failed)),
        image_list(failed, name_of, "none"),
        heading("Images held here (%d)" % len(placed)),
        image_list(placed, name_of, "none: copy-image with this site as the store (c on Images) places one"),
    )


async def load_site_page(
    client: DaemonApi, name: str, images: Callable[[], Iterable[Json]], name_of: NameOf, clock: Callable[[], float]
) -> Group:
    site = next((s for s in await client.sites() if s.get("name") == name), None)
    if site is None:
        return Group(plain("The site %s is no longer registered with this hub." % name, style="bold red"))
    assignments: list[Json] | None = None
    error = ""
    try:
        assignments = await client.site_assignments(name)
    except DaemonError as exc:
        error = str(exc)
    return site_page(site, images(), assignments, error, name_of, clock())


class CachePage:
    """One image in this site's cache, loaded again and again while its detail is open: the
    cached copy, its place in the prefetch queue, and a fill in progress with its rate and ETA."""

    def __init__(
        self, client: DaemonApi, image_id: str, name_of: NameOf, clock: Callable[[], float] = time.time
    ) -> None:
        self._client = client
        self._image_id = image_id
        self._name_of = name_of
        self._clock = clock
        self._rates = TransferRates()

    async def load(self) -> Group:
        view = await self._client.cache_view()
        return self.page(view, time.monotonic())

    def page(self, view: Json, at: float) -> Group:
        image_id, now = self._image_id, self._clock()

        def find(key: str) -> Json | None:
            return next((i for i in view.get(key) or [] if str(i.get("image_id")) == image_id), None)

        entry, item, fill = find("entries"), find("queue"), find("fills")
        title = plain(self._name_of(image_id), style="bold")
        title.append_text(plain("  %s" % visible(image_id), style="dim"))
        parts: list[RenderableType] = [title, heading("Cached copy")]
        if entry is not None:
            facts = _grid()
            facts.add_row("Size", plain("%s (%s bytes)" % (human_bytes(entry.get("size")), visible(entry.get("size")))))
            facts.add_row("Cached", plain(ago(entry.get("cached_at"), now)))
            facts.add_row("Last used", plain(ago(entry.get("last_accessed"), now)))
            facts.add_row("Hits", plain(entry.get("hits", 0)))
            facts.add_row("Modified", plain(ago(entry.get("last_modified"), now)))
            parts.append(facts)
        else:
            parts.append(Text("not cached", style="dim"))
        parts.append(heading("Fill in progress"))
        if fill is not None:
            done, total = fill.get("bytes_done"), fill.get("bytes_total")
            rate = self._rates.observe(image_id, int(done or 0), at)
            line = progress_bar(done, total, width=20)
            line.append(
                "  %s · %s · ETA %s"
                % (human_pair(done, total), human_rate(rate), human_duration(eta_seconds(done, total, rate)))
            )
            parts.append(line)
        else:
            parts.append(Text("none", style="dim"))
        parts.append(heading("Prefetch queue"))
        if item is not None:
            facts = _grid()
            facts.add_row("Queued", plain(ago(item.get("queued_at"), now)))
            facts.add_row("Attempts", plain(item.get("attempts", 0)))
            if item.get("next_attempt_at") is not None and fill is None:
                facts.add_row("Next try", plain(ago(item["next_attempt_at"], now)))
            if item.get("last_error"):
                facts.add_row("Last error", plain(item["last_error"], style="red"))
            parts.append(facts)
        else:
            parts.append(Text("not queued" + (" (a client's read fills it)" if fill else ""), style="dim"))
        return Group(*parts)


def event_page(event: Json, name_of: Callable[[str], str | None]) -> Group:
    """One event: its line as on the Events screen, then every field, the message whole and
    wrapped, and the images it names."""
    message = with_names(visible(event.get("message") or ""), name_of)
    facts = _grid()
    for key in ("time", "level", "source", "seq"):
        facts.add_row(key.capitalize(), plain(event.get(key) if event.get(key) is not None else EMPTY))
    parts: list[RenderableType] = [event_line(event, name_of), facts, heading("Message"), plain(message)]
    images = mentioned(event)
    if images:
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True, width=36)
        table.add_column(ratio=1, overflow="fold")
        for image_id in images:
            table.add_row(plain(image_id), plain(name_of(image_id) or "(not in the image list)"))
        parts += [heading("Images it names"), table]
    return Group(*parts)
