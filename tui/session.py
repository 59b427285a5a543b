"""The session with one daemon, shared by the app and the panes that act: the client, whether
the daemon may be changed (--read-only), and the site as last polled. Only the app writes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tui.client import DaemonApi

Json = dict[str, Any]


def cache_enabled(status: Json) -> bool:
    cache = status.get("cache")
    return bool(cache and cache.get("enabled"))


def is_hub(status: Json) -> bool:
    return (status.get("site") or {}).get("role") == "hub"


@dataclass
class Session:
    client: DaemonApi
    read_only: bool
    status: Json = field(default_factory=dict)
    sites: list[Json] | None = None  # on a hub, once loaded
    # The TUI sends a token (--url with a token); over the Unix socket it has none to forward.
    has_token: bool = False
    # Who a token refused the status is (GET /v2/edge/whoami), and the site it reached.
    whoami: Json = field(default_factory=dict)

    def at_hub(self) -> bool:
        """This is a hub, as the status says, or for a token refused the status, as whoami says."""
        return is_hub(self.status) or is_hub(self.whoami)

    def own_stores(self) -> list[str]:
        """This site's stores (not the hub's `central`, not edge sites)."""
        return [str(s.get("id")) for s in self.status.get("stores") or []]

    def hub_url(self) -> str | None:
        """At an edge with a hub, the hub's URL; else None."""
        hub = self.status.get("hub") or {}
        return str(hub.get("url") or "?") if hub.get("configured") and not is_hub(self.status) else None

    def store_targets(self) -> list[tuple[str, str]]:
        """Where copy-image can send an image, (name, description): this site's stores, then on a
        hub its edge sites, at an edge with a hub the hub itself (`central`)."""
        targets = [(str(s.get("id")), str(s.get("description") or "")) for s in self.status.get("stores") or []]
        hub = self.status.get("hub") or {}
        if is_hub(self.status):
            targets += [
                (str(s["name"]), "edge site, %s" % ("online" if s.get("online") else "offline"))
                for s in self.sites or ()
            ]
        elif hub.get("configured"):
            targets.append(("central", "the hub %s: sends an image made here to it" % hub.get("url", "")))
        return targets
