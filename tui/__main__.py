"""edge-tui: the operator UI for one Edge Image Appliance daemon."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tui.app import make_app
from tui.config import TuiConfig, default_socket
from tui.theme import default_state_file


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-tui",
        description="Operator UI for the Edge Image Appliance daemon",
        epilog="Theme: ansi-dark (the terminal's 16 colours) unless TEXTUAL_THEME names another for this run; "
        "one chosen in the command palette (ctrl+p, Theme) is remembered in "
        "$XDG_STATE_HOME/edge-tui/state.json (default ~/.local/state/edge-tui/state.json).",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="daemon API, http://host:port (or unix:PATH); default: the local Unix socket")
    where.add_argument(
        "--socket",
        help="the daemon's Unix socket (default: $EDGE_APPLIANCE_SOCKET, else "
        "./var/appliance.sock if it exists, else /var/lib/edge-appliance/appliance.sock)",
    )
    token = p.add_mutually_exclusive_group()
    token.add_argument(
        "--token", help="admin token sent as X-Auth-Token (not needed on the socket as root or the daemon's user)"
    )
    token.add_argument("--token-file", type=Path, help="read the token from this file")
    p.add_argument("--read-only", action="store_true", help="hide every action that changes the daemon")
    p.add_argument("--refresh", type=float, default=1.5, metavar="SECONDS", help="poll interval (default 1.5)")
    return p


def config_from_args(argv: list[str] | None = None) -> TuiConfig:
    args = _parser().parse_args(argv)
    token = args.token
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise SystemExit("edge-tui: cannot read the token file: %s" % exc) from None
    url: str | None = args.url
    socket: str | None = args.socket
    if url is not None and url.startswith("unix:"):
        socket = url[len("unix:") :]
        url = None
    if url is None and socket is None:
        socket = default_socket()
    if args.refresh <= 0:
        raise SystemExit("edge-tui: --refresh must be positive")
    return TuiConfig(
        url=url,
        socket=socket,
        token=token or None,
        read_only=args.read_only,
        refresh_seconds=args.refresh,
        state_file=str(default_state_file()),
    )


def main(argv: list[str] | None = None) -> int:
    """0 after a normal quit; non-zero (Textual's 1) when the app ended on an error, whose
    traceback Textual has printed."""
    app = make_app(config_from_args(argv))
    app.run()
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
