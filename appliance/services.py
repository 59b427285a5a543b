"""The composition root: builds every service from a Config (used by the CLI and the tests)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import keystone, policy
from appliance.auth import Authenticator
from appliance.bundles.inbox import Inbox
from appliance.bundles.service import BundleService
from appliance.cache import ImageCache
from appliance.cachefiles import EntryPool, reconcile
from appliance.catalog import Catalog
from appliance.clock import SYSTEM_CLOCK, Clock
from appliance.config import Config
from appliance.errors import IdentityUnavailable
from appliance.events import EventLog
from appliance.hub.client import HubClient, read_token
from appliance.hub.lookup import HubRecords
from appliance.hublink import HubLink
from appliance.images import ImageService
from appliance.imports import ImportService, build_steps, build_uri_filter
from appliance.keystone import KeystoneAuth
from appliance.members import MemberService
from appliance.metadefs import MetadefService
from appliance.metrics import Metrics
from appliance.scrubber import Scrubber
from appliance.sites import SiteService
from appliance.stores import open_store
from appliance.stores.base import ImageStore

log = logging.getLogger(__name__)

# Where the hub's URL found in the Keystone catalog is remembered (relative to the state dir).
HUB_ENDPOINT_FILE = "hub-endpoint"


@dataclass
class Services:
    config: Config
    catalog: Catalog
    stores: dict[str, ImageStore]
    images: ImageService
    imports: ImportService
    auth: Authenticator
    events: EventLog
    metrics: Metrics
    scrubber: Scrubber
    sites: SiteService
    cache: ImageCache | None  # None: no hub, or [cache] enabled = false
    bundles: BundleService
    inbox: Inbox | None  # None: no [inbox] dir
    members: MemberService
    metadefs: MetadefService
    hub: HubLink | None = None  # None: no [hub] url (or this is the hub)
    hub_records: HubRecords | None = None  # None: no [hub] url

    def background_loops(self) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
        loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = [("loop-lag", self.metrics.loop_lag.run)]
        if self.config.scrubber.enabled:
            loops.append(("scrubber", self.scrubber.run))
        if self.inbox is not None:
            loops.append(("inbox", self.inbox.run))
        if self.cache is not None:
            loops.append(("cache-prefetcher", self.cache.run_prefetcher))
            loops.append(("cache-cleaner", self.cache.run_cleaner))
        if self.hub is not None:
            loops.append(("hub-mirror", self.hub.run_mirror))
            loops.append(("hub-heartbeat", self.hub.run_heartbeat))
            loops.append(("hub-sync", self.hub.run_sync))
            loops.append(
                (
                    "metadefs-mirror",
                    functools.partial(self.metadefs.run_mirror, self.hub.client, self.config.hub.reconcile_interval),
                )
            )
        return loops


# Config parts that only a restart applies; the rest changes live on reload.
RESTART_ONLY = ("site", "stores", "catalog", "state_dir")
RESTART_ONLY_API = (
    "host",
    "port",
    "unix_socket",
    "public_url",
    "header_timeout",
    "idle_timeout",
    "min_body_rate",
    "body_rate_window",
    "body_timeout",
    "max_connections",
    "unix_max_connections",
)


def reload_services(services: Services, new: Config) -> list[str]:
    """Apply a re-read config to running services. Returns what changed but needs a restart
    (reported to the operator, never silently ignored)."""
    pending = [name for name in RESTART_ONLY if getattr(new, name) != getattr(services.config, name)]
    pending += [
        "api.%s" % name for name in RESTART_ONLY_API if getattr(new.api, name) != getattr(services.config.api, name)
    ]
    if new.imports.staging_dir != services.config.imports.staging_dir:
        pending.append("import.staging_dir")
    if new.inbox != services.config.inbox:
        pending.append("inbox")
    rules = policy.load(new)  # a policy file with an error refuses the whole reload
    services.bundles.apply_config(new)  # first: unreadable trusted keys refuse the whole reload
    policy.install(rules)
    services.auth.replace_with(Authenticator.from_config(new, keystone.from_config(new.keystone)))
    services.images.apply_config(new)
    services.imports.apply_config(new)
    services.sites.apply_config(new)
    if services.cache is not None:
        services.cache.apply_config(new)
    if services.hub_records is not None:
        services.hub_records.apply_config(new.hub)
    if new.cache.dir != services.config.cache.dir or new.cache.enabled != services.config.cache.enabled:
        pending.append("cache.dir/enabled")
    if new.cache.store != services.config.cache.store:
        pending.append("cache.store")
    if services.hub is not None:
        services.hub.apply_config(new)
    if new.hub.url != services.config.hub.url:
        pending.append("hub.url")
    services.scrubber.apply_settings(
        interval=new.scrubber.interval, rate_bytes_per_s=new.scrubber.rate_mib_per_s * float(1 << 20)
    )
    if new.scrubber.enabled != services.config.scrubber.enabled:
        pending.append("scrubber.enabled")
    services.config = new
    return pending


@asynccontextmanager
async def open_services(config: Config, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[Services]:
    """Every service of `config`; `clock`: the time they keep (tests pass their own)."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    rules = policy.load(config)  # a policy file with an error refuses the start
    events = EventLog()
    metrics = Metrics()
    events.attach()
    previous_rules = policy.install(rules)
    try:
        stores = {s.name: open_store(s, config.path(s.path)) for s in config.stores.stores}
        identity = keystone.from_config(config.keystone, clock)
        auth = Authenticator.from_config(config, identity)
        async with Catalog.open(config.path(config.catalog.path)) as catalog:
            # A hub publishes its changes (deletions included) for the edges to follow.
            await catalog.keep_change_feed(config.site.role == "hub", str(uuid.uuid4()))
            client = await _hub_client(config, identity)
            records = HubRecords(client, catalog, config.hub) if client is not None else None
            cache: ImageCache | None = None  # bytes only: none without a hub or when disabled
            if client is not None and records is not None and config.cache.enabled:
                cache = ImageCache(
                    config.cache,
                    config.hub,
                    config.path(config.cache.dir),
                    catalog,
                    client,
                    records,
                    metrics=metrics,
                    entries=_cache_pool(stores[config.cache.store]) if config.cache.store else None,
                )
                await cache.start()
            else:  # no cache, but files from when it was on: those of deleted images go
                await reconcile(config.path(config.cache.dir), catalog)
            sites = SiteService(config, catalog, stores, clock=clock)
            await sites.load()
            images = ImageService(config, catalog, stores, cache, sites=sites, hub_records=records, clock=clock)
            images.signatures.use_keystone(lambda: auth.keystone)  # Barbican: the catalog, the own token
            members = MemberService(catalog, images)
            # At an edge with a hub the definitions are the hub's, mirrored read-only.
            metadefs = MetadefService(catalog, hub=client, clock=clock)
            hub = (
                HubLink(config, catalog, stores, cache, images, client, records, metrics, clock=clock)
                if client is not None and records is not None
                else None
            )
            imports = ImportService(
                config,
                catalog,
                dict(stores),
                images,
                build_steps(config),
                build_uri_filter(config),
                sites=sites,
                hub=hub,
                observe_plugin=lambda name, secs: metrics.plugin_seconds.labels(name).observe(secs),
            )
            scrubber = Scrubber(
                catalog,
                stores,
                interval=config.scrubber.interval,
                rate_bytes_per_s=config.scrubber.rate_mib_per_s * float(1 << 20),
                on_checked=metrics.scrub_checked.inc,
                on_mismatch=metrics.scrub_mismatches.inc,
                cache=cache,
                repair=hub.pins.pin if hub is not None else None,
                clock=clock,
            )
            bundles = BundleService(config, catalog, stores, images)
            inbox = (
                Inbox(
                    config.path(config.inbox.dir),
                    store=config.inbox.store,
                    settle_seconds=config.inbox.settle_seconds,
                    bundles=bundles,
                    images=images,
                    imports=imports,
                )
                if config.inbox.dir
                else None
            )
            await imports.recover()  # first: interrupted imports release their images
            await bundles.recover()
            await images.recover()
            try:
                yield Services(
                    config=config,
                    catalog=catalog,
                    stores=stores,
                    images=images,
                    imports=imports,
                    auth=auth,
                    events=events,
                    metrics=metrics,
                    scrubber=scrubber,
                    cache=cache,
                    bundles=bundles,
                    inbox=inbox,
                    members=members,
                    metadefs=metadefs,
                    sites=sites,
                    hub=hub,
                    hub_records=records,
                )
            finally:
                await imports.close()
                for store in stores.values():
                    await asyncio.to_thread(store.close)
                if cache is not None:
                    await cache.close()  # its fills first: they read through the client
                if client is not None:
                    await client.close()
                await auth.close()  # last: the hub client takes its tokens from Keystone
    finally:
        events.detach()  # also when start-up fails
        policy.install(previous_rules)


def _cache_pool(store: ImageStore) -> EntryPool:
    """The cache's entries in an RBD store's pool (the config allows rbd stores only)."""
    from appliance.stores.rbd import RbdStore  # Ceph's bindings: only when an RBD store is configured

    assert isinstance(store, RbdStore)
    return EntryPool(store)


async def _hub_client(config: Config, keystone: KeystoneAuth | None) -> HubClient | None:
    """The hub client, when `[hub] url` names one, or (`[hub] keystone`) the Keystone catalog."""
    if not config.hub.keystone:
        return HubClient(config.hub, read_token(config.hub, config.path)) if config.hub.url else None
    assert keystone is not None  # the config requires [keystone] auth_url with hub.keystone
    url = config.hub.url or await _catalog_hub_url(config, keystone)
    if not url:
        return None
    return HubClient(dataclasses.replace(config.hub, url=url), "", token_source=keystone)


async def _catalog_hub_url(config: Config, keystone: KeystoneAuth) -> str:
    """The image endpoint of the hub's region in the Keystone catalog, remembered in the state
    dir, so a site that starts while Keystone cannot be reached still knows its hub."""
    remembered = config.path(HUB_ENDPOINT_FILE)
    try:
        url = await keystone.endpoint("image", config.hub.region_name)
    except IdentityUnavailable as exc:
        known = await asyncio.to_thread(_read_text, remembered)
        if known:
            log.warning("hub: %s; using the hub found in the catalog before: %s", exc, known)
        else:
            log.error("hub: %s; no hub link until a start that reaches Keystone", exc)
        return known
    await asyncio.to_thread(_write_text, remembered, url)
    log.info("hub: %s (image endpoint in the Keystone catalog)", url)
    return url


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
