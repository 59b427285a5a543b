"""Bundle signatures: ed25519 keys (load, generate, name by fingerprint), manifest.sig, and the
one rule for which signatures a site accepts."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import ConfigError, Forbidden


class BundleRefused(Forbidden):
    """The site's signature policy refuses the bundle."""


def fingerprint(public_key: bytes) -> str:
    """How a key is named in messages: the start of the SHA-256 of its 32 raw bytes."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:32]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError("cannot read key file %s: %s" % (path, exc.strerror)) from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An ed25519 private key from a PEM (PKCS#8) or OpenSSH key file."""
    raw = _read_key_file(path)
    try:
        if raw.lstrip().startswith(b"-----BEGIN OPENSSH"):
            key: Any = serialization.load_ssh_private_key(raw, password=None)
        else:
            key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError("%s is not an unencrypted PEM or OpenSSH private key: %s" % (path, exc)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("%s holds a %s key; bundles are signed with ed25519" % (path, type(key).__name__))
    return key


def load_public_key(path: Path) -> bytes:
    """The 32 raw bytes of an ed25519 public key: PEM, OpenSSH (`ssh-ed25519 ...`) or raw."""
    raw = _read_key_file(path)
    if len(raw) == 32:
        return raw
    try:
        if raw.lstrip().startswith(b"ssh-"):
            key: Any = serialization.load_ssh_public_key(raw.strip())
        else:
            key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError("%s is not a PEM, OpenSSH or raw 32-byte public key: %s" % (path, exc)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("%s holds a %s key; bundles are signed with ed25519" % (path, type(key).__name__))
    return _raw_public(key)


def generate_key(path: Path) -> str:
    """Write a new private key to `path` (PEM, mode 0600) and its public key to `path`.pub;
    returns the fingerprint."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public = key.public_key()
    path.with_name(path.name + ".pub").write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return fingerprint(_raw_public(public))


def sign_manifest(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """manifest.sig: the signature over the exact manifest bytes, with the signer's public key
    (so a site can name the signer, and check the signature, even when it does not trust it)."""
    return (
        json.dumps(
            {
                "algorithm": "ed25519",
                "public_key": base64.b64encode(_raw_public(key.public_key())).decode(),
                "signature": base64.b64encode(key.sign(manifest)).decode(),
            },
            indent=1,
        ).encode()
        + b"\n"
    )


@dataclass(frozen=True)
class SignatureCheck:
    signed: bool
    valid: bool = False
    fingerprint: str = ""
    trusted: bool = False

    def describe(self) -> str:
        if not self.signed:
            return "unsigned"
        if not self.valid:
            return "signature INVALID (claims key %s)" % self.fingerprint
        return "signed by %s (%s)" % (self.fingerprint, "trusted" if self.trusted else "not a trusted key")


def check_signature(manifest: bytes, signature: bytes | None, trusted: Iterable[bytes]) -> SignatureCheck:
    if signature is None:
        return SignatureCheck(signed=False)
    try:
        data = json.loads(signature)
        if data.get("algorithm") != "ed25519":
            return SignatureCheck(signed=True, fingerprint="(algorithm %r)" % data.get("algorithm"))
        public = base64.b64decode(data["public_key"], validate=True)
        sig = base64.b64decode(data["signature"], validate=True)
        key = Ed25519PublicKey.from_public_bytes(public)
    except (ValueError, KeyError, TypeError, AttributeError):
        return SignatureCheck(signed=True, fingerprint="(unreadable)")
    try:
        key.verify(sig, manifest)
    except InvalidSignature:
        return SignatureCheck(signed=True, fingerprint=fingerprint(public))
    return SignatureCheck(signed=True, valid=True, fingerprint=fingerprint(public), trusted=public in set(trusted))


def enforce_signature_policy(check: SignatureCheck, require_signed: bool) -> None:
    """The one rule: a signature that does not verify is always refused (the manifest was
    changed after signing); a site that requires signatures refuses unsigned bundles and
    bundles signed by keys it does not trust."""
    if check.signed and not check.valid:
        raise BundleRefused(
            "The bundle's signature does not verify (%s): the manifest was changed after signing, "
            "or the signature is damaged; nothing was imported" % check.describe()
        )
    if not require_signed:
        return
    if not check.signed:
        raise BundleRefused(
            "This site requires signed bundles ([bundles] require_signed) and this bundle is "
            "not signed; nothing was imported. Export it with --sign"
        )
    if not check.trusted:
        raise BundleRefused(
            "This site requires bundles signed by one of its trusted_keys; this one is signed by %s, "
            "which is not among them; nothing was imported" % check.fingerprint
        )
