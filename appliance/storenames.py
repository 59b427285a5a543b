"""Which stores exist here, in Glance's words, decided in one place: the store lists of
`GET /v2/info/stores`, the `stores` an import may name and the store a delete may name.

This site's own stores come first; on a hub, every registered edge site is a store too; on an
edge with a hub, `central` is the hub."""

from __future__ import annotations

from collections.abc import Collection

from appliance.hub.records import HUB_STORE
from appliance.sites import SiteService


class StoreNames:
    def __init__(self, local: Collection[str], sites: SiteService | None = None, *, hub: bool = False) -> None:
        """local: this site's stores, in config order; sites: the hub's edge sites (none on an
        edge); hub: whether this edge has a hub."""
        self._local = tuple(local)
        self._sites = sites
        self._hub = hub

    def local(self) -> tuple[str, ...]:
        """Stores whose bytes are on this site's disks."""
        return self._local

    def sites(self) -> tuple[str, ...]:
        """A hub's registered edge sites (live: a site registers at any time)."""
        return self._sites.names() if self._sites is not None else ()

    def hub(self) -> tuple[str, ...]:
        """`central`, at an edge with a hub: where copy-image sends an image created here."""
        return (HUB_STORE,) if self._hub else ()

    def remote(self) -> tuple[str, ...]:
        """Stores at other sites: edge sites, then the hub."""
        return (*self.sites(), *self.hub())

    def all(self) -> tuple[str, ...]:
        return (*self._local, *self.remote())
