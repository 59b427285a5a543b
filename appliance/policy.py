"""Glance's default policy rules, in one place. Services call these; handlers never decide."""

from __future__ import annotations

from appliance.auth import Context
from appliance.errors import Forbidden, NotFound
from appliance.model import DEACTIVATED, Image


def can_see(ctx: Context, image: Image) -> bool:
    """Member-less rules: public and community images are visible to all, others to the owner."""
    return ctx.is_admin or image.visibility in ("public", "community") or image.owner == ctx.project


def check_visible(ctx: Context, image: Image) -> None:
    # An invisible image is indistinguishable from a missing one.
    if not can_see(ctx, image):
        raise NotFound("No image found with ID %s" % image.id)


def check_modify(ctx: Context, image: Image) -> None:
    check_visible(ctx, image)
    if not ctx.is_admin and image.owner != ctx.project:
        raise Forbidden("You are not permitted to modify image %s: it belongs to another project" % image.id)


def check_visibility_change(ctx: Context, visibility: str) -> None:
    if visibility == "public" and not ctx.is_admin:
        raise Forbidden("You are not authorized to complete publicize_image action.")


def check_owner_change(ctx: Context) -> None:
    if not ctx.is_admin:
        raise Forbidden("Only an administrator may change the owner of an image.")


def check_download(ctx: Context, image: Image) -> None:
    check_visible(ctx, image)
    if image.status == DEACTIVATED and not ctx.is_admin:
        raise Forbidden("The requested image has been deactivated. Image data download is forbidden.")


def check_admin(ctx: Context, action: str) -> None:
    if not ctx.is_admin:
        raise Forbidden("You are not authorized to complete %s action." % action)


# The role of a per-site service token: an `[[auth.tokens]]` entry whose `user` is the site name.
SITE_ROLE = "edge-site"


def check_site(ctx: Context, site: str, action: str) -> None:
    """The sites API: an administrator, or the site's own service token for that site only."""
    if ctx.is_admin or (SITE_ROLE in ctx.roles and ctx.user == site):
        return
    raise Forbidden("You are not authorized to complete %s action for site %s: only an administrator or that "
                    "site's own service token (role %s, user %s) may" % (action, site, SITE_ROLE, site))
