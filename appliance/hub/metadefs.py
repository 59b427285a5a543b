"""The hub's metadata definitions, as an edge mirrors them: every namespace the site's token
reads there, each with its contents (a show), page by page; and a client's change to them, made at
the hub with the client's own token."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from appliance.errors import HubUnreachable
from appliance.hub.client import HubClient

NAMESPACES = "/v2/metadefs/namespaces"
PAGE = "1000"  # Glance's api_limit_max: few hubs hold more, and the pages follow `next` anyway
# What Glance's metadefs API answers a write that succeeded.
WRITE_STATUS = {"POST": (201,), "PUT": (200,), "DELETE": (204,)}


async def hub_namespaces(hub: HubClient) -> list[dict[str, Any]]:
    """Each namespace's show document; NotFound when the hub has no metadefs API."""
    docs: list[dict[str, Any]] = []
    page = await hub.request_json("GET", NAMESPACES, params={"limit": PAGE})
    while True:
        for ns in page["namespaces"]:
            docs.append(await hub_namespace(hub, ns["namespace"]))
        if "next" not in page or not page["namespaces"]:
            return docs
        page = await hub.request_json("GET", page["next"])


async def hub_namespace(hub: HubClient, name: str) -> dict[str, Any]:
    """One namespace's show document as this site's token reads it (NotFound: not there)."""
    doc: dict[str, Any] = await hub.request_json("GET", "%s/%s" % (NAMESPACES, quote(name, safe=":")))
    return doc


async def write_at_hub(hub: HubClient, token: str, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    """A client's metadefs write made at the hub with its token; the hub's answer (None for 204),
    or its refusal as the domain error of the same status."""
    try:
        return await hub.forward(method, path, token, json=body, expect=WRITE_STATUS[method], headers=headers)
    except HubUnreachable as exc:
        raise HubUnreachable(
            "Metadata definitions at this edge are the hub %s's, which could not be reached, so the change "
            "was not made; try again when the hub is back (%s)" % (hub.url, exc)
        ) from None
