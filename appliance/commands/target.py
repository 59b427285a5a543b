"""Which daemon (or Glance v2 endpoint) an operator command talks to: the local daemon's Unix
socket by default (root and the daemon's user need no token there), or a URL with a token, or
Keystone credentials (the `--os-*` options and OS_* variables the `openstack` CLI reads): a
Keystone token, and the image endpoint from the catalog unless --url names one."""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from appliance.config import KeystoneConfig, default_state_dir
from appliance.errors import ConfigError
from appliance.keystone import KeystoneAuth

SOCKET_ENV = "EDGE_APPLIANCE_SOCKET"
SYSTEM_SOCKET = Path("/var/lib/edge-appliance/appliance.sock")  # the systemd unit's StateDirectory


def default_socket(state_dir: Path | None) -> str:
    """$EDGE_APPLIANCE_SOCKET; else <state dir>/appliance.sock, the state dir being --state-dir,
    $STATE_DIRECTORY or ./var when that socket exists, else the system one."""
    if os.environ.get(SOCKET_ENV):
        return os.environ[SOCKET_ENV]
    if state_dir is not None:
        return str(state_dir / "appliance.sock")
    local = default_state_dir() / "appliance.sock"
    return str(local if local.exists() else SYSTEM_SOCKET)


@dataclass(frozen=True)
class Target:
    """An Image API: a base URL, or the daemon's Unix socket (where root and the daemon's user
    need no token)."""

    url: str | None
    socket: str | None
    token: str = ""

    @property
    def base(self) -> str:
        return self.url.rstrip("/") if self.url else "http://localhost"

    def describe(self) -> str:
        return self.url if self.url else "unix:%s" % self.socket

    def session(self) -> aiohttp.ClientSession:
        # No overall timeout (a bundle can take long); a silent peer still fails.
        connector = aiohttp.UnixConnector(path=self.socket) if self.socket else aiohttp.TCPConnector()
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=600),
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options that say which daemon a command talks to (read by target_from_args)."""
    p.add_argument("--url", help="an appliance or Glance v2 endpoint, http(s)://host:port (default: the local daemon)")
    p.add_argument(
        "--socket",
        help="the local daemon's Unix socket (default: $EDGE_APPLIANCE_SOCKET, else <state dir>/appliance.sock)",
    )
    p.add_argument("--state-dir", type=Path, help="the local daemon's state directory (finds its socket)")
    p.add_argument("--token", help="token sent as X-Auth-Token (not needed on the socket as root or the daemon's user)")
    p.add_argument("--token-file", type=Path, help="read the token from this file")
    env = os.environ.get
    p.add_argument(
        "--os-auth-url",
        default=env("OS_AUTH_URL"),
        help="Keystone v3 URL ($OS_AUTH_URL): get a token there instead of --token; without --url the "
        "image endpoint comes from the catalog",
    )
    p.add_argument("--os-username", default=env("OS_USERNAME", ""))
    p.add_argument("--os-password", default=env("OS_PASSWORD", ""))
    p.add_argument("--os-project-name", default=env("OS_PROJECT_NAME", ""))
    p.add_argument("--os-user-domain-name", default=env("OS_USER_DOMAIN_NAME", "Default"))
    p.add_argument("--os-project-domain-name", default=env("OS_PROJECT_DOMAIN_NAME", "Default"))
    p.add_argument("--os-application-credential-id", default=env("OS_APPLICATION_CREDENTIAL_ID", ""))
    p.add_argument("--os-application-credential-secret", default=env("OS_APPLICATION_CREDENTIAL_SECRET", ""))
    p.add_argument("--os-region-name", default=env("OS_REGION_NAME", ""))
    p.add_argument("--os-interface", default=env("OS_INTERFACE", "public"), choices=("public", "internal", "admin"))


async def keystone_login(config: KeystoneConfig, want_endpoint: bool) -> tuple[str, str]:
    """A token from Keystone and (if wanted) the catalog's image endpoint: (token, url)."""
    identity = KeystoneAuth(config)
    try:
        token = await identity.service_token()
        return token, await identity.endpoint("image") if want_endpoint else ""
    finally:
        await identity.close()


def _keystone_config(args: argparse.Namespace) -> KeystoneConfig:
    if not (args.os_application_credential_id or (args.os_username and args.os_password)):
        raise ConfigError(
            "--os-auth-url needs --os-username and --os-password (or --os-application-credential-id "
            "and --os-application-credential-secret), or the OS_* variables"
        )
    return KeystoneConfig(
        auth_url=args.os_auth_url.rstrip("/"),
        username=args.os_username,
        password=args.os_password,
        user_domain_name=args.os_user_domain_name,
        project_name=args.os_project_name,
        project_domain_name=args.os_project_domain_name,
        application_credential_id=args.os_application_credential_id,
        application_credential_secret=args.os_application_credential_secret,
        region_name=args.os_region_name,
        interface=args.os_interface,
    )


def target_from_args(args: argparse.Namespace) -> Target:
    token = args.token or ""
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError("cannot read the token file %s: %s" % (args.token_file, exc.strerror)) from None
    if not token and getattr(args, "os_auth_url", None):
        token, found = asyncio.run(keystone_login(_keystone_config(args), want_endpoint=not args.url))
        return Target(url=args.url or found, socket=None, token=token)
    if args.url:
        return Target(url=args.url, socket=None, token=token)
    return Target(url=None, socket=args.socket or default_socket(args.state_dir), token=token)
