"""One poll round: what the app asks the daemon every `refresh_seconds` and the messages it posts.

The app's `poll_daemon` worker runs `poll_round`; `PollState` is what the rounds remember (no
widgets here). A daemon restart is told from its start time (our clock minus its uptime), not
only from an uptime that went down: a daemon that was down longer than it had been up before
comes back with a larger uptime, and its event numbers start again at 1, so the log would wait
for the new daemon to pass the old number before showing anything."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from textual.message import Message

from tui.client import DaemonApi, DaemonError, DaemonUnavailable
from tui.messages import (
    AdminOnly,
    CacheLoaded,
    ConnectionFailed,
    EventsLoaded,
    ImagesLoaded,
    ImagesPageLoaded,
    SitesLoaded,
    StatusLoaded,
    TasksLoaded,
)
from tui.session import cache_enabled, is_hub

log = logging.getLogger(__name__)

Json = dict[str, Any]
# "Did the images change?" is answered by the status counts plus the most recently updated
# images (every change bumps updated_at); the full list is fetched only when that differs, and
# anyway every FULL_RELOAD_EVERY polls.
PROBE_SIZE = 20
FORBIDDEN = 403
FULL_RELOAD_EVERY = 20
# The daemon's uptime is whole seconds (rounded down): it was started within a second before
# (asked - uptime), and no later than (answered - uptime).
RESOLUTION = 1.0


@dataclass
class PollState:
    event_seq: int = 0
    uptime: int | None = None
    started: tuple[float, float] | None = None  # when the daemon started, at the earliest/latest (monotonic)
    fingerprint: Any = None
    images_loaded: bool = False
    rounds: int = 0
    force_full: bool = False
    again: bool = False
    # The first image load, under way (start_first_load: as the app loads, else by poll_round).
    first_load: asyncio.Future[tuple[list[Json], list[Json] | None]] | None = None

    def restarted(self, uptime: object, asked: float, answered: float) -> bool:
        """Record the daemon's uptime, asked at `asked` and answered at `answered` (monotonic);
        True if the daemon is another process than the last one seen: its uptime went down, or it
        started after the last one surely had (however slow the answers were)."""
        if not isinstance(uptime, int):
            return False
        earliest, latest = asked - uptime - RESOLUTION, answered - uptime
        restarted = self.uptime is not None and (
            uptime < self.uptime or (self.started is not None and earliest > self.started[1])
        )
        if restarted or self.started is None:
            self.started = (earliest, latest)
        else:  # the same process: each answer narrows when it started
            self.started = (max(self.started[0], earliest), min(self.started[1], latest))
        self.uptime = uptime
        return restarted


@dataclass(frozen=True)
class PollPlan:
    """What this round asks for besides the status and the events. `active`: the screen shown;
    the cache view and the sites list are asked for only where they are shown."""

    images: bool
    full_images: bool
    tasks: bool
    active: str


async def _whoami(client: DaemonApi) -> Json:
    """Who the token is, for one refused the status; empty if the daemon cannot say (an older
    one without /v2/edge/whoami, or a failure the rest of the round reports)."""
    try:
        return await client.whoami()
    except (DaemonError, DaemonUnavailable):
        return {}


async def poll_round(client: DaemonApi, state: PollState, plan: PollPlan, post: Callable[[Message], Any]) -> None:
    if plan.images and not state.images_loaded and state.first_load is None:
        start_first_load(client, state, post)
    try:
        await _poll_round(client, state, plan, post)
    finally:
        first, state.first_load = state.first_load, None
        if first is not None and not first.cancel() and not first.cancelled():
            first.exception()  # retrieved: a failure is the round's to report, once


def start_first_load(client: DaemonApi, state: PollState, post: Callable[[Message], Any]) -> None:
    """Send the first image load now, ahead of the round that will wait for it: the list is most
    of what a cold start waits for, and its answer does not depend on the status (the app sends
    it as it loads, before its screens are built; poll_round beside the status otherwise)."""
    state.first_load = asyncio.ensure_future(_first_images(client, post))


async def _poll_round(client: DaemonApi, state: PollState, plan: PollPlan, post: Callable[[Message], Any]) -> None:
    asked = time.monotonic()
    try:
        status = await client.status()
    except DaemonUnavailable as exc:
        post(ConnectionFailed(str(exc), reachable=False))
        return
    except DaemonError as exc:
        if exc.status != FORBIDDEN:
            post(ConnectionFailed(str(exc), reachable=True, status=exc.status))
            return
        # A token without the admin role: the status, events, cache and sites are admin-only,
        # its project's images and tasks are not; those are still shown.
        post(AdminOnly(str(exc), await _whoami(client)))
        await _poll_member(client, state, plan, post)
        return
    post(StatusLoaded(status))
    try:
        restarted = state.restarted(status.get("uptime_seconds"), asked, time.monotonic())
        if restarted:  # a new daemon process: its event numbers start again
            state.event_seq, state.fingerprint = 0, None
        if plan.images:
            await _poll_images(client, state, status, plan.full_images, post)
        events = await client.events(since=state.event_seq)
        if events or restarted:
            state.event_seq = max([state.event_seq] + [int(e["seq"]) for e in events])
            post(EventsLoaded(events, restarted=restarted))
        if plan.tasks:
            post(TasksLoaded(await client.tasks(), time.monotonic()))
        if plan.active in ("cache", "images") and cache_enabled(status):
            post(CacheLoaded(await client.cache_view()))
        if plan.active in ("sites", "overview") and is_hub(status):
            post(SitesLoaded(await client.sites()))
    except DaemonUnavailable as exc:
        post(ConnectionFailed(str(exc), reachable=False))
    except DaemonError as exc:
        post(ConnectionFailed(str(exc), reachable=True, status=exc.status))
    except (KeyError, TypeError, ValueError) as exc:  # an answer of another shape
        log.warning("unexpected answer from the daemon: %r", exc)
        post(ConnectionFailed("unexpected answer: %r" % exc, reachable=True))


async def _poll_member(client: DaemonApi, state: PollState, plan: PollPlan, post: Callable[[Message], Any]) -> None:
    try:
        if plan.images:
            await _poll_images(client, state, {}, plan.full_images, post)
        if plan.tasks:
            post(TasksLoaded(await client.tasks(), time.monotonic()))
    except DaemonUnavailable as exc:
        post(ConnectionFailed(str(exc), reachable=False))
    except DaemonError as exc:
        post(ConnectionFailed(str(exc), reachable=True, status=exc.status))


async def _poll_images(
    client: DaemonApi, state: PollState, status: Json, full: bool, post: Callable[[Message], Any]
) -> None:
    """The first load is state.first_load (started with the round); later rounds fetch every
    page only if the change probe changed."""
    counts = sorted((status.get("images") or {}).items())
    if not state.images_loaded:
        first = state.first_load
        images, recent = await (first if first is not None else _first_images(client, post))
        state.fingerprint, state.images_loaded = (counts, recent), True
        post(ImagesLoaded(images, paged=True))
        return
    fingerprint = (counts, await client.recent_images(PROBE_SIZE))
    if full or fingerprint != state.fingerprint:
        images = await client.images()
        state.fingerprint = fingerprint
        post(ImagesLoaded(images))


async def _first_images(client: DaemonApi, post: Callable[[Message], Any]) -> tuple[list[Json], list[Json] | None]:
    """Every image, each page posted as it comes (the screen fills at once), and the change
    probe's answer taken from the list itself (the most recently updated, as the daemon orders
    them), so the first load asks the daemon nothing more."""
    images: list[Json] = []
    async for page in client.image_pages():
        images.extend(page)
        post(ImagesPageLoaded(page))
    return images, most_recent(images)


def most_recent(images: list[Json]) -> list[Json]:
    """What client.recent_images(PROBE_SIZE) answers for these images: sort_key=updated_at,
    descending, ties by id descending (the daemon's total order)."""
    return sorted(images, key=lambda i: (str(i.get("updated_at") or ""), str(i["id"])), reverse=True)[:PROBE_SIZE]
