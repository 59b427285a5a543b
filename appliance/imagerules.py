"""The rules for what a client may write into an image record: attribute, property and tag
values, their quotas, and the JSON patch operations that carry them (ImageService applies them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from appliance import policy
from appliance.auth import Context
from appliance.config import FormatsConfig, LimitsConfig
from appliance.errors import BadRequest, Forbidden, TooLarge
from appliance.model import VISIBILITIES, Image
from appliance.text import check_text

# Attributes the server computes; a client setting one gets 403 as in Glance.
READ_ONLY = frozenset(
    {
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "size",
        "virtual_size",
        "status",
        "created_at",
        "updated_at",
        "direct_url",
        "self",
        "file",
        "schema",
        "stores",
    }
)
RESERVED = frozenset({"deleted", "deleted_at", "location", "locations"})
BASE_ATTRIBUTES = (
    frozenset(
        {
            "id",
            "name",
            "visibility",
            "protected",
            "os_hidden",
            "owner",
            "disk_format",
            "container_format",
            "min_disk",
            "min_ram",
            "tags",
        }
    )
    | READ_ONLY
)
MAX_STRING = 255
# Glance's rules for making an image visible beyond its project.
VISIBILITY_RULES = {"public": "publicize_image", "community": "communitize_image"}
JSON_PATCH_OPS = ("add", "replace", "remove")


def check_writable_key(key: Any) -> None:
    if not isinstance(key, str) or not key:
        raise BadRequest("Property names must be non-empty strings")
    if key in READ_ONLY:
        raise Forbidden("Attribute '%s' is read-only." % key)
    if key in RESERVED or key.startswith("os_glance"):
        raise Forbidden("Attribute '%s' is reserved." % key)
    check_text("Property name %r" % key[:64], key, MAX_STRING)


def validate_attribute(ctx: Context, formats: FormatsConfig, key: str, value: Any) -> Any:
    if key == "name":
        if value is not None and not isinstance(value, str):
            raise BadRequest("Invalid value for 'name': expected a string of at most %d characters" % MAX_STRING)
        return value if value is None else check_text("Image name", value, MAX_STRING)
    if key in ("protected", "os_hidden"):
        if not isinstance(value, bool):
            raise BadRequest("Invalid value for '%s': expected true or false, got %r" % (key, value))
        return value
    if key in ("min_disk", "min_ram"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest("Invalid value for '%s': expected a non-negative integer, got %r" % (key, value))
        return value
    if key == "visibility":
        if value not in VISIBILITIES:
            raise BadRequest("Invalid value for 'visibility': %r (allowed: %s)" % (value, ", ".join(VISIBILITIES)))
        if value in VISIBILITY_RULES:
            policy.enforce(ctx, VISIBILITY_RULES[value])
        return value
    if key == "owner":
        if value is not None and (not isinstance(value, str) or len(value) > MAX_STRING):
            raise BadRequest("Invalid value for 'owner'")
        if value != ctx.project:
            policy.check_owner_change(ctx)
        return value
    if key in ("disk_format", "container_format"):
        enabled = formats.disk_formats if key == "disk_format" else formats.container_formats
        if value is not None and value not in enabled:
            raise BadRequest("Invalid value '%s' for '%s': enabled values are %s" % (value, key, ", ".join(enabled)))
        return value
    raise AssertionError(key)  # pragma: no cover


def validate_property(limits: LimitsConfig, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest(
            "Invalid value for property '%s': custom properties must be strings, got %s"
            % (key, type(value).__name__ if isinstance(value, (list, dict)) else repr(value))
        )
    return check_text("Value of property '%s'" % key, value, limits.max_property_value_length, multiline=True)


def validate_tags(limits: LimitsConfig, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise BadRequest("Invalid value for 'tags': expected a list of strings")
    check_tag_quota(limits, len(set(value)))
    for tag in value:
        if not tag:
            raise BadRequest("Invalid tag '': tags are 1 to %d characters" % MAX_STRING)
        check_text("Tag %r" % tag[:64], tag, MAX_STRING)
    return value


# Glance's ImagePropertyLimitExceeded / ImageTagLimitExceeded, answered 413 as there.
def check_property_quota(limits: LimitsConfig, names: Iterable[str]) -> None:
    """The custom properties an image would have; os_glance_* ones are the server's own
    (import progress), which no client can set, and do not count."""
    maximum = limits.image_property_quota
    attempted = sum(1 for name in names if not name.startswith("os_glance"))
    if 0 <= maximum < attempted:
        raise TooLarge(
            "The limit has been exceeded on the number of allowed image properties. "
            "Attempted: %d, Maximum: %d" % (attempted, maximum)
        )


def check_tag_quota(limits: LimitsConfig, attempted: int) -> None:
    maximum = limits.image_tag_quota
    if 0 <= maximum < attempted:
        raise TooLarge(
            "The limit has been exceeded on the number of allowed image tags. "
            "Attempted: %d, Maximum: %d" % (attempted, maximum)
        )


def parse_patch_op(op: Any) -> tuple[str, str, Any]:
    if not isinstance(op, dict):
        raise BadRequest("Each JSON patch operation must be an object with 'op' and 'path'")
    name = op.get("op")
    if name not in JSON_PATCH_OPS:
        raise BadRequest("Unsupported JSON patch operation %r (supported: %s)" % (name, ", ".join(JSON_PATCH_OPS)))
    path = op.get("path")
    if not isinstance(path, str) or not path.startswith("/") or len(path) < 2:
        raise BadRequest("Invalid JSON pointer %r in patch: it must look like '/name'" % (path,))
    parts = path[1:].split("/")
    if len(parts) != 1:
        raise BadRequest("Invalid path %r: nested paths are not supported (only '/<attribute>')" % path)
    key = parts[0].replace("~1", "/").replace("~0", "~")
    allowed = {"op", "path", "value"} if name != "remove" else {"op", "path"}
    extra = set(op) - allowed
    if extra:
        raise BadRequest("Unexpected member(s) %s in '%s' operation" % (", ".join(sorted(extra)), name))
    if name != "remove" and "value" not in op:
        raise BadRequest("Operation '%s' on %s needs a 'value'" % (name, path))
    return name, key, op.get("value")


# What says how to read an image's data: set while it is queued, fixed once data arrives.
FORMAT_ATTRIBUTES = frozenset({"disk_format", "container_format"})


def require_formats(image: Image) -> None:
    """Glance's rule (and its words): no data for an image that does not say how to read it."""
    missing = [key for key in ("disk_format", "container_format") if not getattr(image, key)]
    if missing:
        raise BadRequest(
            "%s %s must be set prior to saving data."
            % ("Property" if len(missing) == 1 else "Properties", ", ".join(missing))
        )
