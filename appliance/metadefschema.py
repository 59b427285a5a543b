"""Metadata definition bodies checked as Glance's /v2/schemas/metadefs/* documents check them: an
unknown or read-only attribute, a wrong type or a missing name is refused with what was wrong, in
Glance's words ("Provided object does not match schema ...")."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from appliance.errors import BadRequest, Conflict, Forbidden
from appliance.text import check_text

JSON_TYPES = ("array", "boolean", "integer", "number", "object", "string", None)
READ_ONLY = ("self", "schema", "created_at", "updated_at")

Json = dict[str, Any]


def _fail(where: str, problem: str) -> BadRequest:
    """Glance's words for a body its schema refuses; `where`: the path to the wrong part."""
    schema = re.split(r"[.\[ ]", where, maxsplit=1)[0]
    inner = where[len(schema) :].lstrip(".")
    return BadRequest(
        "Provided object does not match schema '%s': %s%s" % (schema, inner + ": " if inner else "", problem)
    )


def _object(value: Any, where: str) -> Json:
    if not isinstance(value, dict):
        raise _fail(where, "expected a JSON object, got %s" % type(value).__name__)
    return value


def _string(value: Any, where: str, max_length: int | None = None, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(where, "expected a string, got %s" % type(value).__name__)
    if required and not value.strip():
        raise _fail(where, "must not be empty")
    if max_length is not None and len(value) > max_length:
        raise _fail(where, "longer than %d characters" % max_length)
    # Names travel in URLs, Location headers, logs and the TUI: no control characters at all;
    # descriptions and other free text may hold tabs and line breaks.
    return check_text(where, value, len(value), multiline=not required)


def _strings(value: Any, where: str, *, unique: bool = False) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, "expected an array of strings")
    for i, item in enumerate(value):
        check_text("%s[%d]" % (where, i), item, len(item))
    if unique and len(set(value)) != len(value):
        raise _fail(where, "has non-unique elements")
    return list(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(where, "expected an integer of 0 or more")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(where, "expected a number")
    return value


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "expected true or false")
    return value


def _json_type(value: Any, where: str) -> Any:
    if value not in JSON_TYPES:
        raise _fail(where, "%r is not one of %s" % (value, ", ".join(str(t) for t in JSON_TYPES if t)))
    return value


def _array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, "expected an array")
    return value


def _items_type(value: Any, where: str) -> Json:
    items = _object(value, where)
    for key in items:
        if key == "type":
            _json_type(items[key], where + ".type")
        elif key == "enum":
            _array(items[key], where + ".enum")
    return dict(items)


_PROPERTY_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "title": _string,
    "description": _string,
    "operators": _strings,
    "type": _json_type,
    "required": lambda v, w: _strings(v, w, unique=True),
    "minimum": _number,
    "maximum": _number,
    "maxLength": _count,
    "minLength": _count,
    "pattern": _string,
    "enum": lambda v, w: _array(v, w),
    "readonly": _boolean,
    "default": lambda v, w: v,
    "items": _items_type,
    "maxItems": _count,
    "minItems": _count,
    "uniqueItems": _boolean,
    "additionalItems": _boolean,
}


def check_property(value: Any, where: str, *, named: bool) -> tuple[str | None, Json]:
    """A property's name (when `named`: the body carries it) and its body without the name."""
    prop = _object(value, where)
    body: Json = {}
    name = None
    for key, field in prop.items():
        if key == "name":
            name = _string(field, where + ".name", 255, required=True)
        elif key in _PROPERTY_FIELDS:
            body[key] = _PROPERTY_FIELDS[key](field, "%s.%s" % (where, key))
        else:
            raise _fail(where, "Additional properties are not allowed (%r was unexpected)" % key)
    for key in ("title", "type") + (("name",) if named else ()):
        if key not in prop:
            raise _fail(where, "%r is a required property" % key)
    return name, body


def _properties(value: Any, where: str) -> dict[str, Json]:
    props = _object(value, where)
    checked = {}
    for name, prop in props.items():
        _string(name, where + " name", 255, required=True)
        _, body = check_property(prop, "%s[%r]" % (where, name), named=False)
        checked[name] = body
    return checked


def _allowed(body: Json, allowed: Sequence[str], where: str, *, read_only: Sequence[str] = READ_ONLY) -> None:
    for key in body:
        if key in read_only:
            raise Forbidden("Attribute '%s' is read-only." % key)  # Glance answers 403 to these
        if key not in allowed:
            raise _fail(where, "Additional properties are not allowed (%r was unexpected)" % key)


def _inner(value: Any, where: str) -> Json:
    """An item inside a namespace body: Glance's schema lets its read-only fields through there
    (clients send a shown namespace back), and they are not kept."""
    return {k: v for k, v in _object(value, where).items() if k not in READ_ONLY}


def check_object(value: Any, where: str = "object") -> tuple[str, Json]:
    obj = _object(value, where)
    _allowed(obj, ("name", "description", "required", "properties"), where)
    if "name" not in obj:
        raise _fail(where, "'name' is a required property")
    name = _string(obj["name"], where + ".name", 255, required=True)
    body: Json = {}
    if "description" in obj:
        body["description"] = _string(obj["description"], where + ".description")
    if "required" in obj:
        body["required"] = _strings(obj["required"], where + ".required", unique=True)
    if "properties" in obj:
        body["properties"] = _properties(obj["properties"], where + ".properties")
    return name, body


def check_association(value: Any, where: str = "resource_type_association") -> tuple[str, Json]:
    rta = _object(value, where)
    _allowed(rta, ("name", "prefix", "properties_target"), where, read_only=("created_at", "updated_at"))
    if "name" not in rta:
        raise _fail(where, "'name' is a required property")
    name = _string(rta["name"], where + ".name", 80, required=True)
    body: Json = {
        key: _string(rta[key], "%s.%s" % (where, key), 80) for key in ("prefix", "properties_target") if key in rta
    }
    return name, body


def check_tag(value: Any, where: str = "tag") -> str:
    tag = _object(value, where)
    _allowed(tag, ("name",), where, read_only=("created_at", "updated_at"))
    if "name" not in tag:
        raise _fail(where, "'name' is a required property")
    return _string(tag["name"], where + ".name", 255, required=True)


NS_FIELDS = ("namespace", "display_name", "description", "visibility", "protected", "owner")
NS_CONTENTS = ("resource_type_associations", "properties", "objects", "tags")


def _each(ns: Json, key: str, check: Callable[[Json, str], Any]) -> list[Any]:
    values, where = ns[key], "namespace." + key
    if not isinstance(values, list):
        raise _fail(where, "expected an array")
    return [check(_inner(v, "%s[%d]" % (where, i)), "%s[%d]" % (where, i)) for i, v in enumerate(values)]


def check_namespace(value: Any) -> Json:
    """The namespace's own fields (checked), and its contents as given (checked too)."""
    ns = _object(value, "namespace")
    _allowed(ns, NS_FIELDS + NS_CONTENTS, "namespace")
    if "namespace" not in ns:
        raise _fail("namespace", "'namespace' is a required property")
    checked: Json = {"namespace": _string(ns["namespace"], "namespace.namespace", 80, required=True)}
    if "/" in checked["namespace"]:
        raise _fail("namespace.namespace", "must not contain '/'")
    for key, limit in (("display_name", 80), ("description", 500), ("owner", 255)):
        if key in ns:
            checked[key] = _string(ns[key], "namespace." + key, limit)
    if "visibility" in ns and ns["visibility"] not in ("public", "private"):
        raise _fail("namespace.visibility", "%r is not one of public, private" % (ns["visibility"],))
    if "visibility" in ns:
        checked["visibility"] = ns["visibility"]
    if "protected" in ns:
        checked["protected"] = _boolean(ns["protected"], "namespace.protected")
    if "resource_type_associations" in ns:
        checked["resource_type_associations"] = _each(ns, "resource_type_associations", check_association)
    if "properties" in ns:
        checked["properties"] = _properties(ns["properties"], "namespace.properties")
    if "objects" in ns:
        checked["objects"] = _each(ns, "objects", check_object)
    if "tags" in ns:
        checked["tags"] = _each(ns, "tags", check_tag)
    return checked


def check_tags(value: Any) -> list[str]:
    """A POST .../tags body: its tag names, unique whatever their case (as Glance's are)."""
    doc = _object(value, "tags")
    _allowed(doc, ("tags",), "tags")
    if not isinstance(doc.get("tags"), list):
        raise _fail("tags", "'tags' must be an array of tags")
    names = [check_tag(t, "tags[%d]" % i) for i, t in enumerate(doc["tags"])]
    if len({n.lower() for n in names}) != len(names):
        raise Conflict(
            "Duplicate tag names in the request: %s"
            % ", ".join(sorted({n for n in names if [m.lower() for m in names].count(n.lower()) > 1}))
        )
    return names
