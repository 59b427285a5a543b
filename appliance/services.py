"""The composition root: builds every service from a Config (used by the CLI and the tests)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from appliance.auth import Authenticator
from appliance.catalog import Catalog
from appliance.config import Config
from appliance.images import ImageService
from appliance.stores.filesystem import FilesystemStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    config: Config
    catalog: Catalog
    stores: dict[str, FilesystemStore]
    images: ImageService
    auth: Authenticator


@asynccontextmanager
async def open_services(config: Config) -> AsyncIterator[Services]:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    stores = {
        s.name: FilesystemStore(s.name, config.path(s.path), thin_provisioning=s.thin_provisioning, description=s.description)
        for s in config.stores.stores
    }
    for store in stores.values():
        store.prepare()
    auth = Authenticator.from_config(config)
    async with Catalog.open(config.path(config.catalog.path)) as catalog:
        images = ImageService(config, catalog, stores)
        await images.recover()
        yield Services(config=config, catalog=catalog, stores=stores, images=images, auth=auth)
