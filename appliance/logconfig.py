"""Logging to stderr, one line per event: journald-friendly under systemd (a `<N>` priority
prefix the journal understands, no timestamp: the journal adds its own), or JSON lines for log
shippers (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable

from appliance.clock import timestamp

# syslog priorities, which journald reads from a "<N>" line prefix.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = "<%d>%s: %s" % (PRIORITY.get(record.levelno, 6), record.name, record.getMessage())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info).replace(
                "\n", "\n<%d>" % PRIORITY.get(record.levelno, 6)
            )
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": timestamp(record.created).removesuffix("Z") + ".%03dZ" % record.msecs,  # the API's shape, plus ms
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


class RepeatFilter(logging.Filter):
    """Bounds repeated warnings and errors: of records with the same logger, level, message
    template (its first line) and exception type, `burst` per `interval` seconds pass; the
    first to pass after that carries the count of those left out. A flood (accept errors on
    EMFILE, a failing disk, refused connections) then costs a few lines a minute, not the disk."""

    MAX_KEYS = 1000

    def __init__(self, interval: float, burst: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.burst = burst
        self._clock = clock
        # key → [window start, records in the window, records left out]
        self._seen: dict[tuple[object, ...], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.interval <= 0:
            return True
        key = (
            record.name,
            record.levelno,
            str(record.msg).split("\n", 1)[0][:200],
            record.exc_info[0] if record.exc_info else None,
        )
        now = self._clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.interval:
            left_out = int(entry[2]) if entry is not None else 0
            if entry is None and len(self._seen) >= self.MAX_KEYS:
                self._forget(now)
            self._seen[key] = [now, 1, 0]
            if left_out:
                suffix = " [%d more like this in the last %d s not logged]" % (left_out, self.interval)
                record.msg = str(record.msg) + suffix  # no "%" in it: safe with or without args
            return True
        entry[1] += 1
        if entry[1] <= self.burst:
            return True
        entry[2] += 1
        return False

    def _forget(self, now: float) -> None:
        for key in [k for k, e in self._seen.items() if now - e[0] >= self.interval] or list(self._seen):
            del self._seen[key]


def configure_logging(level: str = "info", fmt: str = "auto", repeat_interval: float = 60) -> None:
    """fmt: "json", "journal", "text", or "auto" (journal under systemd, else text)."""
    if fmt == "auto":
        fmt = "journal" if "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ else "text"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "journal":
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter(repeat_interval))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_repeat_interval(interval: float) -> None:
    """Apply a reloaded [logging] repeat_interval to the handlers configure_logging set up."""
    for handler in logging.getLogger().handlers:
        for filt in handler.filters:
            if isinstance(filt, RepeatFilter):
                filt.interval = interval


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    # aiohttp's access log is one line per request; keep it for debug level only.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
