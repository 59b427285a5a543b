"""The hub client layer (appliance/hub/) sits below the services: nothing in it reaches, even
through another module, the byte cache, the image service, the hub link, the API or the
composition root (issue 15)."""

from __future__ import annotations

from tests.unit.test_imports_graph import import_graph

ABOVE = (
    "appliance.cache",
    "appliance.images",
    "appliance.hublink",
    "appliance.services",
    "appliance.api",
    "appliance.app",
    "appliance.imports",
    "appliance.sites",
)


def reached(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_hub_client_layer_imports_nothing_above_it() -> None:
    graph = import_graph()
    hub = sorted(name for name in graph if name == "appliance.hub" or name.startswith("appliance.hub."))
    assert {"appliance.hub.client", "appliance.hub.lookup", "appliance.hub.records", "appliance.hub.transfer"} <= set(
        hub
    )
    upward = {name: sorted(m for m in reached(graph, name) if m.startswith(ABOVE)) for name in hub}
    assert {name: found for name, found in upward.items() if found} == {}


def test_the_services_ask_hub_records_not_the_cache() -> None:
    graph = import_graph()
    for user in ("appliance.images", "appliance.hublink"):
        assert "appliance.hub.lookup" in graph[user]
