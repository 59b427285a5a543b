"""Pure pieces of the cache, hub and sites views, table-driven: ages, the usage bar, queue rows
merged with fills, an image's cache line, placements and the Overview's hub and sites lines."""

from __future__ import annotations

from typing import Any

import pytest

from tui.display import ago, iso_epoch, usage_bar
from tui.panes.cache import figures_text, off_text, queue_row, queue_rows, queue_state
from tui.panes.images import cache_notes
from tui.panes.overview import hub_text
from tui.panes.sites import placements, sites_summary

NOW = 1_800_000_000.0
MiB = 1 << 20


@pytest.mark.parametrize(
    "at, coarse, shown",
    [
        (None, False, "—"),
        (NOW, False, "0s ago"),
        (NOW - 42, False, "42s ago"),
        (NOW - 185, False, "3m05s ago"),
        (NOW - 185, True, "3m ago"),
        (NOW - 7300, True, "2h ago"),
        (NOW - 3 * 86400 - 5, True, "3d ago"),
        (NOW + 75, False, "in 1m15s"),
        (NOW + 0.2, False, "0s ago"),
    ],
)
def test_ago(at: float | None, coarse: bool, shown: str) -> None:
    assert ago(at, NOW, coarse=coarse) == shown


def test_iso_epoch() -> None:
    assert iso_epoch("2027-01-15T08:00:00Z") == 1800000000.0
    assert iso_epoch(None) is None and iso_epoch("") is None and iso_epoch("yesterday") is None


@pytest.mark.parametrize(
    "used, shown, colour",
    [
        (0, "░░░░░░░░░│", "dim"),
        (50, "█████░░░░│", "green"),
        (80, "████████░│", "yellow"),
        (95, "█████████│", "red"),
    ],
)
def test_usage_bar_marks_the_high_watermark(used: int, shown: str, colour: str) -> None:
    bar = usage_bar(used, 100, low=75, high=90, width=10)  # the mark: 90 % of 10 cells
    assert bar.plain == shown
    assert colour in str(bar.spans[0].style)


VIEW: dict[str, Any] = {
    "entries": [{"image_id": "e1", "size": 4 * MiB, "hits": 3, "cached_at": NOW - 60, "last_accessed": NOW - 5}],
    "queue": [
        {
            "image_id": "q1",
            "queued_at": NOW - 600,
            "attempts": 2,
            "last_error": "hub down",
            "next_attempt_at": NOW + 30,
        },
        {"image_id": "f1", "queued_at": NOW - 10, "attempts": 0, "last_error": "", "next_attempt_at": NOW - 10},
        {"image_id": "q2", "queued_at": NOW - 5, "attempts": 0, "last_error": "", "next_attempt_at": NOW - 5},
    ],
    "fills": [
        {"image_id": "f1", "bytes_done": MiB, "bytes_total": 4 * MiB},
        {"image_id": "f2", "bytes_done": 0, "bytes_total": 2 * MiB},
    ],
}


def test_queue_rows_merge_fills_with_the_queue() -> None:
    rows = queue_rows(VIEW)
    assert list(rows) == ["f1", "f2", "q1", "q2"]  # fills first
    assert [queue_state(r) for r in rows.values()] == ["filling", "filling", "retry", "queued"]
    name = "img"
    assert [str(v) for v in queue_row(rows["q1"], name, NOW)[1:]] == ["retry", "—", "2", "in 30s", "hub down"]
    assert [str(v) for v in queue_row(rows["q2"], name, NOW)[1:]] == ["queued", "—", "0", "due", ""]
    f1 = queue_row(rows["f1"], name, NOW)
    assert f1[2].plain.endswith("25%") and f1[3:5] == ("0", "—")
    assert queue_row(rows["f2"], name, NOW)[3:] == ("—", "—", "")  # a client's read, not queued


def test_cache_notes_say_what_the_cache_holds_of_each_image() -> None:
    assert cache_notes(VIEW) == {
        "e1": "cached copy, 4.0 MiB · 3 hit(s)",
        "q1": "queued for caching · 2 failed attempt(s): hub down",
        "f1": "filling 1.0/4.0 MiB",
        "f2": "filling 0 B/2.0 MiB",
        "q2": "queued for caching",
    }


def test_figures_and_the_off_text() -> None:
    cache = {
        "enabled": True,
        "max_size": 100 * MiB,
        "used_bytes": 80 * MiB,
        "high_watermark": 90,
        "low_watermark": 75,
        "entries_count": 4,
        "fills_count": 1,
        "stats": {
            "hits": 1,
            "misses": 3,
            "hit_ratio": 0.25,
            "bytes_from_cache": MiB,
            "bytes_from_upstream": 3 * MiB,
            "evictions": 2,
            "invalid": 1,
            "uncached": 5,
        },
    }
    lines = figures_text(cache).plain.splitlines()
    assert lines[0].startswith("Used     80.0 MiB of 100 MiB (80%) ") and lines[0].endswith("high 90% · low 75%")
    assert lines[1] == "Hits     25% · 1 hit, 3 misses · from cache 1.0 MiB, from upstream 3.0 MiB"
    assert lines[2] == "Entries  4 cached · 1 filling · evictions 2 · invalid 1 · uncached 5"
    assert "no hub" in off_text({}).plain
    assert "[cache] enabled = false" in off_text({"hub": {"configured": True}}).plain
    assert "This is the hub" in off_text({"site": {"role": "hub"}}).plain


def test_hub_line() -> None:
    edge = {"site": {"role": "edge"}}
    assert hub_text({**edge, "hub": {"configured": False}}, NOW, str).plain == "Hub     not configured"
    hub = {
        "configured": True,
        "url": "http://hub:9292",
        "state": "down",
        "site_api": True,
        "registered": True,
        "last_sync": NOW - 125,
        "last_error": "connection refused",
        "pulls": [{"image_id": "abc", "bytes_done": MiB, "bytes_total": 2 * MiB}],
    }
    assert hub_text({**edge, "hub": hub}, NOW, str.upper).plain.splitlines() == [
        "Hub     down · http://hub:9292 · last sync 2m05s ago",
        "        connection refused",
        "        pulling ABC ████░░░░  50% 1.0/2.0 MiB",
    ]
    fresh = {**hub, "last_sync": None, "registered": False, "site_api": False, "last_error": None, "pulls": []}
    assert (
        hub_text({**edge, "hub": fresh}, NOW, str).plain
        == "Hub     down · http://hub:9292 · never synced · plain Glance (no sites API)"
    )


def test_sites_lines_and_placements() -> None:
    sites = [
        {"name": "a", "online": True, "last_seen": "2027-01-15T08:00:00Z"},
        {"name": "b", "online": False, "last_seen": "2027-01-15T07:00:00Z"},
    ]
    assert sites_summary(sites, NOW + 10).plain == "1 online · 1 offline: b (seen 1h00m ago)"
    assert sites_summary([], NOW).plain == "none registered yet"
    assert hub_text({"site": {"role": "hub"}}, NOW, str, None).plain == "Sites   loading…"
    images = [{"id": "1", "stores": "central,a"}, {"id": "2", "stores": "central"}, {"id": "3"}]
    assert {k: [i["id"] for i in v] for k, v in placements(images).items()} == {"central": ["1", "2"], "a": ["1"]}
