"""sd_notify over NOTIFY_SOCKET in a few lines; a no-op when not started by systemd."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def notify(message: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
    except OSError:
        return False  # systemd gone or socket unreachable: never fatal for the daemon
    return True


def reloading() -> bool:
    # MONOTONIC_USEC lets systemd match this RELOADING=1 to the reload it asked for.
    return notify("RELOADING=1\nMONOTONIC_USEC=%d" % (time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None if no watchdog is set
    for this process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
