"""MetadefService: Glance's metadata definitions (metadefs) catalog.

Namespaces hold objects, properties, tags and resource type associations; the rules are Glance's:
* a namespace is seen by administrators, by every project when public and by its owner when
  private; one the caller may not see is missing (404), as in Glance's DB layer, and the
  `get_metadef_*` rules decide among the visible ones with the namespace as the target;
* writes follow the `add_/modify_/delete_metadef_*` rules (17.1: administrators only), with the
  namespace's owner as `project_id`; a protected namespace cannot be deleted (403);
* bodies are checked against the /v2/schemas/metadefs/* documents: an unknown or read-only
  attribute, a wrong type or a missing name is refused with what was wrong.

At an edge with a hub the definitions are the hub's: `mirror` copies them (what the site's hub
token sees), and a write is refused (409) naming the hub, where it is to be made.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from appliance import policy
from appliance.auth import Context
from appliance.catalog import Catalog
from appliance.clock import Clock, SystemClock, timestamp
from appliance.errors import BadRequest, Conflict, Forbidden, NotFound, UpstreamUnavailable
from appliance.hub.client import HubClient, HubRejected
from appliance.hub.metadefs import hub_namespaces
from appliance.model import MetadefItem, MetadefNamespace, MetadefResourceType
from appliance.text import check_text

log = logging.getLogger(__name__)

NS_SCHEMA = "/v2/schemas/metadefs/namespace"
OBJECT_SCHEMA = "/v2/schemas/metadefs/object"
NAMESPACES_PATH = "/v2/metadefs/namespaces"
# Glance's namespace list sorts on these (glanceclient's SORT_KEY_VALUES and the DB columns).
SORT_KEYS = ("namespace", "created_at", "updated_at", "display_name", "visibility", "owner")
JSON_TYPES = ("array", "boolean", "integer", "number", "object", "string", None)
READ_ONLY = ("self", "schema", "created_at", "updated_at")

Json = dict[str, Any]


# -- checking bodies (the /v2/schemas/metadefs/* documents) ----------------------------------


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


_NS_FIELDS = ("namespace", "display_name", "description", "visibility", "protected", "owner")
_NS_CONTENTS = ("resource_type_associations", "properties", "objects", "tags")


def _each(ns: Json, key: str, check: Callable[[Json, str], Any]) -> list[Any]:
    values, where = ns[key], "namespace." + key
    if not isinstance(values, list):
        raise _fail(where, "expected an array")
    return [check(_inner(v, "%s[%d]" % (where, i)), "%s[%d]" % (where, i)) for i, v in enumerate(values)]


def check_namespace(value: Any) -> Json:
    """The namespace's own fields (checked), and its contents as given (checked too)."""
    ns = _object(value, "namespace")
    _allowed(ns, _NS_FIELDS + _NS_CONTENTS, "namespace")
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


# -- shapes -------------------------------------------------------------------------------------


def namespace_href(name: str) -> str:
    return "%s/%s" % (NAMESPACES_PATH, name)


def namespace_to_json(ns: MetadefNamespace) -> Json:
    doc: Json = {"namespace": ns.namespace}
    if ns.display_name is not None:
        doc["display_name"] = ns.display_name
    if ns.description is not None:
        doc["description"] = ns.description
    doc.update(
        visibility=ns.visibility,
        protected=ns.protected,
        owner=ns.owner,
        created_at=ns.created_at,
        updated_at=ns.updated_at,
        schema=NS_SCHEMA,
        self=namespace_href(ns.namespace),
    )
    if ns.owner is None:
        del doc["owner"]
    return doc


def object_to_json(item: MetadefItem, prefix: str = "", *, written: bool = False) -> Json:
    """An object as Glance shows it (`required` and `properties` always), or (`written`) as it answers a create or
    an update: with the fields given."""
    doc: Json = {"name": item.name, **({} if written else {"required": [], "properties": {}}), **item.body}
    if prefix:
        doc["properties"] = {prefix + k: v for k, v in item.body.get("properties", {}).items()}
        if "required" in item.body:
            doc["required"] = [prefix + r for r in item.body["required"]]
    doc.update(
        created_at=item.created_at,
        updated_at=item.updated_at,
        schema=OBJECT_SCHEMA,
        self="%s/objects/%s" % (namespace_href(item.namespace), item.name),
    )
    return doc


def property_to_json(item: MetadefItem) -> Json:
    return {"name": item.name, **item.body}


def tag_to_json(item: MetadefItem) -> Json:
    return {"name": item.name, "created_at": item.created_at, "updated_at": item.updated_at}


def association_to_json(item: MetadefItem) -> Json:
    return {"name": item.name, **item.body, "created_at": item.created_at, "updated_at": item.updated_at}


# Glance's words for a missing item (an association is only ever looked up to be removed).
_NOT_FOUND = {
    "object": "Could not find metadata object %s",
    "property": "Could not find property %s",
    "tag": "Could not find metadata tag %s",
    "resource_type": "Failed to find resource type %s to delete",
}


class MetadefService:
    def __init__(self, catalog: Catalog, *, hub_url: str | None = None, clock: Clock | None = None) -> None:
        self._catalog = catalog
        self._hub_url = hub_url  # set at an edge: the definitions are the hub's, mirrored here
        self._clock = clock or SystemClock()

    def _now(self) -> str:
        return timestamp(self._clock.now())

    # -- who sees and changes what ------------------------------------------------------------

    @staticmethod
    def _target(ns: MetadefNamespace) -> Mapping[str, object]:
        return {"project_id": ns.owner, "owner": ns.owner, "visibility": ns.visibility, "namespace": ns.namespace}

    @staticmethod
    def _visible(ctx: Context, ns: MetadefNamespace) -> bool:
        # Edge sites mirror every namespace of their hub, as they do every image record.
        return (
            ns.visibility == "public"
            or ns.owner == ctx.project
            or policy.SITE_ROLE in ctx.roles
            or policy.is_admin(ctx)
        )

    async def _namespace(self, ctx: Context, name: str, rule: str) -> MetadefNamespace:
        """The namespace `ctx` may see (else 404, as if missing) and act on by `rule`."""
        ns = await self._catalog.get_metadef_namespace(name)
        if not self._visible(ctx, ns):
            raise NotFound("The resource could not be found.")  # Glance's words, which name nothing
        policy.enforce(ctx, rule, self._target(ns))
        return ns

    async def _writable(self, ctx: Context, name: str, rule: str) -> MetadefNamespace:
        self._check_local()
        return await self._namespace(ctx, name, rule)

    def _check_local(self) -> None:
        if self._hub_url is not None:
            raise Conflict(
                "Metadata definitions at this edge are mirrored read-only from its hub %s: "
                "make this change at the hub; it reaches this edge at the next mirror round" % self._hub_url
            )

    # -- namespaces ---------------------------------------------------------------------------

    async def list_namespaces(
        self, ctx: Context, params: Mapping[str, str], max_limit: int, default_limit: int
    ) -> Json:
        policy.enforce(ctx, "get_metadef_namespaces")
        sort_key = params.get("sort_key", "created_at")
        if sort_key not in SORT_KEYS:
            raise BadRequest(
                "Invalid sort key: %s. It must be one of the following: %s." % (sort_key, ", ".join(SORT_KEYS))
            )
        sort_dir = params.get("sort_dir", "desc")
        if sort_dir not in ("asc", "desc"):
            raise BadRequest("Invalid sort direction: %s" % sort_dir)
        visibility = params.get("visibility")
        if visibility is not None and visibility not in ("public", "private"):
            raise BadRequest("Invalid visibility value: %s" % visibility)
        limit = default_limit
        if "limit" in params:
            try:
                limit = int(params["limit"])
            except ValueError:
                raise BadRequest("limit param must be an integer") from None
            if limit < 0:
                raise BadRequest("limit param must be positive")
        limit = min(limit, max_limit)
        namespaces = [ns for ns in await self._catalog.metadef_namespaces() if self._visible(ctx, ns)]
        if visibility is not None:
            namespaces = [ns for ns in namespaces if ns.visibility == visibility]
        associations: dict[str, list[MetadefItem]] = {}
        for item in await self._catalog.metadef_items(None, "resource_type"):
            associations.setdefault(item.namespace, []).append(item)
        if params.get("resource_types"):
            wanted = {t.strip() for t in params["resource_types"].split(",")}
            namespaces = [ns for ns in namespaces if wanted & {a.name for a in associations.get(ns.namespace, [])}]
        namespaces.sort(key=lambda ns: (getattr(ns, sort_key) or "", ns.namespace), reverse=sort_dir == "desc")
        if "marker" in params:
            names = [ns.namespace for ns in namespaces]
            if params["marker"] not in names:
                raise NotFound("Metadata definition namespace=%s was not found." % params["marker"])
            namespaces = namespaces[names.index(params["marker"]) + 1 :]
        page = namespaces[:limit]
        docs = []
        for ns in page:
            doc = namespace_to_json(ns)
            if associations.get(ns.namespace):
                doc["resource_type_associations"] = [association_to_json(a) for a in associations[ns.namespace]]
            docs.append(doc)
        query = {k: v for k, v in params.items() if k != "marker"}
        result: Json = {
            "namespaces": docs,
            "first": NAMESPACES_PATH + ("?" + urlencode(query) if query else ""),
            "schema": "/v2/schemas/metadefs/namespaces",
        }
        if page and len(page) == limit:
            result["next"] = "%s?%s" % (NAMESPACES_PATH, urlencode({**query, "marker": page[-1].namespace}))
        return result

    async def create_namespace(self, ctx: Context, body: Any) -> Json:
        checked = check_namespace(body)
        self._check_local()
        owner = checked.get("owner") or ctx.project
        policy.enforce(ctx, "add_metadef_namespace", {"project_id": owner, "owner": owner})
        if owner != ctx.project and not policy.is_admin(ctx):
            raise Forbidden("You are not permitted to create namespace owned by '%s'" % owner)
        now = self._now()
        ns = new_namespace(checked, owner, now, now)
        await self._catalog.create_metadef_namespace(ns, contents(ns.namespace, checked, now))
        log.info("metadefs: namespace %s created by %s/%s", ns.namespace, ctx.project, ctx.user)
        # Glance answers with the contents as they were given (no timestamps or links on them).
        doc = namespace_to_json(ns)
        for key in ("resource_type_associations", "objects"):
            if key in checked:
                doc[key] = [{"name": name, **body} for name, body in checked[key]]
        if "properties" in checked:
            doc["properties"] = checked["properties"]
        if "tags" in checked:
            doc["tags"] = [{"name": name} for name in checked["tags"]]
        return doc

    async def show_namespace(self, ctx: Context, name: str, resource_type: str | None) -> Json:
        ns = await self._namespace(ctx, name, "get_metadef_namespace")
        return await self._detail(ns, resource_type)

    async def _detail(self, ns: MetadefNamespace, resource_type: str | None) -> Json:
        """Glance's namespace show: the namespace with what it holds (each part only when any);
        with a resource type, property names carry that association's prefix."""
        doc = namespace_to_json(ns)
        rtas = await self._catalog.metadef_items(ns.namespace, "resource_type")
        prefix = next((str(a.body.get("prefix") or "") for a in rtas if a.name == resource_type), "")
        if rtas:
            doc["resource_type_associations"] = [association_to_json(a) for a in rtas]
        props = await self._catalog.metadef_items(ns.namespace, "property")
        if props:
            doc["properties"] = {prefix + p.name: p.body for p in props}
        objs = await self._catalog.metadef_items(ns.namespace, "object")
        if objs:
            doc["objects"] = [object_to_json(o, prefix) for o in objs]
        tags = await self._catalog.metadef_items(ns.namespace, "tag")
        if tags:
            doc["tags"] = [{"name": t.name} for t in tags]
        return doc

    async def update_namespace(self, ctx: Context, name: str, body: Any) -> Json:
        checked = check_namespace(body)  # its contents, which clients send back, are left alone
        ns = await self._writable(ctx, name, "modify_metadef_namespace")
        owner = checked.get("owner") or ns.owner
        if owner != ns.owner and not policy.is_admin(ctx):
            raise Forbidden("Only an administrator may change the owner of a namespace.")
        new = replace(
            ns,
            namespace=checked["namespace"],
            display_name=checked.get("display_name"),
            description=checked.get("description"),
            visibility=checked.get("visibility", "private"),
            protected=checked.get("protected", False),
            owner=owner,
            updated_at=self._now(),
        )
        await self._catalog.update_metadef_namespace(name, new)
        return namespace_to_json(new)

    async def delete_namespace(self, ctx: Context, name: str) -> None:
        ns = await self._writable(ctx, name, "delete_metadef_namespace")
        self._check_unprotected(ns)
        await self._catalog.delete_metadef_namespace(name)
        log.info("metadefs: namespace %s deleted by %s/%s", name, ctx.project, ctx.user)

    @staticmethod
    def _check_unprotected(ns: MetadefNamespace) -> None:
        if ns.protected:
            raise Forbidden(
                "Metadata definition namespace %s is protected and cannot be deleted. "
                "(Set protected to false first.)" % ns.namespace
            )

    async def delete_contents(self, ctx: Context, name: str, kind: str) -> None:
        """DELETE .../objects, .../properties or .../tags: every item of that kind."""
        rule = {"tag": "delete_metadef_tags"}.get(kind, "delete_metadef_namespace")
        ns = await self._writable(ctx, name, rule)
        self._check_unprotected(ns)
        await self._catalog.delete_metadef_items(name, kind)

    # -- objects, properties, tags, associations ----------------------------------------------

    async def list_items(self, ctx: Context, name: str, kind: str, rule: str) -> list[MetadefItem]:
        await self._namespace(ctx, name, rule)
        return await self._catalog.metadef_items(name, kind)

    async def get_item(self, ctx: Context, name: str, kind: str, item_name: str, rule: str) -> MetadefItem:
        await self._namespace(ctx, name, rule)
        return await self._find(name, kind, item_name)

    async def _find(self, name: str, kind: str, item_name: str) -> MetadefItem:
        for item in await self._catalog.metadef_items(name, kind):
            if item.name == item_name:
                return item
        raise NotFound("%s (in namespace %s)." % (_NOT_FOUND[kind] % item_name, name))

    async def add_item(self, ctx: Context, name: str, kind: str, item_name: str, body: Json, rule: str) -> MetadefItem:
        await self._writable(ctx, name, rule)
        now = self._now()
        item = MetadefItem(name, kind, item_name, body, now, now)
        await self._catalog.put_metadef_item(item)
        return item

    async def update_item(
        self, ctx: Context, name: str, kind: str, old_name: str, new_name: str, body: Json, rule: str
    ) -> MetadefItem:
        await self._writable(ctx, name, rule)
        old = await self._find(name, kind, old_name)
        item = MetadefItem(name, kind, new_name, body, old.created_at, self._now())
        await self._catalog.put_metadef_item(item, old_name=old_name)
        return item

    async def delete_item(self, ctx: Context, name: str, kind: str, item_name: str, rule: str) -> None:
        ns = await self._writable(ctx, name, rule)
        await self._find(name, kind, item_name)
        if ns.protected:  # Glance: what a protected namespace holds stays with it
            what = {"resource_type": "resource-type-association"}.get(kind, kind)
            raise Forbidden(
                "Metadata definition %s %s is protected and cannot be deleted (namespace %s is protected)."
                % (what, item_name, name)
            )
        if not await self._catalog.delete_metadef_items(name, kind, item_name):
            await self._find(name, kind, item_name)  # gone meanwhile: its NotFound

    async def create_tags(self, ctx: Context, name: str, body: Any, *, append: bool) -> list[MetadefItem]:
        """POST .../tags: the tags given, replacing the namespace's (or added to them)."""
        doc = _object(body, "tags")
        _allowed(doc, ("tags",), "tags")
        if not isinstance(doc.get("tags"), list):
            raise _fail("tags", "'tags' must be an array of tags")
        names = [check_tag(t, "tags[%d]" % i) for i, t in enumerate(doc["tags"])]
        if len({n.lower() for n in names}) != len(names):
            raise Conflict(
                "Duplicate tag names in the request: %s"
                % ", ".join(sorted({n for n in names if [m.lower() for m in names].count(n.lower()) > 1}))
            )
        await self._writable(ctx, name, "add_metadef_tags")
        now = self._now()
        items = [MetadefItem(name, "tag", n, {}, now, now) for n in names]
        if append:
            items = [*await self._catalog.metadef_items(name, "tag"), *items]  # the catalog refuses a clash
        await self._catalog.replace_metadef_items(name, "tag", items)
        return items[-len(names) :] if names else []

    async def resource_types(self, ctx: Context) -> list[MetadefResourceType]:
        policy.enforce(ctx, "list_metadef_resource_types")
        return await self._catalog.metadef_resource_types()

    # -- files and mirrors --------------------------------------------------------------------

    async def export(self, ctx: Context) -> list[Json]:
        """Every namespace `ctx` may read, in Glance's metadefs file format."""
        docs = []
        for ns in await self._catalog.metadef_namespaces():
            if self._visible(ctx, ns) and policy.allows(ctx, "get_metadef_namespace", self._target(ns)):
                docs.append(file_format(await self._detail(ns, None)))
        return docs

    async def run_mirror(self, hub: HubClient, interval: float) -> None:
        """The edge's loop: the hub's namespaces every `interval` seconds (the first at once)."""
        while True:
            try:
                count = await self.mirror_once(hub)
                log.debug("metadefs: %d namespace(s) mirrored from the hub", count)
            except NotFound:
                log.info("metadefs: the hub %s has no metadata definitions API; none mirrored", hub.url)
            except (UpstreamUnavailable, HubRejected, BadRequest, Forbidden) as exc:
                log.warning("metadefs: mirror from the hub failed (next try in %d s): %s", interval, exc)
            await self._clock.sleep(interval)

    async def mirror_once(self, hub: HubClient) -> int:
        """The hub's namespaces as this site's token reads them, with their contents; those the hub
        no longer has go. Returns how many namespaces there are."""
        return await self.replace_all(await hub_namespaces(hub), keep_others=False)

    async def replace_all(self, namespaces: Sequence[Json], *, keep_others: bool) -> int:
        """Puts each namespace document (a show's shape) in place with its contents; without
        `keep_others`, namespaces not among them go (a mirror). Returns how many were written."""
        names = set()
        now = self._now()
        for doc in namespaces:
            checked = check_namespace({k: v for k, v in doc.items() if k in _NS_FIELDS + _NS_CONTENTS})
            created, updated = str(doc.get("created_at") or now), str(doc.get("updated_at") or now)
            ns = new_namespace(checked, checked.get("owner"), created, updated)
            names.add(ns.namespace)
            await self._catalog.replace_metadef_namespace(ns, contents(ns.namespace, checked, now))
        if not keep_others:
            for ns in await self._catalog.metadef_namespaces():
                if ns.namespace not in names:
                    await self._catalog.delete_metadef_namespace(ns.namespace)
        return len(names)


def new_namespace(checked: Json, owner: str | None, created_at: str, updated_at: str) -> MetadefNamespace:
    """A checked namespace body as a record, with Glance's defaults (private, unprotected)."""
    return MetadefNamespace(
        namespace=checked["namespace"],
        display_name=checked.get("display_name"),
        description=checked.get("description"),
        visibility=checked.get("visibility", "private"),
        protected=checked.get("protected", False),
        owner=owner,
        created_at=created_at,
        updated_at=updated_at,
    )


def contents(namespace: str, checked: Json, now: str) -> list[MetadefItem]:
    """The items of a checked namespace body."""
    items = [
        MetadefItem(namespace, "resource_type", n, b, now, now)
        for n, b in checked.get("resource_type_associations", [])
    ]
    items += [MetadefItem(namespace, "property", n, b, now, now) for n, b in checked.get("properties", {}).items()]
    items += [MetadefItem(namespace, "object", n, b, now, now) for n, b in checked.get("objects", [])]
    items += [MetadefItem(namespace, "tag", n, {}, now, now) for n in checked.get("tags", [])]
    return items


def file_format(doc: Json) -> Json:
    """A namespace show as Glance's etc/metadefs files hold it (no timestamps, links or owner)."""
    out: Json = {k: doc[k] for k in ("namespace", "display_name", "description", "visibility", "protected") if k in doc}
    out["resource_type_associations"] = [
        {k: v for k, v in a.items() if k not in ("created_at", "updated_at")}
        for a in doc.get("resource_type_associations", [])
    ]
    out["properties"] = doc.get("properties", {})
    out["objects"] = [{k: v for k, v in o.items() if k not in READ_ONLY} for o in doc.get("objects", [])]
    out["tags"] = doc.get("tags", [])
    return out
