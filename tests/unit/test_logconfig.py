"""The repeat filter: a flood of one warning becomes a few lines and a count."""

from __future__ import annotations

import logging

from appliance.logconfig import RepeatFilter


def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("appliance.test", level, __file__, 1, msg, args, None)


def test_repeats_past_the_burst_are_counted_and_reported_once_the_interval_is_over() -> None:
    now = [0.0]
    filt = RepeatFilter(60, burst=5, clock=lambda: now[0])
    passed = [filt.filter(record("accept failed on %s", "fd %d" % i)) for i in range(1000)]
    assert passed.count(True) == 5
    # Another message, and info lines, are never held back by it.
    assert filt.filter(record("disk full on %s", "/srv"))
    assert all(filt.filter(record("accept failed on %s", "x", level=logging.INFO)) for _ in range(20))
    now[0] = 61.0
    later = record("accept failed on %s", "fd 1")
    assert filt.filter(later)
    assert later.getMessage() == "accept failed on fd 1 [995 more like this in the last 60 s not logged]"


def test_interval_zero_logs_everything() -> None:
    filt = RepeatFilter(0)
    assert all(filt.filter(record("same")) for _ in range(100))
