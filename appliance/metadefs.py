"""MetadefService: Glance's metadata definitions (metadefs) catalog.

Namespaces hold objects, properties, tags and resource type associations; the rules are Glance's:
* a namespace is seen by administrators, by every project when public and by its owner when
  private; one the caller may not see is missing (404), as in Glance's DB layer, and the
  `get_metadef_*` rules decide among the visible ones with the namespace as the target;
* writes follow the `add_/modify_/delete_metadef_*` rules (17.1: administrators only), with the
  namespace's owner as `project_id`; a protected namespace cannot be deleted (403);
* bodies are checked against the /v2/schemas/metadefs/* documents (metadefschema.py) and shown in
  Glance's shapes (metadefshape.py).

At an edge with a hub the definitions are the hub's: `mirror` copies them (what the site's hub
token sees), and a write is made at the hub with the caller's Keystone token (`write_at_hub`), the
namespace mirrored again at once; without a token to forward it is refused (409) naming the hub.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Set
from typing import Any
from urllib.parse import urlencode

from appliance import policy
from appliance.auth import Context
from appliance.catalog import Catalog
from appliance.clock import Clock, SystemClock, timestamp
from appliance.errors import BadRequest, Conflict, Forbidden, NotFound, UpstreamUnavailable
from appliance.hub.client import HubClient, HubRejected
from appliance.hub.metadefs import hub_namespace, hub_namespaces, write_at_hub
from appliance.metadefschema import NS_CONTENTS, NS_FIELDS, Json, check_namespace, check_tags
from appliance.metadefshape import (
    NAMESPACES_PATH,
    association_to_json,
    contents,
    file_format,
    namespace_to_json,
    new_namespace,
    object_to_json,
)
from appliance.model import MetadefItem, MetadefNamespace, MetadefResourceType

log = logging.getLogger(__name__)

# Glance's namespace list sorts on these (glanceclient's SORT_KEY_VALUES and the DB columns).
SORT_KEYS = ("namespace", "created_at", "updated_at", "display_name", "visibility", "owner")
TAG_SORT_KEYS = ("name", "created_at", "updated_at")  # the columns of Glance's metadef_tags
WRITE_MEMORY = 3600.0  # s: how long a write made at the hub through this site is remembered


# Glance's words for a missing item (an association is only ever looked up to be removed).
_NOT_FOUND = {
    "object": "Could not find metadata object %s",
    "property": "Could not find property %s",
    "tag": "Could not find metadata tag %s",
    "resource_type": "Failed to find resource type %s to delete",
}


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise BadRequest("limit param must be an integer") from None
    if limit < 0:
        raise BadRequest("limit param must be positive")
    return limit


class MetadefService:
    def __init__(self, catalog: Catalog, *, hub: HubClient | None = None, clock: Clock | None = None) -> None:
        self._catalog = catalog
        self._hub = hub  # set at an edge: the definitions are the hub's, mirrored here
        self._clock = clock or SystemClock()
        # namespace -> when (monotonic) a write to it made at the hub through this site was answered:
        # a mirror round that asked the hub before then would undo the write here.
        self._written: dict[str, float] = {}

    @property
    def mirrors_hub(self) -> bool:
        return self._hub is not None

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
        if self._hub is not None:
            raise Conflict(
                "Metadata definitions at this edge are mirrored read-only from its hub %s: make this change at "
                "the hub (it reaches this edge at the next mirror round), or authenticate here with a Keystone "
                "token, which this site forwards to the hub" % self._hub.url
            )

    async def write_at_hub(
        self, ctx: Context, method: str, path: str, body: Any, *, namespace: str | None, headers: dict[str, str]
    ) -> Any:
        """An edge's write (`method` on `path`, as the client sent it) made at the hub with the
        caller's own token: the hub's rules decide and its answer is returned. The namespace it
        touched (`namespace`, and the one a create or a rename names) is mirrored here at once."""
        if ctx.token is None or self._hub is None:
            self._check_local()
        assert self._hub is not None and ctx.token is not None
        doc = await write_at_hub(self._hub, ctx.token, method, path, body, headers)
        touched = {namespace} if namespace is not None else set()
        if isinstance(doc, dict) and isinstance(doc.get("namespace"), str):
            touched.add(doc["namespace"])  # a namespace's create or update (no other answer names one)
        log.info("metadefs: %s %s made at the hub for %s/%s", method, path, ctx.project, ctx.user)
        now = self._clock.monotonic()
        self._written = {n: t for n, t in self._written.items() if now - t < WRITE_MEMORY}
        for name in touched:
            self._written[name] = now
            await self._mirror_namespace(name)
        return doc

    async def _mirror_namespace(self, name: str) -> None:
        """The hub's namespace `name` as this site's token reads it, put in place here (or gone)."""
        assert self._hub is not None
        try:
            doc = await hub_namespace(self._hub, name)
        except NotFound:
            try:
                await self._catalog.delete_metadef_namespace(name)
            except NotFound:
                pass
            return
        except (UpstreamUnavailable, HubRejected) as exc:  # the write is made: the next round brings it
            log.warning("metadefs: namespace %s not mirrored after a write at the hub: %s", name, exc)
            return
        await self.replace_all([doc], keep_others=True)

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
        limit = min(_limit(params["limit"]) if "limit" in params else default_limit, max_limit)
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
        new = new_namespace(checked, owner, ns.created_at, self._now())
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

    async def get_item(
        self, ctx: Context, name: str, kind: str, item_name: str, rule: str, *, resource_type: str | None = None
    ) -> MetadefItem:
        """One item; a property asked for `resource_type` is named as that association shows it
        (with its prefix), as in Glance."""
        ns = await self._namespace(ctx, name, rule)
        if resource_type:
            item_name = await self._unprefixed(ctx, ns, item_name, resource_type)
        return await self._find(name, kind, item_name)

    async def _unprefixed(self, ctx: Context, ns: MetadefNamespace, prop: str, resource_type: str) -> str:
        """`prop` without the prefix of the namespace's association with `resource_type`; Glance
        answers 404 for a name without that prefix, and for an association without a prefix."""
        policy.enforce(ctx, "get_metadef_resource_type", self._target(ns))
        if resource_type not in {t.name for t in await self._catalog.metadef_resource_types()}:
            raise NotFound("The metadata definition resource-type with name=%s, was not found." % resource_type)
        rtas = await self._catalog.metadef_items(ns.namespace, "resource_type")
        association = next((a for a in rtas if a.name == resource_type), None)
        if association is None:
            raise NotFound(
                "The metadata definition resource-type association of resource-type=%s to namespace=%s, "
                "was not found." % (resource_type, ns.namespace)
            )
        prefix = association.body.get("prefix")
        if not (prefix and prop.startswith(prefix)):
            raise NotFound(
                "Property %s does not start with the expected resource type association prefix of '%s'."
                % (prop, prefix)
            )
        return prop[len(prefix) :]

    async def list_tags(self, ctx: Context, name: str, params: Mapping[str, str]) -> list[MetadefItem]:
        """A namespace's tags a page at a time, as Glance pages them: sorted by `sort_key`
        (created_at) in `sort_dir` (desc), ties in the order they were made; after `marker` (a
        tag name), at most `limit` (no bound by default)."""
        sort_key, sort_dir = params.get("sort_key", "created_at"), params.get("sort_dir", "desc")
        if sort_dir not in ("asc", "desc"):
            raise BadRequest("Invalid sort direction: %s" % sort_dir)
        if sort_key not in TAG_SORT_KEYS:
            raise BadRequest(
                "Invalid sort key: %s. It must be one of the following: %s." % (sort_key, ", ".join(TAG_SORT_KEYS))
            )
        limit = _limit(params["limit"]) if params.get("limit") else None
        await self._namespace(ctx, name, "get_metadef_tags")
        made = await self._catalog.metadef_items(name, "tag")  # by created_at, then as made
        ordered = [
            t
            for _, t in sorted(
                enumerate(made), key=lambda p: (getattr(p[1], sort_key) or "", p[0]), reverse=sort_dir == "desc"
            )
        ]
        if params.get("marker"):
            marker = await self._find(name, "tag", params["marker"])
            ordered = ordered[[t.name for t in ordered].index(marker.name) + 1 :]
        return ordered if limit is None else ordered[:limit]

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
        names = check_tags(body)
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
        asked = self._clock.monotonic()
        docs = await hub_namespaces(hub)
        # A namespace written at the hub through this site since `asked` is as the write left it
        # here; this round's older answer would undo that until the next round.
        written = {n for n, t in self._written.items() if t >= asked}
        fresh = [d for d in docs if d.get("namespace") not in written]
        return await self.replace_all(fresh, keep_others=False, keep=written)

    async def replace_all(self, namespaces: Sequence[Json], *, keep_others: bool, keep: Set[str] = frozenset()) -> int:
        """Puts each namespace document (a show's shape) in place with its contents; without
        `keep_others`, namespaces not among them (nor in `keep`) go (a mirror). Returns how many
        were written."""
        names = set(keep)
        now = self._now()
        for doc in namespaces:
            checked = check_namespace({k: v for k, v in doc.items() if k in NS_FIELDS + NS_CONTENTS})
            created, updated = str(doc.get("created_at") or now), str(doc.get("updated_at") or now)
            ns = new_namespace(checked, checked.get("owner"), created, updated)
            names.add(ns.namespace)
            await self._catalog.replace_metadef_namespace(ns, contents(ns.namespace, checked, now))
        if not keep_others:
            for ns in await self._catalog.metadef_namespaces():
                if ns.namespace not in names:
                    await self._catalog.delete_metadef_namespace(ns.namespace)
        return len(names)
