"""The only place that knows HTTP status codes: domain errors → Glance's JSON error shape,
and who is calling (token, or the peer of the Unix socket)."""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
from typing import Awaitable, Callable

from aiohttp import web

from appliance import errors
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
    errors.StorageFull: 507,
}
# Paths anyone may read without a token (version discovery, load balancer checks).
PUBLIC_PATHS = frozenset({"/", "/versions", "/healthcheck"})
CONTEXT = web.RequestKey("context", Context)


def error_response(status: int, title: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"code": "%d %s" % (status, title), "title": title, "message": message}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def status_of(exc: errors.ApplianceError) -> int:
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.ApplianceError as exc:
        status = status_of(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc)
        return error_response(status, exc.title, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate", "content-range")}
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        if exc.status == 405:
            message = "The method %s is not allowed for %s (allowed: %s)" % (request.method, request.path, exc.headers.get("Allow", ""))
        elif exc.status == 404:
            message = "The resource %s could not be found." % request.path
        return error_response(exc.status, exc.reason, message, headers)


def _unix_peer_uid(request: web.Request) -> int | None:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


def auth_middleware(auth: Authenticator) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.headers.get("X-Auth-Token")
        if token is None:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        ctx = auth.authenticate(token) if token else None
        if ctx is None and token is None and _unix_peer_uid(request) in (0, os.getuid()):
            ctx = LOCAL_ADMIN  # root or the service user on the local socket
        if ctx is None and request.path not in PUBLIC_PATHS:
            reason = "The token is not valid" if token else "Authentication required: send an X-Auth-Token header"
            return error_response(401, "Unauthorized", reason, {"WWW-Authenticate": 'Bearer realm="edge-appliance"'})
        if ctx is not None:
            request[CONTEXT] = ctx
        return await handler(request)

    return authenticate
