"""Where the signing certificates of signed images come from (img_signature_certificate_uuid).

Two sources, as `[signatures] key_manager` says:
- "cert_dir": one PEM file per certificate id in `[signatures] cert_dir`;
- "barbican": the secret of that uuid in OpenStack Barbican, as Glance reads it through castellan:
  the secret's metadata (`GET {barbican}/v1/secrets/{uuid}`: it must be a certificate), then its
  payload (`GET …/payload`, application/octet-stream: PEM, or DER), with the caller's Keystone
  token (castellan's auth_type "token") or the appliance's own ("keystone_password"). Barbican is
  `barbican_endpoint`, or the `key-manager` service in the Keystone catalog.

A certificate that cannot be had raises `CertificateUnavailable`, whose text is the failed check
in Glance's words (cursive's "Certificate not found with ID", "Unable to retrieve certificate with
ID", "Invalid certificate format") with the reason after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from cryptography import x509

from appliance import __version__
from appliance.config import Config, SignaturesConfig
from appliance.errors import IdentityUnavailable
from appliance.keystone import KeystoneAuth

log = logging.getLogger(__name__)

CERT_DIR = "cert_dir"
BARBICAN = "barbican"
SERVICE_TYPE = "key-manager"  # Barbican's type in the Keystone catalog
# Castellan's [key_manager] auth_type values that this appliance speaks.
AUTH_TOKEN = "token"  # the caller's token
AUTH_SERVICE = "keystone_password"  # the appliance's own [keystone] user

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Barbican's secret ids are uuids; anything else is not asked for (it would be a path).
_SECRET_ID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
# A certificate is a few KiB; a payload larger than this is not one.
MAX_PAYLOAD = 1 << 20


class CertificateUnavailable(Exception):
    """The certificate could not be had; the text names the check that failed and why."""


class CertificateSource(Protocol):
    async def certificate(self, cert_id: str, token: str | None) -> x509.Certificate:
        """The certificate `cert_id`, read with the caller's Keystone `token` where the source
        asks one; raises CertificateUnavailable."""
        ...


def not_found(cert_id: str, why: str) -> CertificateUnavailable:
    return CertificateUnavailable("missing certificate: Certificate not found with ID: %s (%s)" % (cert_id, why))


def unretrievable(cert_id: str, why: str) -> CertificateUnavailable:
    return CertificateUnavailable(
        "missing certificate: Unable to retrieve certificate with ID: %s: %s" % (cert_id, why)
    )


def parse_certificate(cert_id: str, data: bytes, where: str) -> x509.Certificate:
    """A PEM or DER X.509 certificate, or CertificateUnavailable naming `where` it came from."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateUnavailable(
            "missing certificate: Invalid certificate format: %s does not hold an X.509 certificate "
            "(PEM or DER): %s" % (where, exc)
        ) from None


class CertificateDir:
    """Certificates as files, `<dir>/<id>.pem`."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    async def certificate(self, cert_id: str, token: str | None) -> x509.Certificate:
        return await asyncio.to_thread(self._read, cert_id)

    def _read(self, cert_id: str) -> x509.Certificate:
        if self.path is None:
            raise CertificateUnavailable(
                "missing certificate: certificate not found with ID %s (no [signatures] cert_dir is configured)"
                % cert_id
            )
        path = self.path / ("%s.pem" % cert_id)
        if not _SAFE_ID.match(cert_id) or not path.is_file():
            raise CertificateUnavailable("missing certificate: certificate not found with ID %s" % cert_id)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CertificateUnavailable(
                "missing certificate: certificate %s could not be read: %s" % (cert_id, exc)
            ) from None
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError as exc:
            raise CertificateUnavailable(
                "missing certificate: certificate %s could not be read: %s" % (cert_id, exc)
            ) from None


KeystoneGetter = Callable[[], object]


class Barbican:
    """Certificates as Barbican secrets (see the module's docstring). A session per lookup: a
    signed image's certificate is read once per upload or import, and never kept, so a secret
    removed or an access revoked in Barbican takes effect at once."""

    def __init__(self, conf: SignaturesConfig, keystone: KeystoneGetter, timeout: float) -> None:
        self._conf = conf
        self._keystone = keystone  # the daemon's current Keystone client (it changes on reload)
        self._timeout = timeout

    def _identity(self) -> KeystoneAuth:
        identity = self._keystone()
        if not isinstance(identity, KeystoneAuth):  # the config requires [keystone] auth_url
            raise CertificateUnavailable("Barbican needs [keystone] auth_url: none is configured")
        return identity

    async def base_url(self, cert_id: str) -> str:
        """Barbican's versioned URL: the configured endpoint, or the catalog's key-manager."""
        conf = self._conf
        endpoint = conf.barbican_endpoint
        if not endpoint:
            try:
                endpoint = await self._identity().endpoint(
                    SERVICE_TYPE, conf.barbican_region_name, interface=conf.barbican_endpoint_type
                )
            except IdentityUnavailable as exc:
                raise unretrievable(
                    cert_id, "Barbican's endpoint could not be found in the Keystone catalog: %s" % exc
                ) from None
        url = endpoint.rstrip("/")
        version = conf.barbican_api_version.strip("/")
        return url if url.endswith("/" + version) else "%s/%s" % (url, version)

    async def _headers(self, cert_id: str, token: str | None, renew: bool) -> dict[str, str]:
        conf = self._conf
        headers = {"User-Agent": "edge-image-appliance/%s" % __version__}
        try:
            if conf.auth_type == AUTH_SERVICE:
                headers["X-Auth-Token"] = await self._identity().service_token(renew=renew)
                return headers
            if not token:
                raise unretrievable(
                    cert_id,
                    "the caller has no Keystone token to present to Barbican (a static token cannot read "
                    'Barbican\'s secrets; [signatures] auth_type = "keystone_password" reads them as this appliance)',
                )
            headers["X-Auth-Token"] = token
            if conf.send_service_user_token:
                headers["X-Service-Token"] = await self._identity().service_token(renew=renew)
        except IdentityUnavailable as exc:
            raise unretrievable(cert_id, "no token of this appliance for Barbican: %s" % exc) from None
        return headers

    async def certificate(self, cert_id: str, token: str | None) -> x509.Certificate:
        if not _SECRET_ID.match(cert_id):
            raise not_found(cert_id, "a Barbican secret id is a uuid")
        base = await self.base_url(cert_id)
        secret_url = "%s/secrets/%s" % (base, cert_id)
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(2):
                headers = await self._headers(cert_id, token, renew=attempt > 0)
                status, meta = await self._get(session, cert_id, secret_url, headers, "application/json")
                if status == 401 and attempt == 0 and self._own_token_used():
                    continue  # the appliance's token ran out or was revoked: a new one, once
                break
            self._check(cert_id, base, status, meta)
            secret_type = _json(meta).get("secret_type")
            if secret_type != "certificate":
                raise CertificateUnavailable(
                    "missing certificate: Invalid certificate format: Barbican secret %s is a %s secret, "
                    "not a certificate" % (cert_id, secret_type or "typeless")
                )
            status, payload = await self._get(
                session, cert_id, secret_url + "/payload", headers, "application/octet-stream"
            )
            self._check(cert_id, base, status, payload)
        log.info("signature certificate %s read from Barbican at %s", cert_id, base)
        return parse_certificate(cert_id, payload, "Barbican secret %s" % cert_id)

    def _own_token_used(self) -> bool:
        return self._conf.auth_type == AUTH_SERVICE or self._conf.send_service_user_token

    async def _get(
        self, session: aiohttp.ClientSession, cert_id: str, url: str, headers: dict[str, str], accept: str
    ) -> tuple[int, bytes]:
        try:
            async with session.get(url, headers={**headers, "Accept": accept}, allow_redirects=False) as resp:
                body = await resp.content.read(MAX_PAYLOAD + 1)
                if len(body) > MAX_PAYLOAD:
                    raise unretrievable(cert_id, "Barbican's answer is larger than %d bytes" % MAX_PAYLOAD)
                return resp.status, body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise unretrievable(
                cert_id,
                "the key manager (Barbican at %s) is unreachable: %s"
                % (url.split("/secrets/")[0], str(exc) or type(exc).__name__),
            ) from None

    def _check(self, cert_id: str, base: str, status: int, body: bytes) -> None:
        if status == 200:
            return
        said = _json(body).get("description") or body[:200].decode(errors="replace").strip()
        detail = "HTTP %d%s" % (status, ": %s" % said if said else "")
        if status == 404:
            raise not_found(cert_id, "Barbican at %s has no such secret" % base)
        if status == 403:
            whose = "this appliance's" if self._conf.auth_type == AUTH_SERVICE else "the caller's"
            raise unretrievable(cert_id, "Barbican at %s refused %s token (%s)" % (base, whose, detail))
        if status == 401:
            raise unretrievable(cert_id, "Barbican at %s did not accept the token (%s)" % (base, detail))
        raise unretrievable(cert_id, "Barbican at %s failed (%s)" % (base, detail))


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def source(config: Config, keystone: KeystoneGetter) -> CertificateSource:
    """The certificate source `[signatures]` configures."""
    conf = config.signatures
    if conf.key_manager == BARBICAN:
        return Barbican(conf, keystone, float(config.keystone.http_connect_timeout))
    return CertificateDir(config.path(conf.cert_dir) if conf.cert_dir else None)
