"""StoreNames: the one answer to "which stores exist here" (local stores, a hub's sites, an edge's `central`)."""

from __future__ import annotations

from typing import Any

from appliance.storenames import StoreNames


class Sites:
    def __init__(self, *names: str) -> None:
        self.registered = list(names)

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.registered))


def test_an_edge_without_a_hub_has_its_own_stores_only() -> None:
    names = StoreNames(["local", "fast"])
    assert names.local() == ("local", "fast")
    assert names.remote() == () and names.all() == ("local", "fast")


def test_an_edge_with_a_hub_names_the_hub_central_after_its_own_stores() -> None:
    names = StoreNames(["local"], hub=True)
    assert names.hub() == ("central",) and names.sites() == ()
    assert names.all() == ("local", "central")


def test_a_hubs_sites_are_stores_as_they_register() -> None:
    sites: Any = Sites("dcn1")
    names = StoreNames(["local"], sites)
    assert names.all() == ("local", "dcn1")
    sites.registered.append("dcn0")
    assert names.sites() == ("dcn0", "dcn1") and names.remote() == ("dcn0", "dcn1")
    assert names.all() == ("local", "dcn0", "dcn1")
