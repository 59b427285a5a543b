"""Runs inside the OpenStack Glance process of tests/glance_server.py (its uWSGI loads this file
as a paste filter): Keystone's place in front of Glance, without Keystone.

keystonemiddleware's auth_token validates X-Auth-Token and hands the identity on as headers
(X-Identity-Status, X-User-Id, X-Project-Id, X-Roles); Glance's own `context` middleware and
policies then work from those. Here the token itself is the identity, `user:project:role,role`
(for example `admin:admin:admin,member,reader`); anything else is an invalid token (401 from
Glance). Identity headers a client sent itself are dropped, as auth_token drops them.
Plain WSGI and the standard library only: this file is imported by Glance's interpreter.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_IDENTITY = (
    "HTTP_X_IDENTITY_STATUS",
    "HTTP_X_USER_ID",
    "HTTP_X_USER_NAME",
    "HTTP_X_PROJECT_ID",
    "HTTP_X_PROJECT_NAME",
    "HTTP_X_TENANT_ID",
    "HTTP_X_ROLES",
    "HTTP_X_SERVICE_CATALOG",
    "HTTP_X_DOMAIN_ID",
    "HTTP_X_SYSTEM_SCOPE",
)


def identity(token: str) -> tuple[str, str, str] | None:
    """(user, project, roles) of a `user:project:role,role` token; None for anything else.
    The glance CLI sends header values percent-encoded (`admin%3Aadmin%3A...`)."""
    user, _, rest = urllib.parse.unquote(token).partition(":")
    project, _, roles = rest.partition(":")
    if not (user and project and roles):
        return None
    return user, project, roles


def filter_factory(global_conf: dict[str, str], **local_conf: str) -> Callable[[WsgiApp], WsgiApp]:
    def wrap(app: WsgiApp) -> WsgiApp:
        def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            for key in _IDENTITY:
                environ.pop(key, None)
            found = identity(environ.get("HTTP_X_AUTH_TOKEN", ""))
            if found is None:
                environ["HTTP_X_IDENTITY_STATUS"] = "Invalid"
            else:
                user, project, roles = found
                environ.update(
                    {
                        "HTTP_X_IDENTITY_STATUS": "Confirmed",
                        "HTTP_X_USER_ID": user,
                        "HTTP_X_USER_NAME": user,
                        "HTTP_X_PROJECT_ID": project,
                        "HTTP_X_PROJECT_NAME": project,
                        "HTTP_X_TENANT_ID": project,
                        "HTTP_X_ROLES": roles,
                    }
                )
            return app(environ, start_response)

        return middleware

    return wrap
