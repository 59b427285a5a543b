"""An edge mirrors a plain OpenStack Glance hub's metadata definitions (the session's Glance,
tests/glance_server.py): a namespace made at Glance shows at the edge with Glance's contents, and
goes when Glance's does."""

from __future__ import annotations

import uuid

from tests.hub.test_openstack_glance_hub import Cloud
from tests.hub.test_openstack_glance_hub import cloud as cloud  # the fixture
from tests.hub.test_openstack_glance_hub import glance_hub as glance_hub  # the fixture
from tests.integration.test_metadefs_edge import bare
from tests.waiting import eventually

NS = "/v2/metadefs/namespaces"


async def test_the_edge_mirrors_glances_namespaces(cloud: Cloud) -> None:
    name = "OS::Edge::%s" % uuid.uuid4().hex[:8]
    body = {
        "namespace": name,
        "visibility": "public",
        "description": "made at Glance",
        "properties": {"speed": {"title": "Speed", "type": "integer"}},
        "objects": [{"name": "Obj", "properties": {"p": {"title": "P", "type": "string"}}}],
        "tags": [{"name": "t1"}],
        "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "e_"}],
    }
    await cloud.at_glance("POST", NS, 201, json=body)
    try:
        edge = cloud.start_edge()

        async def mirrored() -> bool:
            async with cloud.session.get(edge.url + NS + "/" + name, headers={"X-Auth-Token": edge.token}) as resp:
                return resp.status == 200

        await eventually(mirrored, "the edge to mirror Glance's namespace")
        at_glance = await cloud.at_glance("GET", NS + "/" + name)
        at_edge = await cloud.at_edge(edge, "GET", NS + "/" + name)
        assert bare(at_edge) == bare(at_glance)
        refusal = await cloud.at_edge(edge, "DELETE", NS + "/" + name, 409)
        assert cloud.glance.url in refusal["message"]
    finally:
        await cloud.at_glance("DELETE", NS + "/" + name, 204)

    async def gone() -> bool:
        async with cloud.session.get(edge.url + NS + "/" + name, headers={"X-Auth-Token": edge.token}) as resp:
            return resp.status == 404

    await eventually(gone, "Glance's deletion to reach the edge")
