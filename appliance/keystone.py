"""Keystone v3: validating callers' tokens, and the appliance's own token and catalog.

What keystonemiddleware's auth_token does for Glance, asynchronously: a caller's X-Auth-Token is
checked with `GET /v3/auth/tokens` (X-Subject-Token) under the appliance's own service token,
and the answer is kept until the earlier of the token's expiry and `token_cache_time`, in a
bounded LRU. Concurrent first requests with one token share one Keystone request. With a valid
X-Service-Token holding a service role, the user's token may have expired (allow_expired), as
keystonemiddleware allows a service finishing a long operation for a user.

An edge loses its WAN: while Keystone cannot be reached, a token validated before keeps working
until it expires; a token not seen before is refused with `IdentityUnavailable` (503), never
called invalid (401), because nothing says it is.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from appliance import __version__
from appliance.auth import Context, TokenValidator
from appliance.clock import SYSTEM_CLOCK, Clock, parse_timestamp
from appliance.config import KeystoneConfig
from appliance.errors import IdentityUnavailable, Unauthorized

log = logging.getLogger(__name__)

# While Keystone cannot be reached, a cached token is not re-checked more often than this
# (seconds): an outage must not make every request wait for a connection that fails.
OUTAGE_RETRY_SECONDS = 30.0
# Cache key prefix of answers asked with allow_expired (not a character a token can hold).
EXPIRED_KEY = "\0"
# Settings a config reload may change without forgetting validated tokens.
_CACHE_SETTINGS = ("token_cache_time", "token_cache_size", "service_token_roles", "service_token_roles_required")
# The appliance's own token is renewed this long (seconds) before it expires, or at half its
# life if that is shorter.
RENEW_MARGIN_SECONDS = 300.0


@dataclass(frozen=True)
class _Validated:
    """Keystone's answer for one token: `context` None means Keystone said it is not valid."""

    context: Context | None
    expires: float  # wall clock (epoch s): never used past this
    fresh_until: float  # monotonic: asked again after this


@dataclass(frozen=True)
class ServiceToken:
    """The appliance's own token and the catalog it came with."""

    token: str
    issued: float  # wall clock
    expires: float
    catalog: tuple[Mapping[str, Any], ...]


def token_context(token: str, body: Mapping[str, Any]) -> tuple[Context, float]:
    """A validated token's body (`{"token": {...}}`) → the caller as Glance sees it, and when
    the token expires (epoch seconds)."""
    info = body["token"]
    user = info.get("user") or {}
    project = info.get("project") or {}
    system = info.get("system") or {}
    ctx = Context(
        user=str(user.get("id", "")),
        project=str(project.get("id", "")),
        roles=frozenset(str(r["name"]).lower() for r in info.get("roles") or ()),
        user_domain=(user.get("domain") or {}).get("id"),
        project_domain=(project.get("domain") or {}).get("id") if project else None,
        system_scope="all" if system.get("all") else None,
        token=token,
    )
    return ctx, parse_timestamp(str(info["expires_at"])).timestamp()


def from_config(config: KeystoneConfig, clock: Clock = SYSTEM_CLOCK) -> KeystoneAuth | None:
    """The validator of `[keystone]`, or None when no auth_url is set."""
    return KeystoneAuth(config, clock) if config.auth_url else None


class KeystoneAuth:
    """Validates tokens against Keystone (see the module's docstring). One ClientSession, made
    on first use inside the running loop."""

    def __init__(self, config: KeystoneConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._cache: collections.OrderedDict[str, _Validated] = collections.OrderedDict()
        self._inflight: dict[str, asyncio.Task[_Validated]] = {}
        self._own: ServiceToken | None = None
        self._own_lock = asyncio.Lock()

    @property
    def challenge(self) -> str:
        return 'Keystone uri="%s"' % self.config.auth_url

    def adopt(self, other: TokenValidator) -> bool:
        if not isinstance(other, KeystoneAuth):
            return False
        cache_only = {f: getattr(other.config, f) for f in _CACHE_SETTINGS}
        if dataclasses.replace(self.config, **cache_only) != other.config:
            return False
        self.config = other.config
        return True

    # -- callers' tokens ------------------------------------------------------------------

    async def authenticate(self, token: str, service_token: str | None = None) -> Context:
        """The caller behind `token` (and the service behind `service_token`, as
        keystonemiddleware's X-Service-Token). Unauthorized: Keystone says a token is not valid;
        IdentityUnavailable: Keystone cannot tell, and the token was not validated before."""
        if service_token is None:
            return await self._validated(token)
        service = await self._validated(service_token)
        roles = {r.lower() for r in self.config.service_token_roles}
        is_service = not roles or bool(service.roles & roles)
        if not is_service:
            if self.config.service_token_roles_required:
                raise Unauthorized("The service token does not hold a service role (%s)" % ", ".join(sorted(roles)))
            log.warning("keystone: service token of user %s holds none of the roles %s", service.user, sorted(roles))
        # A service acting for a user may carry the user's expired token (Nova finishing a long
        # snapshot): as keystonemiddleware, Keystone is asked with allow_expired.
        ctx = await self._validated(token, allow_expired=is_service)
        return replace(ctx, service_user=service.user, service_roles=service.roles)

    async def _validated(self, token: str, allow_expired: bool = False) -> Context:
        now, monotonic = self._clock.now(), self._clock.monotonic()
        plain = self._cache.get(token)
        if plain is not None and plain.context is not None and monotonic < plain.fresh_until:
            if now < plain.expires or not allow_expired:
                self._cache.move_to_end(token)
                if now >= plain.expires:  # known to have expired: no need to ask
                    raise Unauthorized("The request you have made requires authentication: the token has expired")
                return plain.context
        # An expired token's answer with allow_expired is kept apart from the plain one.
        key = EXPIRED_KEY + token if allow_expired else token
        entry = self._cache.get(key)
        if entry is None or monotonic >= entry.fresh_until or (not allow_expired and now >= entry.expires):
            entry = await self._lookup(key, token, allow_expired)
        else:
            self._cache.move_to_end(key)
        if entry.context is None:
            raise Unauthorized("The request you have made requires authentication: the token is not valid")
        if not allow_expired and self._clock.now() >= entry.expires:
            raise Unauthorized("The request you have made requires authentication: the token has expired")
        return entry.context

    async def _lookup(self, key: str, token: str, allow_expired: bool) -> _Validated:
        """Ask Keystone once however many requests wait for the same token. The shared task is
        shielded: a client that goes away does not cancel the others' answer."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(key, token, allow_expired))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        return await asyncio.shield(task)

    def _settled(self, key: str, task: asyncio.Task[_Validated]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    async def _fetch(self, key: str, token: str, allow_expired: bool) -> _Validated:
        try:
            body = await self._validate_remote(token, allow_expired)
        except IdentityUnavailable:
            known = self._cache.get(key)
            if known is not None and known.context is not None and (allow_expired or self._clock.now() < known.expires):
                # Validated before and not expired: keep serving it through the outage.
                kept = replace(known, fresh_until=self._clock.monotonic() + OUTAGE_RETRY_SECONDS)
                self._remember(key, kept)
                return kept
            raise
        now, fresh = self._clock.now(), self._clock.monotonic() + self.config.token_cache_time
        if body is None:  # not valid: remembered too, so a bad token does not hammer Keystone
            entry = _Validated(context=None, expires=now + self.config.token_cache_time, fresh_until=fresh)
        else:
            ctx, expires = token_context(token, body)
            entry = _Validated(context=ctx, expires=expires, fresh_until=fresh)
        self._remember(key, entry)
        return entry

    def _remember(self, token: str, entry: _Validated) -> None:
        self._cache[token] = entry
        self._cache.move_to_end(token)
        while len(self._cache) > self.config.token_cache_size:
            self._cache.popitem(last=False)

    async def _validate_remote(self, token: str, allow_expired: bool = False) -> dict[str, Any] | None:
        """Keystone's body for a valid token, None for one it does not know (404)."""
        path = "/auth/tokens?nocatalog" + ("&allow_expired=1" if allow_expired else "")
        for attempt in range(2):
            own = await self._own_token(renew=attempt > 0)
            status, body, _headers = await self._call(
                "GET",
                path,
                headers={"X-Auth-Token": own.token, "X-Subject-Token": token},
            )
            if status == 200:
                return body
            if status == 404:
                return None
            if status == 401 and attempt == 0:
                continue  # our own token ran out or was revoked: a new one, once
            if status in (401, 403):
                raise IdentityUnavailable(
                    "The identity service refused to validate tokens for this appliance (HTTP %d): "
                    "its [keystone] user needs the service or admin role" % status
                )
            raise IdentityUnavailable("The identity service (Keystone) failed: HTTP %d" % status)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the appliance's own token ----------------------------------------------------------

    async def service_token(self, renew: bool = False) -> str:
        """The appliance's own token (for the hub link), renewed before it expires, or now."""
        return (await self._own_token(renew=renew)).token

    async def endpoint(self, service_type: str, region: str = "", interface: str = "") -> str:
        """The URL of `service_type` in the catalog, for `interface` (default: the configured
        one) and `region` (default: [keystone] region_name; "" = any)."""
        own = await self._own_token()
        region = region or self.config.region_name
        interface = interface or self.config.interface
        for service in own.catalog:
            if service.get("type") != service_type:
                continue
            for endpoint in service.get("endpoints") or ():
                if endpoint.get("interface") != interface:
                    continue
                if region and region not in (endpoint.get("region_id"), endpoint.get("region")):
                    continue
                return str(endpoint["url"]).rstrip("/")
        raise IdentityUnavailable(
            "The Keystone catalog has no %s endpoint for interface %s%s"
            % (service_type, interface, " in region %s" % region if region else "")
        )

    async def _own_token(self, renew: bool = False) -> ServiceToken:
        async with self._own_lock:
            own = self._own
            if own is not None and not renew:
                left = own.expires - self._clock.now()
                if left > min(RENEW_MARGIN_SECONDS, (own.expires - own.issued) / 2):
                    return own
            self._own = await self._issue()
            return self._own

    async def _issue(self) -> ServiceToken:
        conf = self.config
        identity: dict[str, Any]
        if conf.application_credential_id:
            identity = {
                "methods": ["application_credential"],
                "application_credential": {
                    "id": conf.application_credential_id,
                    "secret": conf.application_credential_secret,
                },
            }
            auth: dict[str, Any] = {"identity": identity}
        else:
            identity = {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": conf.username,
                        "domain": {"name": conf.user_domain_name},
                        "password": conf.password,
                    }
                },
            }
            scope = {"project": {"name": conf.project_name, "domain": {"name": conf.project_domain_name}}}
            auth = {"identity": identity, "scope": scope}
        status, body, headers = await self._call("POST", "/auth/tokens", json={"auth": auth})
        if status != 201 or body is None or "X-Subject-Token" not in headers:
            raise IdentityUnavailable(
                "The identity service refused the appliance's own [keystone] credentials (HTTP %d)" % status
            )
        info = body["token"]
        log.info("keystone: got the appliance's own token from %s", conf.auth_url)
        return ServiceToken(
            token=headers["X-Subject-Token"],
            issued=self._clock.now(),
            expires=parse_timestamp(str(info["expires_at"])).timestamp(),
            catalog=tuple(info.get("catalog") or ()),
        )

    # -- HTTP -------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self.config.http_connect_timeout)
            self._session = aiohttp.ClientSession(
                timeout=timeout, headers={"User-Agent": "edge-image-appliance/%s" % __version__}
            )
        return self._session

    async def _call(
        self, method: str, path: str, *, json: Any = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, dict[str, Any] | None, Mapping[str, str]]:
        url = self.config.auth_url + path
        try:
            async with self._client().request(method, url, json=json, headers=headers) as resp:
                body = await resp.json(content_type=None) if resp.status in (200, 201) else None
                if resp.status >= 500:
                    raise IdentityUnavailable(
                        "The identity service (Keystone at %s) is unreachable: HTTP %d"
                        % (self.config.auth_url, resp.status)
                    )
                return resp.status, body, resp.headers
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise IdentityUnavailable(
                "The identity service (Keystone at %s) is unreachable: %s"
                % (self.config.auth_url, str(exc) or type(exc).__name__)
            ) from exc

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        if self._session is not None:
            await self._session.close()
