"""The web-download fetcher: the bytes of a URL that the UriFilter (appliance.urifilter) accepts.

`open_download` connects only to the addresses the filter's `check` approved (`PinnedResolver`),
so DNS cannot change its answer between the check and the connection, re-applies the whole
filter to every redirect target, and enforces the size limit and the idle and total timeouts
while the body streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from appliance import __version__
from appliance.errors import BadRequest, TooLarge, UpstreamUnavailable
from appliance.urifilter import FETCHABLE_SCHEMES, Decision, UriFilter, printable, unsafe_char

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class UriRefused(BadRequest):
    """The filter refused a URL (the first one or a redirect target)."""

    def __init__(self, message: str, decision: Decision) -> None:
        super().__init__(message)
        self.decision = decision
        self.reason = decision.reason


class FetchFailed(UpstreamUnavailable):
    """The source answered badly or not at all: non-2xx, connection error, timeout, redirects."""


class PinnedResolver(AbstractResolver):
    """Resolver for aiohttp that answers only with the addresses a Decision approved (no second
    DNS lookup → no rebinding window).  TLS still uses the URL's host name for SNI and
    certificate checks, since aiohttp takes those from the URL, not from the resolver."""

    def __init__(self, decision: Decision) -> None:
        if not decision.allowed or not decision.addresses:
            raise ValueError("PinnedResolver needs an accepted Decision with addresses")
        self._host = decision.host
        self._addresses = tuple(ipaddress.ip_address(a) for a in decision.addresses)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.rstrip(".").lower() != self._host:
            raise OSError("host %s was not checked (pinned to %s)" % (host, self._host))
        results: list[ResolveResult] = []
        for addr in self._addresses:
            addr_family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
            if family in (socket.AF_UNSPEC, addr_family):
                results.append(
                    ResolveResult(
                        hostname=host,
                        host=str(addr),
                        port=port,
                        family=addr_family,
                        proto=0,
                        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                    )
                )
        if not results:
            raise OSError("no checked address of host %s in the requested family" % host)
        return results

    async def close(self) -> None:
        pass


def default_session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    # No proxies from the environment (they would connect elsewhere), no cookies carried across
    # hops, and the bytes exactly as served: Glance's web-download does not decompress either.
    return aiohttp.ClientSession(
        connector=connector,
        connector_owner=True,
        trust_env=False,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": "edge-image-appliance/%s" % __version__, "Accept-Encoding": "identity"},
    )


SessionFactory = Callable[[aiohttp.BaseConnector], aiohttp.ClientSession]


@contextlib.asynccontextmanager
async def open_download(
    url: str,
    uri_filter: UriFilter,
    *,
    max_bytes: int,
    max_redirects: int = 3,
    idle_timeout: float = 60,
    total_timeout: float | None = None,
    session_factory: SessionFactory = default_session,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[aiohttp.ClientResponse, AsyncIterator[bytes]]]:
    """Yield (2xx response, chunk iterator) for url after following at most max_redirects
    redirects, each target checked by the whole filter and connected to only at its checked
    addresses.  Raises UriRefused, FetchFailed or TooLarge with a message naming url."""
    loop = asyncio.get_running_loop()
    deadline = None if total_timeout is None else loop.time() + total_timeout
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=idle_timeout, sock_read=idle_timeout)
    shown = printable(url)
    current = url
    for hop in range(max_redirects + 1):
        decision = await _approve(uri_filter, shown, current, hop, idle_timeout, deadline)
        async with contextlib.AsyncExitStack() as stack:
            # One connector per hop, answering only with this hop's checked addresses.
            connector = aiohttp.TCPConnector(
                resolver=PinnedResolver(decision),
                use_dns_cache=False,
                force_close=True,
                ssl=ssl_context if ssl_context is not None else True,
            )
            stack.push_async_callback(connector.close)
            session = await stack.enter_async_context(session_factory(connector))
            try:
                async with asyncio.timeout_at(deadline):
                    resp = await stack.enter_async_context(
                        session.get(decision.url, allow_redirects=False, timeout=timeout, proxy=None)
                    )
            except TimeoutError:
                raise _timed_out(shown, idle_timeout, total_timeout, deadline) from None
            except aiohttp.ClientError as exc:
                raise FetchFailed("web-download of %s failed: %s" % (shown, exc or type(exc).__name__)) from exc
            if resp.status in REDIRECT_STATUSES:
                current = _redirect_target(shown, decision.url, resp)
                log.debug("web-download of %s: HTTP %d redirect to %s", shown, resp.status, current)
                continue
            if not 200 <= resp.status < 300:
                status = ("HTTP %d %s" % (resp.status, resp.reason or "")).rstrip()
                raise FetchFailed("web-download of %s failed: %s" % (shown, status))
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise TooLarge(
                    "web-download of %s: %d bytes exceeds the %d-byte limit" % (shown, resp.content_length, max_bytes)
                )
            yield resp, _chunks(shown, resp, max_bytes, idle_timeout, total_timeout, deadline)
            return
    raise FetchFailed("web-download of %s failed: more than %d redirects" % (shown, max_redirects))


async def _approve(
    uri_filter: UriFilter, url: str, current: str, hop: int, idle_timeout: float, deadline: float | None
) -> Decision:
    try:
        async with asyncio.timeout_at(deadline):
            async with asyncio.timeout(idle_timeout):
                decision = await uri_filter.check(current)
    except TimeoutError:
        raise FetchFailed("web-download of %s failed: resolving %s timed out" % (url, printable(current))) from None
    scheme = decision.url.split(":", 1)[0]
    if decision.allowed and scheme not in FETCHABLE_SCHEMES:
        decision = Decision(
            False,
            "scheme %r cannot be downloaded (only http, https)" % scheme,
            decision.url,
            decision.host,
            decision.port,
        )
    if not decision.allowed:
        if hop == 0:
            raise UriRefused("web-download of %s refused: %s" % (url, decision.reason), decision)
        raise UriRefused(
            "web-download of %s refused: redirect to %s: %s" % (url, printable(current), decision.reason), decision
        )
    return decision


def _redirect_target(url: str, current: str, resp: aiohttp.ClientResponse) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise FetchFailed("web-download of %s failed: HTTP %d redirect without a Location" % (url, resp.status))
    # Checked before joining: urljoin (via urlsplit) would silently drop tabs and newlines.
    if unsafe_char(location) is not None:
        refused = Decision(False, "redirect Location contains a whitespace or control character")
        raise UriRefused("web-download of %s refused: %s" % (url, refused.reason), refused)
    return urljoin(current, location)


async def _chunks(
    url: str,
    resp: aiohttp.ClientResponse,
    max_bytes: int,
    idle_timeout: float,
    total_timeout: float | None,
    deadline: float | None,
) -> AsyncIterator[bytes]:
    received = 0
    while True:
        # The deadline wraps each read only, never a yield, so it cannot cancel the consumer.
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await resp.content.readany()
        except TimeoutError:
            raise _timed_out(url, idle_timeout, total_timeout, deadline) from None
        except aiohttp.ClientError as exc:
            raise FetchFailed("web-download of %s failed: %s" % (url, exc or type(exc).__name__)) from exc
        if not chunk:
            return
        received += len(chunk)
        if received > max_bytes:
            raise TooLarge("web-download of %s exceeds the %d-byte limit" % (url, max_bytes))
        yield chunk


def _timed_out(url: str, idle_timeout: float, total_timeout: float | None, deadline: float | None) -> FetchFailed:
    # deadline is set exactly when total_timeout is
    if deadline is not None and total_timeout is not None and asyncio.get_running_loop().time() >= deadline:
        return FetchFailed("web-download of %s failed: not finished within %g s (total_timeout)" % (url, total_timeout))
    return FetchFailed("web-download of %s failed: stalled for more than %g s (idle_timeout)" % (url, idle_timeout))
