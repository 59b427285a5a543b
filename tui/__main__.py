"""edge-tui entry point. The full operator UI arrives with its own issue; for now it shows
where the daemon is and how many images it serves."""

from __future__ import annotations

import argparse
import sys

from textual.app import App, ComposeResult
from textual.widgets import Footer, Header, Static


class PlaceholderApp(App[None]):
    TITLE = "Edge Image Appliance"
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Daemon: %s\n\nThe operator screens (stores, queues, locations) are not built yet." % self._url)
        yield Footer()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-tui")
    p.add_argument("--url", default="unix:var/appliance.sock", help="daemon API (default: the local Unix socket)")
    args = p.parse_args(argv)
    PlaceholderApp(args.url).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
