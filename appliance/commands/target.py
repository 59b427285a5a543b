"""Which daemon (or Glance v2 endpoint) an operator command talks to: the local daemon's Unix
socket by default (root and the daemon's user need no token there), or a URL with a token."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from appliance.config import default_state_dir
from appliance.errors import ConfigError

SOCKET_ENV = "EDGE_APPLIANCE_SOCKET"
SYSTEM_SOCKET = Path("/var/lib/edge-appliance/appliance.sock")  # the systemd unit's StateDirectory


def default_socket(state_dir: Path | None) -> str:
    """$EDGE_APPLIANCE_SOCKET; else <state dir>/appliance.sock, the state dir being --state-dir,
    $STATE_DIRECTORY or ./var when that socket exists, else the system one."""
    if os.environ.get(SOCKET_ENV):
        return os.environ[SOCKET_ENV]
    if state_dir is not None:
        return str(state_dir / "appliance.sock")
    local = default_state_dir() / "appliance.sock"
    return str(local if local.exists() else SYSTEM_SOCKET)


@dataclass(frozen=True)
class Target:
    """An Image API: a base URL, or the daemon's Unix socket (where root and the daemon's user
    need no token)."""

    url: str | None
    socket: str | None
    token: str = ""

    @property
    def base(self) -> str:
        return self.url.rstrip("/") if self.url else "http://localhost"

    def describe(self) -> str:
        return self.url if self.url else "unix:%s" % self.socket

    def session(self) -> aiohttp.ClientSession:
        # No overall timeout (a bundle can take long); a silent peer still fails.
        connector = aiohttp.UnixConnector(path=self.socket) if self.socket else aiohttp.TCPConnector()
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options that say which daemon a command talks to (read by target_from_args)."""
    p.add_argument("--url", help="an appliance or Glance v2 endpoint, http(s)://host:port (default: the local daemon)")
    p.add_argument(
        "--socket",
        help="the local daemon's Unix socket (default: $EDGE_APPLIANCE_SOCKET, else <state dir>/appliance.sock)",
    )
    p.add_argument("--state-dir", type=Path, help="the local daemon's state directory (finds its socket)")
    p.add_argument("--token", help="token sent as X-Auth-Token (not needed on the socket as root or the daemon's user)")
    p.add_argument("--token-file", type=Path, help="read the token from this file")


def target_from_args(args: argparse.Namespace) -> Target:
    token = args.token or ""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError("cannot read the token file %s: %s" % (args.token_file, exc.strerror)) from None
    if args.url:
        return Target(url=args.url, socket=None, token=token)
    return Target(url=None, socket=args.socket or default_socket(args.state_dir), token=token)
