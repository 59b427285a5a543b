"""The hub's metadata definitions, as an edge mirrors them: every namespace the site's token
reads there, each with its contents (a show), page by page."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from appliance.hub.client import HubClient

NAMESPACES = "/v2/metadefs/namespaces"
PAGE = "1000"  # Glance's api_limit_max: few hubs hold more, and the pages follow `next` anyway


async def hub_namespaces(hub: HubClient) -> list[dict[str, Any]]:
    """Each namespace's show document; NotFound when the hub has no metadefs API."""
    docs: list[dict[str, Any]] = []
    page = await hub.request_json("GET", NAMESPACES, params={"limit": PAGE})
    while True:
        for ns in page["namespaces"]:
            docs.append(await hub.request_json("GET", "%s/%s" % (NAMESPACES, quote(ns["namespace"], safe=":"))))
        if "next" not in page or not page["namespaces"]:
            return docs
        page = await hub.request_json("GET", page["next"])
