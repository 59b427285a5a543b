"""What the operator UI connects to and how: one frozen value built by `edge-tui`'s arguments
(or by a test) and handed to `make_app`."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_ENV = "EDGE_APPLIANCE_SOCKET"
LOCAL_SOCKET = Path("var/appliance.sock")  # `make run` from a checkout
SYSTEM_SOCKET = Path("/var/lib/edge-appliance/appliance.sock")  # the systemd unit's StateDirectory


@dataclass(frozen=True)
class TuiConfig:
    # Exactly one of the two: an http(s) base URL, or the path of the daemon's Unix socket.
    url: str | None = None
    socket: str | None = None
    token: str | None = None
    read_only: bool = False
    refresh_seconds: float = 1.5
    timeout_seconds: float = 10.0
    # Where the theme the operator picks is remembered (tui.theme); None: not remembered.
    state_file: str | None = None

    def __post_init__(self) -> None:
        if (self.url is None) == (self.socket is None):
            raise ValueError("give either url or socket")

    @property
    def target(self) -> str:
        """Where the daemon is, as shown to the operator."""
        return self.url if self.url is not None else "unix:%s" % self.socket


def default_socket(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """$EDGE_APPLIANCE_SOCKET, else ./var/appliance.sock if it exists, else the system path."""
    environ = os.environ if environ is None else environ
    if environ.get(SOCKET_ENV):
        return environ[SOCKET_ENV]
    local = (cwd or Path.cwd()) / LOCAL_SOCKET
    if local.exists():
        return str(LOCAL_SOCKET) if cwd is None else str(local)
    return str(SYSTEM_SOCKET)
