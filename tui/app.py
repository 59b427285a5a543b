"""The operator UI: ApplianceTui and make_app.

Data flow: a timer calls `poll()` every `refresh_seconds`; the `poll_daemon` worker asks the
daemon (status, new events, and what the visible screen needs) and posts past-tense messages
(`StatusLoaded`, `ImagesLoaded`, ...). Only the handlers of those messages touch widgets.
Actions run in workers too and report back as messages, shown with `notify`."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from functools import partial, wraps
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, Static, TabbedContent, TabPane
from textual.worker import Worker, WorkerState

from tui.client import DaemonApi, DaemonError, DaemonUnavailable, HttpDaemonClient
from tui.config import TuiConfig
from tui.display import short_id, visible
from tui.messages import (
    ActionFailed,
    CacheCleared,
    CacheLoaded,
    CacheQueued,
    CacheRemoved,
    ConnectionFailed,
    CopyStarted,
    EventsLoaded,
    ImageDeleted,
    ImageDetailLoaded,
    ImagesLoaded,
    ImagesPageLoaded,
    ImportStarted,
    SitesLoaded,
    StatusLoaded,
    StoreCopyDeleted,
    TasksLoaded,
    UriRefused,
)
from tui.screens.cache import CachePane
from tui.screens.choose import StoreChoiceScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.events import EventsPane
from tui.screens.help import HelpScreen
from tui.screens.images import ImagesPane, store_list
from tui.screens.import_url import ImportUrlScreen, UrlImport
from tui.screens.overview import OverviewPane
from tui.screens.queues import QueuesPane
from tui.screens.sites import SitesPane
from tui.widgets.contained import PlainStatic

log = logging.getLogger(__name__)

Json = dict[str, Any]

PANES = (("overview", "Overview"), ("images", "Images"), ("queues", "Queues"), ("cache", "Cache"), ("events", "Events"),
         ("sites", "Sites"))
# Each action that changes the daemon, and the screen it acts from.
MUTATING = {
    "import_url": "images", "copy_to_store": "images", "delete_from_store": "images", "delete_image": "images",
    "cache_image": "images", "cache_remove": "cache", "cache_clear": "cache",
}
NEEDS_CACHE = frozenset({"cache_image", "cache_remove", "cache_clear"})
NEEDS_SELECTION = frozenset({"copy_to_store", "delete_from_store", "delete_image", "cache_image", "cache_remove"})
CLEAR_CHOICES = {
    "cache": "every cached copy",
    "queue": "the prefetch queue",
    "both": "the cached copies and the queue",
}
FILTERABLE = frozenset({"images", "events"})
# "Did the images change?" is answered by the status counts plus the most recently updated
# images (every change bumps updated_at); the full list is fetched only when that differs, and
# anyway every FULL_RELOAD_EVERY polls.
PROBE_SIZE = 20
FULL_RELOAD_EVERY = 20
FILTER_DELAY = 0.15


Handler = TypeVar("Handler", bound=Callable[..., None])


def while_running(handler: Handler) -> Handler:
    """Results can still arrive while the app shuts down (its widgets already gone): drop them.
    A result that cannot be shown (an answer of an unforeseen shape, a bug in a view) is logged
    and said once in a toast until it shows again; the app and the other views go on."""

    @wraps(handler)
    def guarded(self: "ApplianceTui", *args: Any) -> None:
        if not self.is_running:
            return
        name = handler.__name__
        try:
            handler(self, *args)
        except Exception as exc:  # noqa: BLE001 - contained: one view fails, the app stays
            log.exception("cannot show the result in %s", name)
            if name not in self._failing:
                self._failing.add(name)
                self.notify("%s: %r" % (name, exc), title="Cannot show the daemon's answer", severity="error")
        else:
            self._failing.discard(name)

    return guarded  # type: ignore[return-value]


@dataclass
class PollState:
    """What the poll worker remembers between rounds (no widgets here)."""

    event_seq: int = 0
    uptime: int | None = None
    fingerprint: Any = None
    images_loaded: bool = False
    rounds: int = 0
    force_full: bool = False
    again: bool = False


def cache_enabled(status: Json) -> bool:
    cache = status.get("cache")
    return bool(cache and cache.get("enabled"))


def is_hub(status: Json) -> bool:
    return (status.get("site") or {}).get("role") == "hub"


def image_label(image: Json) -> str:
    """An image's name (else its id) as shown in dialogs and notifications: `visible`."""
    return visible(image.get("name") or image["id"])


class ApplianceTui(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "Edge Image Appliance"
    BINDINGS = [
        Binding("1", "show_pane('overview')", "Overview", show=False),
        Binding("2", "show_pane('images')", "Images", show=False),
        Binding("3", "show_pane('queues')", "Queues", show=False),
        Binding("4", "show_pane('cache')", "Cache", show=False),
        Binding("5", "show_pane('events')", "Events", show=False),
        Binding("6", "show_pane('sites')", "Sites", show=False),
        Binding("question_mark", "help", "Help"),
        # priority: handled as the key arrives, before the keys typed after it are passed on
        # to the focused table (they must reach the filter; see FilterLine.open_filter).
        Binding("slash", "filter", "Filter", priority=True),
        Binding("n", "import_url", "Import"),
        Binding("c", "copy_to_store", "Copy"),
        Binding("x", "delete_from_store", "Drop"),
        Binding("d", "delete_image", "Delete"),
        # Not in the footer (no room at 80 columns): the image detail's cache line names it.
        Binding("p", "cache_image", "Cache", show=False),
        Binding("x", "cache_remove", "Remove"),
        Binding("X", "cache_clear", "Clear"),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("escape", "back", "Back", show=False),
        Binding("q", "quit_key", "Quit"),
    ]

    def __init__(self, config: TuiConfig, client: DaemonApi, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.config = config
        self.client = client
        self.clock = clock  # wall time, for "3m ago" (snapshot tests fix it)
        self.stores: list[Json] = []
        self.status: Json = {}
        self.sites: list[Json] | None = None  # on a hub, once loaded
        self._active = "overview"
        self._history: list[str] = []
        self._poll = PollState()
        self._poll_worker: Worker[None] | None = None
        self._detail_worker: Worker[None] | None = None
        self._detail_id: str | None = None
        self._filter_timer: Timer | None = None
        self._banner_up = False
        self._going_back = False
        self._failing: set[str] = set()  # handlers whose last result could not be shown

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """Every toast is plain text (most carry the daemon's names, messages or errors): never
        markup, control characters made visible."""
        super().notify(visible(message), title=visible(title), severity=severity, timeout=timeout, markup=False)

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield PlainStatic(id="banner", classes="-hidden")
        with TabbedContent(initial="overview", id="panes"):
            with TabPane("1 Overview", id="overview"):
                yield OverviewPane(id="overview-pane")
            with TabPane("2 Images", id="images"):
                yield ImagesPane(id="images-pane")
            with TabPane("3 Queues", id="queues"):
                yield QueuesPane(id="queues-pane")
            with TabPane("4 Cache", id="cache"):
                yield CachePane(id="cache-pane")
            with TabPane("5 Events", id="events"):
                yield EventsPane(id="events-pane")
            with TabPane("6 Sites", id="sites"):
                yield SitesPane(id="sites-pane")
        yield Footer()

    @property
    def overview(self) -> OverviewPane:
        return self.query_one(OverviewPane)

    @property
    def images_pane(self) -> ImagesPane:
        return self.query_one(ImagesPane)

    @property
    def queues(self) -> QueuesPane:
        return self.query_one(QueuesPane)

    @property
    def events_pane(self) -> EventsPane:
        return self.query_one(EventsPane)

    @property
    def cache_pane(self) -> CachePane:
        return self.query_one(CachePane)

    @property
    def sites_pane(self) -> SitesPane:
        return self.query_one(SitesPane)

    @property
    def active_pane(self) -> str:
        return self._active

    def on_mount(self) -> None:
        self.sub_title = visible(self.client.target)
        if self.config.read_only:
            self.sub_title += " · read-only"
        self.query_one(TabbedContent).hide_tab("sites")  # shown once the status says this is a hub
        self.set_interval(self.config.refresh_seconds, self.poll)
        self.poll()

    async def on_unmount(self) -> None:
        self.workers.cancel_all()
        await self.client.close()

    # -- polling --------------------------------------------------------------------------

    def poll(self, full: bool = False, soon: bool = False) -> None:
        """Start a poll round unless one is running. The timer just skips a round then; a
        screen switch (`soon`) or an action (`full`: reload every image) runs one right after."""
        self._poll.force_full |= full
        if self._poll_worker is not None and self._poll_worker.state in (WorkerState.PENDING, WorkerState.RUNNING):
            self._poll.again |= full or soon
            return
        self._poll.again = False
        self._poll.rounds += 1
        full_images = self._poll.force_full or self._poll.rounds % FULL_RELOAD_EVERY == 0
        self._poll.force_full = False
        want_images = self._active in ("images", "queues", "sites") or not self._poll.images_loaded
        want_tasks = self._active == "queues"
        self._poll_worker = self.poll_daemon(want_images, full_images, want_tasks, self._active)

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def poll_daemon(self, want_images: bool, full_images: bool, want_tasks: bool, active: str) -> None:
        """`active`: the screen shown; the cache view and the sites list are asked for only where
        they are shown, and only if the status says the site has them."""
        state = self._poll
        try:
            status = await self.client.status()
        except DaemonUnavailable as exc:
            self.post_message(ConnectionFailed(str(exc), reachable=False))
            return
        except DaemonError as exc:
            self.post_message(ConnectionFailed(str(exc), reachable=True))
            return
        self.post_message(StatusLoaded(status))
        try:
            uptime = status.get("uptime_seconds")
            restarted = state.uptime is not None and isinstance(uptime, int) and uptime < state.uptime
            state.uptime = uptime if isinstance(uptime, int) else state.uptime
            if restarted:  # a new daemon process: its event numbers start again
                state.event_seq, state.fingerprint = 0, None
            if want_images:
                await self._poll_images(status, full_images)
            events = await self.client.events(since=state.event_seq)
            if events or restarted:
                state.event_seq = max([state.event_seq] + [int(e["seq"]) for e in events])
                self.post_message(EventsLoaded(events, restarted=restarted))
            if want_tasks:
                tasks = await self.client.tasks()
                self.post_message(TasksLoaded(tasks, time.monotonic()))
            if active in ("cache", "images") and cache_enabled(status):
                self.post_message(CacheLoaded(await self.client.cache_view()))
            if active in ("sites", "overview") and is_hub(status):
                self.post_message(SitesLoaded(await self.client.sites()))
        except DaemonUnavailable as exc:
            self.post_message(ConnectionFailed(str(exc), reachable=False))
        except DaemonError as exc:
            self.post_message(ConnectionFailed(str(exc), reachable=True))
        except (KeyError, TypeError, ValueError) as exc:  # an answer of another shape
            log.warning("unexpected answer from the daemon: %r", exc)
            self.post_message(ConnectionFailed("unexpected answer: %r" % exc, reachable=True))

    async def _poll_images(self, status: Json, full: bool) -> None:
        """Part of poll_daemon. The first load posts each page as it comes (the screen fills at
        once) and takes the change probe right after the first page (the first paint waits for
        one request, not two); later rounds fetch every page only if the probe changed."""
        state = self._poll
        counts = sorted((status.get("images") or {}).items())
        if not state.images_loaded:
            images: list[Json] = []
            fingerprint = None
            async for page in self.client.image_pages():
                images.extend(page)
                self.post_message(ImagesPageLoaded(page))
                if fingerprint is None:
                    fingerprint = (counts, await self.client.recent_images(PROBE_SIZE))
            state.fingerprint, state.images_loaded = fingerprint, True
            self.post_message(ImagesLoaded(images))
            return
        fingerprint = (counts, await self.client.recent_images(PROBE_SIZE))
        if full or fingerprint != state.fingerprint:
            images = await self.client.images()
            state.fingerprint = fingerprint
            self.post_message(ImagesLoaded(images))

    def request_detail(self, image_id: str, again: bool = False) -> None:
        """Load the highlighted image's detail, unless that load is already under way; a load
        for another image is cancelled (exclusive): the cursor has moved on."""
        running = self._detail_worker is not None and self._detail_worker.state in (WorkerState.PENDING, WorkerState.RUNNING)
        if running and self._detail_id == image_id:
            return
        if not again and not running and self._detail_id == image_id and self.images_pane.has_detail(image_id):
            return
        self._detail_id = image_id
        self._detail_worker = self.load_detail(image_id)

    @work(exclusive=True, group="detail", exit_on_error=False)
    async def load_detail(self, image_id: str) -> None:
        try:
            image = await self.client.image(image_id)
            locations = await self.client.locations(image_id)
        except DaemonError as exc:
            self.post_message(ImageDetailLoaded(image_id, None, [], error=str(exc)))
        except DaemonUnavailable:
            return  # the banner says so; the next poll retries
        else:
            self.post_message(ImageDetailLoaded(image_id, image, locations))

    # -- poll results ---------------------------------------------------------------------

    @while_running
    def on_status_loaded(self, message: StatusLoaded) -> None:
        status = message.status
        self.stores = list(status.get("stores") or [])
        site = status.get("site") or {}
        self.sub_title = "%s (%s) · %s%s" % (visible(site.get("name", "?")), visible(site.get("role", "?")),
                                             visible(self.client.target), " · read-only" if self.config.read_only else "")
        if self._banner_up:
            self._banner_up = False
            self.query_one("#banner", Static).add_class("-hidden")
            self.notify("Connected to the daemon again.", title="Daemon", markup=False)
        if is_hub(status) != is_hub(self.status) or not self.status:
            tabs = self.query_one(TabbedContent)
            if is_hub(status):
                tabs.show_tab("sites")
            else:
                tabs.hide_tab("sites")
                self.sites = None
        # The footer is rebuilt only when the keys on offer change (it costs at every poll).
        keys_change = (cache_enabled(status), is_hub(status)) != (cache_enabled(self.status), is_hub(self.status))
        self.status = status
        self.overview.show_status(status, self.clock(), self.image_name, self.sites)
        self.cache_pane.show_status(status)
        if keys_change:
            self.refresh_bindings()

    @while_running
    def on_connection_failed(self, message: ConnectionFailed) -> None:
        banner = self.query_one("#banner", Static)
        if message.reachable:
            text = Text("⚠ The daemon at %s answered with an error: " % visible(self.client.target), style="bold")
        else:
            text = Text("⚠ Cannot reach the daemon at %s: " % visible(self.client.target), style="bold")
        text.append(visible(message.reason))
        text.append(" — retrying every %g s" % self.config.refresh_seconds)
        banner.update(text)
        banner.remove_class("-hidden")
        self._banner_up = True

    @while_running
    def on_events_loaded(self, message: EventsLoaded) -> None:
        self.events_pane.add_events(message.events, restarted=message.restarted)

    @while_running
    def on_images_loaded(self, message: ImagesLoaded) -> None:
        pane = self.images_pane
        if pane.show_images(message.images):
            image = pane.selected_image()
            if image is not None:
                self.request_detail(str(image["id"]), again=True)
        if self.queues.loaded:
            self.queues.show_highlighted(self.image_name)
        if self.sites is not None:  # which images each site holds
            self.sites_pane.show_sites(self.sites, self.images_pane.images.values(), self.clock())
        if (self.status.get("hub") or {}).get("pulls"):  # names for the pulls' image ids
            self.overview.show_status(self.status, self.clock(), self.image_name, self.sites)
        self.refresh_bindings()

    @while_running
    def on_images_page_loaded(self, message: ImagesPageLoaded) -> None:
        self.images_pane.add_page(message.images)

    @while_running
    def on_image_detail_loaded(self, message: ImageDetailLoaded) -> None:
        self.images_pane.show_detail(message.image_id, message.image, message.locations, message.error)

    @while_running
    def on_tasks_loaded(self, message: TasksLoaded) -> None:
        self.queues.show_tasks(message.tasks, message.at, self.image_name)

    @while_running
    def on_cache_loaded(self, message: CacheLoaded) -> None:
        pane = self.cache_pane
        had_row = pane.selected() is not None
        pane.show_view(message.view, self.image_name, self.clock())
        self.images_pane.show_cache(message.view)
        if (pane.selected() is not None) != had_row:  # x is offered for a highlighted row only
            self.refresh_bindings()

    @while_running
    def on_sites_loaded(self, message: SitesLoaded) -> None:
        self.sites = message.sites
        now = self.clock()
        self.sites_pane.show_sites(message.sites, self.images_pane.images.values(), now)
        self.overview.show_status(self.status, now, self.image_name, self.sites)

    def image_name(self, image_id: str) -> str:
        """For tables, details and dialogs: `visible`."""
        image = self.images_pane.images.get(image_id)
        if image is not None and image.get("name"):
            return visible(image["name"])
        return visible(short_id(image_id)) if image_id else "—"

    @while_running
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker is self._poll_worker and event.worker.is_finished and self._poll.again:
            self.poll()
        if event.state == WorkerState.ERROR:
            self.notify(str(event.worker.error), title="Internal error in %s" % event.worker.name, severity="error", markup=False)

    # -- navigation -----------------------------------------------------------------------

    def action_show_pane(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane.id or "overview"
        if pane == self._active:
            return
        if not self._going_back:
            self._history.append(self._active)
            del self._history[:-20]
        self._going_back = False
        self._active = pane
        self._focus_pane(pane)
        self.refresh_bindings()
        if pane != "events":
            self.poll(soon=True)

    def _focus_pane(self, pane: str) -> None:
        if pane == "images":
            self.images_pane.table.focus()
        elif pane == "queues":
            self.queues.table.focus()
        elif pane == "events":
            self.events_pane.log_widget.focus()
        elif pane == "overview":
            self.overview.focus()
        elif pane == "sites":
            self.sites_pane.table.focus()
        else:
            self.cache_pane.focus_table()

    def action_back(self) -> None:
        focused = self.focused
        if isinstance(focused, Input) and focused.id in ("image-filter", "event-filter"):
            self._filter_owner(focused).close_filter(clear=True)
            return
        if self._active in FILTERABLE:
            owner = self.images_pane if self._active == "images" else self.events_pane
            if owner.filter_text:
                owner.close_filter(clear=True)
                return
        while self._history and self._history[-1] == self._active:
            self._history.pop()
        if self._history:
            self._going_back = True  # the switch must not push the pane we are leaving
            self.action_show_pane(self._history.pop())

    def _filter_owner(self, widget: Input) -> ImagesPane | EventsPane:
        return self.images_pane if widget.id == "image-filter" else self.events_pane

    def action_filter(self) -> None:
        if self._active == "images":
            self.images_pane.open_filter()
        elif self._active == "events":
            self.events_pane.open_filter()

    @on(Input.Changed, "#image-filter, #event-filter")
    def filter_changed(self, event: Input.Changed) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        owner, value = self._filter_owner(event.input), event.value
        self._filter_timer = self.set_timer(FILTER_DELAY, partial(self._apply_filter, owner, value))

    def _apply_filter(self, owner: ImagesPane | EventsPane, value: str) -> None:
        # The debounce timer may fire while the app is shutting down (screens already gone).
        if not self.screen_stack:
            return
        owner.apply_filter(value)
        self.refresh_bindings()

    @on(Input.Submitted, "#image-filter, #event-filter")
    def filter_submitted(self, event: Input.Submitted) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        owner = self._filter_owner(event.input)
        owner.apply_filter(event.value)
        owner.close_filter(clear=False)

    @while_running
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "images":
            image = self.images_pane.selected_image()
            if image is not None:
                self.images_pane.show_selected(image)
                self.request_detail(str(image["id"]))
            self.refresh_bindings()
        elif event.data_table.id == "tasks":
            self.queues.show_highlighted(self.image_name)
        elif event.data_table.id in ("cache-entries", "cache-queue"):
            self.cache_pane.show_highlighted(self.image_name)
            self.refresh_bindings()
        elif event.data_table.id == "sites":
            self.sites_pane.show_highlighted()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.config.read_only))

    def action_refresh(self) -> None:
        self.poll(full=True)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.screen, ModalScreen):
            # A dialog owns the keys; underneath nothing switches or acts (ctrl+q still quits).
            return action not in MUTATING and action not in ("show_pane", "filter", "back", "refresh", "help", "quit_key")
        if action in MUTATING:
            if self.config.read_only or self._active != MUTATING[action]:
                return False
            if action in NEEDS_CACHE and not cache_enabled(self.status):
                return False
            if action in NEEDS_SELECTION and self._selected_or_none(action) is None:
                return None  # shown greyed out: no row highlighted
        if action == "filter" and (self._active not in FILTERABLE or isinstance(self.focused, Input)):
            return False  # in an input field, "/" is typed
        if action == "show_pane" and parameters == ("sites",) and not is_hub(self.status):
            return False
        return True

    def _selected_or_none(self, action: str) -> object | None:
        try:
            return self.cache_pane.selected() if action == "cache_remove" else self.images_pane.selected_image()
        except NoMatches:  # bindings are checked while the app is still composing
            return None

    def action_quit_key(self) -> None:
        self.exit()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for number, (pane, title) in enumerate(PANES, start=1):
            if pane == "sites" and not is_hub(self.status):
                continue
            yield SystemCommand("Show %s" % title, "Switch to the %s screen (key %d)" % (title, number), partial(self.action_show_pane, pane))
        yield SystemCommand("Refresh now", "Ask the daemon again (key r)", self.action_refresh)
        if not self.config.read_only:
            yield SystemCommand("Import image from URL", "web-download into this site (key n)", self.action_import_url)
            yield SystemCommand("Copy image to a store", "copy-image for the highlighted image (key c)", self.action_copy_to_store)
            yield SystemCommand("Delete image from a store", "remove one store's copy of the highlighted image (key x)", self.action_delete_from_store)
            yield SystemCommand("Delete image", "delete the highlighted image (key d)", self.action_delete_image)
            if cache_enabled(self.status):
                yield SystemCommand("Queue image for caching", "prefetch the highlighted image into the cache (key p)", self.action_cache_image)
                yield SystemCommand("Remove from cache", "drop the highlighted cached copy or queued image (key x on Cache)", self.action_cache_remove)
                yield SystemCommand("Clear cache", "drop every cached copy, the queue, or both (key X on Cache)", self.action_cache_clear)

    # -- actions: ask, then a worker does it and reports back -------------------------------

    def _target_image(self) -> Json | None:
        image = self.images_pane.selected_image()
        if image is None:
            self.notify("Highlight an image on the Images screen first.", severity="warning", markup=False)
        return image

    def _store_targets(self) -> list[tuple[str, str]]:
        """Where copy-image can send an image, (name, description): this site's stores, then on a
        hub its edge sites, at an edge with a hub the hub itself (`central`)."""
        targets = [(str(s.get("id")), str(s.get("description") or "")) for s in self.stores]
        hub = self.status.get("hub") or {}
        if is_hub(self.status):
            targets += [(str(s["name"]), "edge site, %s" % ("online" if s.get("online") else "offline")) for s in self.sites or ()]
        elif hub.get("configured"):
            targets.append(("central", "the hub %s: sends an image made here to it" % hub.get("url", "")))
        return targets

    def action_delete_image(self) -> None:
        if self.config.read_only:
            return
        image = self._target_image()
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)
        stores = store_list(image)
        question = "Delete image %s (%s)?" % (name, visible(image_id))
        question += "\nIts data goes from every store: %s." % visible(", ".join(stores)) if stores else "\nIt has no data yet."
        if image.get("protected"):
            question += "\nIt is protected: the daemon will refuse."

        def answered(yes: bool | None) -> None:
            if yes:
                self.act("Delete %s" % name, partial(self.client.delete_image, image_id), ImageDeleted(image_id, name))

        self.push_screen(ConfirmScreen("Delete image", question, yes="Delete"), answered)

    def action_delete_from_store(self) -> None:
        if self.config.read_only:
            return
        image = self._target_image()
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)
        held = store_list(image)
        if not held:
            self.notify("%s has no data in any store." % name, severity="warning", markup=False)
            return
        described = dict(self._store_targets())

        def chosen(store: str | None) -> None:
            if not store:
                return
            question = "Delete the copy of %s (%s) in store %s?" % (name, visible(image_id), visible(store))
            if len(held) == 1:
                question += "\nIt is the only copy: the daemon will refuse."

            def answered(yes: bool | None) -> None:
                if yes:
                    self.act("Delete %s from %s" % (name, store), partial(self.client.delete_from_store, store, image_id),
                             StoreCopyDeleted(image_id, name, store))

            self.push_screen(ConfirmScreen("Delete from store", question, yes="Delete copy"), answered)

        self.push_screen(StoreChoiceScreen("Delete %s from which store?" % name, [(s, described.get(s, "")) for s in held]), chosen)

    def action_copy_to_store(self) -> None:
        if self.config.read_only:
            return
        image = self._target_image()
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)
        held = set(store_list(image))
        candidates = [(store, about) for store, about in self._store_targets() if store not in held]
        if not candidates:
            self.notify("%s is already in every store of this site." % name, severity="warning", markup=False)
            return

        def chosen(store: str | None) -> None:
            if store:
                self.act("Copy %s to %s" % (name, store), partial(self.client.copy_to_store, image_id, store),
                         CopyStarted(image_id, name, store))

        self.push_screen(StoreChoiceScreen("Copy %s to which store?" % name, candidates), chosen)

    def action_import_url(self) -> None:
        if self.config.read_only:
            return

        def submitted(request: UrlImport | None) -> None:
            if request is not None:
                self.import_from_url(request)

        self.push_screen(ImportUrlScreen(), submitted)

    def action_cache_image(self) -> None:
        if self.config.read_only:
            return
        image = self._target_image()
        if image is not None:
            self.cache_image(str(image["id"]), image_label(image))

    def action_cache_remove(self) -> None:
        if self.config.read_only:
            return
        chosen = self.cache_pane.selected()
        if chosen is None:
            self.notify("Highlight a cached or queued image on the Cache screen first.", severity="warning", markup=False)
            return
        image_id, kind = chosen
        name = self.image_name(image_id)
        if kind == "fill":
            self.notify("%s is being cached for a client's read; remove it once it is cached." % name,
                        severity="warning", markup=False)
            return
        if kind == "cache":
            title, yes = "Remove from cache", "Remove"
            question = "Remove the cached copy of %s (%s)?\nThe next read fetches it from the hub again." % (name, visible(image_id))
        else:
            title, yes = "Remove from queue", "Dequeue"
            question = "Take %s (%s) off the prefetch queue?" % (name, visible(image_id))
            if "fill" in self.cache_pane.queue.get(image_id, {}):
                question += "\nThe fill under way goes on."

        def answered(ok: bool | None) -> None:
            if ok:
                self.act("Remove %s from the %s" % (name, kind), partial(self.client.uncache_image, image_id, kind),
                         CacheRemoved(image_id, name, kind))

        self.push_screen(ConfirmScreen(title, question, yes=yes), answered)

    def action_cache_clear(self) -> None:
        if self.config.read_only:
            return
        pane = self.cache_pane
        counts = {"cache": len(pane.entries), "queue": sum("queued" in r for r in pane.queue.values())}
        counts["both"] = counts["cache"] + counts["queue"]
        choices = [(target, "%s (%d image(s))" % (what, counts[target])) for target, what in CLEAR_CHOICES.items()]

        def chosen(target: str | None) -> None:
            if not target:
                return
            question = "Clear %s: %d image(s)?" % (CLEAR_CHOICES[target], counts[target])
            if target != "queue":
                question += "\nReads of those images fetch them from the hub again."

            def answered(ok: bool | None) -> None:
                if ok:
                    self.act("Clear %s" % CLEAR_CHOICES[target], partial(self.client.clear_cache, target), CacheCleared(target))

            self.push_screen(ConfirmScreen("Clear cache", question, yes="Clear"), answered)

        self.push_screen(StoreChoiceScreen("Clear what?", choices), chosen)

    # Action workers are not exclusive: a request in flight must not be cancelled by the next.
    @work(group="actions", exit_on_error=False)
    async def act(self, action: str, call: Callable[[], Awaitable[None]], done: Message) -> None:
        """One daemon call; `done` reports success, ActionFailed (titled `action`) the error."""
        try:
            await call()
        except (DaemonError, DaemonUnavailable) as exc:
            self.post_message(ActionFailed(action, str(exc)))
        else:
            self.post_message(done)

    @work(group="actions", exit_on_error=False)
    async def import_from_url(self, request: UrlImport) -> None:
        try:
            allowed, reason = await self.client.check_uri(request.uri)
            if not allowed:
                self.post_message(UriRefused(request.uri, reason))
                return
            image = await self.client.create_image(request.name, request.disk_format, request.container_format)
            try:
                await self.client.import_web_download(str(image["id"]), request.uri)
            except (DaemonError, DaemonUnavailable):
                with contextlib.suppress(DaemonError, DaemonUnavailable):
                    await self.client.delete_image(str(image["id"]))  # leave no empty image behind
                raise
        except (DaemonError, DaemonUnavailable) as exc:
            self.post_message(ActionFailed("Import %s" % request.name, str(exc)))
        else:
            self.post_message(ImportStarted(str(image["id"]), request.name, request.uri))

    @work(group="actions", exit_on_error=False)
    async def cache_image(self, image_id: str, name: str) -> None:
        """Queue, then look: the daemon answers 202 even when it has nothing to do (the image is
        cached already, or held in this site's stores), so the cache view says what happened."""
        try:
            await self.client.cache_image(image_id)
            view = await self.client.cache_view()
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
        self.post_message(CacheLoaded(view))
        self.post_message(CacheQueued(image_id, name, outcome))

    @while_running
    def on_cache_queued(self, message: CacheQueued) -> None:
        if message.outcome == "not queued":
            self.notify("The daemon did not queue %s: its data is in this site's own stores, not at the hub." % message.name,
                        title="Cache", severity="warning", markup=False)
            return
        said = {"cached": "%s is in the cache.", "filling": "Caching %s now; follow it on Cache (4).",
                "queued": "Queued %s for caching; follow it on Cache (4)."}[message.outcome]
        self.notify(said % message.name, title="Cache", markup=False)
        self.poll(soon=True)

    @while_running
    def on_cache_removed(self, message: CacheRemoved) -> None:
        said = "Removed the cached copy of %s." if message.target == "cache" else "Took %s off the prefetch queue."
        self.notify(said % message.name, title="Cache", markup=False)
        self.poll(soon=True)

    @while_running
    def on_cache_cleared(self, message: CacheCleared) -> None:
        self.notify("Cleared %s." % CLEAR_CHOICES[message.target], title="Cache", markup=False)
        self.poll(soon=True)

    @while_running
    def on_image_deleted(self, message: ImageDeleted) -> None:
        self.notify("Deleted image %s." % message.name, title="Delete", markup=False)
        self.poll(full=True)

    @while_running
    def on_store_copy_deleted(self, message: StoreCopyDeleted) -> None:
        self.notify("Deleted the copy of %s in store %s." % (message.name, message.store), title="Delete from store", markup=False)
        self.poll(full=True)

    @while_running
    def on_copy_started(self, message: CopyStarted) -> None:
        self.notify("Copying %s to store %s; follow it on Queues (3)." % (message.name, message.store), title="Copy", markup=False)
        self.poll(full=True)

    @while_running
    def on_import_started(self, message: ImportStarted) -> None:
        self.notify("Importing %s from %s; follow it on Queues (3)." % (message.name, message.uri), title="Import", markup=False)
        self.poll(full=True)

    @while_running
    def on_uri_refused(self, message: UriRefused) -> None:
        self.notify("The daemon refuses %s: %s. Nothing was created." % (message.uri, message.reason),
                    title="URL refused", severity="error", markup=False)

    @while_running
    def on_action_failed(self, message: ActionFailed) -> None:
        self.notify(message.message, title="%s failed" % message.action, severity="error", markup=False)


def make_app(config: TuiConfig, client: DaemonApi | None = None, clock: Callable[[], float] = time.time) -> ApplianceTui:
    """The app for `edge-tui` and for tests; `client` replaces the HTTP client and `clock` the
    wall clock (snapshot tests)."""
    return ApplianceTui(config, client if client is not None else HttpDaemonClient(config), clock)
