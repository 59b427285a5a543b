"""What the workers found out, as past-tense facts; only the handlers of these messages touch
widgets. The poll's go to the app; an action's outcome goes to the pane whose action it was
(bubble=False: it stays there), which says it and posts DaemonChanged up to the app."""

from __future__ import annotations

from typing import Any

from textual.message import Message

Json = dict[str, Any]


class StatusLoaded(Message):
    def __init__(self, status: Json) -> None:
        super().__init__()
        self.status = status


class ConnectionFailed(Message):
    """The status poll failed: the daemon is unreachable, or answered with an error."""

    def __init__(self, reason: str, reachable: bool, status: int | None = None) -> None:
        super().__init__()
        self.reason = reason
        self.reachable = reachable
        self.status = status  # the daemon's HTTP status, when it answered


class AdminOnly(Message):
    """The daemon refuses this token its status (403): the token lacks the admin role. Its
    images and tasks are still polled; `reason` is the daemon's refusal, `whoami` who the token
    is (GET /v2/edge/whoami; empty if the daemon could not say)."""

    def __init__(self, reason: str, whoami: Json) -> None:
        super().__init__()
        self.reason = reason
        self.whoami = whoami


class EventsLoaded(Message):
    def __init__(self, events: list[Json], restarted: bool = False) -> None:
        super().__init__()
        self.events = events
        self.restarted = restarted


class ImagesLoaded(Message):
    """The full image list (every page); `paged`: each of its pages came before, in an
    ImagesPageLoaded (the first load)."""

    def __init__(self, images: list[Json], paged: bool = False) -> None:
        super().__init__()
        self.images = images
        self.paged = paged


class ImagesPageLoaded(Message):
    """One page of the very first load, in table order, so the Images screen fills while the
    rest arrives; an ImagesLoaded with everything follows."""

    def __init__(self, images: list[Json]) -> None:
        super().__init__()
        self.images = images


class ImageDetailLoaded(Message):
    def __init__(self, image_id: str, image: Json | None, locations: list[Json], error: str = "") -> None:
        super().__init__()
        self.image_id = image_id
        self.image = image
        self.locations = locations
        self.error = error


class TasksLoaded(Message):
    def __init__(self, tasks: list[Json], at: float) -> None:
        super().__init__()
        self.tasks = tasks
        self.at = at


class CacheLoaded(Message):
    """The cache view (GET /v2/edge/cache): figures, entries, queue, fills."""

    def __init__(self, view: Json) -> None:
        super().__init__()
        self.view = view


class SitesLoaded(Message):
    """The hub's registered edge sites."""

    def __init__(self, sites: list[Json]) -> None:
        super().__init__()
        self.sites = sites


class ImageDeleted(Message, bubble=False):
    def __init__(self, image_id: str, name: str) -> None:
        super().__init__()
        self.image_id = image_id
        self.name = name


class StoreCopyDeleted(Message, bubble=False):
    def __init__(self, image_id: str, name: str, store: str) -> None:
        super().__init__()
        self.image_id = image_id
        self.name = name
        self.store = store


class CopyStarted(Message, bubble=False):
    def __init__(self, image_id: str, name: str, store: str) -> None:
        super().__init__()
        self.image_id = image_id
        self.name = name
        self.store = store


class ImportStarted(Message, bubble=False):
    def __init__(self, image_id: str, name: str, uri: str) -> None:
        super().__init__()
        self.image_id = image_id
        self.name = name
        self.uri = uri


class UriRefused(Message, bubble=False):
    """The web-download filter refused the URL; nothing was created."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__()
        self.uri = uri
        self.reason = reason


class ActionFailed(Message, bubble=False):
    """An action reached the daemon (or tried to) and failed; `message` is the daemon's."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__()
        self.action = action
        self.message = message


class CacheQueued(Message, bubble=False):
    """An image was queued for caching; `outcome` is what the cache view said right after:
    "queued", "filling", "cached", or "not queued" (its data is in this site's stores)."""

    def __init__(self, image_id: str, name: str, outcome: str) -> None:
        super().__init__()
        self.image_id = image_id
        self.name = name
        self.outcome = outcome


class CacheRemoved(Message, bubble=False):
    """A cached copy ("cache") or a queued request ("queue") of one image is gone."""

    def __init__(self, image_id: str, name: str, target: str) -> None:
        super().__init__()
        self.image_id = image_id
        self.name = name
        self.target = target


class CacheCleared(Message, bubble=False):
    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target


class DaemonChanged(Message):
    """A pane's action changed the daemon: the app polls now (`full`: reloads every image)."""

    def __init__(self, full: bool) -> None:
        super().__init__()
        self.full = full
