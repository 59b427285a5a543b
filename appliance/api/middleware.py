"""The only place that knows HTTP status codes: domain errors → Glance's JSON error shape,
and who is calling (token, or the peer of the Unix socket)."""

from __future__ import annotations

import asyncio
import html
import http
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable

from aiohttp import ClientPayloadError, web
from aiohttp.typedefs import Middleware

from appliance import errors
from appliance.api.socketbody import end_socket_body
from appliance.auth import LOCAL_ADMIN, Authenticator, Context

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS: dict[type[Exception], int] = {
    errors.BadRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.StoreReadOnly: 409,
    errors.UpstreamUnavailable: 502,
    errors.HubUnreachable: 503,
    errors.IdentityUnavailable: 503,
    errors.RangeNotSatisfiable: 416,
    errors.TooManyRequests: 429,
    errors.RequestTimeout: 408,
    errors.StorageFull: 507,
}
# Glance's (webob's) reason phrases where Python's differ: 3.13 renamed these two.
GLANCE_TITLES = {413: "Request Entity Too Large", 416: "Requested Range Not Satisfiable"}
# Paths anyone may read without a token (version discovery, load balancer checks).
PUBLIC_PATHS = frozenset({"/", "/versions", "/healthcheck", "/metrics", "/openapi.json"})
CONTEXT = web.RequestKey("context", Context)


def _accept_quality(accept: str, media_type: str) -> float:
    """The q-value `accept` gives `media_type` (the most specific matching range wins)."""
    kind = media_type.split("/")[0]
    best, quality = -1, 0.0
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        rank = {media_type: 2, kind + "/*": 1, "*/*": 0}.get(media.lower(), -1)
        if rank <= best:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        best = rank
    return quality


# Where python-glanceclient goes (its commands for Glance features this appliance lacks, such
# as member-list or md-namespace-list, land on unknown routes under these prefixes too).
GLANCE_PREFIXES = (
    "/versions",
    "/v2/images",
    "/v2/schemas",
    "/v2/info",
    "/v2/tasks",
    "/v2/cache",
    "/v2/stores",
    "/v2/metadefs",
)


def _glance_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in GLANCE_PREFIXES)


def error_media_type(request: web.Request) -> str:
    """Glance's error bodies are webob's, negotiated between text/html and application/json
    with HTML winning a tie (`*/*`, or no Accept). python-glanceclient (the CLI, and the image
    client of Nova and Cinder) relies on that: it sends `*/*` and cannot read the flat JSON
    shape (it expects every top-level value to be an object). So Glance's paths keep that;
    everything else (the appliance's own routes, unknown paths) answers JSON unless the client
    names text/html and prefers it."""
    accept = request.headers.get("Accept", "").strip() or "*/*"
    html_q, json_q = _accept_quality(accept, "text/html"), _accept_quality(accept, "application/json")
    if json_q > html_q:
        return "application/json"
    if not _glance_path(request.path):
        return "text/html" if html_q > json_q and "text/html" in accept.lower() else "application/json"
    return "text/html" if html_q > 0 else "text/plain"


def title_of(status: int) -> str:
    """An error's title is its status's reason phrase, in Glance's spelling."""
    if status in GLANCE_TITLES:
        return GLANCE_TITLES[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, request: web.Request | None = None
) -> web.Response:
    title = title_of(status)
    code = "%d %s" % (status, title)
    media_type = error_media_type(request) if request is not None else "application/json"
    if media_type == "application/json":
        text = json.dumps({"code": code, "title": title, "message": message})
    elif media_type == "text/html":  # webob's page: title, heading, then the explanation
        text = (
            "<html>\n <head>\n  <title>%s</title>\n </head>\n <body>\n  <h1>%s</h1>\n"
            "  %s<br /><br />\n </body>\n</html>\n" % (code, code, html.escape(message, quote=False))
        )
    else:
        text = "%s\n\n%s\n\n" % (code, message)
    return web.Response(status=status, text=text, content_type=media_type, headers=headers)


# A refused request's body is not ours to read: this much is drained so that a client which
# sends everything before it reads still gets the answer; past it the connection is closed.
REFUSED_BODY_DRAIN = 1 << 20
REFUSED_BODY_DRAIN_SECONDS = 1.0


async def refuse_unread_body(request: web.Request, response: web.Response) -> web.StreamResponse:
    """Send a refusal (401, 403) at once, and do not take in the rest of the body: aiohttp would
    otherwise read and discard it for up to 10 s (its lingering close), 200 MB on a fast link,
    for a caller that may not send any. A body already received in full changes nothing."""
    content = request.content
    if not request.body_exists or content.at_eof():
        return response
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    drained = 0
    try:
        async with asyncio.timeout(REFUSED_BODY_DRAIN_SECONDS):
            while drained <= REFUSED_BODY_DRAIN and not content.at_eof():
                chunk = await content.readany()
                if not chunk and content.at_eof():
                    break
                drained += len(chunk)
    except (TimeoutError, ConnectionError, ClientPayloadError):
        pass
    if not content.at_eof():
        request.protocol.force_close()  # no lingering read of the rest; the answer is sent
    return response


def status_of(exc: errors.ApplianceError) -> int:
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.ApplianceError as exc:
        end_socket_body(request)
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc)
        response = error_response(status, str(exc), request=request)
        return await refuse_unread_body(request, response) if status in (401, 403) else response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        end_socket_body(request)
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "content-range")}
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 405:
            message = "The method %s is not allowed for %s (allowed: %s)" % (
                request.method,
                request.path,
                exc.headers.get("Allow", ""),
            )
        elif exc.status == 404:
            message = "The resource %s could not be found." % request.path
        return error_response(exc.status, message, headers, request)


def _unix_peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def auth_middleware(auth: Authenticator) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.headers.get("X-Auth-Token")
        if token is None:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        try:
            ctx = await auth.authenticate(token, request.headers.get("X-Service-Token")) if token else None
        except errors.IdentityUnavailable as exc:
            if request.path in PUBLIC_PATHS:
                return await handler(request)
            log.warning("%s %s: %s", request.method, request.path, exc)
            return await refuse_unread_body(request, error_response(503, str(exc), request=request))
        if ctx is None and token is None and _unix_peer_uid(request) in (0, os.getuid()):
            ctx = LOCAL_ADMIN  # root or the service user on the local socket
        if ctx is None and request.path not in PUBLIC_PATHS:
            reason = "The token is not valid" if token else "Authentication required: send an X-Auth-Token header"
            # Keystone's challenge names where to get a token, as keystonemiddleware's does.
            challenge = auth.keystone.challenge if auth.keystone is not None else 'Bearer realm="edge-appliance"'
            return await refuse_unread_body(
                request, error_response(401, reason, {"WWW-Authenticate": challenge}, request)
            )
        if ctx is not None:
            request[CONTEXT] = ctx
        return await handler(request)

    return authenticate
