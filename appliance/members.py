"""MemberService: Glance's image members (sharing an image with other projects).

The rules, as Glance applies them:
* only a `shared` image has members (403 "Not allowed to ... members for image X", 404 for a
  show, with the reason "Only shared images have members.");
* the owner (`add_member`, `delete_member`) adds and removes members, up to `image_member_quota`;
* a member sees the image (GET) in any status, and in lists once it has accepted it
  (`member_status`); it sees its own membership only, and changes only its own status
  (`modify_member` with the membership's project as `member_id`);
* what the caller may not look at is missing (404), as in Glance's member repository.

Refusals by the policy carry its message as they are, as Glance's do. At an edge the members of a
hub image are the hub's: they come with the mirrored record, and a change made here is made at the
hub with the caller's Keystone token (the hub decides), or refused (409) for a static token.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from appliance import policy
from appliance.auth import Context
from appliance.catalog import Catalog
from appliance.clock import timestamp
from appliance.errors import BadRequest, Forbidden, NotFound
from appliance.hub.client import HubRejected
from appliance.hub.records import member_from_glance
from appliance.images import ImageService
from appliance.model import MEMBER_PENDING, MEMBER_STATUSES, Image, ImageId, Member
from appliance.text import check_text

log = logging.getLogger(__name__)

# Glance's image_members.member column is 255 characters; a project id is far shorter.
MAX_MEMBER_ID = 255


def shows_members(ctx: Context) -> bool:
    """Edge sites get each image record with its members: they decide who sees a shared image
    at the site. Nobody else does (Glance's image shape has no members)."""
    return policy.SITE_ROLE in ctx.roles


def _check_shared(image: Image, refusal: str) -> None:
    """Glance's first check of every member request; `refusal`: what it says on a non-shared image."""
    if image.visibility != "shared":
        raise Forbidden(refusal)


ONLY_SHARED = "Only shared images have members."
NO_HUB = object()  # _at_hub's answer for an image of this site (the hub may answer None: a 204)


class MemberService:
    def __init__(self, catalog: Catalog, images: ImageService) -> None:
        self._catalog = catalog
        self._images = images

    def _now(self) -> str:
        return timestamp(self._images.clock.now())

    async def _at_hub(self, ctx: Context, image: Image, method: str, path: str, body: Any = None) -> Any:
        """A member write to a hub image, made at the hub with the caller's token (the hub decides;
        the record and its members are then refreshed here): the hub's answer, or NO_HUB for an
        image of this site. A caller without a token to forward is refused (ImageService.at_hub)."""
        at_hub = await self._images.at_hub(ctx, image)
        if at_hub is None:
            return NO_HUB
        hub, token = at_hub
        doc = await hub.change_members(token, image.id, method, "/v2/images/%s/members%s" % (image.id, path), body)
        log.info("image %s: %s of members made at the hub for %s/%s", image.id, method, ctx.project, ctx.user)
        return doc

    async def _image(self, ctx: Context, image_id: str) -> Image:
        try:
            return await self._images.find(ctx, image_id)
        except NotFound:
            raise NotFound("Image %s not found." % image_id) from None  # Glance's words on member routes

    def _visible_members(self, ctx: Context, image: Image) -> list[Member]:
        # Glance's member repository: the owner (and an administrator) sees every member, a
        # member only itself.
        if policy.sees_every_image(ctx) or image.owner == ctx.project:
            return list(image.members)
        return [m for m in image.members if m.member_id == ctx.project]

    def _lookup(self, ctx: Context, image: Image, member_id: str) -> Member:
        policy.enforce(ctx, "get_member", policy.caller_image_target(ctx, image))
        found = next((m for m in self._visible_members(ctx, image) if m.member_id == member_id), None)
        if found is None:
            raise NotFound("%s not found in the member list of the image %s." % (member_id, image.id))
        return found

    async def list(self, ctx: Context, image_id: str) -> list[Member]:
        image = await self._image(ctx, image_id)
        _check_shared(image, "Not allowed to list members for image %s: %s" % (image.id, ONLY_SHARED))
        policy.enforce(ctx, "get_members", policy.caller_image_target(ctx, image))
        return self._visible_members(ctx, image)

    async def get(self, ctx: Context, image_id: str, member_id: str) -> Member:
        image = await self._image(ctx, image_id)
        try:
            _check_shared(image, ONLY_SHARED)
            return self._lookup(ctx, image, member_id)
        except Forbidden as exc:
            raise NotFound(str(exc)) from None  # Glance: a refusal here reads as missing, leaking nothing

    async def add(self, ctx: Context, image_id: str, body: Any) -> Member:
        member_id = _member_from_body(body)
        image = await self._image(ctx, image_id)
        at_hub = await self._at_hub(ctx, image, "POST", "", {"member": member_id})
        if at_hub is not NO_HUB:
            return _hub_member(image.id, at_hub)
        _check_shared(image, "Not allowed to create members for image %s. %s" % (image.id, ONLY_SHARED))
        policy.enforce(ctx, "add_member", policy.caller_image_target(ctx, image))
        stamp = self._now()
        member = Member(image.id, member_id, MEMBER_PENDING, stamp, stamp)
        await self._catalog.add_member(member, self._images.config.limits.image_member_quota)
        log.info("image %s shared with project %s by %s/%s", image.id, member_id, ctx.project, ctx.user)
        return member

    async def update(self, ctx: Context, image_id: str, member_id: str, body: Any) -> Member:
        status = _status_from_body(body)
        image = await self._image(ctx, image_id)
        at_hub = await self._at_hub(ctx, image, "PUT", "/" + quote(member_id, safe=""), {"status": status})
        if at_hub is not NO_HUB:
            return _hub_member(image.id, at_hub)
        _check_shared(image, "Not allowed to update members for image %s. %s" % (image.id, ONLY_SHARED))
        member = self._lookup(ctx, image, member_id)
        # The membership's own project, not the caller's: a member changes only its own status.
        policy.enforce(ctx, "modify_member", {**policy.image_target(image), "member_id": member.member_id})
        if status not in MEMBER_STATUSES:
            raise BadRequest('Incorrect request: Status must be "pending", "accepted" or "rejected".')
        updated = await self._catalog.set_member_status(image.id, member.member_id, status, self._now())
        log.info("image %s: member %s is now %s (by %s/%s)", image.id, member.member_id, status, ctx.project, ctx.user)
        found = updated.membership(member.member_id)
        if found is None:  # removed between the two statements: as if it had not been found
            raise NotFound("%s not found in the member list of the image %s." % (member.member_id, image.id))
        return found

    async def delete(self, ctx: Context, image_id: str, member_id: str) -> None:
        image = await self._image(ctx, image_id)
        if await self._at_hub(ctx, image, "DELETE", "/" + quote(member_id, safe="")) is not NO_HUB:
            return
        _check_shared(image, "Not allowed to delete members for image %s. %s" % (image.id, ONLY_SHARED))
        member = self._lookup(ctx, image, member_id)
        policy.enforce(ctx, "delete_member", policy.caller_image_target(ctx, image))
        await self._catalog.remove_member(image.id, member.member_id, self._now())
        log.info(
            "image %s no longer shared with project %s (by %s/%s)", image.id, member.member_id, ctx.project, ctx.user
        )


def _hub_member(image_id: ImageId, doc: Any) -> Member:
    try:
        return member_from_glance(image_id, doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise HubRejected("the hub answered a member change with something else than a member (%s)" % exc) from None


def _member_from_body(body: Any) -> str:
    """Glance's create-member body `{"member": "<project id>"}`, with its messages."""
    if not isinstance(body, dict):
        raise BadRequest('Expected a member in the form: {"member": "image_id"}')
    if "member" not in body:
        raise BadRequest("Member to be added not specified")
    member_id = body["member"]
    if not member_id:
        raise BadRequest("Member can't be empty")
    if not isinstance(member_id, str):
        raise BadRequest("Member must be a project ID (a string), got %s" % type(member_id).__name__)
    return check_text("Member", member_id, MAX_MEMBER_ID)


def _status_from_body(body: Any) -> Any:
    """Glance's update-member body `{"status": "..."}`; the value is checked after the lookup, as Glance does."""
    if not isinstance(body, dict):
        raise BadRequest('Expected a status in the form: {"status": "status"}')
    if "status" not in body:
        raise BadRequest("Status not specified")
    return body["status"]
