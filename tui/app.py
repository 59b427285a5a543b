"""The operator UI: ApplianceTui and make_app.

Data flow: a timer calls `poll()` every `refresh_seconds`; the `poll_daemon` worker asks the
daemon (status, new events, and what the visible screen needs) and posts past-tense messages
(`StatusLoaded`, `ImagesLoaded`, ...). Only the handlers of those messages touch widgets.
The app holds what is app-wide: the connection and polling, screen switching, the keys (one key
map: the footer, the help and the command palette), notifications. Each action that changes the
daemon belongs to the pane it acts from (`tui.panes`): the pane asks in a dialog (`tui.dialogs`),
a worker does it and reports back in a message, the pane says the outcome and asks for a poll."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from textual import events, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.notifications import SeverityLevel
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Input, Static, TabbedContent, TabPane, Tabs
from textual.worker import Worker, WorkerState

from tui.admin_only import identity, show_admin_only
from tui.client import DaemonApi, DaemonError, DaemonUnavailable, HttpDaemonClient
from tui.config import TuiConfig
from tui.detail_views import DetailViews
from tui.dialogs.detail import DetailScreen
from tui.dialogs.help import HelpScreen
from tui.display import short_id, visible
from tui.guard import report_worker_error, while_running
from tui.messages import (
    AdminOnly,
    CacheLoaded,
    ConnectionFailed,
    DaemonChanged,
    EventsLoaded,
    ImageDetailLoaded,
    ImagesLoaded,
    ImagesPageLoaded,
    SitesLoaded,
    StatusLoaded,
    TasksLoaded,
)
from tui.navigation import FILTERABLE, Navigation
from tui.notices import Notice, Notices
from tui.panes.cache import CachePane
from tui.panes.events import EventsPane
from tui.panes.image_actions import KEYS as IMAGE_ACTION_KEYS
from tui.panes.image_actions import PALETTE as IMAGE_ACTION_PALETTE
from tui.panes.image_actions import ImageActionKeys
from tui.panes.images import ImagesPane
from tui.panes.overview import OverviewPane
from tui.panes.queues import QueuesPane
from tui.panes.sites import SitesPane
from tui.polling import FULL_RELOAD_EVERY, PollPlan, PollState, poll_round, start_first_load
from tui.session import Session, cache_enabled, is_hub
from tui.theme import remember_theme, starting_theme
from tui.widgets.banner import UNAUTHORIZED, ConnectionBanner, stale_note, unauthorized_text

log = logging.getLogger(__name__)

Json = dict[str, Any]

PANES = (
    ("overview", "Overview"),
    ("images", "Images"),
    ("queues", "Queues"),
    ("cache", "Cache"),
    ("events", "Events"),
    ("sites", "Sites"),
)
# Each action that changes the daemon, and the screen (pane) it belongs to and acts from.
PANE_ACTIONS = {action: "images" for action in ImagesPane.ACTIONS} | {action: "cache" for action in CachePane.ACTIONS}
# The panes' actions in the command palette: (action, title, help).
PALETTE_ACTIONS = [
    ("import_url", "Import image from URL", "web-download into this site (key n)"),
    ("copy_to_store", "Copy image to a store", "copy-image for the highlighted image (key c)"),
    ("delete_from_store", "Delete image from a store", "remove one store's copy of the highlighted image (key x)"),
    ("delete_image", "Delete image", "delete the highlighted image (key d)"),
    ("cache_image", "Queue image for caching", "prefetch the highlighted image into the cache (key p)"),
    ("cache_remove", "Remove from cache", "drop the highlighted cached copy or queued image (key x)"),
    ("cache_clear", "Clear cache", "drop every cached copy, the queue, or both (key X)"),
    *IMAGE_ACTION_PALETTE,
]
# The detail below a table, which starts at its top for each row.
DETAIL_PANES = {"images": "#image-detail-pane", "tasks": "#task-detail-pane", "sites": "#site-detail-pane"}


class ApplianceTui(ImageActionKeys, DetailViews, Navigation, App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "Edge Image Appliance"
    # Every key of the main screen, the panes' actions too: one key map, so that a pane's keys
    # work wherever the focus is on it (the tab bar too) and the footer lists them in this order.
    BINDINGS: ClassVar[list[BindingType]] = [
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
        Binding("x", "delete_from_store", "Del copy"),
        Binding("d", "delete_image", "Delete"),
        Binding("p", "cache_image", "Cache"),
        Binding("x", "cache_remove", "Remove"),
        Binding("X", "cache_clear", "Clear"),
        Binding("l", "event_level", "Level"),
        Binding("m", "notices", "Notices", show=False),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("escape", "back", "Back", show=False),
        *IMAGE_ACTION_KEYS,
        Binding("q", "quit_key", "Quit"),
    ]

    def __init__(self, config: TuiConfig, client: DaemonApi, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.config = config
        self.client = client
        self.clock = clock  # wall time, for "3m ago" (snapshot tests fix it)
        # the status and sites as last polled
        self.session = Session(client, config.read_only, has_token=config.token is not None)
        self._active = "overview"
        self._history: list[str] = []
        self.notices = Notices()  # every toast, for `m`
        self._highlighted: dict[str, str] = {}  # table id: the row whose detail is shown
        self._poll = PollState()
        self._poll_worker: Worker[None] | None = None
        self._detail_worker: Worker[None] | None = None
        self._detail_id: str | None = None
        self._state_file: Path | None = None
        self._title = visible(client.target) + (" · read-only" if config.read_only else "")
        self._going_back = False
        # Set before anything is mounted: set in on_mount, it restyles every widget once more.
        state_file = Path(config.state_file) if config.state_file else None
        self.theme = starting_theme(state_file, self.available_themes)
        self._state_file = state_file  # from now on, a theme the operator picks is remembered

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Every toast is plain text (most carry the daemon's names, messages or errors): never
        markup, control characters made visible."""
        message, title = visible(message), visible(title)
        self.notices.add(Notice(self.clock(), severity, title, message))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=False)

    # -- layout ---------------------------------------------------------------------------

    async def _on_key(self, event: events.Key) -> None:
        # Textual calls this before App._on_key. A key that reaches the app while it shuts down
        # (its screens already gone: keys typed as the operator quits) has no screen to go to;
        # drop it rather than end on a ScreenStackError.
        if not self._screen_stack:
            event.prevent_default()

    def compose(self) -> ComposeResult:
        yield Header()
        yield ConnectionBanner(self.client.target, self.config.refresh_seconds, id="banner")
        with TabbedContent(initial="overview", id="panes"):
            with TabPane("1 Overview", id="overview"):
                yield OverviewPane(id="overview-pane")
            with TabPane("2 Images", id="images"):
                yield ImagesPane(self.session, id="images-pane")
            with TabPane("3 Queues", id="queues"):
                yield QueuesPane(id="queues-pane")
            with TabPane("4 Cache", id="cache"):
                yield CachePane(self.session, id="cache-pane")
            with TabPane("5 Events", id="events"):
                yield EventsPane(self.known_name, id="events-pane")
            with TabPane("6 Sites", id="sites"):
                yield SitesPane(id="sites-pane")
        yield Footer(compact=True)  # every key of the Images screen fits 80 columns

    @property
    def banner(self) -> ConnectionBanner:
        return self.query_one(ConnectionBanner)

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

    @property
    def status(self) -> Json:
        return self.session.status

    @property
    def sites(self) -> list[Json] | None:
        return self.session.sites

    def on_load(self) -> None:
        # The image list is asked for while the screens are built (its pages are handled once
        # they are: messages wait for the mount).
        start_first_load(self.client, self._poll, self.post_message)

    def on_mount(self) -> None:
        self.sub_title = self._title
        self.query_one(TabbedContent).hide_tab("sites")  # shown once the status says this is a hub
        # Tab moves between what a screen shows, not onto the tab bar (number keys switch screens).
        self.query_one(Tabs).can_focus = False
        self.set_interval(self.config.refresh_seconds, self.poll)
        self.poll()
        # What start-up built (Textual's and the screens' objects, tens of thousands) stays for
        # the app's life: out of the collector's generations, a full collection no longer walks
        # it while 10,000 image rows are added (the first load's add took 0.13-0.19 s, frozen
        # 0.06-0.07 s). No gc.collect() first, as the daemon does: the first load is under way.
        gc.freeze()

    async def on_unmount(self) -> None:
        gc.unfreeze()  # what on_mount froze is collectable again (a process may run apps in turn, as tests do)
        self.workers.cancel_all()
        first, self._poll.first_load = self._poll.first_load, None
        if first is not None and not first.cancel() and not first.cancelled():
            first.exception()  # retrieved: the app is closing, nothing reports it
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
        # events: the log names the images its messages mention
        want_images = self._active in ("images", "queues", "sites", "events") or not self._poll.images_loaded
        want_tasks = self._active == "queues"
        self._poll_worker = self.poll_daemon(PollPlan(want_images, full_images, want_tasks, self._active))

    @work(exclusive=True, group="poll", exit_on_error=False)
    async def poll_daemon(self, plan: PollPlan) -> None:
        await poll_round(self.client, self._poll, plan, self.post_message)

    def request_detail(self, image_id: str, again: bool = False) -> None:
        """Load the highlighted image's detail, unless that load is already under way; a load
        for another image is cancelled (exclusive): the cursor has moved on."""
        running = self._detail_worker is not None and self._detail_worker.state in (
            WorkerState.PENDING,
            WorkerState.RUNNING,
        )
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
        self._set_title(status.get("site") or {})
        self._answered()
        if is_hub(status) != is_hub(self.status) or not self.status:
            tabs = self.query_one(TabbedContent)
            if is_hub(status):
                tabs.show_tab("sites")
            else:
                tabs.hide_tab("sites")
                self.session.sites = None
        # The footer is rebuilt only when the keys on offer change (it costs at every poll).
        keys_change = (cache_enabled(status), is_hub(status)) != (cache_enabled(self.status), is_hub(self.status))
        self.session.status = status
        self.overview.show_status(status, self.clock(), self.image_name, self.sites)
        self.cache_pane.show_status(status)
        if keys_change:
            self.refresh_bindings()

    @while_running
    def on_admin_only(self, message: AdminOnly) -> None:
        whoami = message.whoami
        if whoami and whoami != self.session.whoami:
            self.session.whoami = whoami
            self._set_title(whoami.get("site") or {}, identity(whoami))
            if self.session.at_hub():  # Sites is shown, marked admin-only, not hidden
                self.query_one(TabbedContent).show_tab("sites")
            self.refresh_bindings()
        show_admin_only(self, message.reason, whoami)
        self._answered()  # refused the status, but the daemon answered: not stale

    def _set_title(self, site: Json, who: str = "") -> None:
        """The header's line: the site and its role, who the token is (when refused the status),
        where the daemon is."""
        where = "%s (%s)" % (visible(site.get("name", "?")), visible(site.get("role", "?")))
        self._title = " · ".join(part for part in (where, who, visible(self.client.target)) if part) + (
            " · read-only" if self.config.read_only else ""
        )

    def _answered(self) -> None:
        if self.banner.answered(self.clock()):
            self.notify("Connected to the daemon again.", title="Daemon", markup=False)
        self.mark_stale()

    @while_running
    def on_connection_failed(self, message: ConnectionFailed) -> None:
        self.banner.failed(message, self.clock())
        if message.status in UNAUTHORIZED:  # what waits for data says so, not "Loading…" for ever
            said = unauthorized_text(message.status)
            for pane, detail in (
                (self.images_pane, "#image-detail"),
                (self.queues, "#task-detail"),
                (self.cache_pane, "#cache-detail"),
                (self.sites_pane, "#site-detail"),
            ):
                if not pane.loaded:
                    self.query_one(detail, Static).update(said)
        self.mark_stale()

    def watch_theme(self, theme: str) -> None:
        if self._state_file is not None:
            remember_theme(self._state_file, theme)

    def mark_stale(self) -> None:
        """While the daemon does not answer, what is on screen is marked as the past it is."""
        fresh_at = self.banner.fresh_at if self.banner.stale else None
        note = stale_note(fresh_at, self.clock()) if fresh_at is not None else ""
        self.query_one(TabbedContent).set_class(bool(note), "-stale")
        self.sub_title = ("STALE, %s · " % note if note else "") + self._title
        for screen in self.screen_stack:
            if isinstance(screen, DetailScreen):
                screen.mark_stale(note)

    @while_running
    def on_events_loaded(self, message: EventsLoaded) -> None:
        self.events_pane.add_events(message.events, restarted=message.restarted)

    @while_running
    def on_images_loaded(self, message: ImagesLoaded) -> None:
        pane = self.images_pane
        if pane.show_images(message.images, message.paged):
            image = pane.selected_image()
            if image is not None:
                self.request_detail(str(image["id"]), again=True)
        self.events_pane.names_changed()
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
        self.session.sites = message.sites
        now = self.clock()
        self.sites_pane.show_sites(message.sites, self.images_pane.images.values(), now)
        self.overview.show_status(self.status, now, self.image_name, self.sites)

    def known_name(self, image_id: str) -> str | None:
        """An image's name if the image list has it (`visible`), else None."""
        image = self.images_pane.images.get(image_id)
        return visible(image["name"]) if image is not None and image.get("name") else None

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
        report_worker_error(self, event)

    @while_running
    def on_daemon_changed(self, message: DaemonChanged) -> None:
        self.poll(full=message.full, soon=not message.full)

    @while_running
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        table, key = event.data_table.id or "", str(event.row_key.value)
        if table in DETAIL_PANES and self._highlighted.get(table) != key:  # another row: its top
            self._highlighted[table] = key
            self.query_one(DETAIL_PANES[table], VerticalScroll).scroll_home(animate=False)
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

    def action_event_level(self) -> None:
        self.events_pane.set_level()

    def action_refresh(self) -> None:
        self.poll(full=True)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if isinstance(self.screen, ModalScreen):
            # A dialog owns the keys; underneath nothing switches or acts (ctrl+q still quits).
            return action not in PANE_ACTIONS and action not in (
                "show_pane",
                "filter",
                "back",
                "refresh",
                "help",
                "quit_key",
            )
        if action in PANE_ACTIONS:
            if self._active != PANE_ACTIONS[action]:
                return False
            return self._pane_for(action).check_action(action, parameters)
        if action == "event_level":
            return self._active == "events"
        if action == "filter" and (self._active not in FILTERABLE or isinstance(self.focused, Input)):
            return False  # in an input field, "/" is typed
        if action == "show_pane" and parameters == ("sites",) and not self.session.at_hub():
            return False
        return True

    def _pane_for(self, action: str) -> ImagesPane | CachePane:
        return self.images_pane if PANE_ACTIONS[action] == "images" else self.cache_pane

    def action_quit_key(self) -> None:
        self.exit()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for number, (pane, title) in enumerate(PANES, start=1):
            if pane == "sites" and not self.session.at_hub():
                continue
            yield SystemCommand(
                "Show %s" % title,
                "Switch to the %s screen (key %d)" % (title, number),
                partial(self.action_show_pane, pane),
            )
        yield SystemCommand("Refresh now", "Ask the daemon again (key r)", self.action_refresh)
        yield SystemCommand("Show notifications", "The toasts shown so far, newest first (key m)", self.action_notices)
        if self._active == "events":
            for least, said in (("debug", "every level"), ("warning", "warnings and errors"), ("error", "errors")):
                yield SystemCommand(
                    "Events: show %s" % said,
                    "The least level shown (key l)",
                    partial(self.events_pane.set_level, least),
                )
        # The actions of the screen shown, as its keys offer them (a highlighted row, not read-only,
        # a cache): never an action on a row that is not on screen.
        for action, title, help_text in PALETTE_ACTIONS:
            if not isinstance(screen, ModalScreen) and self._offered(action):
                yield SystemCommand(title, help_text, getattr(self, "action_%s" % action))

    def _offered(self, action: str) -> bool:
        """A pane's action is on offer where its keys are (check_action, without the dialog)."""
        return self._active == PANE_ACTIONS[action] and self._pane_for(action).check_action(action, ()) is True

    # -- the panes' actions, for the keys above and the command palette ---------------------

    def action_import_url(self) -> None:
        self.images_pane.action_import_url()

    def action_copy_to_store(self) -> None:
        self.images_pane.action_copy_to_store()

    def action_delete_from_store(self) -> None:
        self.images_pane.action_delete_from_store()

    def action_delete_image(self) -> None:
        self.images_pane.action_delete_image()

    def action_cache_image(self) -> None:
        self.images_pane.action_cache_image()

    def action_cache_remove(self) -> None:
        self.cache_pane.action_cache_remove()

    def action_cache_clear(self) -> None:
        self.cache_pane.action_cache_clear()


def make_app(
    config: TuiConfig, client: DaemonApi | None = None, clock: Callable[[], float] = time.time
) -> ApplianceTui:
    """The app for `edge-tui` and for tests; `client` replaces the HTTP client and `clock` the
    wall clock (snapshot tests)."""
    return ApplianceTui(config, client if client is not None else HttpDaemonClient(config), clock)
