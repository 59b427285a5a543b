"""Metadata definitions as Glance shows them (namespaces, objects, properties, tags, resource type
associations) and as its etc/metadefs files hold them (`glance-manage db_load_metadefs`)."""

from __future__ import annotations

from appliance.metadefschema import READ_ONLY, Json
from appliance.model import MetadefItem, MetadefNamespace

NS_SCHEMA = "/v2/schemas/metadefs/namespace"
OBJECT_SCHEMA = "/v2/schemas/metadefs/object"
NAMESPACES_PATH = "/v2/metadefs/namespaces"


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
