"""The one client for the hub (`[hub] url`): an appliance hub or a central Glance v2. Image
metadata, image data (with Range for resumed transfers) and JSON calls.

Every connection error, timeout or 5xx becomes `HubUnreachable`, so callers decide on one
domain error; timeouts are explicit (a dead WAN link fails, never hangs); nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from appliance import __version__
from appliance.config import HubConfig
from appliance.errors import (
    ApplianceError,
    BadRequest,
    Conflict,
    Forbidden,
    HubUnreachable,
    IdentityUnavailable,
    NotFound,
    TooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from appliance.model import ChangePage, ImageChange

log = logging.getLogger(__name__)

DATA_CHUNK = 1 << 20


class HubRejected(ApplianceError):
    """The hub answered, but refused (4xx other than 404/403/409/400); `status`: its answer's."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


# A forwarded write answers what the hub answered: the hub's refusals in domain words. (The
# site's own requests keep HubRejected: a 401 there is this site's token, not the client's.)
FORWARDED_REFUSALS: dict[int, type[ApplianceError]] = {
    401: Unauthorized,
    413: TooLarge,
    415: UnsupportedMediaType,
}


def read_token(config: HubConfig, resolve: Any = None) -> str:
    """The token to send: inline, or read from token_file (resolved by `resolve`, a Path maker)."""
    if config.token:
        return config.token
    if config.token_file:
        path = resolve(config.token_file) if resolve else config.token_file
        with open(path) as fh:
            return fh.read().strip()
    return ""


class TokenSource(Protocol):
    """Where the site's own token for the hub comes from when it is not a static one: Keystone
    (appliance/keystone.py), which renews it before it expires."""

    async def service_token(self, renew: bool = False) -> str:
        """The token; `renew`: a new one (the hub refused the last)."""
        ...


class RateLimiter:
    """A token bucket shared by every transfer of one client (the WAN link is one pipe)."""

    def __init__(self, bytes_per_s: int) -> None:
        self.rate = bytes_per_s
        self._allowance = float(bytes_per_s)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            self._allowance = min(float(self.rate), self._allowance + (now - self._stamp) * self.rate)
            self._stamp = now
            self._allowance -= n
            if self._allowance < 0:
                await asyncio.sleep(-self._allowance / self.rate)


@dataclass(frozen=True)
class DataResponse:
    """An open image data response: `offset` is where its first byte sits in the image."""

    offset: int
    length: int | None  # bytes this response carries, when announced
    total: int | None  # the whole image's size, when known
    content_md5: str | None
    chunks: AsyncIterator[bytes]


class HubClient:
    def __init__(
        self,
        config: HubConfig,
        token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        token_source: TokenSource | None = None,
    ) -> None:
        self.url = config.url
        self._token = token
        self._token_source = token_source
        self._token_refused = False  # the hub answered 401 to the source's token: renew it
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=config.connect_timeout,
            sock_connect=config.connect_timeout,
            sock_read=config.read_timeout,
        )
        self._session = session
        self._limiter = RateLimiter(config.bandwidth_limit)
        # The hub's clock (its Date header) at the last JSON answer: the catalog mirror's marker logic.
        self.server_time: float | None = None

    def set_bandwidth_limit(self, bytes_per_s: int) -> None:
        self._limiter.rate = bytes_per_s

    def data_url(self, image_id: str) -> str:
        return "%s/v2/images/%s/file" % (self.url, image_id)

    async def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        # Glance answers its errors as HTML unless JSON is acceptable: its message is then readable.
        headers = {"User-Agent": "edge-image-appliance/%s" % __version__, "Accept": "application/json"}
        token = self._token
        if self._token_source is not None and not (extra and "X-Auth-Token" in extra):
            try:
                renew, self._token_refused = self._token_refused, False
                token = await self._token_source.service_token(renew=renew)
            except IdentityUnavailable as exc:
                # No token, no hub: to the hub link this is the WAN being down.
                raise HubUnreachable("no token for the hub %s: %s" % (self.url, exc)) from None
        if token:
            headers["X-Auth-Token"] = token
        headers.update(extra or {})
        return headers

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False, connector=aiohttp.TCPConnector(limit=64)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _refused(self, method: str, url: str, status: int, body: bytes, own_token: bool = True) -> ApplianceError:
        """The hub's refusal as a domain error. A 401 to a Keystone token of our own (revoked, or
        unknown to the hub's Keystone) makes the next request take a new one."""
        if status == 401 and own_token and self._token_source is not None:
            log.warning("hub %s refused this site's Keystone token: a new one for the next request", self.url)
            self._token_refused = True
        return _status_error(method, url, status, body)

    # -- JSON -------------------------------------------------------------------------------

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Any:
        url = self.url + path
        try:
            async with self._client().request(
                method, url, json=json, params=params, headers=await self._headers(headers)
            ) as resp:
                self.server_time = _http_date(resp.headers.get("Date"))
                body = await resp.read()
                if resp.status not in expect:
                    raise self._refused(method, url, resp.status, body, own_token="X-Auth-Token" not in (headers or {}))
                if not body:
                    return None
                try:
                    return await resp.json(content_type=None)
                except ValueError as exc:
                    raise HubRejected("%s %s: the hub answered with invalid JSON: %s" % (method, url, exc)) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _unreachable(url, exc) from None

    async def get_image(self, image_id: str) -> dict[str, Any]:
        doc: dict[str, Any] = await self.request_json("GET", "/v2/images/%s" % image_id)
        return doc

    async def list_images(self, params: Mapping[str, str]) -> dict[str, Any]:
        body: dict[str, Any] = await self.request_json("GET", "/v2/images", params=params)
        return body

    async def changes(self, since: int, limit: int) -> ChangePage:
        """The hub's change feed after serial `since` (an appliance hub; NotFound from a plain Glance)."""
        body = await self.request_json("GET", "/v2/edge/changes", params={"since": str(since), "limit": str(limit)})
        try:
            return ChangePage(
                feed=str(body["feed"]),
                pruned_through=int(body["pruned_through"]),
                latest=int(body["latest"]),
                changes=tuple(
                    ImageChange(int(c["serial"]), str(c["image_id"]), str(c["kind"]), str(c["changed_at"]))
                    for c in body["changes"]
                ),
                more=bool(body.get("next")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HubRejected("the hub sent a change feed page this site cannot read (%r)" % exc) from None

    async def forward(
        self,
        method: str,
        path: str,
        token: str,
        *,
        json: Any = None,
        content_type: str | None = None,
        expect: tuple[int, ...] = (200,),
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """A client's write to a hub image, made at the hub with the client's own token (not
        this site's): the hub decides, and its answer (or refusal) is the client's. `headers`:
        the client's own that the write depends on (X-Openstack-Append)."""
        sent = {**(headers or {}), "X-Auth-Token": token}
        if content_type is not None:
            sent["Content-Type"] = content_type
        try:
            return await self.request_json(method, path, json=json, headers=sent, expect=expect)
        except HubRejected as exc:
            refusal = FORWARDED_REFUSALS.get(exc.status or 0)
            if refusal is None:
                raise
            raise refusal(str(exc)) from None

    # -- data -------------------------------------------------------------------------------

    async def upload(self, image_id: str, chunks: AsyncIterable[bytes], size: int) -> None:
        """PUT `size` bytes of a stream (a store's copy: a file, an RBD image) as the image's
        data, rate-limited."""
        url = self.data_url(image_id)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                await self._limiter.take(len(chunk))
                yield chunk

        try:
            async with self._client().put(
                url,
                data=body(),
                headers=await self._headers({"Content-Type": "application/octet-stream", "Content-Length": str(size)}),
            ) as resp:
                if resp.status not in (200, 204):
                    raise self._refused("PUT", url, resp.status, await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _unreachable(url, exc) from None

    @contextlib.asynccontextmanager
    async def open_data(self, image_id: str, offset: int = 0, end: int | None = None) -> AsyncIterator[DataResponse]:
        """Stream an image's bytes from `offset` (inclusive) to `end` (exclusive, None = to the
        end). A server that ignores Range answers 200: the bytes before `offset` are skipped
        here, so the caller always gets what it asked for."""
        url = self.data_url(image_id)
        headers = {"Accept": "application/octet-stream, application/json"}  # JSON for errors
        if offset or end is not None:
            headers["Range"] = "bytes=%d-%s" % (offset, "" if end is None else end - 1)
        try:
            async with self._client().get(url, headers=await self._headers(headers)) as resp:
                if resp.status not in (200, 206):
                    raise self._refused("GET", url, resp.status, await resp.read())
                start, length, total = 0, resp.content_length, None
                if resp.status == 206:
                    start, total = _content_range(resp.headers.get("Content-Range", ""), url)
                    if start != offset:
                        raise HubRejected(
                            "GET %s: asked for bytes from %d, the hub sent them from %d" % (url, offset, start)
                        )
                else:
                    total = resp.content_length
                yield DataResponse(
                    offset=offset,
                    length=(length - (offset - start)) if length is not None and resp.status == 200 else length,
                    total=total,
                    content_md5=resp.headers.get("Content-MD5") if resp.status == 200 else None,
                    chunks=self._body(url, resp, skip=offset - start if resp.status == 200 else 0),
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _unreachable(url, exc) from None

    async def _body(self, url: str, resp: aiohttp.ClientResponse, skip: int) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.content.iter_chunked(DATA_CHUNK):
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                await self._limiter.take(len(chunk))
                yield chunk
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _unreachable(url, exc) from None


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _content_range(value: str, url: str) -> tuple[int, int | None]:
    # "bytes START-END/TOTAL" (TOTAL may be "*")
    try:
        unit, _, spec = value.partition(" ")
        span, _, total = spec.partition("/")
        start = int(span.split("-")[0])
        if unit != "bytes":
            raise ValueError(unit)
        return start, (None if total == "*" else int(total))
    except ValueError:
        raise HubRejected("GET %s: the hub sent a 206 with an unreadable Content-Range %r" % (url, value)) from None


def _unreachable(url: str, exc: BaseException) -> HubUnreachable:
    what = "timed out" if isinstance(exc, asyncio.TimeoutError) else (str(exc) or type(exc).__name__)
    return HubUnreachable("The hub is unreachable (%s: %s)" % (url, what))


def _hub_message(body: bytes) -> str:
    """The hub's own words: the `message` of a JSON error (Glance's and this appliance's shape),
    else the start of the body; Glance's HTML line breaks and runs of white space made one space."""
    text = body[:4000].decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        text = doc["message"]
    return re.sub(r"(?:<br\s*/?>|\s)+", " ", text).strip()[:300]


def _status_error(method: str, url: str, status: int, body: bytes) -> ApplianceError:
    message = "%s %s: the hub answered %d: %s" % (method, url, status, _hub_message(body))
    if status >= 500:
        return HubUnreachable(message)
    error = {404: NotFound, 403: Forbidden, 409: Conflict, 400: BadRequest}.get(status)
    return error(message) if error is not None else HubRejected(message, status)
