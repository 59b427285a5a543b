"""Image stores: each owns the bytes of the images it holds."""

from __future__ import annotations

from pathlib import Path

from appliance.config import StoreConfig
from appliance.stores.base import ImageStore
from appliance.stores.filesystem import FilesystemStore


def open_store(conf: StoreConfig, path: Path) -> ImageStore:
    """The store a [stores.NAME] table describes, prepared (a store that cannot be reached is
    read-only, not fatal). `path`: a filesystem store's directory, resolved."""
    if conf.type == "rbd":
        # Imported only when configured: Ceph's bindings come from the distribution's packages.
        from appliance.stores.rbd import RbdStore

        rbd_store = RbdStore(
            conf.name,
            pool=conf.pool,
            user=conf.user,
            conf_file=conf.conf_file,
            keyring=conf.keyring,
            chunk_size_mib=conf.chunk_size,
            description=conf.description,
        )
        rbd_store.prepare()
        return rbd_store
    store = FilesystemStore(
        conf.name,
        path,
        thin_provisioning=conf.thin_provisioning,
        description=conf.description,
        require_mount=conf.require_mount,
        min_free_bytes=conf.min_free_bytes,
    )
    store.prepare()
    return store
