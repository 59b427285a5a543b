"""The Images screen's second set of actions: upload a local file, protect / unprotect,
deactivate / reactivate, edit name, tags and properties, retry a failed import, at an edge pin a
local copy of a hub image, on a hub copy an image to edge sites.

Each is offered where the daemon will do it: `refusal()` says why not (role, the image's owner,
its state) before anything is sent, and the key then explains instead of acting. What the daemon
answers is shown as it said it, as plain text."""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any, ClassVar, cast

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message

from tui.client import DaemonError, DaemonUnavailable
from tui.dialogs.choose import ManyChoiceScreen, StoreChoiceScreen
from tui.dialogs.confirm import ConfirmScreen
from tui.dialogs.edit_image import EditImageScreen
from tui.dialogs.upload import FileUpload, UploadOutcome, UploadProgressScreen, UploadScreen
from tui.display import visible
from tui.guard import while_running
from tui.imagefacts import FAILED_IMPORT, HUB_STORE, IMPORTING_TO, image_label, split_list, store_list
from tui.messages import ActionFailed
from tui.panes.acting import ActingPane
from tui.session import Session, is_hub

Json = dict[str, Any]

# The keys (bound on the app, as every pane key is) and the command palette's entries.
KEYS: list[BindingType] = [
    Binding("u", "upload_file", "Upload", show=False),
    Binding("e", "edit_image", "Edit", show=False),
    Binding("P", "toggle_protected", "Protect", show=False),
    Binding("a", "toggle_active", "(De)activate", show=False),
    Binding("R", "retry_import", "Retry", show=False),
    Binding("h", "pin_from_hub", "Pin", show=False),
    Binding("s", "copy_to_sites", "To sites", show=False),
]
PALETTE: list[tuple[str, str, str]] = [
    ("upload_file", "Upload a file as an image", "a local file into a new image, with progress (key u)"),
    ("edit_image", "Edit image", "name, tags and properties of the highlighted image (key e)"),
    ("toggle_protected", "Protect / unprotect image", "the highlighted image's protected flag (key P)"),
    ("toggle_active", "Deactivate / reactivate image", "refuse or allow non-admin downloads again (key a)"),
    ("retry_import", "Retry failed import", "the highlighted image's failed import, as it was asked (key R)"),
    ("pin_from_hub", "Pin a copy from the hub", "glance-download the hub image into this site's store (key h)"),
    ("copy_to_sites", "Copy image to sites", "copy-image to edge sites: each pulls it (key s)"),
]
# Help lines: (keys, what they do).
HELP: list[tuple[str, str]] = [
    ("u", "upload a local file as a new image, with progress; esc cancels (Images)"),
    ("e", "edit the highlighted image's name, tags and properties (Images)"),
    ("P", "protect / unprotect the highlighted image (Images)"),
    ("a", "deactivate / reactivate the highlighted image (Images)"),
    ("R", "retry the highlighted image's failed import (Images)"),
    ("h", "at an edge: pin a local copy of a hub image (glance-download) (Images)"),
    ("s", "on a hub: copy the highlighted image to edge sites (Images)"),
]
ACTIONS = frozenset(action for action, _, _ in PALETTE)
NEEDS_SELECTION = ACTIONS - {"upload_file"}
# Import methods a failed task can be asked again with, and the image status each needs.
RETRYABLE = {"web-download": "queued", "glance-download": "queued", "copy-image": "active"}


class ImageActionDone(Message, bubble=False):
    """An action of this module succeeded: `said` is the notification (already `visible`)."""

    def __init__(self, title: str, said: str, full: bool = True) -> None:
        super().__init__()
        self.title = title
        self.said = said
        self.full = full


def refusal(action: str, image: Json | None, session: Session) -> str | None:
    """Why the daemon would not do `action` to `image` here, or None if it would (as far as the
    TUI can tell: the daemon still decides, and its answer is shown)."""
    hub_site = is_hub(session.status)
    if action == "copy_to_sites" and not hub_site:
        return "Only a hub copies images to edge sites"
    if action == "pin_from_hub" and session.hub_url() is None:
        return "Only an edge with a hub pins hub images"
    if image is None:
        return None if action == "upload_file" else "Highlight an image first"
    name, status = image_label(image), str(image.get("status"))
    stores = store_list(image)
    own = set(stores) & set(session.own_stores())
    from_hub = session.hub_url() is not None and HUB_STORE in stores
    if from_hub and not session.has_token and action in ("edit_image", "toggle_protected", "toggle_active"):
        # The daemon makes a hub image's changes at the hub with the caller's Keystone token.
        return (
            "%s belongs to the hub %s: the daemon changes it there with the caller's Keystone token only, and "
            "this TUI (on the Unix socket) has none: change it at the hub" % (name, visible(session.hub_url()))
        )
    if action == "toggle_active" and status not in ("active", "deactivated"):
        return "%s is %s: the daemon deactivates active images and reactivates deactivated ones" % (
            name,
            visible(status),
        )
    if action == "pin_from_hub":
        if not from_hub:
            return "%s is not a hub image (it has no copy at the hub, %s)" % (name, HUB_STORE)
        if status != "active":
            return "%s is %s at the hub: only active images can be pulled" % (name, visible(status))
        if own:
            return "%s already has a copy in store %s of this site" % (name, visible(", ".join(sorted(own))))
    if action == "copy_to_sites":
        if status != "active":
            return "%s is %s: copy-image needs an active image" % (name, visible(status))
        if not own:
            return "%s has no copy in a store of this hub, and edge sites pull from one" % name
        if not site_targets(image, session):
            return "%s is in every edge site already (or on its way)" % name
    return None


def site_targets(image: Json, session: Session) -> list[tuple[str, str]]:
    """On a hub, the sites the image can be copied to: not holding it, not pulling it."""
    taken = set(store_list(image)) | set(split_list(image.get(IMPORTING_TO)))
    return [
        (str(s["name"]), "online" if s.get("online") else "offline: pulls when it is back")
        for s in session.sites or ()
        if str(s["name"]) not in taken
    ]


def retry_request(image: Json, tasks: list[Json]) -> tuple[Json | None, str]:
    """The import request to send again for the image's latest failed import, or (None, why not)."""
    if not tasks:
        return None, "%s has no import task to retry" % image_label(image)
    latest = max(tasks, key=lambda t: str(t.get("created_at") or ""))
    if latest.get("status") != "failure":
        return None, "%s's latest import did not fail (it is %s)" % (image_label(image), visible(latest.get("status")))
    task_input = latest.get("input") or {}
    body = task_input.get("import_req") if isinstance(task_input, dict) else None
    method = ((body or {}).get("method") or {}).get("name") if isinstance(body, dict) else None
    if not isinstance(body, dict) or method not in RETRYABLE:
        if method == "glance-direct":
            return None, "Its staged data went with the failure: upload the file again (u)"
        return None, "The daemon cannot run a %s import again" % visible(method or "?")
    needs = RETRYABLE[str(method)]
    if image.get("status") != needs:
        return None, "%s is %s; %s needs a %s image" % (
            image_label(image),
            visible(image.get("status")),
            method,
            needs,
        )
    if method == "copy-image":
        held = set(store_list(image))
        failed = [s for s in split_list(image.get(FAILED_IMPORT)) if s not in held]
        asked = [s for s in body.get("stores") or [] if s not in held]
        stores = failed or asked
        if not stores:
            return None, "%s is in every store that import asked for" % image_label(image)
        body = {"method": {"name": "copy-image"}, "stores": stores}
    return body, ""


def describe_request(body: Json) -> str:
    method = body.get("method") or {}
    where = method.get("uri") or method.get("glance_image_id") or ", ".join(body.get("stores") or [])
    return "%s %s" % (method.get("name"), where) if where else str(method.get("name"))


class ImageActions(ActingPane):
    """Mixin of ImagesPane (before ActingPane in its bases)."""

    MORE_ACTIONS: ClassVar[frozenset[str]] = ACTIONS

    def selected_image(self) -> Json | None:
        raise NotImplementedError  # ImagesPane's

    def offer(self, action: str, image: Json | None) -> bool | None:
        """For check_action: False where the role never allows it (hidden), None without a row
        (greyed), True otherwise: the key then says why the image's state does not allow it."""
        if action == "copy_to_sites" and not is_hub(self.session.status):
            return False
        if action == "pin_from_hub" and self.session.hub_url() is None:
            return False
        if action in NEEDS_SELECTION and image is None:
            return None
        return True

    def _image_for(self, action: str, title: str) -> Json | None:
        """The highlighted image if the daemon will do `action` to it; else a warning says why."""
        if self.session.read_only:
            return None
        image = self.selected_image()
        why = refusal(action, image, self.session)
        if why is not None:
            self.notify(why + ".", title="%s not offered" % title, severity="warning")
            return None
        return image

    # -- upload -------------------------------------------------------------------------------

    def action_upload_file(self) -> None:
        if self.session.read_only:
            return

        def chosen(upload: FileUpload | None) -> None:
            if upload is not None:
                self.app.push_screen(UploadProgressScreen(self.session.client, upload), self._uploaded)

        self.app.push_screen(UploadScreen(), chosen)

    def _uploaded(self, outcome: UploadOutcome | None) -> None:
        if outcome is None:
            return
        name = visible(outcome.name)
        if outcome.image_id is not None:
            self.notify("Uploaded %s (%s)." % (name, visible(outcome.image_id)), title="Upload")
        elif outcome.cancelled:
            self.notify("Upload of %s cancelled; the image it created is deleted." % name, title="Upload")
        else:
            self.notify(
                "%s; the image it created is deleted." % visible(outcome.error),
                title="Upload of %s failed" % name,
                severity="error",
            )
        self.changed(full=True)

    # -- protect, deactivate, edit --------------------------------------------------------------

    def action_toggle_protected(self) -> None:
        image = self._image_for("toggle_protected", "Protect")
        if image is None:
            return
        image_id, name, protect = str(image["id"]), image_label(image), not image.get("protected")
        ops = [{"op": "replace", "path": "/protected", "value": protect}]

        async def call() -> None:
            await self.session.client.patch_image(image_id, ops)

        said = ("Protected %s: the daemon refuses to delete it." if protect else "Unprotected %s.") % name
        self.act("Protect" if protect else "Unprotect", call, ImageActionDone("Protect", said))

    def action_toggle_active(self) -> None:
        image = self._image_for("toggle_active", "Deactivate")
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)
        if image.get("status") == "deactivated":
            self.act(
                "Reactivate %s" % name,
                partial(self.session.client.image_action, image_id, "reactivate"),
                ImageActionDone("Reactivate", "Reactivated %s: its data can be downloaded again." % name),
            )
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.act(
                    "Deactivate %s" % name,
                    partial(self.session.client.image_action, image_id, "deactivate"),
                    ImageActionDone("Deactivate", "Deactivated %s: a reactivates it." % name),
                )

        question = (
            "Deactivate %s (%s)?\nDownloads of its data are refused to all but admins (new servers cannot boot "
            "from it) until it is reactivated; its data and copies stay." % (name, visible(image_id))
        )
        self.app.push_screen(ConfirmScreen("Deactivate image", question, yes="Deactivate"), answered)

    def action_edit_image(self) -> None:
        image = self._image_for("edit_image", "Edit")
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)

        def saved(updated: Json | None) -> None:
            if updated is not None:
                self.notify("Saved %s." % image_label(updated), title="Edit")
                self.changed(full=True)

        self.app.push_screen(
            EditImageScreen(image, name, partial(self.session.client.patch_image, image_id)),
            saved,
        )

    # -- retry, pin, copy to sites ----------------------------------------------------------------

    def action_retry_import(self) -> None:
        image = self._image_for("retry_import", "Retry")
        if image is not None:
            self.retry_import(image)

    @work(group="actions", exit_on_error=False)
    async def retry_import(self, image: Json) -> None:
        image_id, name = str(image["id"]), image_label(image)
        client = self.session.client
        try:
            fresh = await client.image(image_id)  # the list may be a poll behind
            body, why = retry_request(fresh, await client.image_tasks(image_id))
            if body is None:
                self.notify(why + ".", title="Retry not offered", severity="warning")
                return
            await client.start_import(image_id, body)
        except (DaemonError, DaemonUnavailable) as exc:
            self.post_message(ActionFailed("Retry %s" % name, str(exc)))
            return
        said = "Retrying %s: %s; follow it on Queues (3)." % (name, visible(describe_request(body)))
        self.post_message(ImageActionDone("Retry", said))

    def action_pin_from_hub(self) -> None:
        image = self._image_for("pin_from_hub", "Pin")
        if image is None:
            return
        name = image_label(image)
        stores = [(s, about) for s, about in self.session.store_targets() if s in self.session.own_stores()]

        def chosen(store: str | None) -> None:
            if store:
                self.pin_from_hub(image, store)

        self.app.push_screen(
            StoreChoiceScreen(
                "Pin a copy of %s in which store? (a new image of this site, glance-download from the hub)" % name,
                stores,
            ),
            chosen,
        )

    @work(group="actions", exit_on_error=False)
    async def pin_from_hub(self, image: Json, store: str) -> None:
        """glance-download: a new image of this site with the hub image's data, verified, in
        `store`; it stays when the hub drops its image and is never evicted (unlike the cache)."""
        client, hub_id, name = self.session.client, str(image["id"]), image_label(image)
        try:
            pinned = await client.create_image(
                str(image.get("name") or hub_id),
                str(image.get("disk_format") or "raw"),
                str(image.get("container_format") or "bare"),
            )
            body = {"method": {"name": "glance-download", "glance_image_id": hub_id}, "stores": [store]}
            try:
                await client.start_import(str(pinned["id"]), body)
            except (DaemonError, DaemonUnavailable):
                with contextlib.suppress(DaemonError, DaemonUnavailable):
                    await client.delete_image(str(pinned["id"]))  # leave no empty image behind
                raise
        except (DaemonError, DaemonUnavailable) as exc:
            self.post_message(ActionFailed("Pin %s" % name, str(exc)))
            return
        said = "Pinning %s into store %s as image %s (glance-download); follow it on Queues (3)." % (
            name,
            visible(store),
            visible(pinned["id"]),
        )
        self.post_message(ImageActionDone("Pin", said))

    def action_copy_to_sites(self) -> None:
        image = self._image_for("copy_to_sites", "Copy to sites")
        if image is None:
            return
        image_id, name = str(image["id"]), image_label(image)

        def chosen(sites: list[str] | None) -> None:
            if sites:
                body = {"method": {"name": "copy-image"}, "stores": sites}
                said = "Copy of %s handed to %s: each pulls it on its next sync; follow it on Sites (6)." % (
                    name,
                    visible(", ".join(sites)),
                )
                self.act(
                    "Copy %s to sites" % name,
                    partial(self.session.client.start_import, image_id, body),
                    ImageActionDone("Copy to sites", said),
                )

        self.app.push_screen(
            ManyChoiceScreen("Copy %s to which edge sites?" % name, site_targets(image, self.session)), chosen
        )

    @while_running
    def on_image_action_done(self, message: ImageActionDone) -> None:
        self.notify(message.said, title=message.title)
        self.changed(full=message.full)


class ImageActionKeys:
    """Mixin of the app: its keys and palette entries (KEYS, PALETTE) call the Images pane's."""

    def _image_actions(self) -> ImageActions:
        return cast(App[None], self).query_one("#images-pane", ImageActions)

    def action_upload_file(self) -> None:
        self._image_actions().action_upload_file()

    def action_edit_image(self) -> None:
        self._image_actions().action_edit_image()

    def action_toggle_protected(self) -> None:
        self._image_actions().action_toggle_protected()

    def action_toggle_active(self) -> None:
        self._image_actions().action_toggle_active()

    def action_retry_import(self) -> None:
        self._image_actions().action_retry_import()

    def action_pin_from_hub(self) -> None:
        self._image_actions().action_pin_from_hub()

    def action_copy_to_sites(self) -> None:
        self._image_actions().action_copy_to_sites()
