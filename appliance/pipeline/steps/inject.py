"""inject_image_metadata: set operator-chosen properties on imported images (Glance's plugin)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from appliance.pipeline.base import StagedImage, StepContext

log = logging.getLogger(__name__)

# Glance keeps the os_glance namespace for itself (import progress, stores); nothing injects it.
RESERVED_PREFIX = "os_glance"


class InjectMetadata:
    name = "inject_image_metadata"

    def __init__(self, inject: Mapping[str, str], ignore_user_roles: Iterable[str] = ("admin",)) -> None:
        self.inject = dict(inject)
        # Keystone role names are case-insensitive, so "Admin" is admin too.
        self.ignore_user_roles = frozenset(role.casefold() for role in ignore_user_roles)

    async def run(self, staged: StagedImage, ctx: StepContext) -> StagedImage:
        if any(role.casefold() in self.ignore_user_roles for role in ctx.roles):
            log.debug("image %s: importer has an ignored role; no metadata injected", ctx.image_id)
            return staged
        properties = dict(staged.properties)
        for key, value in self.inject.items():
            if key.startswith(RESERVED_PREFIX):
                log.warning("image %s: not injecting reserved property %s", ctx.image_id, key)
                continue
            properties[key] = value
        return staged.evolve(properties=properties)
