"""Glance's metadata definitions (/v2/metadefs) against a real daemon process: the HTTP contract
(shapes and status codes), the 17.1 policy defaults (administrators write; everyone reads public
namespaces and their own project's), an operator's policy file opening them (16.2-style), and
`edge-appliance metadefs load/export` with Glance's namespace files."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import JSON_ERRORS, VENV_BIN, Daemon, write_toml

ADMIN = "md-admin-secret"
TOKENS = {
    "alpha": ("alpha-secret", "alpha", ["member", "reader"]),
    "beta": ("beta-secret", "beta", ["member", "reader"]),
}
NS = "/v2/metadefs/namespaces"
ADMIN_HEADERS = {"X-Auth-Token": ADMIN, **JSON_ERRORS}
NS_KEYS = {"namespace", "visibility", "protected", "owner", "created_at", "updated_at", "schema", "self"}


def md_config(state_dir: Path, **extra: Any) -> dict[str, Any]:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "admin-token").write_text(ADMIN + "\n")
    auth: dict[str, Any] = {
        "tokens": [
            {"token_file": "admin-token", "user": "admin", "project": "admin", "roles": ["admin"]},
            *({"token": t, "user": name, "project": p, "roles": r} for name, (t, p, r) in TOKENS.items()),
        ]
    }
    auth.update(extra.pop("auth", {}))
    return {"auth": auth, **extra}


@dataclass
class Http:
    daemon: Daemon
    session: aiohttp.ClientSession

    async def call(self, who: str, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        token = ADMIN if who == "admin" else TOKENS[who][0]
        headers = {"X-Auth-Token": token, **JSON_ERRORS, **kw.pop("headers", {})}
        async with self.session.request(method, self.daemon.url + path, headers=headers, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, "%s %s as %s: %d %s" % (method, path, who, resp.status, body[:500])
            if resp.content_type == "application/json":
                return json.loads(body)
            return body


@pytest.fixture
def site(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory("site", write_toml(tmp_path / "md.toml", md_config(tmp_path / "site")))


@pytest.fixture
async def http(site: Daemon) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Http(site, session)


FULL = {
    "namespace": "OS::Test::Full",
    "display_name": "Full",
    "description": "A namespace with everything",
    "visibility": "public",
    "protected": True,
    "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "hw_"}],
    "properties": {"cpu_policy": {"title": "CPU policy", "type": "string", "enum": ["shared", "dedicated"]}},
    "objects": [
        {
            "name": "Watchdog",
            "description": "A watchdog",
            "required": ["action"],
            "properties": {"action": {"title": "Action", "type": "string"}},
        }
    ],
    "tags": [{"name": "fast"}, {"name": "slow"}],
}


async def test_namespace_routes_answer_glance_shapes_and_statuses(http: Http) -> None:
    created = await http.call("admin", "POST", NS, 201, json=FULL)
    assert NS_KEYS <= set(created)
    assert created["self"] == NS + "/OS::Test::Full" and created["schema"] == "/v2/schemas/metadefs/namespace"
    assert created["owner"] == "admin" and created["protected"] is True
    assert created["properties"] == FULL["properties"]
    assert [t["name"] for t in created["tags"]] == ["fast", "slow"]

    shown = await http.call("alpha", "GET", NS + "/OS::Test::Full")
    assert shown["objects"][0]["self"] == NS + "/OS::Test::Full/objects/Watchdog"
    assert shown["objects"][0]["schema"] == "/v2/schemas/metadefs/object"
    assert shown["resource_type_associations"][0]["prefix"] == "hw_"
    # With a resource type, property names carry its association's prefix (Glance's show filter).
    prefixed = await http.call("alpha", "GET", NS + "/OS::Test::Full?resource_type=OS::Glance::Image")
    assert set(prefixed["properties"]) == {"hw_cpu_policy"}
    assert prefixed["objects"][0]["required"] == ["hw_action"]

    await http.call("admin", "POST", NS, 409, json={"namespace": "OS::Test::Full"})
    for bad in (
        {},
        {"namespace": ""},
        {"namespace": 7},
        {"namespace": "x", "visibility": "shared"},
        [1],
        {"namespace": "x", "bogus": 1},
    ):
        await http.call("admin", "POST", NS, 400, json=bad)
    message = await http.call("admin", "POST", NS, 403, json={"namespace": "x", "self": "/v2/x"})
    assert "read-only" in message["message"]

    # Pages: limit and marker, and a next link only on a full page.
    for i in range(3):
        await http.call("admin", "POST", NS, 201, json={"namespace": "page-%d" % i, "visibility": "public"})
    page = await http.call("alpha", "GET", NS + "?limit=2&sort_key=namespace&sort_dir=asc")
    assert [n["namespace"] for n in page["namespaces"]] == ["OS::Test::Full", "page-0"]
    assert page["first"] == NS + "?limit=2&sort_key=namespace&sort_dir=asc"
    assert page["schema"] == "/v2/schemas/metadefs/namespaces"
    rest = await http.call("alpha", "GET", page["next"])
    assert [n["namespace"] for n in rest["namespaces"]] == ["page-1", "page-2"]
    last = await http.call("alpha", "GET", rest["next"])
    assert last["namespaces"] == [] and "next" not in last
    filtered = await http.call("alpha", "GET", NS + "?resource_types=OS::Glance::Image")
    assert [n["namespace"] for n in filtered["namespaces"]] == ["OS::Test::Full"]
    assert filtered["namespaces"][0]["resource_type_associations"][0]["name"] == "OS::Glance::Image"
    for bad in ("limit=x", "limit=-1", "sort_dir=up", "visibility=shared", "sort_key=nope"):
        await http.call("alpha", "GET", NS + "?" + bad, 400)
    await http.call("alpha", "GET", NS + "?marker=nothing", 404)

    # Update replaces the namespace's own fields (and renames it, contents and all).
    body = {**{k: v for k, v in shown.items() if k not in ("schema", "created_at", "updated_at", "self")}}
    body.update(namespace="OS::Test::Renamed", description="renamed")
    updated = await http.call("admin", "PUT", NS + "/OS::Test::Full", 200, json=body)
    assert updated["namespace"] == "OS::Test::Renamed" and updated["self"] == NS + "/OS::Test::Renamed"
    await http.call("admin", "GET", NS + "/OS::Test::Full", 404)
    moved = await http.call("admin", "GET", NS + "/OS::Test::Renamed")
    assert moved["objects"][0]["name"] == "Watchdog" and len(moved["tags"]) == 2

    # A protected namespace stays; its contents cannot be emptied either.
    await http.call("admin", "DELETE", NS + "/OS::Test::Renamed", 403)
    await http.call("admin", "DELETE", NS + "/OS::Test::Renamed/objects", 403)
    await http.call("admin", "PUT", NS + "/OS::Test::Renamed", 200, json={**body, "protected": False})
    await http.call("admin", "DELETE", NS + "/OS::Test::Renamed/objects", 204)
    assert "objects" not in await http.call("admin", "GET", NS + "/OS::Test::Renamed")
    await http.call("admin", "DELETE", NS + "/OS::Test::Renamed", 204)
    await http.call("admin", "GET", NS + "/OS::Test::Renamed", 404)
    await http.call("admin", "DELETE", NS + "/OS::Test::Renamed", 404)


async def test_objects_properties_tags_and_resource_types(http: Http) -> None:
    await http.call("admin", "POST", NS, 201, json={"namespace": "ns", "visibility": "public"})
    obj = {"name": "Obj", "description": "d", "properties": {"p": {"title": "P", "type": "integer", "minimum": 1}}}
    created = await http.call("admin", "POST", NS + "/ns/objects", 201, json=obj)
    assert created["self"] == NS + "/ns/objects/Obj" and created["properties"] == obj["properties"]
    await http.call("admin", "POST", NS + "/ns/objects", 409, json=obj)
    await http.call(
        "admin", "POST", NS + "/ns/objects", 400, json={"name": "x", "properties": {"p": {"type": "string"}}}
    )
    listing = await http.call("beta", "GET", NS + "/ns/objects")
    assert [o["name"] for o in listing["objects"]] == ["Obj"] and listing["schema"] == "v2/schemas/metadefs/objects"
    renamed = await http.call("admin", "PUT", NS + "/ns/objects/Obj", 200, json={**obj, "name": "Obj2"})
    assert renamed["name"] == "Obj2" and renamed["created_at"] == created["created_at"]
    await http.call("beta", "GET", NS + "/ns/objects/Obj", 404)
    await http.call("admin", "DELETE", NS + "/ns/objects/Obj2", 204)
    await http.call("admin", "DELETE", NS + "/ns/objects/Obj2", 404)

    prop = {"name": "speed", "title": "Speed", "type": "integer", "maximum": 10}
    assert await http.call("admin", "POST", NS + "/ns/properties", 201, json=prop) == prop
    assert await http.call("beta", "GET", NS + "/ns/properties/speed") == prop
    props = await http.call("beta", "GET", NS + "/ns/properties")
    assert props == {"properties": {"speed": prop}}  # made alone, it keeps its name (as in Glance)
    await http.call("admin", "POST", NS + "/ns/properties", 400, json={"name": "t", "title": "T", "type": "colour"})
    await http.call("admin", "PUT", NS + "/ns/properties/speed", 200, json={**prop, "maximum": 20})
    assert (await http.call("beta", "GET", NS + "/ns/properties/speed"))["maximum"] == 20
    await http.call("admin", "DELETE", NS + "/ns/properties/speed", 204)
    await http.call("beta", "GET", NS + "/ns/properties/speed", 404)

    tag = await http.call("admin", "POST", NS + "/ns/tags/one", 201)
    assert set(tag) == {"name", "created_at", "updated_at"} and tag["name"] == "one"
    await http.call("admin", "POST", NS + "/ns/tags/one", 409)
    clash = await http.call("admin", "POST", NS + "/ns/tags/ONE", 409)  # tag names are case insensitive
    assert "case insensitive" in clash["message"]
    many = await http.call("admin", "POST", NS + "/ns/tags", 201, json={"tags": [{"name": "a"}, {"name": "b"}]})
    assert many == {"tags": [{"name": "a"}, {"name": "b"}]}
    # Without X-Openstack-Append the tags given replace the namespace's; with it they are added.
    # (Glance lists the newest first: by created_at, then as made, descending.)
    assert [t["name"] for t in (await http.call("beta", "GET", NS + "/ns/tags"))["tags"]] == ["b", "a"]
    await http.call(
        "admin", "POST", NS + "/ns/tags", 201, json={"tags": [{"name": "c"}]}, headers={"X-Openstack-Append": "True"}
    )
    listed = await http.call("beta", "GET", NS + "/ns/tags?sort_dir=asc")
    assert [t["name"] for t in listed["tags"]] == ["a", "b", "c"]
    await http.call("admin", "POST", NS + "/ns/tags", 409, json={"tags": [{"name": "d"}, {"name": "d"}]})
    assert (await http.call("admin", "PUT", NS + "/ns/tags/a", 200, json={"name": "z"}))["name"] == "z"
    await http.call("admin", "DELETE", NS + "/ns/tags/z", 204)
    await http.call("admin", "DELETE", NS + "/ns/tags", 204)
    assert (await http.call("beta", "GET", NS + "/ns/tags"))["tags"] == []

    rta = await http.call(
        "admin", "POST", NS + "/ns/resource_types", 201, json={"name": "OS::Nova::Flavor", "prefix": "x:"}
    )
    assert set(rta) == {"name", "prefix", "created_at", "updated_at"}
    types = await http.call("beta", "GET", "/v2/metadefs/resource_types")
    assert "OS::Nova::Flavor" in [t["name"] for t in types["resource_types"]]
    assocs = await http.call("beta", "GET", NS + "/ns/resource_types")
    assert [a["name"] for a in assocs["resource_type_associations"]] == ["OS::Nova::Flavor"]
    await http.call("admin", "DELETE", NS + "/ns/resource_types/OS::Nova::Flavor", 204)
    await http.call("admin", "DELETE", NS + "/ns/resource_types/OS::Nova::Flavor", 404)
    await http.call("admin", "GET", NS + "/nothing/objects", 404)


async def test_a_property_asked_for_a_resource_type_is_named_with_its_prefix(http: Http) -> None:
    await http.call("admin", "POST", NS, 201, json=FULL)
    full = NS + "/OS::Test::Full/properties/"
    shown = await http.call("beta", "GET", full + "hw_cpu_policy?resource_type=OS::Glance::Image")
    assert shown["name"] == "cpu_policy" and shown["enum"] == ["shared", "dedicated"]
    refused = await http.call("beta", "GET", full + "cpu_policy?resource_type=OS::Glance::Image", 404)
    assert "does not start with the expected resource type association prefix of 'hw_'" in refused["message"]
    await http.call("beta", "GET", full + "hw_cpu_policy?resource_type=OS::Nova::Nothing", 404)
    assert (await http.call("beta", "GET", full + "cpu_policy?resource_type="))["name"] == "cpu_policy"
    # An association without a prefix finds nothing (Glance's rule).
    await http.call("admin", "POST", NS + "/OS::Test::Full/resource_types", 201, json={"name": "OS::Cinder::Volume"})
    await http.call("beta", "GET", full + "cpu_policy?resource_type=OS::Cinder::Volume", 404)


async def test_tags_are_listed_a_page_at_a_time_as_glance_pages_them(http: Http) -> None:
    await http.call("admin", "POST", NS, 201, json={"namespace": "paged", "visibility": "public"})
    for name in ("m", "z", "a", "q"):  # made one by one: created_at gives the order
        await http.call("admin", "POST", NS + "/paged/tags/" + name, 201)

    async def names(query: str, expect: int = 200) -> Any:
        doc = await http.call("beta", "GET", NS + "/paged/tags" + query, expect)
        return [t["name"] for t in doc["tags"]] if expect == 200 else doc["message"]

    assert await names("") == ["q", "a", "z", "m"]  # newest first
    assert await names("?sort_dir=asc") == ["m", "z", "a", "q"]
    assert await names("?sort_key=name&sort_dir=asc") == ["a", "m", "q", "z"]
    assert await names("?sort_key=name&sort_dir=asc&limit=2") == ["a", "m"]
    assert await names("?sort_key=name&sort_dir=asc&limit=2&marker=m") == ["q", "z"]
    assert await names("?sort_key=name&marker=q") == ["m", "a"]
    assert await names("?limit=0") == []
    assert "Invalid sort direction: up" in await names("?sort_dir=up", 400)
    assert "Invalid sort key: colour" in await names("?sort_key=colour", 400)
    assert "limit param must be an integer" in await names("?limit=many", 400)
    assert "limit param must be positive" in await names("?limit=-1", 400)
    assert "nothing" in await names("?marker=nothing", 404)


async def test_policy_defaults_admin_writes_projects_read_public_and_their_own(http: Http) -> None:
    # A member cannot create (metadef_admin), not even in its own project.
    refusal = await http.call("alpha", "POST", NS, 403, json={"namespace": "mine"})
    assert "add_metadef_namespace" in refusal["message"]
    await http.call("admin", "POST", NS, 201, json={"namespace": "alpha-private", "owner": "alpha"})
    await http.call("admin", "POST", NS, 201, json={"namespace": "open", "visibility": "public"})
    # The owner's project reads its private namespace; another project's is missing (404).
    assert (await http.call("alpha", "GET", NS + "/alpha-private"))["owner"] == "alpha"
    hidden = await http.call("beta", "GET", NS + "/alpha-private", 404)
    assert "alpha-private" not in hidden["message"]  # Glance's words for it name nothing
    await http.call("beta", "GET", NS + "/alpha-private/objects", 404)
    assert {n["namespace"] for n in (await http.call("beta", "GET", NS))["namespaces"]} == {"open"}
    assert {n["namespace"] for n in (await http.call("alpha", "GET", NS))["namespaces"]} == {"open", "alpha-private"}
    # Reading is not changing: the owner's members are refused writes too.
    await http.call("alpha", "DELETE", NS + "/alpha-private", 403)
    await http.call("alpha", "POST", NS + "/alpha-private/tags/t", 403)
    await http.call("beta", "POST", NS + "/open/tags/t", 403)


async def test_a_policy_file_opens_metadefs_to_all_users(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    """16.2's seeds open the metadef rules to every user; through [auth] policy_file that works."""
    policy = tmp_path / "policy.yaml"
    policy.write_text('"metadef_admin": "role:member"\n')
    config = md_config(tmp_path / "open", auth={"policy_file": str(policy)})
    site = daemon_factory("open", write_toml(tmp_path / "open.toml", config))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        http = Http(site, session)
        created = await http.call("alpha", "POST", NS, 201, json={"namespace": "by-alpha"})
        assert created["owner"] == "alpha"
        await http.call("alpha", "POST", NS + "/by-alpha/tags/t", 201)
        await http.call("beta", "GET", NS + "/by-alpha", 404)  # still private to its project
        await http.call("alpha", "DELETE", NS + "/by-alpha", 204)


def metadefs_command(site: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`edge-appliance metadefs ...` on the daemon's Unix socket (as its own user: no token)."""
    cmd = [str(VENV_BIN / "edge-appliance"), "metadefs", *args, "--state-dir", str(site.state_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


async def test_load_and_export_namespace_files(http: Http, site: Daemon, tmp_path: Path) -> None:
    """Namespace files in Glance's etc/metadefs format load through the daemon's API and export
    back to the same documents; a file with a problem is named and the others still load."""
    files = tmp_path / "metadefs"
    files.mkdir()
    second = {
        "namespace": "OS::Test::Second",
        "display_name": "Second",
        "description": "private, with an object only",
        "visibility": "private",
        "protected": False,
        "resource_type_associations": [],
        "properties": {},
        "objects": [
            {"name": "O", "description": "o", "required": [], "properties": {"x": {"title": "X", "type": "boolean"}}}
        ],
        "tags": [],
    }
    (files / "test-full.json").write_text(json.dumps(FULL))
    (files / "test-second.json").write_text(json.dumps(second))
    (files / "broken.json").write_text('{"namespace": "OS::Test::Broken", "visibility": "shared"}')
    loaded = metadefs_command(site, "load", str(files))
    assert loaded.returncode == 1, loaded.stdout + loaded.stderr
    assert "broken.json: not loaded" in loaded.stderr and "visibility" in loaded.stderr
    assert "namespace OS::Test::Full loaded" in loaded.stdout and "namespace OS::Test::Second loaded" in loaded.stdout
    shown = await http.call("alpha", "GET", NS + "/OS::Test::Full")
    assert shown["properties"] == FULL["properties"] and [t["name"] for t in shown["tags"]] == ["fast", "slow"]

    # Loading again leaves what exists unless told to replace it (protected or not).
    (files / "broken.json").unlink()
    again = metadefs_command(site, "load", str(files))
    assert again.returncode == 0 and "exists; left as it is" in again.stdout
    changed = {**FULL, "description": "replaced"}
    (files / "test-full.json").write_text(json.dumps(changed))
    assert metadefs_command(site, "load", "--overwrite", str(files)).returncode == 0
    assert (await http.call("alpha", "GET", NS + "/OS::Test::Full"))["description"] == "replaced"

    out = tmp_path / "exported"
    exported = metadefs_command(site, "export", str(out))
    assert exported.returncode == 0, exported.stderr
    docs = {p.name: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(docs) == {"OS-Test-Full.json", "OS-Test-Second.json"}
    assert docs["OS-Test-Second.json"] == second
    assert docs["OS-Test-Full.json"] == {**changed, "tags": [{"name": "fast"}, {"name": "slow"}]}


async def test_concurrent_creates_of_one_name_make_one(http: Http) -> None:
    """Repeats the race: many creates of one namespace (and one tag, in any case) at once; one
    wins, the others are told it exists, and the namespace holds that one."""
    for round_ in range(5):
        name = "race-%d" % round_
        answers = await asyncio.gather(
            *(
                http.session.post(http.daemon.url + NS, json={"namespace": name}, headers=ADMIN_HEADERS)
                for _ in range(8)
            )
        )
        statuses = sorted(r.status for r in answers)
        for r in answers:
            r.release()
        assert statuses == [201] + [409] * 7, statuses
        tags = await asyncio.gather(
            *(
                http.session.post(http.daemon.url + NS + "/%s/tags/%s" % (name, tag), headers=ADMIN_HEADERS)
                for tag in ("t", "T", "t", "T")
            )
        )
        assert sorted(r.status for r in tags) == [201, 409, 409, 409]
        for r in tags:
            r.release()
        assert len((await http.call("admin", "GET", NS + "/%s/tags" % name))["tags"]) == 1


async def test_names_with_control_characters_are_refused_and_create_nothing(http: Http) -> None:
    """A namespace name travels in the 201's Location header: a control character in it used to
    store the namespace and then drop the connection (aiohttp refuses the header)."""
    for name in ("[b]n\x1b", "a\r\nX-Injected: 1", "tab\there"):
        body = await http.call("admin", "POST", "/v2/metadefs/namespaces", 400, json={"namespace": name})
        assert "control characters" in body["message"], body
    tags = {"namespace": "ok-ns", "tags": [{"name": "t\x07"}]}
    await http.call("admin", "POST", "/v2/metadefs/namespaces", 400, json=tags)
    listed = await http.call("admin", "GET", "/v2/metadefs/namespaces")
    assert listed["namespaces"] == []
    # Free text keeps its line breaks.
    await http.call("admin", "POST", "/v2/metadefs/namespaces", 201, json={"namespace": "ok", "description": "a\nb"})
    assert (await http.call("admin", "GET", "/v2/healthcheck".replace("/v2", ""))) == b"OK"
