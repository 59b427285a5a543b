"""Who may do what: Glance's secure-RBAC defaults as one table of named rules, and `enforce`.

A rule is data: alternatives (any one may pass), each a tuple of named checks that must all pass,
the shape of an oslo.policy check string such as `role:admin or (role:member and
project_id:%(project_id)s)`. Every check carries its oslo.policy spelling, so the table renders as
a policy file (`check_string`), and an operator's override file can later replace rules by name.

Visibility is not a rule: an image the caller may not see is missing (404), as in Glance, whose
repository filters images before any policy runs. The rules then decide among visible images.
Services call `enforce`; handlers never decide.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from appliance.auth import Context
from appliance.errors import Forbidden, NotFound
from appliance.model import Image

# The role of a per-site service token: an `[[auth.tokens]]` entry whose `user` is the site name.
SITE_ROLE = "edge-site"

# Keystone's default implied roles: admin implies member, member implies reader. A token lists
# its roles explicitly here, so the implication is applied when a role is checked.
IMPLIED = {"admin": ("member", "reader"), "member": ("reader",)}

Target = Mapping[str, str | None]


def roles_of(ctx: Context) -> frozenset[str]:
    """The caller's roles with the implied ones; a role this table does not know adds nothing."""
    return ctx.roles | frozenset(r for role in ctx.roles for r in IMPLIED.get(role, ()))


@dataclass(frozen=True)
class Check:
    spelling: str  # oslo.policy's syntax, with %(key)s taken from the target
    test: Callable[[Context, Target], bool]


def _role(name: str) -> Check:
    return Check("role:%s" % name, lambda ctx, target: name in roles_of(ctx))


CHECKS: dict[str, Check] = {
    "admin": _role("admin"),
    "member": _role("member"),
    "reader": _role("reader"),
    "site": _role(SITE_ROLE),
    # The target's project (an image's owner, a task's owner) is the caller's project.
    "project": Check("project_id:%(project_id)s", lambda ctx, target: target.get("project_id") == ctx.project),
    # Glance's project-or-public-or-community check (there are no image members here, so a shared
    # image is its project's). The visibility filter has already answered 404 for the others.
    "visible": Check(
        '(project_id:%(project_id)s or "public":%(visibility)s or "community":%(visibility)s)',
        lambda ctx, target: (
            target.get("project_id") == ctx.project or target.get("visibility") in ("public", "community")
        ),
    ),
    # The caller's project is the member of the target image (Glance's IMAGE_MEMBER_CHECK).
    "image_member": Check("project_id:%(member_id)s", lambda ctx, target: target.get("member_id") == ctx.project),
    # A site's own service token names the site as its user.
    "site_user": Check("user_id:%(site)s", lambda ctx, target: target.get("site") == ctx.user),
}

Rule = tuple[tuple[str, ...], ...]  # any of (all of checks)

ADMIN: Rule = (("admin",),)
ADMIN_OR_PROJECT_READER: Rule = (("admin",), ("reader", "project"))
ADMIN_OR_PROJECT_MEMBER: Rule = (("admin",), ("member", "project"))
# Glance's *_GET_IMAGE / *_DOWNLOAD_IMAGE: the role on any image the caller sees.
ADMIN_OR_READER_OF_VISIBLE: Rule = (("admin",), ("reader", "visible"))
ADMIN_OR_MEMBER_OF_VISIBLE: Rule = (("admin",), ("member", "visible"))
# What an edge site needs of its hub beyond its own records: every image record (it mirrors
# them for the users of every project at the site) and the bytes of the images it pulls.
SITE_READS: Rule = (("site",),)
# Glance's ADMIN_OR_SHARED_MEMBER and ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER (image members).
ADMIN_OR_SHARED_MEMBER: Rule = (("admin",), ("member", "image_member"))
ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER: Rule = (("admin",), ("reader", "project"), ("reader", "image_member"))
ADMIN_OR_SITE_ITSELF: Rule = (("admin",), ("site", "site_user"))

RULES: dict[str, Rule] = {
    # Images (glance/policies/image.py)
    "get_images": ADMIN_OR_PROJECT_READER + SITE_READS,
    "get_image": ADMIN_OR_READER_OF_VISIBLE + SITE_READS,
    "download_image": ADMIN_OR_MEMBER_OF_VISIBLE + SITE_READS,
    "add_image": ADMIN_OR_PROJECT_MEMBER,
    "modify_image": ADMIN_OR_PROJECT_MEMBER,
    "upload_image": ADMIN_OR_PROJECT_MEMBER,
    "delete_image": ADMIN_OR_PROJECT_MEMBER,
    "deactivate": ADMIN_OR_PROJECT_MEMBER,
    "reactivate": ADMIN_OR_PROJECT_MEMBER,
    "communitize_image": ADMIN_OR_PROJECT_MEMBER,
    "publicize_image": ADMIN,
    "copy_image": ADMIN,
    "get_image_location": ADMIN_OR_PROJECT_READER,
    "delete_image_location": ADMIN,
    # Image members (glance/policies/image.py)
    "add_member": ADMIN_OR_PROJECT_MEMBER,
    "delete_member": ADMIN_OR_PROJECT_MEMBER,
    "get_member": ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
    "get_members": ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
    "modify_member": ADMIN_OR_SHARED_MEMBER,
    # Tasks (glance/policies/tasks.py leaves these to `default`; ours: the task's project)
    "get_task": ADMIN_OR_PROJECT_READER,
    "get_tasks": ADMIN_OR_PROJECT_READER,
    # Discovery and cache (glance/policies/discovery.py, cache.py)
    "stores_info_detail": ADMIN,
    "cache_image": ADMIN,
    "cache_list": ADMIN,
    "cache_delete": ADMIN,
    # The appliance's own
    "edge:site_register": ADMIN_OR_SITE_ITSELF,
    "edge:site_heartbeat": ADMIN_OR_SITE_ITSELF,
    "edge:site_get": ADMIN_OR_SITE_ITSELF,
    "edge:site_assignments": ADMIN_OR_SITE_ITSELF,
    "edge:site_report": ADMIN_OR_SITE_ITSELF,
    "edge:site_list": ADMIN,
    "edge:site_delete": ADMIN,
    "edge:changes": ADMIN + SITE_READS,
    "edge:bundle_import": ADMIN,
    "edge:check_uri": ADMIN,
    "edge:status": ADMIN,
    "edge:events": ADMIN,
}


def check_string(rule: str) -> str:
    """The rule in oslo.policy's syntax, e.g. `role:admin or (role:member and project_id:%(project_id)s)`."""
    parts = [" and ".join(CHECKS[c].spelling for c in group) for group in RULES[rule]]
    return " or ".join(
        p if len(group) == 1 or len(parts) == 1 else "(%s)" % p for p, group in zip(parts, RULES[rule], strict=True)
    )


def allows(ctx: Context, rule: str, target: Target) -> bool:
    return any(all(CHECKS[c].test(ctx, target) for c in group) for group in RULES[rule])


def enforce(ctx: Context, rule: str, target: Target | None = None) -> None:
    """Raise Forbidden naming the rule and what it needs unless `ctx` passes `rule` on `target`.
    A rule without a resource (list, create, admin actions) is checked against the caller's project."""
    target = {"project_id": ctx.project} if target is None else target
    if not allows(ctx, rule, target):
        raise Forbidden(
            "Policy doesn't allow %s to be performed: you are not authorized to complete %s action "
            "(it needs %s)." % (rule, rule, check_string(rule))
        )


def image_target(image: Image) -> Target:
    return {"project_id": image.owner, "owner": image.owner, "visibility": image.visibility}


def enforce_image(ctx: Context, rule: str, image: Image) -> None:
    enforce(ctx, rule, image_target(image))


def sees_every_image(ctx: Context) -> bool:
    """Administrators and edge sites (which mirror every record) see images of every project."""
    return "admin" in ctx.roles or SITE_ROLE in ctx.roles


def can_see(ctx: Context, image: Image) -> bool:
    """Member-less rules: public and community images are visible to all, others to the owner."""
    return sees_every_image(ctx) or image.visibility in ("public", "community") or image.owner == ctx.project


def check_visible(ctx: Context, image: Image) -> None:
    # An invisible image is indistinguishable from a missing one.
    if not can_see(ctx, image):
        raise NotFound("No image found with ID %s" % image.id)


def check_owner_change(ctx: Context) -> None:
    # Glance's code, not a policy rule: only an administrator gives an image to another project.
    if "admin" not in ctx.roles:
        raise Forbidden("Only an administrator may change the owner of an image.")
