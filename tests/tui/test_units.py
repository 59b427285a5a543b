"""Pure pieces of the TUI, table-driven: sizes, bars, rates and ETAs, task rows, the URL form's
guesses, and the keyed table's in-place sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from textual.app import App, ComposeResult

from tui.dialogs.import_url import guess_disk_format, name_from_uri
from tui.display import capacity_bar, human_bytes, human_duration, human_pair, human_rate, progress_bar
from tui.panes.queues import method_of, task_order, task_row
from tui.polling import PollState
from tui.rate import TransferRates, eta_seconds
from tui.theme import DEFAULT_THEME, remember_theme, starting_theme
from tui.widgets.keyed_table import KeyedTable


@pytest.mark.parametrize(
    "n, shown",
    [
        (None, "—"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (100 * 1024, "100 KiB"),
        (1023 * 1024 * 1024, "1023 MiB"),
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**5, "3.0 PiB"),
    ],
)
def test_human_bytes(n: int | None, shown: str) -> None:
    assert human_bytes(n) == shown
    assert len(shown) <= 8


@pytest.mark.parametrize(
    "done, total, shown",
    [
        (None, None, "—"),
        (1024, None, "1.0 KiB/?"),
        (1 << 20, 4 << 20, "1.0/4.0 MiB"),
        (512 << 20, 2 << 30, "512 MiB/2.0 GiB"),
    ],
)
def test_human_pair(done: int | None, total: int | None, shown: str) -> None:
    assert human_pair(done, total) == shown


@pytest.mark.parametrize(
    "seconds, shown", [(None, "—"), (0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600, "1h00m"), (93784, "1d02h")]
)
def test_human_duration(seconds: float | None, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_bars() -> None:
    assert progress_bar(1, 4).plain == "██░░░░░░  25%"
    assert progress_bar(5, 4).plain == "████████ 100%"
    assert progress_bar(3, None).plain.endswith("?")
    assert capacity_bar(100, 50, 25, width=10).plain == "██▓▓▓░░░░░"
    assert capacity_bar(0, 0, 0, width=4).plain == "░░░░"
    assert human_rate(2048) == "2.0 KiB/s" and human_rate(None) == "—"


def test_rates_smooth_successive_samples_and_give_an_eta() -> None:
    rates = TransferRates(smoothing=0.5)
    assert rates.observe("t", 0, at=10.0) is None  # one sample: no slope yet
    assert rates.observe("t", 1000, at=11.0) == 1000.0
    assert rates.observe("t", 4000, at=12.0) == 2000.0  # halfway between 1000 and 3000
    assert rates.observe("t", 4000, at=12.0) == 2000.0  # same instant: unchanged
    assert eta_seconds(4000, 10000, 2000.0) == 3.0
    assert eta_seconds(4000, None, 2000.0) is None
    assert eta_seconds(4000, 10000, 0.0) is None
    rates.keep_only(set())
    assert rates.rate("t") is None


def test_task_rows() -> None:
    task: dict[str, Any] = {
        "id": "t1",
        "status": "processing",
        "bytes_done": 1 << 30,
        "bytes_total": 4 << 30,
        "message": "",
        "created_at": "2026-01-01T00:00:00Z",
        "input": {"import_req": {"method": {"name": "web-download", "uri": "https://x/y"}}, "backend": ["local"]},
    }
    row = task_row(task, "cirros", rate=float(1 << 20))
    assert row[0:3] == ("cirros", "processing", "")  # the message right after the status
    assert row[3].plain == "██░░░░░░  25%"
    assert row[4:7] == ("1.0/4.0 GiB", "1.0 MiB/s", "51m12s")
    assert row[7] == "web-download → local"
    done = dict(task, status="success", bytes_total=None)
    assert task_row(done, "cirros", None)[5:7] == ("—", "—")
    assert method_of({"type": "api_image_import"}) == "api_image_import"
    older = dict(task, created_at="2025-01-01T00:00:00Z")
    failed = dict(task, status="failure")
    assert sorted([failed, older, task], key=task_order) == [task, older, failed]


@pytest.mark.parametrize(
    "uri, name, fmt",
    [
        ("https://cloud.debian.org/images/debian-12.qcow2", "debian-12.qcow2", "qcow2"),
        ("http://x/disk.raw", "disk.raw", "raw"),
        ("http://x/win.vhdx?sig=1", "win.vhdx", "vhdx"),
        ("http://x/", "", "qcow2"),
        ("http://x/ubuntu.img", "ubuntu.img", "qcow2"),
    ],
)
def test_url_form_guesses(uri: str, name: str, fmt: str) -> None:
    assert name_from_uri(uri) == name
    assert guess_disk_format(uri) == fmt


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield KeyedTable([("a", "A", 5), ("b", "B", 5)])


async def test_keyed_table_syncs_in_place() -> None:
    app = TableApp()
    async with app.run_test() as pilot:
        table = app.query_one(KeyedTable)
        assert table.sync_rows([("k1", ("1", "x")), ("k2", ("2", "y"))])
        await pilot.pause()
        assert table.keys == ["k1", "k2"] and table.row_count == 2
        table.move_cursor(row=1)
        assert not table.sync_rows([("k1", ("1", "x")), ("k2", ("2", "y"))])  # nothing to do
        assert table.sync_rows([("k0", ("0", "w")), ("k2", ("2", "Y"))])  # k1 gone, k0 new, k2 changed
        await pilot.pause()
        assert table.keys == ["k0", "k2"]
        assert [[table.cell_text(k, c) for c in "ab"] for k in ("k0", "k2")] == [["0", "w"], ["2", "Y"]]
        assert table.highlighted_key == "k2"  # the cursor stays on its row
        big = [("r%03d" % i, (str(i), "z")) for i in range(200)]
        table.sync_rows(big)
        await pilot.pause()
        assert table.row_count == 200 and table.cell_text("r150", "a") == "150"
        table.sync_rows(big[:10])  # many removals: one rebuild
        await pilot.pause()
        assert table.keys == [k for k, _ in big[:10]]
        assert table.virtual_size.height == 11  # header + rows, without measuring cells


class CountingTable(KeyedTable):
    drawn: ClassVar[list[str]] = []

    def render_value(self, column: str, value: Any) -> Any:
        self.drawn.append(value)
        return super().render_value(column, value)


class ManyRowsApp(App[None]):
    def compose(self) -> ComposeResult:
        yield CountingTable([("a", "A", 6), ("b", "B", 5)])


async def test_keyed_table_draws_only_the_rows_shown() -> None:
    """10,000 rows added in bulk cost no cell renderings until drawn: only the rows on screen
    (and any asked for) are rendered, so a first load of 10,000 images does not build 70,000 Texts."""
    CountingTable.drawn.clear()
    app = ManyRowsApp()
    async with app.run_test(size=(40, 12)) as pilot:
        table = app.query_one(CountingTable)
        table.add_keyed_rows([("r%05d" % i, ("n%05d" % i, "z")) for i in range(10_000)])
        await pilot.pause()
        assert table.row_count == 10_000
        assert "n00000" in CountingTable.drawn and len(CountingTable.drawn) < 2 * 12
        assert table.cell_text("r09999", "a") == "n09999"  # rendered when asked for
        table.action_scroll_bottom()
        await pilot.pause()
        assert "n09990" in CountingTable.drawn and len(CountingTable.drawn) < 4 * 12


async def test_import_form_needs_a_url_and_fills_in_the_rest() -> None:
    from textual.widgets import Static

    from tests.tui.fake_daemon import FakeDaemon
    from tui.app import make_app
    from tui.config import TuiConfig
    from tui.dialogs.import_url import ImportUrlScreen, UrlImport

    app = make_app(TuiConfig(socket="/nonexistent", refresh_seconds=3600), client=FakeDaemon())
    answers: list[UrlImport | None] = []
    async with app.run_test() as pilot:
        await app.push_screen(ImportUrlScreen(), answers.append)
        await pilot.press("enter")  # no URL yet: the form says so and stays
        error = app.screen.query_one("#import-error", Static)
        assert error.display and "Enter the URL" in str(error.content)
        app.screen.query_one("#import-uri").insert_text_at_cursor("https://mirror.example.org/a/disk.vhdx")
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
    assert answers == [UrlImport("https://mirror.example.org/a/disk.vhdx", "disk.vhdx", "vhdx", "bare")]


def test_a_restart_is_told_from_the_daemon_start_time() -> None:
    """(uptime, asked, answered) on our monotonic clock: a slow answer is the same process; an
    uptime that went down, or a start later than the last one's latest possible, is a new one."""
    state = PollState()
    assert not state.restarted(100, 1000.0, 1000.2)  # the first answer
    assert not state.restarted(101, 1001.0, 1004.5)  # a slow answer: it started no later
    assert not state.restarted(103, 1003.1, 1003.2)
    assert state.restarted(3, 1010.0, 1010.1)  # its uptime went down
    assert not state.restarted(193, 1200.0, 1200.1)  # the same process, much later
    assert state.restarted(120, 1300.0, 1300.1)  # down longer than it had been up, and back
    assert not state.restarted("?", 1301.0, 1301.1)  # an answer without an uptime says nothing


def test_a_theme_that_cannot_be_remembered_is_logged_not_raised(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    remember_theme(state, "nord")
    assert starting_theme(state, {"nord"}, environ={}) == "nord"
    assert starting_theme(state, {"gruvbox"}, environ={}) == DEFAULT_THEME  # no longer installed
    assert starting_theme(state, {"nord", "gruvbox"}, environ={"TEXTUAL_THEME": "gruvbox"}) == "gruvbox"
    state.write_text("{not json")
    assert starting_theme(state, {"nord"}, environ={}) == DEFAULT_THEME
    blocked = tmp_path / "a-file" / "state.json"  # its folder cannot be made
    (tmp_path / "a-file").write_text("")
    remember_theme(blocked, "nord")
    assert not blocked.exists() and not [p for p in tmp_path.rglob(".state-*")]  # no half-written file left
