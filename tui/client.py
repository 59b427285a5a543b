"""The daemon's HTTP API as the operator UI uses it: one aiohttp ClientSession (over the Unix
socket or TCP), JSON in and out, errors turned into two exceptions the UI can show.

`DaemonApi` is the interface the app depends on; `HttpDaemonClient` is the real one. Tests of
behaviour use the real one against a real daemon; snapshot tests inject a fixed-data fake."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from tui.config import TuiConfig

log = logging.getLogger(__name__)

Json = dict[str, Any]
# Images a page of the daemon's image rows (its most): 10,000 in one request; the first page
# is a screenful or two, drawn while the rest comes.
ROWS_PAGE = 10_000
FIRST_ROWS = 200
# Glance's header that narrows a cache deletion to the cached copies or to the queue.
CLEAR_TARGET = "x-image-cache-clear-target"
PATCH_TYPE = "application/openstack-images-v2.1-json-patch"


def image_records(page: Json) -> list[Json]:
    """/v2/edge/image-rows' arrays as records with the image list's keys (`stores`: None where
    no store holds a copy)."""
    columns = list(page["columns"])
    return [dict(zip(columns, row, strict=True)) for row in page["rows"]]


class DaemonUnavailable(Exception):
    """The daemon could not be reached (no socket, connection refused, timeout, dropped)."""


class DaemonError(Exception):
    """The daemon answered with an error; `str()` is its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DaemonApi(Protocol):
    target: str

    async def status(self) -> Json: ...
    async def whoami(self) -> Json: ...
    async def events(self, since: int, limit: int = 500) -> list[Json]: ...
    def image_pages(self) -> AsyncIterator[list[Json]]: ...
    async def images(self) -> list[Json]: ...
    async def recent_images(self, limit: int) -> list[Json]: ...
    async def image(self, image_id: str) -> Json: ...
    async def locations(self, image_id: str) -> list[Json]: ...
    async def tasks(self) -> list[Json]: ...
    async def image_tasks(self, image_id: str) -> list[Json]: ...
    async def cache_view(self) -> Json: ...
    async def sites(self) -> list[Json]: ...
    async def site_assignments(self, name: str) -> list[Json]: ...
    async def check_uri(self, uri: str) -> tuple[bool, str]: ...
    async def create_image(self, name: str, disk_format: str, container_format: str) -> Json: ...
    async def import_web_download(self, image_id: str, uri: str) -> None: ...
    async def copy_to_store(self, image_id: str, store: str) -> None: ...
    async def delete_from_store(self, store: str, image_id: str) -> None: ...
    async def delete_image(self, image_id: str) -> None: ...
    async def cache_image(self, image_id: str) -> None: ...
    async def patch_image(self, image_id: str, ops: list[Json]) -> Json: ...
    async def image_action(self, image_id: str, action: str) -> None: ...
    async def upload(self, image_id: str, chunks: AsyncIterator[bytes], size: int) -> None: ...
    async def start_import(self, image_id: str, body: Json) -> None: ...
    async def uncache_image(self, image_id: str, target: str) -> None: ...
    async def clear_cache(self, target: str) -> None: ...
    async def close(self) -> None: ...


def _error_message(status: int, reason: str, body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str) and doc["message"]:
        return str(doc["message"])
    text = body.decode(errors="replace").strip()
    return text or "%d %s" % (status, reason)


class HttpDaemonClient:
    """Owns one ClientSession, created on first use inside the running loop."""

    def __init__(self, config: TuiConfig) -> None:
        self._config = config
        self.target = config.target
        self._base = config.url.rstrip("/") if config.url is not None else "http://localhost"
        self._headers = {"Accept": "application/json"}
        if config.token:
            self._headers["X-Auth-Token"] = config.token
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise DaemonUnavailable("the client is closed")
        if self._session is None:
            connector: aiohttp.BaseConnector
            if self._config.socket is not None:
                connector = aiohttp.UnixConnector(path=self._config.socket)
            else:
                connector = aiohttp.TCPConnector(limit=8)
            timeout = aiohttp.ClientTimeout(
                total=self._config.timeout_seconds, connect=min(5.0, self._config.timeout_seconds)
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, headers=self._headers)
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        expect: tuple[int, ...] = (200,),
        headers: dict[str, str] | None = None,
    ) -> Any:
        session = self._open()
        try:
            async with session.request(method, self._base + path, json=body, headers=headers) as resp:
                raw = await resp.read()
                if resp.status not in expect:
                    raise DaemonError(resp.status, _error_message(resp.status, resp.reason or "", raw))
                return json.loads(raw) if raw and resp.content_type == "application/json" else None
        except aiohttp.ClientConnectorError as exc:
            raise DaemonUnavailable(str(exc.os_error) if exc.os_error else str(exc)) from None
        except aiohttp.ClientError as exc:  # dropped connection, bad payload, ...
            raise DaemonUnavailable(str(exc) or type(exc).__name__) from None
        except TimeoutError:
            raise DaemonUnavailable("no answer within %g s" % self._config.timeout_seconds) from None

    # -- reads ----------------------------------------------------------------------------

    async def status(self) -> Json:
        return dict(await self._call("GET", "/v2/edge/status"))

    async def whoami(self) -> Json:
        """Who the daemon takes this token for (any token may ask): user, project, roles, site."""
        return dict(await self._call("GET", "/v2/edge/whoami"))

    async def events(self, since: int, limit: int = 500) -> list[Json]:
        return list((await self._call("GET", "/v2/edge/events?since=%d&limit=%d" % (since, limit)))["events"])

    async def image_pages(self) -> AsyncIterator[list[Json]]:
        """Every image as the Images table shows it (the daemon's image rows: a few fields, not
        the whole record), a page at a time following `next` until it is absent, in the table's
        order (name, then id) so that pages can be shown as they come."""
        query = "/v2/edge/image-rows?sort_key=name,id&sort_dir=asc,asc&limit=%d"
        path: str | None = query % FIRST_ROWS
        while path is not None:
            page = await self._call("GET", path)
            records = image_records(page)
            yield records
            # After the first screenful, the rest in as few requests as the daemon allows.
            path = query % ROWS_PAGE + "&marker=%s" % quote(str(records[-1]["id"])) if page.get("next") else None

    async def images(self) -> list[Json]:
        found: list[Json] = []
        async for page in self.image_pages():
            found.extend(page)
        return found

    async def recent_images(self, limit: int) -> list[Json]:
        """The most recently changed images: a cheap probe for "did anything change?"."""
        return image_records(
            await self._call("GET", "/v2/edge/image-rows?limit=%d&sort_key=updated_at&sort_dir=desc" % limit)
        )

    async def image(self, image_id: str) -> Json:
        return dict(await self._call("GET", "/v2/images/%s" % quote(image_id)))

    async def locations(self, image_id: str) -> list[Json]:
        return list(await self._call("GET", "/v2/images/%s/locations" % quote(image_id)))

    async def tasks(self) -> list[Json]:
        return list((await self._call("GET", "/v2/tasks"))["tasks"])

    async def image_tasks(self, image_id: str) -> list[Json]:
        return list((await self._call("GET", "/v2/images/%s/tasks" % quote(image_id)))["tasks"])

    async def cache_view(self) -> Json:
        """Figures, entries (most recently used first), the prefetch queue and fills."""
        return dict(await self._call("GET", "/v2/edge/cache"))

    async def sites(self) -> list[Json]:
        """The edge sites registered with this hub."""
        return list((await self._call("GET", "/v2/edge/sites"))["sites"])

    async def site_assignments(self, name: str) -> list[Json]:
        """What a site is asked to do and has not reported yet (copies to pull, copies to drop)."""
        return list((await self._call("GET", "/v2/edge/sites/%s/assignments" % quote(name)))["assignments"])

    # -- actions --------------------------------------------------------------------------

    async def check_uri(self, uri: str) -> tuple[bool, str]:
        verdict = await self._call("POST", "/v2/edge/check-uri", {"uri": uri})
        return bool(verdict["allowed"]), str(verdict.get("reason") or "")

    async def create_image(self, name: str, disk_format: str, container_format: str) -> Json:
        body = {"name": name, "disk_format": disk_format, "container_format": container_format}
        return dict(await self._call("POST", "/v2/images", body, expect=(201,)))

    async def import_web_download(self, image_id: str, uri: str) -> None:
        body = {"method": {"name": "web-download", "uri": uri}}
        await self._call("POST", "/v2/images/%s/import" % quote(image_id), body, expect=(202,))

    async def copy_to_store(self, image_id: str, store: str) -> None:
        await self.start_import(image_id, {"method": {"name": "copy-image"}, "stores": [store]})

    async def start_import(self, image_id: str, body: Json) -> None:
        """Any import request (copy-image to sites, glance-download, a failed import again)."""
        await self._call("POST", "/v2/images/%s/import" % quote(image_id), body, expect=(202,))

    async def patch_image(self, image_id: str, ops: list[Json]) -> Json:
        """A JSON-patch of the image (Glance's media type); the image as it is afterwards."""
        return dict(
            await self._call("PATCH", "/v2/images/%s" % quote(image_id), ops, headers={"Content-Type": PATCH_TYPE})
        )

    async def image_action(self, image_id: str, action: str) -> None:
        """action: "deactivate" or "reactivate"."""
        await self._call("POST", "/v2/images/%s/actions/%s" % (quote(image_id), quote(action)), expect=(204,))

    async def upload(self, image_id: str, chunks: AsyncIterator[bytes], size: int) -> None:
        """PUT the image's data from `chunks` (`size` bytes in all). Not under the client's total
        timeout: an upload takes what it takes, as long as the daemon keeps reading."""
        session = self._open()
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        timeout = aiohttp.ClientTimeout(total=None, connect=min(5.0, self._config.timeout_seconds), sock_read=300)
        try:
            async with session.put(
                self._base + "/v2/images/%s/file" % quote(image_id), data=chunks, headers=headers, timeout=timeout
            ) as resp:
                raw = await resp.read()
                if resp.status != 204:
                    raise DaemonError(resp.status, _error_message(resp.status, resp.reason or "", raw))
        except aiohttp.ClientConnectorError as exc:
            raise DaemonUnavailable(str(exc.os_error) if exc.os_error else str(exc)) from None
        except aiohttp.ClientError as exc:
            raise DaemonUnavailable(str(exc) or type(exc).__name__) from None
        except TimeoutError:
            raise DaemonUnavailable("the daemon stopped answering during the upload") from None

    async def delete_from_store(self, store: str, image_id: str) -> None:
        await self._call("DELETE", "/v2/stores/%s/%s" % (quote(store), quote(image_id)), expect=(204,))

    async def delete_image(self, image_id: str) -> None:
        await self._call("DELETE", "/v2/images/%s" % quote(image_id), expect=(204,))

    async def cache_image(self, image_id: str) -> None:
        await self._call("PUT", "/v2/cache/%s" % quote(image_id), expect=(202,))

    async def uncache_image(self, image_id: str, target: str) -> None:
        """target: "cache" (the cached copy), "queue" (the queued request) or "both"."""
        await self._call("DELETE", "/v2/cache/%s" % quote(image_id), expect=(204,), headers={CLEAR_TARGET: target})

    async def clear_cache(self, target: str) -> None:
        await self._call("DELETE", "/v2/cache", expect=(204,), headers={CLEAR_TARGET: target})
