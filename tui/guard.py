"""The guard on every handler of a worker's result, in the app and in the panes: one view that
cannot show an answer fails alone, and the app goes on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from textual.app import App
from textual.message_pump import MessagePump
from textual.worker import Worker, WorkerState

log = logging.getLogger(__name__)

Handler = TypeVar("Handler", bound=Callable[..., None])
# Per app: the handlers whose last result could not be shown.
_failing: WeakKeyDictionary[App[Any], set[str]] = WeakKeyDictionary()


def while_running(handler: Handler) -> Handler:
    """Results can still arrive while the app shuts down (its widgets already gone): drop them.
    A result that cannot be shown (an answer of an unforeseen shape, a bug in a view) is logged
    and said once in a toast until it shows again; the app and the other views go on."""

    @wraps(handler)
    def guarded(self: MessagePump, *args: Any) -> None:
        app = self.app
        if not app.is_running:
            return
        name = handler.__name__
        failing = _failing.setdefault(app, set())
        try:
            handler(self, *args)
        except Exception as exc:
            log.exception("cannot show the result in %s", name)
            if name not in failing:
                failing.add(name)
                app.notify("%s: %r" % (name, exc), title="Cannot show the daemon's answer", severity="error")
        else:
            failing.discard(name)

    return guarded  # type: ignore[return-value]


def report_worker_error(node: MessagePump, event: Worker.StateChanged) -> None:
    """A worker ended with an exception (workers run with exit_on_error=False): say so."""
    if event.state == WorkerState.ERROR:
        node.app.notify(
            str(event.worker.error), title="Internal error in %s" % event.worker.name, severity="error", markup=False
        )
