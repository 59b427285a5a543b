"""HubLookups: remembered hub misses and per-project lookup budgets (issue 12), on a fake clock."""

from __future__ import annotations

import pytest

from appliance.config import HubConfig
from appliance.errors import NotFound, TooManyRequests
from appliance.hub.lookup import HubLookups


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**conf: int) -> tuple[HubLookups, Clock]:
    clock = Clock()
    return HubLookups(HubConfig(**conf), clock=clock), clock


def test_a_miss_is_answered_from_memory_until_the_ttl_passes() -> None:
    lookups, clock = make(miss_ttl=30)
    lookups.admit("a", "p")
    lookups.missed("a")
    clock.now += 29
    with pytest.raises(NotFound, match="not known at the hub 29 s ago"):
        lookups.admit("a", "p")
    clock.now += 2
    lookups.admit("a", "p")  # asked again after the TTL


def test_a_found_image_is_forgotten_as_a_miss_and_ttl_zero_remembers_nothing() -> None:
    lookups, _ = make(miss_ttl=30)
    lookups.missed("a")
    lookups.found("a")
    lookups.admit("a", "p")
    lookups, _ = make(miss_ttl=0)
    lookups.missed("a")
    lookups.admit("a", "p")


def test_the_miss_memory_is_bounded_oldest_first() -> None:
    lookups, _ = make(miss_ttl=30, miss_cache_size=3, lookup_burst=100)
    for name in "abcd":
        lookups.missed(name)
    lookups.admit("a", "p")  # forgotten: the oldest of four
    for name in "bcd":
        with pytest.raises(NotFound):
            lookups.admit(name, "p")


def test_each_project_has_its_own_bucket_refilled_over_time() -> None:
    lookups, clock = make(lookup_burst=3, lookups_per_minute=60)
    for i in range(3):
        lookups.admit("id%d" % i, "p")
    with pytest.raises(TooManyRequests, match="project p"):
        lookups.admit("id3", "p")
    lookups.admit("id3", "q")  # another project is not held back
    clock.now += 1.0  # one lookup a second comes back
    lookups.admit("id4", "p")
    with pytest.raises(TooManyRequests):
        lookups.admit("id5", "p")
    assert lookups.refused == 2
