"""Logging to stderr, one line per event: journald-friendly under systemd (a `<N>` priority
prefix the journal understands, no timestamp: the journal adds its own), or JSON lines for log
shippers (`--log-format json`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

# syslog priorities, which journald reads from a "<N>" line prefix.
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = "<%d>%s: %s" % (PRIORITY.get(record.levelno, 6), record.name, record.getMessage())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info).replace("\n", "\n<%d>" % PRIORITY.get(record.levelno, 6))
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + ".%03dZ" % record.msecs,
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body)


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    # aiohttp's access log is one line per request; keep it for debug level only.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
