"""Who is calling: static bearer tokens from the config mapped to (user, project, roles), then
Keystone tokens (appliance/keystone.py) when `[keystone] auth_url` is set.

With no tokens configured the daemon makes one admin token on first start and keeps it in
`<state dir>/admin-token` (mode 0600), so a fresh site works out of the box. Static tokens are
checked first and never ask Keystone: they are the way in while Keystone is unreachable.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from appliance.config import Config
from appliance.errors import ConfigError, Unauthorized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """The caller as Glance's request context sees it. Static tokens fill user, project and roles;
    a Keystone token fills the rest."""

    user: str
    project: str
    roles: frozenset[str]
    user_domain: str | None = None
    project_domain: str | None = None
    system_scope: str | None = None  # "all" for a system-scoped token
    service_user: str | None = None  # from a valid X-Service-Token
    service_roles: frozenset[str] = frozenset()
    # The caller's own token, for forwarding to the hub; never logged or shown.
    token: str | None = field(default=None, repr=False, compare=False)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    def credentials(self) -> dict[str, object]:
        """The caller as oslo.policy's `creds` (the names a check string's left side uses)."""
        return {
            "user_id": self.user,
            "project_id": self.project,
            "roles": sorted(self.roles),
            "user_domain_id": self.user_domain,
            "project_domain_id": self.project_domain,
            "system_scope": self.system_scope,
            "service_user_id": self.service_user,
            "service_roles": sorted(self.service_roles),
            "is_admin": self.is_admin,
        }


LOCAL_ADMIN = Context(user="local-admin", project="admin", roles=frozenset({"admin", "member", "reader"}))


def _read_token_file(path: Path, key: str) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError("%s: cannot read token file %s: %s" % (key, path, exc.strerror)) from exc
    if not token:
        raise ConfigError("%s: token file %s is empty" % (key, path))
    return token


def _ensure_admin_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Hex, not urlsafe base64: a token starting with "-" is taken for an option by the CLIs'
    # argparse (`--os-token $(cat admin-token)` fails one time in 32).
    token = secrets.token_hex(32)
    # O_EXCL + 0600: the token is never readable by others, not even for a moment.
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.replace(tmp, path)
    log.info("auth: no tokens configured; created an admin token in %s", path)
    return token


class TokenValidator(Protocol):
    """Validates the tokens that are not static ones: Keystone's (appliance/keystone.py)."""

    @property
    def challenge(self) -> str:
        """The WWW-Authenticate value of a 401: where to get a token."""
        ...

    async def authenticate(self, token: str, service_token: str | None = None) -> Context:
        """The caller; Unauthorized for a bad token, IdentityUnavailable when it cannot tell."""
        ...

    def adopt(self, other: TokenValidator) -> bool:
        """Take `other`'s settings if it asks the same service as the same user (config
        reload: what was validated stays valid), and say whether it did."""
        ...

    async def close(self) -> None: ...


class Authenticator:
    def __init__(self, tokens: dict[str, Context], keystone: TokenValidator | None = None) -> None:
        self._tokens = tokens
        self.keystone = keystone
        self._retired: list[TokenValidator] = []

    @classmethod
    def from_config(cls, config: Config, keystone: TokenValidator | None = None) -> Authenticator:
        tokens: dict[str, Context] = {}
        for i, tok in enumerate(config.auth.tokens):
            value = tok.token or _read_token_file(config.path(tok.token_file), "auth.tokens[%d].token_file" % i)
            tokens[value] = Context(user=tok.user, project=tok.project, roles=frozenset(tok.roles))
        if not tokens:
            path = config.path(config.auth.admin_token_file)
            tokens[_ensure_admin_token(path)] = LOCAL_ADMIN
            log.info("auth: admin token is in %s", path)
        return cls(tokens, keystone)

    def replace_with(self, other: Authenticator) -> None:
        """Take another authenticator's tokens and Keystone settings (config reload); Keystone's
        validated tokens stay cached unless where or as whom it is asked changed."""
        self._tokens = other._tokens
        if self.keystone is not None and other.keystone is not None and self.keystone.adopt(other.keystone):
            return
        if self.keystone is not None:
            self._retired.append(self.keystone)
        self.keystone = other.keystone

    def static(self, token: str) -> Context | None:
        """The configured token's caller (constant-time comparison against each one)."""
        found = None
        for known, ctx in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = ctx
        return found

    async def authenticate(self, token: str, service_token: str | None = None) -> Context | None:
        """The caller behind `token`: a static token, else Keystone's answer. None: not valid.
        Raises IdentityUnavailable when Keystone cannot tell (see appliance/keystone.py)."""
        found = self.static(token)
        if found is not None or self.keystone is None:
            return found
        try:
            return await self.keystone.authenticate(token, service_token)
        except Unauthorized:
            return None

    async def close(self) -> None:
        for keystone in [*self._retired, *([self.keystone] if self.keystone else [])]:
            await keystone.close()
        self._retired.clear()
