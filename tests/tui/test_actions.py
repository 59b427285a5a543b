"""Each action changes the real daemon's state (checked through its API) or shows the daemon's
own error message; destructive ones ask first."""

from __future__ import annotations

import os

from textual.message import Message
from textual.notifications import Notify
from textual.widgets import OptionList

from tests.conftest import Daemon
from tests.tui.conftest import SiteApi, confirm, open_images, socket_config, type_text, url_config, wait_until
from tui.app import make_app
from tui.dialogs.choose import StoreChoiceScreen
from tui.dialogs.confirm import ConfirmScreen
from tui.dialogs.import_url import ImportUrlScreen
from tui.messages import ActionFailed, CopyStarted, ImageDeleted, ImportStarted, StoreCopyDeleted, UriRefused
from tui.panes.images import ImageTable


def errors(seen: list[Message]) -> list[str]:
    return [str(m.notification.message) for m in seen if isinstance(m, Notify) and m.notification.severity == "error"]


async def test_delete_image_asks_then_deletes(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("doomed", os.urandom(1024))
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        await open_images(app, pilot, 1)
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")  # cancel: nothing happens
        assert not isinstance(app.screen, ConfirmScreen)
        await app.workers.wait_for_complete()
        assert (await site_api.image(image["id"]))["status"] == "active"
        await pilot.press("d")
        await confirm(pilot)
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: any(isinstance(m, ImageDeleted) for m in seen), what="ImageDeleted")
        await site_api.call("GET", "/v2/images/%s" % image["id"], 404)
        await wait_until(pilot, lambda: app.query_one(ImageTable).row_count == 0, what="row gone")
        assert any(isinstance(m, Notify) and "Deleted image doomed" in str(m.notification.message) for m in seen)


async def test_deleting_a_protected_image_shows_the_daemons_403_message(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("precious", protected=True)
    seen: list[Message] = []
    app = make_app(url_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        await open_images(app, pilot, 1)
        await pilot.press("d")
        await confirm(pilot)
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: any(isinstance(m, ActionFailed) for m in seen), what="ActionFailed")
        failed = next(m for m in seen if isinstance(m, ActionFailed))
        assert failed.message == "Image %s is protected and cannot be deleted." % image["id"]
        assert failed.message in errors(seen)
        await site_api.image(image["id"])  # still there


async def test_copy_to_store_adds_the_store_after_the_task(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("copied", os.urandom(256 * 1024))
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        table = await open_images(app, pilot, 1)
        await pilot.press("c")
        assert isinstance(app.screen, StoreChoiceScreen)
        options = app.screen.query_one(OptionList)
        assert [options.get_option_at_index(i).id for i in range(options.option_count)] == [
            "fast"
        ]  # not local: it is there
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: any(isinstance(m, CopyStarted) for m in seen), what="CopyStarted")
        tasks = await site_api.wait_tasks_done(image["id"])
        assert tasks[0]["status"] == "success"
        assert (await site_api.image(image["id"]))["stores"] == "local,fast"
        await wait_until(pilot, lambda: table.cell_text(image["id"], "stores") == "local,fast", what="stores cell")
        # The task shows on Queues, done.
        await pilot.press("3")
        queue = app.queues.table
        await wait_until(pilot, lambda: queue.row_count == 1, what="task row")
        key = queue.keys[0]
        assert queue.cell_text(key, "image") == "copied"
        assert queue.cell_text(key, "status") == "success"
        assert queue.cell_text(key, "progress").endswith("100%")
        assert queue.cell_text(key, "method") == "copy-image → fast"


async def test_delete_from_store_removes_one_copy_and_the_last_copy_is_refused(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("twice", os.urandom(4096))
    await site_api.copy(image["id"], "fast")
    await site_api.wait_tasks_done(image["id"])
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        table = await open_images(app, pilot, 1)
        await wait_until(pilot, lambda: table.cell_text(image["id"], "stores") == "local,fast")
        await pilot.press("x")
        assert isinstance(app.screen, StoreChoiceScreen)
        await pilot.press("j", "enter")  # local, fast → fast
        assert isinstance(app.screen, ConfirmScreen)
        await confirm(pilot)
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: any(isinstance(m, StoreCopyDeleted) for m in seen), what="StoreCopyDeleted")
        copy_deleted = next(m for m in seen if isinstance(m, StoreCopyDeleted))
        assert copy_deleted.store == "fast"
        assert (await site_api.image(image["id"]))["stores"] == "local"
        await wait_until(pilot, lambda: table.cell_text(image["id"], "stores") == "local", what="stores cell")
        # The only copy: the daemon refuses and the TUI shows why.
        await pilot.press("x", "enter")
        await confirm(pilot)
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: any(isinstance(m, ActionFailed) for m in seen), what="ActionFailed")
        failed = next(m for m in seen if isinstance(m, ActionFailed))
        assert "only store" in failed.message and image["id"] in failed.message
        assert failed.message in errors(seen)
        assert (await site_api.image(image["id"]))["stores"] == "local"


async def test_import_from_a_refused_url_shows_the_refusal_and_creates_nothing(site: Daemon, site_api: SiteApi) -> None:
    before = await site_api.images()
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        await open_images(app, pilot, len(before))
        await pilot.press("n")
        assert isinstance(app.screen, ImportUrlScreen)
        await type_text(pilot, "http://169.254.169.254/latest/disk.qcow2")
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: any(isinstance(m, UriRefused) for m in seen), what="UriRefused")
        refused = next(m for m in seen if isinstance(m, UriRefused))
        assert refused.reason == "host 169.254.169.254 is a cloud metadata address"
        assert any("cloud metadata address" in e and "Nothing was created" in e for e in errors(seen))
        assert not any(isinstance(m, ImportStarted) for m in seen)
        assert await site_api.images() == before
        # Loopback is refused too.
        await pilot.press("n")
        await type_text(pilot, "http://127.0.0.1/disk.qcow2")
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: sum(isinstance(m, UriRefused) for m in seen) == 2, what="second refusal")
        assert await site_api.images() == before
