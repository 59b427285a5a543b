"""A bounded, in-memory log of what the daemon did, for operators (the TUI's Events screen).

It is fed by a logging handler on the `appliance` logger, so every module's INFO-and-above
log line is an event and no module needs a second reporting call."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from appliance import policy
from appliance.auth import Context
from appliance.clock import timestamp


@dataclass(frozen=True)
class Event:
    seq: int
    time: str
    level: str
    source: str
    message: str


class EventLog(logging.Handler):
    def __init__(self, capacity: int = 2000) -> None:
        super().__init__(level=logging.INFO)
        self._events: deque[Event] = deque(maxlen=capacity)
        self._seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad log call must not break the daemon
            message = str(record.msg)
        self._seq += 1
        stamp = timestamp(record.created)
        self._events.append(Event(self._seq, stamp, record.levelname.lower(), record.name, message))

    def for_operator(self, ctx: Context) -> EventLog:
        """This log, for a caller allowed to read it (`edge:events`)."""
        policy.enforce(ctx, "edge:events")
        return self

    def since(self, seq: int, limit: int = 500) -> list[Event]:
        """Events newer than `seq`, oldest first (at most `limit`, the newest ones)."""
        newer = [e for e in self._events if e.seq > seq]
        return newer[-limit:]

    def attach(self) -> None:
        logging.getLogger("appliance").addHandler(self)
        logging.getLogger("appliance").setLevel(min(logging.getLogger("appliance").getEffectiveLevel(), logging.INFO))

    def detach(self) -> None:
        logging.getLogger("appliance").removeHandler(self)
