"""The composition root: builds every service from a Config (used by the CLI and the tests)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from appliance.auth import Authenticator
from appliance.catalog import Catalog
from appliance.config import Config
from appliance.events import EventLog
from appliance.metrics import Metrics
from appliance.scrubber import Scrubber
from appliance.images import ImageService
from appliance.imports import ImportService, build_steps, build_uri_filter
from appliance.sites import SiteService
from appliance.stores.filesystem import FilesystemStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    catalog: Catalog
    stores: dict[str, FilesystemStore]
    images: ImageService
    imports: ImportService
    auth: Authenticator
    events: EventLog
    metrics: Metrics
    scrubber: Scrubber
    sites: SiteService

    def background_loops(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.config.scrubber.enabled:
            loops.append(("scrubber", self.scrubber.run))
        return loops


# Config parts that only a restart applies; the rest changes live on reload.
RESTART_ONLY = ("site", "stores", "catalog", "state_dir")
RESTART_ONLY_API = ("host", "port", "unix_socket")


def reload_services(services: Services, new: Config) -> list[str]:
    """Apply a re-read config to running services. Returns what changed but needs a restart
    (reported to the operator, never silently ignored)."""
    pending = [name for name in RESTART_ONLY if getattr(new, name) != getattr(services.config, name)]
    pending += ["api.%s" % name for name in RESTART_ONLY_API if getattr(new.api, name) != getattr(services.config.api, name)]
    if new.imports.staging_dir != services.config.imports.staging_dir:
        pending.append("import.staging_dir")
    services.auth.replace_with(Authenticator.from_config(new))
    services.images.apply_config(new)
    services.imports.apply_config(new)
    services.sites.apply_config(new)
    services.scrubber.apply_settings(interval=new.scrubber.interval,
                                     rate_bytes_per_s=new.scrubber.rate_mib_per_s * float(1 << 20))
    if new.scrubber.enabled != services.config.scrubber.enabled:
        pending.append("scrubber.enabled")
    services.config = new
    return pending


@asynccontextmanager
async def open_services(config: Config) -> AsyncIterator[Services]:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog()
    metrics = Metrics()
    events.attach()
    try:
        stores = {
            s.name: FilesystemStore(s.name, config.path(s.path), thin_provisioning=s.thin_provisioning, description=s.description,
                                    require_mount=s.require_mount)
            for s in config.stores.stores
        }
        for store in stores.values():
            store.prepare()
        auth = Authenticator.from_config(config)
        async with Catalog.open(config.path(config.catalog.path)) as catalog:
            sites = SiteService(config, catalog, stores)
            await sites.load()
            images = ImageService(config, catalog, stores, sites=sites)
            imports = ImportService(config, catalog, dict(stores), images, build_steps(config), build_uri_filter(config),
                                    sites=sites,
                                    observe_plugin=lambda name, secs: metrics.plugin_seconds.labels(name).observe(secs))
            scrubber = Scrubber(catalog, stores, interval=config.scrubber.interval,
                                rate_bytes_per_s=config.scrubber.rate_mib_per_s * float(1 << 20),
                                on_checked=metrics.scrub_checked.inc, on_mismatch=metrics.scrub_mismatches.inc)
            await imports.recover()  # first: interrupted imports release their images
            await images.recover()
            try:
                yield Services(config=config, catalog=catalog, stores=stores, images=images, imports=imports, auth=auth,
                               events=events, metrics=metrics, scrubber=scrubber,
                               sites=sites)
            finally:
                await imports.close()
    finally:
        events.detach()  # also when start-up fails
