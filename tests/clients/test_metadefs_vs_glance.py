"""The metadata definitions API side by side with a real OpenStack Glance (tests/glance_server.py):
one script of requests, by the same callers (an administrator, members of two projects), against
Glance and against the daemon; every answer must have Glance's status and Glance's keys."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import JSON_ERRORS, Daemon, write_toml
from tests.glance_server import GlanceServer

pytestmark = pytest.mark.clients

CALLERS = {
    "admin": ("root", "admin", ["admin", "member", "reader"]),
    "alpha": ("alice", "alpha", ["member", "reader"]),
    "beta": ("bob", "beta", ["member", "reader"]),
}


def token(who: str) -> str:
    user, project, roles = CALLERS[who]
    return "%s:%s:%s" % (user, project, ",".join(roles))


@dataclass
class Server:
    url: str
    session: aiohttp.ClientSession

    async def call(self, who: str, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
        hdrs = {"X-Auth-Token": token(who), **JSON_ERRORS, **headers}
        async with self.session.request(method, self.url + path, json=body, headers=hdrs) as resp:
            raw = await resp.read()
            return resp.status, (await resp.json() if raw and resp.content_type == "application/json" else raw)


@pytest.fixture
async def servers(
    openstack_glance: GlanceServer, tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> AsyncIterator[tuple[Server, Server]]:
    tokens = [{"token": token(who), "user": u, "project": p, "roles": r} for who, (u, p, r) in CALLERS.items()]
    daemon = daemon_factory("site", write_toml(tmp_path / "site.toml", {"auth": {"tokens": tokens}}))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Server(openstack_glance.url, session), Server(daemon.url, session)


def shape(doc: Any) -> Any:
    """The keys of a document, down its objects and lists (values left out)."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [shape(v) for v in doc]
    return type(doc).__name__


def differences(ours: Any, glance: Any, at: str = "") -> list[str]:
    """Where two shapes differ, as paths (for the assertion's message)."""
    if isinstance(ours, dict) and isinstance(glance, dict):
        found = ["%s.%s: ours only" % (at, k) for k in ours.keys() - glance.keys()]
        found += ["%s.%s: Glance's only" % (at, k) for k in glance.keys() - ours.keys()]
        for k in ours.keys() & glance.keys():
            found += differences(ours[k], glance[k], "%s.%s" % (at, k))
        return found
    if isinstance(ours, list) and isinstance(glance, list) and len(ours) == len(glance):
        return [
            d for i, (o, g) in enumerate(zip(ours, glance, strict=True)) for d in differences(o, g, "%s[%d]" % (at, i))
        ]
    return [] if ours == glance else ["%s: %r vs Glance's %r" % (at, ours, glance)]


class Script:
    def __init__(self, glance: Server, ours: Server, name: str) -> None:
        self.servers = {"glance": glance, "ours": ours}
        self.name = name  # the session's Glance is shared: this run's namespaces carry a unique name

    async def step(
        self, who: str, method: str, path: str, body: Any = None, same_message: bool = True, **headers: str
    ) -> Any:
        answers = {}
        for side, server in self.servers.items():
            answers[side] = await server.call(who, method, path.format(ns=self.name), body, **headers)
        (g_status, g_body), (o_status, o_body) = answers["glance"], answers["ours"]
        where = (who, method, path, body, answers)
        assert o_status == g_status, where
        if g_status >= 400 and same_message:  # ours may go on where Glance's sentence ends
            # (a schema refusal goes on with the schema and the instance: its first line is the message)
            expected = re.sub(r"(<br />)+\s*$", "", str(g_body["message"])).strip().split("\n")[0]
            got = str(o_body["message"])
            assert got.startswith(expected) or expected.rstrip(".").lower() in got.lower(), (expected, got, where)
        if g_status < 300 and isinstance(g_body, dict):
            assert shape(o_body) == shape(g_body), (differences(shape(o_body), shape(g_body)), where)
        return o_body

    async def same_tags(self, path: str) -> None:
        """The tag names in the same order from both (Glance's sorting and paging)."""
        listed = {}
        for side, server in self.servers.items():
            status, body = await server.call("beta", "GET", path.format(ns=self.name))
            assert status == 200, (side, path, body)
            listed[side] = [t["name"] for t in body["tags"]]
        assert listed["ours"] == listed["glance"], (path, listed)


NAMESPACE_BODY = {
    "display_name": "Compared",
    "description": "the same script at Glance and here",
    "visibility": "public",
    "protected": True,
    "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "cmp_"}],
    "properties": {"speed": {"title": "Speed", "type": "integer", "minimum": 1}},
    "objects": [{"name": "Obj", "description": "o", "properties": {"p": {"title": "P", "type": "string"}}}],
    "tags": [{"name": "t1"}],
}


async def test_the_metadefs_api_answers_as_glance_does(servers: tuple[Server, Server]) -> None:
    s = Script(*servers, "OS::Cmp::%s" % uuid.uuid4().hex[:8])
    ns = "/v2/metadefs/namespaces/{ns}"
    try:
        await s.step("admin", "POST", "/v2/metadefs/namespaces", {"namespace": s.name, **NAMESPACE_BODY})
        await s.step("admin", "POST", "/v2/metadefs/namespaces", {"namespace": s.name})  # 409
        await s.step("alpha", "POST", "/v2/metadefs/namespaces", {"namespace": s.name + "x"})  # 403
        await s.step("admin", "POST", "/v2/metadefs/namespaces", {"description": "no name"})  # 400
        await s.step("beta", "GET", ns)
        await s.step("beta", "GET", ns + "?resource_type=OS::Glance::Image")
        # The session's Glance holds other tests' namespaces: this one's resource type finds only it.
        await s.step("admin", "POST", ns + "/resource_types", {"name": s.name + "::Type"})
        await s.step("beta", "GET", "/v2/metadefs/namespaces?limit=1&resource_types=%s::Type" % s.name)
        await s.step("admin", "DELETE", ns + "/resource_types/" + s.name + "::Type")
        await s.step("beta", "GET", ns + "/objects")
        await s.step("beta", "GET", ns + "/objects/Obj")
        await s.step("beta", "GET", ns + "/objects/Nothing")  # 404
        await s.step("admin", "POST", ns + "/objects", {"name": "Obj2", "required": ["p"]})
        await s.step("admin", "POST", ns + "/objects", {"name": "Obj2"})  # 409
        await s.step("admin", "PUT", ns + "/objects/Obj2", {"name": "Obj3", "description": "renamed"})
        await s.step("admin", "DELETE", ns + "/objects/Obj3")
        await s.step("beta", "GET", ns + "/properties")
        await s.step("beta", "GET", ns + "/properties/speed")
        await s.step("beta", "GET", ns + "/properties/nothing")  # 404
        await s.step("beta", "GET", ns + "/tags/nothing")  # 404
        await s.step("admin", "DELETE", ns + "/resource_types/OS::Nothing")  # 404
        await s.step("admin", "POST", ns + "/properties", {"name": "colour", "title": "Colour", "type": "string"})
        await s.step("admin", "PUT", ns + "/properties/colour", {"name": "colour", "title": "C", "type": "string"})
        await s.step("admin", "DELETE", ns + "/properties/colour")
        await s.step("beta", "GET", ns + "/tags")
        await s.step("admin", "POST", ns + "/tags/t2")
        await s.step("admin", "POST", ns + "/tags/t2")  # 409
        await s.step("admin", "POST", ns + "/tags", {"tags": [{"name": "t3"}]}, **{"X-Openstack-Append": "True"})
        await s.step("beta", "GET", ns + "/tags")
        # A property named as a resource type's association shows it (prefix cmp_), and tag pages.
        await s.step("beta", "GET", ns + "/properties/cmp_speed?resource_type=OS::Glance::Image")
        await s.step("beta", "GET", ns + "/properties/speed?resource_type=OS::Glance::Image")  # 404
        for name in ("m", "z", "a"):
            await s.step("admin", "POST", ns + "/tags/" + name)
        for query in (
            "",
            "?sort_dir=asc",
            "?sort_key=name&sort_dir=asc&limit=2",
            "?sort_key=name&sort_dir=asc&limit=2&marker=m",
            "?sort_key=name&marker=t3",
            "?limit=0",
        ):
            await s.same_tags(ns + "/tags" + query)
        await s.step("beta", "GET", ns + "/tags?sort_dir=up")  # 400
        await s.step("beta", "GET", ns + "/tags?limit=-1")  # 400
        await s.step("beta", "GET", ns + "/tags?marker=nothing", same_message=False)  # 404
        await s.step("admin", "PUT", ns + "/tags/t3", {"name": "t4"})
        await s.step("beta", "GET", ns + "/tags/t4")
        await s.step("admin", "DELETE", ns + "/tags/t4")
        await s.step("beta", "GET", ns + "/resource_types")
        await s.step("admin", "POST", ns + "/resource_types", {"name": "OS::Cinder::Volume", "prefix": "v_"})
        await s.step("admin", "DELETE", ns + "/resource_types/OS::Cinder::Volume")
        await s.step("beta", "POST", ns + "/tags/nope")  # 403
        await s.step("admin", "DELETE", ns)  # 403: protected
        update = {k: v for k, v in NAMESPACE_BODY.items() if k in ("display_name", "description", "visibility")}
        await s.step("admin", "PUT", ns, {"namespace": s.name, **update, "protected": False})
        await s.step("admin", "PUT", ns, {"namespace": s.name, "visibility": "private", "owner": "alpha"})
        await s.step("alpha", "GET", ns)
        await s.step("beta", "GET", ns)  # 404: another project's private namespace
        await s.step("admin", "DELETE", ns + "/tags")
        await s.step("admin", "DELETE", ns)
        await s.step("admin", "GET", ns)  # 404
    finally:
        for server in s.servers.values():
            await server.call("admin", "DELETE", "/v2/metadefs/namespaces/" + s.name)
