"""Metadata definitions at an edge: the hub's namespaces mirrored read-only (a hub and an edge as
separate daemon processes, the same projects' tokens at both)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.api.test_metadefs import FULL, NS, Http, md_config
from tests.conftest import Daemon, start_daemon, write_toml
from tests.integration.test_hub_link import FAST
from tests.waiting import eventually

SITE_TOKEN = "dcn0-metadefs-token"


@pytest.fixture
async def hub_and_edge(tmp_path: Path) -> AsyncIterator[tuple[Http, Http]]:
    hub_conf = md_config(tmp_path / "hub")
    hub_conf["auth"]["tokens"].append({"token": SITE_TOKEN, "user": "dcn0", "project": "sites", "roles": ["edge-site"]})
    hub_conf.update(site={"name": "central", "role": "hub"}, scrubber={"enabled": False})
    daemons: list[Daemon] = []
    try:
        hub = start_daemon(tmp_path / "hub", write_toml(tmp_path / "hub.toml", hub_conf))
        daemons.append(hub)
        edge_conf: dict[str, Any] = {
            **md_config(tmp_path / "dcn0"),
            "site": {"name": "dcn0"},
            "hub": {"url": hub.url, "token": SITE_TOKEN, **FAST},
            "scrubber": {"enabled": False},
        }
        edge = start_daemon(tmp_path / "dcn0", write_toml(tmp_path / "dcn0.toml", edge_conf))
        daemons.append(edge)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            yield Http(hub, session), Http(edge, session)
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


def bare(doc: Any) -> Any:
    """`doc` without timestamps (a mirrored item's are the edge's)."""
    if isinstance(doc, dict):
        return {k: bare(v) for k, v in doc.items() if k not in ("created_at", "updated_at")}
    if isinstance(doc, list):
        return [bare(v) for v in doc]
    return doc


async def names(http: Http, who: str) -> set[str]:
    return {n["namespace"] for n in (await http.call(who, "GET", NS))["namespaces"]}


async def test_the_edge_mirrors_the_hubs_namespaces_read_only(hub_and_edge: tuple[Http, Http]) -> None:
    hub, edge = hub_and_edge
    await hub.call("admin", "POST", NS, 201, json=FULL)
    await hub.call("admin", "POST", NS, 201, json={"namespace": "alpha-only", "owner": "alpha"})

    async def mirrored() -> bool:
        return await names(edge, "admin") == {"OS::Test::Full", "alpha-only"}

    await eventually(mirrored, "the edge to mirror the hub's namespaces")
    at_hub = await hub.call("beta", "GET", NS + "/OS::Test::Full")
    at_edge = await edge.call("beta", "GET", NS + "/OS::Test::Full")
    assert bare(at_edge) == bare(at_hub)
    assert at_edge["created_at"] == at_hub["created_at"]
    # The projects see at the edge what they see at the hub.
    assert await names(edge, "alpha") == {"OS::Test::Full", "alpha-only"}
    assert await names(edge, "beta") == {"OS::Test::Full"}
    await edge.call("beta", "GET", NS + "/alpha-only", 404)

    # A change at the edge is refused with where to make it; the hub's changes arrive.
    refusal = await edge.call("admin", "POST", NS, 409, json={"namespace": "local"})
    assert hub.daemon.url in refusal["message"] and "read-only" in refusal["message"]
    await edge.call("admin", "POST", NS + "/OS::Test::Full/tags/t", 409)
    await edge.call("admin", "DELETE", NS + "/alpha-only", 409)
    await hub.call("admin", "DELETE", NS + "/alpha-only", 204)
    await hub.call("admin", "POST", NS + "/OS::Test::Full/tags/new", 201)

    async def followed() -> bool:
        if await names(edge, "admin") != {"OS::Test::Full"}:
            return False
        shown = await edge.call("admin", "GET", NS + "/OS::Test::Full")
        return [t["name"] for t in shown["tags"]] == ["fast", "slow", "new"]

    await eventually(followed, "the hub's deletion and new tag to reach the edge")
