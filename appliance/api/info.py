"""Discovery and info endpoints: versions, schemas, stores, health."""

from __future__ import annotations

from aiohttp import web

from appliance.api import schema_docs, schemas
from appliance.api.keys import CONFIG, HUB, IMAGES, SITES
from appliance.api.middleware import CONTEXT
from appliance.errors import NotFound

routes = web.RouteTableDef()

# Newest first, as Glance lists them; python-glanceclient enables cache/tasks/stores
# commands by looking for these ids.
CURRENT_VERSION = "2.18"
SUPPORTED_VERSIONS = (
    "2.17",
    "2.16",
    "2.15",
    "2.14",
    "2.13",
    "2.12",
    "2.11",
    "2.10",
    "2.9",
    "2.8",
    "2.7",
    "2.6",
    "2.5",
    "2.4",
    "2.3",
    "2.2",
    "2.1",
    "2.0",
)


def base_url(request: web.Request) -> str:
    """[api] public_url, else the address of the listener the request came in on: never the
    client's Host header, which anyone can set to send other clients elsewhere."""
    public = request.app[CONFIG].api.public_url
    if public:
        return public.rstrip("/") + "/"
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = "[%s]" % sockname[0] if ":" in sockname[0] else sockname[0]
        return "%s://%s:%d/" % (request.scheme, host, sockname[1])
    return "%s://localhost/" % request.scheme  # the Unix socket has no address to give


def versions_document(request: web.Request) -> dict[str, object]:
    href = base_url(request) + "v2/"

    def version(v: str, status: str) -> dict[str, object]:
        return {"id": "v%s" % v, "status": status, "links": [{"rel": "self", "href": href}]}

    return {"versions": [version(CURRENT_VERSION, "CURRENT")] + [version(v, "SUPPORTED") for v in SUPPORTED_VERSIONS]}


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    return web.json_response(versions_document(request), status=300)


@routes.get("/versions")
async def versions(request: web.Request) -> web.Response:
    return web.json_response(versions_document(request))


@routes.get("/healthcheck")
async def healthcheck(request: web.Request) -> web.Response:
    return web.Response(text="OK")


@routes.get("/v2/schemas/{name:.+}")
async def schema(request: web.Request) -> web.Response:
    formats = request.app[IMAGES].config.formats  # reloadable
    docs = schema_docs.all_schemas(formats.disk_formats, formats.container_formats)
    name = request.match_info["name"]
    if name not in docs:
        raise NotFound("No schema named %s" % name)
    return web.json_response(docs[name])


@routes.get("/v2/info/stores")
async def stores(request: web.Request) -> web.Response:
    service = request.app[IMAGES]
    return web.json_response(
        {
            "stores": [
                schemas.store_to_json(store.name, store.description, store.name == service.default_store, usage)
                for store, usage in await service.stores_info()
            ]
            + [schemas.site_store_to_json(name) for name in service.stores.sites()]
            + _hub_store(request)
        }
    )


def _hub_store(request: web.Request) -> list[dict[str, object]]:
    # At an edge with a hub, `central` is where copy-image sends an image created here.
    link = request.app[HUB]
    return [
        {
            "id": name,
            "description": "The hub (%s): copy-image here sends an image created at this site to it"
            % (link.client.url if link is not None else ""),
        }
        for name in request.app[IMAGES].stores.hub()
    ]


@routes.get("/v2/info/stores/detail")
async def stores_detail(request: web.Request) -> web.Response:
    service = request.app[IMAGES]
    detail = await service.stores_detail(request[CONTEXT])
    sites = request.app[SITES]
    return web.json_response(
        {
            "stores": [
                schemas.store_detail_to_json(
                    store.name,
                    store.description,
                    store.name == service.default_store,
                    usage,
                    store.kind,
                    store.properties(),
                )
                for store, usage in detail
            ]
            + [schemas.site_store_detail_to_json(site, sites.online(site)) for site in await sites.sites()]
            + _hub_store(request)
        }
    )


@routes.delete("/v2/stores/{store}/{image_id}")
async def delete_from_store(request: web.Request) -> web.Response:
    await request.app[IMAGES].delete_from_store(
        request[CONTEXT], request.match_info["store"], request.match_info["image_id"]
    )
    return web.Response(status=204)
