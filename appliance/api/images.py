"""Image handlers: parse the request, make one service call, shape the answer."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from appliance.api import schemas
from appliance.api.keys import IMAGES, IMPORTS, METRICS
from appliance.api.middleware import CONTEXT
from appliance.download import Download
from appliance.errors import ApplianceError, BadRequest, UnsupportedMediaType

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

IMAGE_FILE_CHUNK = 1 << 20


async def read_json(request: web.Request, media_types: tuple[str, ...] = ("application/json",)) -> Any:
    if request.content_type not in media_types:
        raise UnsupportedMediaType(
            "Unsupported Content-Type %r for %s %s; expected %s" % (request.content_type, request.method, request.path, " or ".join(media_types))
        )
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("Malformed JSON in request body: %s" % exc) from None


def _image_response(image: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(schemas.image_to_json(image), status=status, headers=headers)


@routes.get("/v2/images")
async def list_images(request: web.Request) -> web.Response:
    query = dict(request.query)  # last value wins, as in Glance, except for repeated tags
    page = await request.app[IMAGES].list(request[CONTEXT], query, request.query.getall("tag", []))
    query.pop("tag", None)
    return web.json_response(schemas.images_page_to_json(page.images, query, page.next_marker))


@routes.post("/v2/images")
async def create_image(request: web.Request) -> web.Response:
    service = request.app[IMAGES]
    image = await service.create(request[CONTEXT], await read_json(request))
    headers = {
        "Location": "/v2/images/%s" % image.id,
        "OpenStack-image-import-methods": ",".join(request.app[IMPORTS].enabled_methods),
        "OpenStack-image-store-ids": ",".join(service.store_names()),
    }
    return _image_response(image, 201, headers)


@routes.get("/v2/images/{image_id}")
async def show_image(request: web.Request) -> web.Response:
    return _image_response(await request.app[IMAGES].get(request[CONTEXT], request.match_info["image_id"]))


@routes.patch("/v2/images/{image_id}")
async def update_image(request: web.Request) -> web.Response:
    patch = await read_json(request, schemas.PATCH_MEDIA_TYPES)
    image = await request.app[IMAGES].update(request[CONTEXT], request.match_info["image_id"], patch)
    return _image_response(image)


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
    buffered into one new bytes object, this hands each received buffer on without a copy."""
    async for data, _end_of_http_chunk in request.content.iter_chunks():
        if data:
            yield data


def _large_reads(request: web.Request) -> None:
    """Let the socket hand over up to 4 MiB per read during a body upload instead of asyncio's
    256 KiB: fewer wake-ups and chunks on the event loop for multi-GiB uploads."""
    transport = request.transport
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = max(transport.max_size, 4 << 20)  # type: ignore[attr-defined]


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

    def __init__(self, path: Path, count: Callable[[int], None], release: Callable[[], None] | None = None,
                 **kwargs: Any) -> None:
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


@routes.get("/v2/images/{image_id}/file")
async def download(request: web.Request) -> web.StreamResponse:
    try:
        byte_range = request.http_range if "Range" in request.headers else None
    except ValueError:
        byte_range = None  # unparseable Range: answer the whole image, as HTTP allows
    found = await request.app[IMAGES].open_download(request[CONTEXT], request.match_info["image_id"], byte_range)
    if found is None:
        return web.Response(status=204)
    headers = {"Content-Type": "application/octet-stream"}
    if byte_range is None and found.image.checksum:
        headers["Content-MD5"] = found.image.checksum
    served = request.app[METRICS].bytes_served.labels(found.source)
    if found.path is not None:
        return CountedFileResponse(found.path, served.inc, release=found.release, chunk_size=IMAGE_FILE_CHUNK, headers=headers)
    return await _stream(request, found, headers, served.inc)


async def _stream(request: web.Request, found: Download, headers: dict[str, str], count: Callable[[int], None]) -> web.StreamResponse:
    """Relay a stream (a cache fill being followed, or bytes from the hub). If the stream breaks,
    the connection is dropped short of Content-Length: the client sees a failed download,
    never a complete one."""
    assert found.chunks is not None
    response = web.StreamResponse(status=206 if found.content_range else 200, headers=headers)
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
    return response


@routes.get("/v2/images/{image_id}/locations")
async def locations(request: web.Request) -> web.Response:
    image = await request.app[IMAGES].get(request[CONTEXT], request.match_info["image_id"])
    return web.json_response([schemas.location_to_json(loc) for loc in image.locations])
