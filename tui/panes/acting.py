"""What a pane whose actions change the daemon shares: it asks in a dialog, a worker makes the
call and reports back in a message, the pane says the outcome and asks the app to poll."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from textual import work
from textual.message import Message
from textual.widget import Widget
from textual.worker import Worker

from tui.client import DaemonError, DaemonUnavailable
from tui.guard import report_worker_error, while_running
from tui.messages import ActionFailed, DaemonChanged
from tui.session import Session


class ActingPane(Widget):
    """Mixin base, before the container class: `ImagesPane(ActingPane, Vertical)`."""

    def __init__(self, session: Session, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.session = session

    def changed(self, full: bool) -> None:
        """The daemon changed: poll now (`full`: reload every image)."""
        self.post_message(DaemonChanged(full))

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

    @while_running
    def on_action_failed(self, message: ActionFailed) -> None:
        self.notify(message.message, title="%s failed" % message.action, severity="error", markup=False)

    @while_running
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        report_worker_error(self, event)
