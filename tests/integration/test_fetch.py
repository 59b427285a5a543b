"""open_download() against real aiohttp servers on 127.0.0.1: streaming, redirects re-checked by the
filter, limits, timeouts, and connections pinned to the addresses the filter approved."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.errors import TooLarge
from appliance.urifilter import UriFilter, UriFilterConfig
from appliance.webdownload import FetchFailed, UriRefused, open_download

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)
ServerFactory = Callable[..., Awaitable[TestServer]]


class Source:
    """A download source on 127.0.0.1 whose handlers count hits and can stall until released."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.release = asyncio.Event()
        self.server: TestServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return "http://%s:%d%s" % (host, self.port, path)

    def app(self) -> web.Application:
        app = web.Application()
        app.middlewares.append(self._count)
        app.router.add_get("/data", self.data)
        app.router.add_get("/chunked", self.chunked)
        app.router.add_get("/gzip", self.gzipped)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/redirect-abs", self.redirect_absolute)
        app.router.add_get("/redirect-chain", self.redirect_chain)
        app.router.add_get("/to", self.redirect_to)
        app.router.add_get("/loop", self.loop)
        app.router.add_get("/stall-headers", self.stall_headers)
        app.router.add_get("/stall-body", self.stall_body)
        app.router.add_get("/trickle", self.trickle)
        return app

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        return await handler(request)

    async def data(self, request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD, content_type="application/octet-stream")

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for offset in range(0, len(PAYLOAD), 256 * 1024):
            await resp.write(PAYLOAD[offset : offset + 256 * 1024])
        await resp.write_eof()
        return resp

    async def gzipped(self, request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"hello" * 100), headers={"Content-Encoding": "gzip"})

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("data?via=relative")

    async def redirect_absolute(self, request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently(self.url("/data"))

    async def redirect_chain(self, request: web.Request) -> web.Response:
        hop = int(request.query.get("hop", "0"))
        if hop >= 2:  # redirects 0→1, 1→2, 2→/data: exactly max_redirects=3
            raise web.HTTPTemporaryRedirect("/data")
        raise web.HTTPSeeOther("/redirect-chain?hop=%d" % (hop + 1))

    async def redirect_to(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["target"])

    async def loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def stall_headers(self, request: web.Request) -> web.Response:
        await self.release.wait()
        return web.Response(body=b"late")

    async def stall_body(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        await self.release.wait()
        return resp

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        while not self.release.is_set():
            await resp.write(b"x")
            await asyncio.sleep(0.05)
        return resp


@pytest.fixture
async def source(aiohttp_server: ServerFactory) -> Any:
    src = Source()
    src.server = await aiohttp_server(src.app())
    yield src
    src.release.set()  # before aiohttp_server's teardown closes the server


def loopback_filter(source: Source, **overrides: Any) -> UriFilter:
    config: dict[str, Any] = {"allowed_hosts": ("127.0.0.0/8",), "allowed_ports": (80, 443, source.port)}
    config.update(overrides)
    return UriFilter(UriFilterConfig(**config))


async def download(url: str, uri_filter: UriFilter, **kwargs: Any) -> tuple[bytes, int]:
    kwargs.setdefault("max_bytes", 1 << 30)
    async with open_download(url, uri_filter, **kwargs) as (_, body):
        chunks = [chunk async for chunk in body]
    return b"".join(chunks), len(chunks)


@pytest.mark.parametrize("path", ["/data", "/chunked"])
async def test_streams_the_exact_bytes(source: Source, path: str) -> None:
    body, count = await download(source.url(path), loopback_filter(source))
    assert body == PAYLOAD
    assert count > 1  # streamed in chunks, not read whole


async def test_bytes_are_not_decompressed(source: Source) -> None:
    body, _ = await download(source.url("/gzip"), loopback_filter(source))
    assert gzip.decompress(body) == b"hello" * 100


async def test_open_download_exposes_the_response(source: Source) -> None:
    async with open_download(source.url("/redirect"), loopback_filter(source), max_bytes=len(PAYLOAD)) as (
        resp,
        chunks,
    ):
        assert resp.status == 200
        assert resp.content_length == len(PAYLOAD)
        assert resp.url.path == "/data"
        assert b"".join([c async for c in chunks]) == PAYLOAD


@pytest.mark.parametrize("path", ["/redirect", "/redirect-abs", "/redirect-chain"])
async def test_redirects_to_allowed_targets_are_followed(source: Source, path: str) -> None:
    body, _ = await download(source.url(path), loopback_filter(source))
    assert body == PAYLOAD
    assert source.hits["/data"] == 1


@pytest.mark.parametrize(
    "target, reason",
    [
        ("http://169.254.169.254/latest/meta-data/", "host 169.254.169.254 is not in allowed_hosts (127.0.0.0/8)"),
        ("http://127.0.0.1:1/data", "port 1 is not in allowed_ports"),
        ("http://localhost:{port}/data", "host localhost is not in allowed_hosts"),
        ("http://[::1]:{port}/data", "host ::1 is not in allowed_hosts"),
        ("http://2130706433:{port}/data", "numeric-encoded IPv4 address"),
        ("http://user@127.0.0.1:{port}/data", "userinfo"),
        ("file:///etc/passwd", "scheme 'file' is not in allowed_schemes"),
    ],
)
async def test_redirects_to_refused_targets_are_refused(source: Source, target: str, reason: str) -> None:
    url = source.url("/to?target=" + target.format(port=source.port).replace("&", "%26"))
    with pytest.raises(UriRefused, match="refused: redirect to ") as caught:
        await download(url, loopback_filter(source))
    assert reason in caught.value.reason
    assert reason in str(caught.value)
    assert source.hits.get("/data") is None


async def test_redirect_to_metadata_is_refused_even_when_its_network_is_allowed(source: Source) -> None:
    uri_filter = loopback_filter(source, allowed_hosts=("127.0.0.0/8", "169.254.0.0/16"))
    with pytest.raises(UriRefused) as caught:
        await download(source.url("/to?target=http://169.254.169.254/"), uri_filter)
    assert caught.value.reason == "host 169.254.169.254 is a cloud metadata address"


async def test_redirect_loop_stops_at_max_redirects(source: Source) -> None:
    with pytest.raises(
        FetchFailed, match=r"web-download of http://127\.0\.0\.1:\d+/loop failed: more than 3 redirects"
    ):
        await download(source.url("/loop"), loopback_filter(source), max_redirects=3)
    assert source.hits["/loop"] == 4
    with pytest.raises(FetchFailed, match="more than 0 redirects"):
        await download(source.url("/redirect"), loopback_filter(source), max_redirects=0)


async def test_http_error_status_is_a_clear_error(source: Source) -> None:
    url = source.url("/missing")
    with pytest.raises(FetchFailed) as caught:
        await download(url, loopback_filter(source))
    assert str(caught.value) == "web-download of %s failed: HTTP 404 Not Found" % url


async def test_connection_refused_is_a_clear_error(source: Source) -> None:
    uri_filter = loopback_filter(source, allowed_ports=(1,))
    with pytest.raises(FetchFailed, match=r"web-download of http://127\.0\.0\.1:1/ failed: Cannot connect"):
        await download("http://127.0.0.1:1/", uri_filter)


@pytest.mark.parametrize("path", ["/data", "/chunked"])
async def test_max_bytes_is_enforced(source: Source, path: str) -> None:
    limit = len(PAYLOAD) - 1
    with pytest.raises(TooLarge, match="exceeds the %d-byte limit" % limit):
        await download(source.url(path), loopback_filter(source), max_bytes=limit)
    body, _ = await download(source.url(path), loopback_filter(source), max_bytes=len(PAYLOAD))
    assert body == PAYLOAD


@pytest.mark.parametrize("path", ["/stall-headers", "/stall-body"])
async def test_idle_timeout(source: Source, path: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"failed: stalled for more than 0\.5 s \(idle_timeout\)"):
        await download(source.url(path), loopback_filter(source), idle_timeout=0.5)
    assert 0.4 < time.monotonic() - started < 3


async def test_total_timeout(source: Source) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"failed: not finished within 0\.5 s \(total_timeout\)"):
        await download(source.url("/trickle"), loopback_filter(source), idle_timeout=5, total_timeout=0.5)
    assert 0.4 < time.monotonic() - started < 3


async def test_closing_early_releases_everything(source: Source) -> None:
    async with open_download(source.url("/chunked"), loopback_filter(source), max_bytes=1 << 30) as (_, chunks):
        async for chunk in chunks:
            assert chunk
            break


async def test_localhost_is_refused_when_only_its_address_is_allowed(source: Source) -> None:
    # The name is not in allowed_hosts; the address entry does not vouch for names.
    uri_filter = loopback_filter(source, allowed_hosts=("127.0.0.1",))
    with pytest.raises(UriRefused) as caught:
        await download(source.url("/data", host="localhost"), uri_filter)
    assert caught.value.reason == "host localhost is not in allowed_hosts (127.0.0.1)"
    # With no host allow-list it still resolves to loopback (system resolver).
    uri_filter = loopback_filter(source, allowed_hosts=())
    with pytest.raises(UriRefused, match="host localhost resolves to a loopback address"):
        await download(source.url("/data", host="localhost"), uri_filter)
    assert source.hits.get("/data") is None


async def test_first_url_refused_before_connecting(source: Source) -> None:
    with pytest.raises(
        UriRefused,
        match=r"^web-download of http://169\.254\.169\.254/ refused: "
        r"host 169\.254\.169\.254 is a cloud metadata address$",
    ):
        await download("http://169.254.169.254/", UriFilter(UriFilterConfig()))
    ftp = UriFilter(UriFilterConfig(allowed_schemes=("ftp",)))
    with pytest.raises(UriRefused, match="scheme 'ftp' cannot be downloaded"):
        await download("ftp://%s/r" % "93.184.215.14", ftp)


class RebindingResolver:
    """Answers the checked address first, then a different (refused) one: DNS rebinding."""

    def __init__(self, first: str, later: str) -> None:
        self.answers = [first]
        self.later = later
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return [self.answers.pop() if self.answers else self.later]


async def test_connection_is_pinned_to_the_checked_address(source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = RebindingResolver("127.0.0.1", "169.254.169.254")
    uri_filter = UriFilter(
        UriFilterConfig(allowed_hosts=("images.test", "127.0.0.0/8"), allowed_ports=(source.port,)), resolver=resolver
    )

    async def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("fetch resolved a name a second time: %r" % (args,))

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_dns)
    body, _ = await download(source.url("/data", host="images.test"), uri_filter)
    assert body == PAYLOAD
    assert resolver.calls == ["images.test"]  # checked once; aiohttp asked only the pinned resolver


async def test_each_redirect_hop_is_resolved_and_checked_again(source: Source) -> None:
    resolver = RebindingResolver("127.0.0.1", "169.254.169.254")
    uri_filter = UriFilter(
        UriFilterConfig(allowed_hosts=("images.test", "127.0.0.0/8"), allowed_ports=(source.port,)), resolver=resolver
    )
    with pytest.raises(UriRefused) as caught:
        await download(source.url("/redirect", host="images.test"), uri_filter)
    # the rule, never what DNS answered
    assert caught.value.reason == "host images.test resolves to a cloud metadata address"
    assert resolver.calls == ["images.test", "images.test"]
    assert source.hits.get("/data") is None


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_uses_the_host_name_for_sni_while_connecting_to_the_pinned_address(
    aiohttp_server: ServerFactory, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path, "images.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    sni: list[str | None] = []
    server_ctx.sni_callback = lambda sslobj, name, ctx: sni.append(name)  # type: ignore[assignment,misc,return-value]
    src = Source()
    src.server = await aiohttp_server(src.app(), ssl=server_ctx)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "images.test" else []

    uri_filter = UriFilter(
        UriFilterConfig(allowed_hosts=("images.test",), allowed_ports=(src.port,)), resolver=resolver
    )
    client_ctx = ssl.create_default_context(cafile=str(cert))
    url = "https://images.test:%d/redirect" % src.port
    body, _ = await download(url, uri_filter, ssl_context=client_ctx)
    assert body == PAYLOAD
    assert sni == ["images.test", "images.test"]  # both hops; the certificate names only images.test
