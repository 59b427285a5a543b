"""The image members API side by side with a real OpenStack Glance (tests/glance_server.py): one
script of requests, by the same callers, against Glance and against the daemon; every answer must
have Glance's status, Glance's member shape, and Glance's message (ours may say more after it)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import JSON_ERRORS, Daemon, write_toml
from tests.glance_server import GlanceServer

pytestmark = pytest.mark.clients

# tests/glance_tokens.py reads `user:project:roles` tokens; the daemon gets the same strings as
# static tokens, so both servers see the same callers.
CALLERS = {
    "alpha": ("alice", "alpha", ["member", "reader"]),
    "beta": ("bob", "beta", ["member", "reader"]),
    "gamma": ("carol", "gamma", ["member", "reader"]),
    "alpha-reader": ("rita", "alpha", ["reader"]),
}


def token(who: str) -> str:
    user, project, roles = CALLERS[who]
    return "%s:%s:%s" % (user, project, ",".join(roles))


@dataclass
class Server:
    url: str
    session: aiohttp.ClientSession

    async def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"X-Auth-Token": token(who), **JSON_ERRORS}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as resp:
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


def glance_message(body: Any) -> str:
    # webob appends its HTML line breaks to the explanation
    return re.sub(r"(<br />)+\s*$", "", str(body["message"])).strip()


class Script:
    """Runs each step on both servers (image names in paths are replaced by each one's ids)."""

    def __init__(self, glance: Server, ours: Server) -> None:
        self.servers = {"glance": glance, "ours": ours}
        self.ids: dict[str, dict[str, str]] = {"glance": {}, "ours": {}}

    async def image(self, name: str, visibility: str, who: str = "alpha") -> None:
        body = {"name": name, "disk_format": "raw", "container_format": "bare", "visibility": visibility}
        for side, server in self.servers.items():
            status, created = await server.call(who, "POST", "/v2/images", body)
            assert status == 201, (side, created)
            self.ids[side][name] = created["id"]

    async def step(self, who: str, method: str, path: str, body: Any = None, same_message: bool = True) -> Any:
        answers = {}
        for side, server in self.servers.items():
            real = path.format(**self.ids[side])
            answers[side] = await server.call(who, method, real, body)
        (g_status, g_body), (o_status, o_body) = answers["glance"], answers["ours"]
        where = (who, method, path, body, answers)
        assert o_status == g_status, where
        if g_status >= 400:
            expected, got = glance_message(g_body), str(o_body["message"])
            for name, glance_id in self.ids["glance"].items():  # Glance names its own ids
                expected = expected.replace(glance_id, self.ids["ours"][name])
            if same_message:  # ours may go on where Glance's sentence ends
                assert got.startswith(expected) or expected.rstrip(".").lower() in got.lower(), where
        elif isinstance(g_body, dict) and "member_id" in g_body:
            assert set(o_body) == set(g_body), where
            assert (o_body["member_id"], o_body["status"]) == (g_body["member_id"], g_body["status"]), where
        elif isinstance(g_body, dict) and "members" in g_body:
            assert o_body["schema"] == g_body["schema"], where
            assert sorted((m["member_id"], m["status"]) for m in o_body["members"]) == sorted(
                (m["member_id"], m["status"]) for m in g_body["members"]
            ), where
        return o_body

    async def listed(self, who: str, name: str, query: str = "") -> bool:
        """Whether `name` is in `who`'s image list on both servers (asserted equal)."""
        found = {}
        for side, server in self.servers.items():
            status, body = await server.call(who, "GET", "/v2/images?limit=5&sort_key=created_at&%s" % query)
            assert status == 200, (side, body)
            # Fresh images sort first: a page of five holds this script's images.
            found[side] = self.ids[side][name] in {i["id"] for i in body["images"]}
        assert found["ours"] == found["glance"], (who, name, query, found)
        return found["ours"]


async def test_the_members_api_answers_as_glance_does(servers: tuple[Server, Server]) -> None:
    s = Script(*servers)
    await s.image("A", "shared")
    await s.image("P", "private")
    a, p = "/v2/images/{A}/members", "/v2/images/{P}/members"

    await s.step("alpha", "POST", a, {"member": "beta"})
    await s.step("alpha", "POST", a, {"member": "beta"})  # 409, duplicated
    await s.step("alpha", "POST", p, {"member": "beta"})  # 403, only shared images
    await s.step("alpha", "GET", p)
    await s.step("alpha", "GET", p + "/beta")  # 404
    await s.step("alpha", "POST", a, ["beta"])
    await s.step("alpha", "POST", a, {})
    await s.step("alpha", "POST", a, {"member": ""})
    await s.step("alpha", "GET", a)
    await s.step("alpha", "GET", a + "/beta")
    await s.step("alpha", "GET", a + "/nobody")

    # The member: sees the image, its own membership, lists it only once accepted.
    await s.step("beta", "GET", "/v2/images/{A}")
    await s.step("beta", "GET", a)
    assert not await s.listed("beta", "A")
    assert await s.listed("beta", "A", "member_status=pending")
    assert await s.listed("beta", "A", "member_status=all")
    assert not await s.listed("beta", "A", "visibility=shared")
    await s.step("beta", "GET", "/v2/images?member_status=bogus")
    await s.step("beta", "PUT", a + "/beta", {"status": "maybe"})
    await s.step("beta", "PUT", a + "/beta", {})
    await s.step("beta", "PUT", a + "/beta", {"status": "accepted"})
    assert await s.listed("beta", "A")
    assert await s.listed("beta", "A", "visibility=shared")
    assert not await s.listed("beta", "A", "member_status=pending")
    await s.step("beta", "PUT", a + "/beta", {"status": "rejected"})
    assert not await s.listed("beta", "A")
    assert await s.listed("beta", "A", "member_status=rejected")

    # Who may do what: the owner does not answer for a member, a member does not share or unshare.
    await s.step("alpha", "PUT", a + "/beta", {"status": "accepted"})
    await s.step("beta", "DELETE", a + "/beta")
    await s.step("beta", "POST", a, {"member": "gamma"})
    await s.step("alpha", "POST", a, {"member": "gamma"})
    await s.step("beta", "GET", a + "/gamma")  # another member's membership: missing
    await s.step("beta", "PUT", a + "/gamma", {"status": "accepted"})
    await s.step("alpha-reader", "GET", a)
    await s.step("alpha-reader", "POST", a, {"member": "delta"}, same_message=False)

    # Strangers see nothing; an unshared member is a stranger again.
    await s.step("gamma", "GET", "/v2/images/{P}")
    await s.step("alpha", "DELETE", a + "/beta")
    await s.step("alpha", "DELETE", a + "/beta")
    await s.step("beta", "GET", "/v2/images/{A}")
    await s.step("beta", "GET", a)
    assert not await s.listed("beta", "A", "member_status=all")
    await s.step("alpha", "GET", a)
