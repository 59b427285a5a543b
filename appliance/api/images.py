"""Image handlers: parse the request, make one service call, shape the answer."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from appliance import wire
from appliance.api import schemas
from appliance.api.keys import IMAGES, IMPORTS, METRICS
from appliance.api.middleware import CONTEXT
from appliance.api.query import image_list_query
from appliance.api.socketbody import socket_chunks, takes_socket
from appliance.download import Download, span
from appliance.errors import ApplianceError, BadRequest, RangeNotSatisfiable, UnsupportedMediaType
from appliance.members import shows_members

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

IMAGE_FILE_CHUNK = 1 << 20
# A list batch whose metadata weighs less is encoded on the event loop: ~0.3 ms for 64 KiB,
# less than the hop to a worker thread costs when the cores are busy with transfers.
INLINE_ENCODE_BYTES = 64 << 10
# A page of the operator's image table: about 150 bytes an image, a few MB at most.
IMAGE_ROWS_PAGE = 10_000


# What a body read raises when the client stops sending or goes away mid-body.
BODY_BROKE = (ClientPayloadError, HttpProcessingError, ConnectionError, asyncio.IncompleteReadError)


async def read_json(request: web.Request, media_types: tuple[str, ...] = ("application/json",)) -> Any:
    if request.content_type not in media_types:
        raise UnsupportedMediaType(
            "Unsupported Content-Type %r for %s %s; expected %s"
            % (request.content_type, request.method, request.path, " or ".join(media_types))
        )
    try:
        raw = await request.read()
    except BODY_BROKE as exc:  # the client went away mid-body: answered (if it still listens), not logged as a crash
        raise BadRequest("The request body broke off: %s" % (exc or type(exc).__name__)) from None
    try:
        return wire.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("Malformed JSON in request body: %s" % exc) from None


def _image_response(
    request: web.Request, image: Any, status: int = 200, headers: dict[str, str] | None = None, members: bool = False
) -> web.Response:
    """The image in Glance's shape, with the locations this caller may see (if shown at all)."""
    ctx = request[CONTEXT]
    body = schemas.image_to_json(image, members=members)
    body.update(request.app[IMAGES].location_rules.shown(ctx, image))
    return web.json_response(body, status=status, headers=headers)


class StreamedResponse(web.StreamResponse):
    """A StreamResponse that sends no body where HTTP allows none (HEAD): aiohttp's writes the
    bytes anyway, after headers that announce no body, and a keep-alive client then reads them
    as the status line of its next response."""

    _bodyless = False

    async def prepare(self, request: web.BaseRequest) -> Any:
        self._bodyless = request.method == "HEAD"
        return await super().prepare(request)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._bodyless:
            await super().write(data)


@routes.get("/v2/images")
async def list_images(request: web.Request) -> web.StreamResponse:
    service = request.app[IMAGES]
    query = dict(request.query)  # last value wins, as in Glance, except for repeated tags
    asked = image_list_query(query, request.query.getall("tag", []), service.config.api)
    page = await service.list(request[CONTEXT], asked)
    members = shows_members(request[CONTEXT])
    query.pop("tag", None)
    head, tail = schemas.images_page_frame(query, page.next_marker)
    # Streamed batch by batch, encoded in a worker thread: a page at the metadata limits is
    # gigabytes of JSON, which neither fits in memory nor may hold the event loop.
    response = StreamedResponse()
    response.content_type = "application/json"
    response.charset = "utf-8"
    await response.prepare(request)
    try:
        await response.write(head)
        separator = b""
        async for batch in page.batches:
            if not batch:  # its images were deleted since the page's ids were read
                continue
            shown: dict[str, dict[str, Any]] = {i.id: service.location_rules.shown(request[CONTEXT], i) for i in batch}
            if schemas.metadata_weight(batch) <= INLINE_ENCODE_BYTES:
                body = schemas.encode_images(batch, members, shown)
            else:
                body = await asyncio.to_thread(schemas.encode_images, batch, members, shown)
            await response.write(separator + body)
            separator = b", "
        await response.write(tail)
        await response.write_eof()
    except ApplianceError as exc:  # the status line is sent: all that is left is to break off
        log.warning("image list broken off: %s", exc)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionResetError:
        log.info("image list: the client went away")
    finally:
        await page.batches.aclose()  # type: ignore[attr-defined]
    return response


@routes.get("/v2/edge/image-rows")
async def list_image_rows(request: web.Request) -> web.Response:
    """The operator's table of images: the list query's filters, sort and marker, the caller's
    visibility, a few columns per image as arrays, up to IMAGE_ROWS_PAGE a page (the TUI reads
    10,000 images in one request where Glance's list takes ten pages of full records)."""
    service = request.app[IMAGES]
    query = dict(request.query)
    asked = image_list_query(query, request.query.getall("tag", []), service.config.api, most=IMAGE_ROWS_PAGE)
    rows, next_marker = await service.rows(request[CONTEXT], asked)
    body = await asyncio.to_thread(schemas.image_rows_json, rows, query, next_marker)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


@routes.post("/v2/images")
async def create_image(request: web.Request) -> web.Response:
    service = request.app[IMAGES]
    image = await service.create(request[CONTEXT], await read_json(request))
    headers = {
        "Location": "/v2/images/%s" % image.id,
        "OpenStack-image-import-methods": ",".join(request.app[IMPORTS].enabled_methods),
        "OpenStack-image-store-ids": ",".join(service.stores.local()),
    }
    return _image_response(request, image, 201, headers)


@routes.get("/v2/images/{image_id}")
async def show_image(request: web.Request) -> web.Response:
    image = await request.app[IMAGES].get(request[CONTEXT], request.match_info["image_id"])
    return _image_response(request, image, members=shows_members(request[CONTEXT]))


@routes.patch("/v2/images/{image_id}")
async def update_image(request: web.Request) -> web.Response:
    patch = await read_json(request, schemas.PATCH_MEDIA_TYPES)
    image = await request.app[IMAGES].update(request[CONTEXT], request.match_info["image_id"], patch)
    return _image_response(request, image)


@routes.delete("/v2/images/{image_id}")
async def delete_image(request: web.Request) -> web.Response:
    await request.app[IMAGES].delete(request[CONTEXT], request.match_info["image_id"])
    return web.Response(status=204)


@routes.put("/v2/images/{image_id}/tags/{tag}")
async def add_tag(request: web.Request) -> web.Response:
    await request.app[IMAGES].add_tag(request[CONTEXT], request.match_info["image_id"], request.match_info["tag"])
    return web.Response(status=204)


@routes.delete("/v2/images/{image_id}/tags/{tag}")
async def remove_tag(request: web.Request) -> web.Response:
    await request.app[IMAGES].remove_tag(request[CONTEXT], request.match_info["image_id"], request.match_info["tag"])
    return web.Response(status=204)


@routes.post("/v2/images/{image_id}/actions/deactivate")
async def deactivate(request: web.Request) -> web.Response:
    await request.app[IMAGES].deactivate(request[CONTEXT], request.match_info["image_id"])
    return web.Response(status=204)


@routes.post("/v2/images/{image_id}/actions/reactivate")
async def reactivate(request: web.Request) -> web.Response:
    await request.app[IMAGES].reactivate(request[CONTEXT], request.match_info["image_id"])
    return web.Response(status=204)


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as the socket delivered it. Unlike iter_any(), which joins whatever is
    buffered into one new bytes object, this hands each received buffer on without a copy.

    Ends on an empty read at end of stream: aiohttp gives every body-less request one shared
    empty stream whose readchunk() answers (b"", True) forever once read, so iter_chunks()
    (which stops only on (b"", False)) would spin the event loop. A body that stops short of
    its Content-Length, or a client that goes away mid-body, is a BadRequest, never a short
    success."""
    content = request.content
    received = 0
    try:
        if takes_socket(request):  # a large body: not through the parser
            async for data in socket_chunks(request):
                received += len(data)
                yield data
            return
        while True:
            data, _end_of_http_chunk = await content.readchunk()
            if data:
                received += len(data)
                yield data
            elif content.at_eof():
                break
    except BODY_BROKE as exc:
        raise BadRequest(
            "The request body broke off after %d bytes: %s" % (received, exc or type(exc).__name__)
        ) from None
    expected = request.content_length
    if expected is not None and received < expected:
        raise BadRequest("The request body ended after %d of the %d bytes in Content-Length" % (received, expected))


# Bytes per socket read during a body upload. Each read is copied twice on the event loop (by
# recv and by aiohttp's parser) into fresh buffers: at 4 MiB one read held the loop for ~6 ms of
# CPU (20-90 ms when the cores were busy), which every other request waited behind; at 1 MiB
# image-show's p99 under an upload and two imports went from 95-137 to 67-69 ms and the loop's
# callbacks over 5 ms of CPU from ~150 to ~50 (bench_latency, load 6-10), the upload no slower.
UPLOAD_READ_BYTES = 1 << 20


def _large_reads(request: web.Request) -> None:
    """Let the socket hand over up to UPLOAD_READ_BYTES per read during a body upload instead
    of asyncio's 256 KiB: fewer wake-ups and chunks on the event loop for multi-GiB uploads."""
    transport = request.transport
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = max(transport.max_size, UPLOAD_READ_BYTES)  # type: ignore[attr-defined]


@routes.put("/v2/images/{image_id}/file")
async def upload(request: web.Request) -> web.Response:
    if request.content_type != "application/octet-stream":
        raise UnsupportedMediaType(
            "Unsupported Content-Type %r for image data; send application/octet-stream" % request.content_type
        )
    _large_reads(request)
    image = await request.app[IMAGES].upload(
        request[CONTEXT],
        request.match_info["image_id"],
        body_chunks(request),
        size=request.content_length,
        store_name=request.headers.get("X-Image-Meta-Store"),
    )
    request.app[METRICS].bytes_received.labels("upload").inc(image.size or 0)
    return web.Response(status=204)


class CountedFileResponse(web.FileResponse):
    """sendfile, plus a count of the bytes actually answered (the whole file or the range), and
    a `release` call once the file is sent (a cache entry is not evicted while it is read)."""

    def __init__(
        self, path: Path, count: Callable[[int], None], release: Callable[[], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(path, **kwargs)
        self._count = count
        self._release = release

    async def prepare(self, request: web.BaseRequest) -> Any:
        try:
            writer = await super().prepare(request)  # sends the file
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
        if self.status in (200, 206) and self.content_length:
            self._count(self.content_length)
        return writer


# `bytes=-0` asks for the last zero bytes, which no file has (RFC 9110 14.1.1: 416), but
# aiohttp's http_range reads it as slice(0, None), the whole file, since -0 == 0.
_EMPTY_SUFFIX = re.compile(r"bytes=-0+", re.ASCII | re.IGNORECASE)
EMPTY_RANGE = slice(0, 0)


def _requested_range(request: web.Request) -> slice | None:
    if "Range" not in request.headers:
        return None
    try:
        byte_range = request.http_range
    except ValueError:
        # FileResponse answers 416 to these too (RFC 9110 14.2 allows it), so every path agrees.
        raise RangeNotSatisfiable(
            "Unsupported Range %r: send one range, bytes=FIRST-LAST, bytes=FIRST- or "
            "bytes=-SUFFIX" % request.headers["Range"][:100]
        ) from None
    return EMPTY_RANGE if _EMPTY_SUFFIX.fullmatch(request.headers["Range"].strip()) else byte_range


@routes.get("/v2/images/{image_id}/file")
async def download(request: web.Request) -> web.StreamResponse:
    byte_range = _requested_range(request)
    found = await request.app[IMAGES].open_download(request[CONTEXT], request.match_info["image_id"], byte_range)
    if found is None:
        return web.Response(status=204)
    if byte_range is not None and found.path is not None and found.image.size is not None:
        # Refused here, in the error shape, rather than by FileResponse (which re-reads the
        # header, so would serve `bytes=-0` whole, and answers its 416 as octet-stream).
        start, stop = span(byte_range, found.image.size)
        if start >= stop:
            if found.release is not None:
                found.release()
            raise RangeNotSatisfiable("Requested range not satisfiable: the image has %d bytes" % found.image.size)
    headers = {"Content-Type": "application/octet-stream"}
    if byte_range is None and found.image.checksum:
        headers["Content-MD5"] = found.image.checksum
    served = request.app[METRICS].bytes_served.labels(found.source)
    if found.path is not None:
        return CountedFileResponse(
            found.path, served.inc, release=found.release, chunk_size=IMAGE_FILE_CHUNK, headers=headers
        )
    return await _stream(request, found, headers, served.inc)


async def _stream(
    request: web.Request, found: Download, headers: dict[str, str], count: Callable[[int], None]
) -> web.StreamResponse:
    """Relay a stream (a cache fill being followed, or bytes from the hub). If the stream breaks,
    the connection is dropped short of Content-Length: the client sees a failed download,
    never a complete one."""
    assert found.chunks is not None
    response = StreamedResponse(status=206 if found.content_range else 200, headers=headers)
    if found.content_range:
        response.headers["Content-Range"] = found.content_range
    if found.length is not None:
        response.content_length = found.length
    chunks = found.chunks
    try:
        await response.prepare(request)
        async for chunk in chunks:
            await response.write(chunk)
            count(len(chunk))
        await response.write_eof()
    except ApplianceError as exc:
        log.warning("download of image %s broken off: %s", found.image.id, exc)
        if request.transport is not None:
            request.transport.abort()
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
        if found.release is not None:  # a cache entry streamed from an RBD pool: evictable again
            found.release()
    return response


@routes.get("/v2/images/{image_id}/locations")
async def locations(request: web.Request) -> web.Response:
    found = await request.app[IMAGES].locations(request[CONTEXT], request.match_info["image_id"])
    return web.json_response([schemas.location_to_json(loc) for loc in found])


@routes.post("/v2/images/{image_id}/locations")
async def add_location(request: web.Request) -> web.Response:
    body = await read_json(request)
    await request.app[IMAGES].add_location(request[CONTEXT], request.match_info["image_id"], body)
    return web.Response(status=202)  # Glance: accepted, with no body; the data is hashed meanwhile
