"""Glance's image signature verification (the cursive library's rules, in the appliance's words).

An image whose properties name a signature (img_signature, img_signature_hash_method,
img_signature_key_type, img_signature_certificate_uuid) is checked before it turns active: the
certificate is looked up and checked before any data is read (`prepare`), the data is hashed with
the signature's hash method while it streams into a store (`DigestSink`, on its worker threads),
and the signature is checked against that hash (`Signer.check`) before the image is activated.
Certificates come from `[signatures] cert_dir` (one PEM file per certificate id) or Barbican
(appliance/keymanager.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from appliance import keymanager
from appliance.config import Config
from appliance.errors import BadRequest
from appliance.keymanager import CertificateUnavailable, KeystoneGetter

log = logging.getLogger(__name__)

SIGNATURE = "img_signature"
HASH_METHOD = "img_signature_hash_method"
KEY_TYPE = "img_signature_key_type"
CERT_UUID = "img_signature_certificate_uuid"
PROPERTIES = (SIGNATURE, HASH_METHOD, KEY_TYPE, CERT_UUID)

# Glance's names → (hashlib name for the streaming hash, cryptography's algorithm).
HASH_METHODS: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "SHA-224": ("sha224", hashes.SHA224),
    "SHA-256": ("sha256", hashes.SHA256),
    "SHA-384": ("sha384", hashes.SHA384),
    "SHA-512": ("sha512", hashes.SHA512),
}
RSA_PSS = "RSA-PSS"
DSA = "DSA"
# cursive registers these curves when the crypto library has them (binary SECT curves are
# gone from cryptography >= 47, so they are left out there too).
ECC_CURVES = tuple(
    "ECC_" + name
    for name in ("SECT571K1", "SECT409K1", "SECT571R1", "SECT409R1", "SECP521R1", "SECP384R1")
    if hasattr(ec, name)
)
KEY_TYPES = (RSA_PSS, DSA, *ECC_CURVES)


class SignatureFailed(BadRequest):
    """An image's signature, or what is needed to check it, is not right; the message says which check failed."""


PublicKey = rsa.RSAPublicKey | dsa.DSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Signer:
    """A signed image's signature and the certificate's public key, ready to check a hash."""

    image_id: str
    signature: bytes
    hash_method: str  # Glance's name, e.g. "SHA-256"
    key_type: str
    certificate_id: str
    public_key: PublicKey

    @property
    def hash_name(self) -> str:
        """The hashlib name the data is hashed with while it streams in."""
        return HASH_METHODS[self.hash_method][0]

    async def verify(self, signed_hash: bytes | None) -> None:
        """Raise SignatureFailed unless the signature is valid for the data's hash (the public
        key operation runs in a thread: a P-521 or DSA check takes about a millisecond)."""
        await asyncio.to_thread(self.check, signed_hash)

    def check(self, signed_hash: bytes | None) -> None:
        """Raise SignatureFailed unless the signature is valid for the data's hash."""
        if signed_hash is None:  # a writer that was not asked for the hash: a programming error
            raise AssertionError("image %s: no %s hash was computed" % (self.image_id, self.hash_method))
        algorithm = Prehashed(HASH_METHODS[self.hash_method][1]())
        key = self.public_key
        try:
            if isinstance(key, rsa.RSAPublicKey):
                pss = padding.PSS(
                    mgf=padding.MGF1(HASH_METHODS[self.hash_method][1]()), salt_length=padding.PSS.MAX_LENGTH
                )
                key.verify(self.signature, signed_hash, pss, algorithm)
            elif isinstance(key, dsa.DSAPublicKey):
                key.verify(self.signature, signed_hash, algorithm)
            else:
                key.verify(self.signature, signed_hash, ec.ECDSA(algorithm))
        except InvalidSignature:
            raise _failed(
                self.image_id,
                "bad signature: img_signature does not match the image data (%s, %s, certificate %s)"
                % (self.hash_method, self.key_type, self.certificate_id),
            ) from None
        log.info(
            "image %s: signature verified (%s, %s, certificate %s)",
            self.image_id,
            self.hash_method,
            self.key_type,
            self.certificate_id,
        )


def _failed(image_id: str, reason: str) -> SignatureFailed:
    return SignatureFailed("Signature verification failed for image %s: %s" % (image_id, reason))


@dataclass(frozen=True)
class _Claim:
    """What an image's signature properties say, checked for form."""

    signature: bytes
    hash_method: str
    key_type: str
    cert_id: str


def _claim(image_id: str, properties: Mapping[str, str]) -> _Claim:
    missing = [name for name in PROPERTIES if not properties.get(name)]
    if missing:
        # Glance skips verification here; a half-signed image is refused instead, since
        # activating it unchecked is what an operator who set img_signature does not expect.
        raise _failed(image_id, "incomplete signature properties: %s must be set too" % ", ".join(missing))
    hash_method, key_type = properties[HASH_METHOD], properties[KEY_TYPE]
    if hash_method not in HASH_METHODS:
        raise _failed(
            image_id,
            "unsupported hash method: invalid img_signature_hash_method %r (supported: %s)"
            % (hash_method, ", ".join(HASH_METHODS)),
        )
    if key_type not in KEY_TYPES:
        raise _failed(
            image_id,
            "unsupported key type: invalid img_signature_key_type %r (supported: %s)"
            % (key_type, ", ".join(KEY_TYPES)),
        )
    try:
        signature = base64.b64decode(properties[SIGNATURE], validate=True)
    except (binascii.Error, ValueError):
        raise _failed(image_id, "the signature data (img_signature) was not properly encoded using base64") from None
    return _Claim(signature, hash_method, key_type, properties[CERT_UUID])


class SignatureVerifier:
    """Turns an image's signature properties into a Signer, checking everything that can be
    checked before the data arrives: the properties, the certificate and its trust."""

    def __init__(self, config: Config) -> None:
        self._keystone: KeystoneGetter = lambda: None
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        conf = config.signatures
        self._certificates = keymanager.source(config, lambda: self._keystone())
        self._validate = conf.enable_certificate_validation
        self._trusted_ca = config.path(conf.trusted_ca) if conf.trusted_ca else None

    def use_keystone(self, keystone: KeystoneGetter) -> None:
        """Where the daemon's current Keystone client is (Barbican: its catalog and the
        appliance's own token)."""
        self._keystone = keystone

    async def prepare(self, image_id: str, properties: Mapping[str, str], token: str | None = None) -> Signer | None:
        """None for an image without signature properties; a Signer for a signed one; raises
        SignatureFailed when the signature cannot be verified. `token`: the caller's Keystone
        token, which reads the certificate from Barbican (key_manager = "barbican")."""
        if not any(name in properties for name in PROPERTIES):
            return None
        claim = _claim(image_id, properties)
        try:
            certificate = await self._certificates.certificate(claim.cert_id, token)
        except CertificateUnavailable as exc:
            raise _failed(image_id, str(exc)) from None
        # Trusted CA files are read, and the key checked, in a thread.
        return await asyncio.to_thread(self._signer, image_id, claim, certificate)

    def _signer(self, image_id: str, claim: _Claim, certificate: x509.Certificate) -> Signer:
        key_type, cert_id = claim.key_type, claim.cert_id
        if self._validate:
            self._check_trust(image_id, cert_id, certificate)
        key = certificate.public_key()
        wanted: type = (
            rsa.RSAPublicKey
            if key_type == RSA_PSS
            else dsa.DSAPublicKey
            if key_type == DSA
            else ec.EllipticCurvePublicKey
        )
        if not isinstance(key, wanted):
            raise _failed(
                image_id,
                "invalid public key type for signature key type %s: certificate %s holds a %s key"
                % (key_type, cert_id, type(key).__name__.removeprefix("_").replace("PublicKey", "")),
            )
        assert isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey | ec.EllipticCurvePublicKey)
        return Signer(image_id, claim.signature, claim.hash_method, key_type, cert_id, key)

    def _check_trust(self, image_id: str, cert_id: str, certificate: x509.Certificate) -> None:
        """Validity dates, then a chain (through trusted certificates) to a trusted CA."""
        now = datetime.datetime.now(datetime.UTC)
        if now < certificate.not_valid_before_utc:
            raise _failed(
                image_id,
                "certificate %s is not yet valid (valid from %s)"
                % (cert_id, certificate.not_valid_before_utc.isoformat()),
            )
        if now > certificate.not_valid_after_utc:
            raise _failed(
                image_id,
                "certificate %s is expired (valid until %s)" % (cert_id, certificate.not_valid_after_utc.isoformat()),
            )
        anchors = [ca for ca in self._trusted(image_id) if _can_sign(ca, now)]
        current = certificate
        for _ in range(len(anchors) + 1):  # each step moves to another trusted certificate
            if current in anchors:
                return
            issuer = next((ca for ca in anchors if _issued_by(current, ca)), None)
            if issuer is None:
                break
            current = issuer
        raise _failed(
            image_id,
            "untrusted certificate: could not locate the signing certificate of certificate %s (issuer %s) "
            "in the trusted CA certificates" % (cert_id, certificate.issuer.rfc4514_string()),
        )

    def _trusted(self, image_id: str) -> list[x509.Certificate]:
        assert self._trusted_ca is not None  # config: validation needs trusted_ca
        files = sorted(self._trusted_ca.glob("*")) if self._trusted_ca.is_dir() else [self._trusted_ca]
        found: list[x509.Certificate] = []
        for path in files:
            try:
                found.extend(x509.load_pem_x509_certificates(path.read_bytes()))
            except (OSError, ValueError) as exc:
                log.warning("signatures.trusted_ca: skipping %s: %s", path, exc)
        return found


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _can_sign(ca: x509.Certificate, now: datetime.datetime) -> bool:
    """As cursive: a CA certificate signs others only within its dates, marked CA, with keyCertSign."""
    if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
        return False
    try:
        basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return basic.ca and usage.key_cert_sign
