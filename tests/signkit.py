"""Keys, certificates and image signatures made by the tests, as an operator makes them for
Glance (the steps of Glance's "Image signature verification" guide, with `cryptography`)."""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, padding, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA-224": hashes.SHA224,
    "SHA-256": hashes.SHA256,
    "SHA-384": hashes.SHA384,
    "SHA-512": hashes.SHA512,
}
KEY_TYPES = ("RSA-PSS", "DSA", "ECC_SECP384R1", "ECC_SECP521R1")
DAY = datetime.timedelta(days=1)


@cache
def new_key(key_type: str, variant: int = 0) -> PrivateKey:
    """One key per (type, variant) per test run: DSA and RSA key generation is slow."""
    if key_type == "RSA-PSS":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "DSA":
        return dsa.generate_private_key(key_size=2048)
    curve = {"ECC_SECP384R1": ec.SECP384R1(), "ECC_SECP521R1": ec.SECP521R1()}[key_type]
    return ec.generate_private_key(curve)


@dataclass(frozen=True)
class Issuer:
    key: PrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str, variant: int = 0) -> Issuer:
    key = new_key("ECC_SECP384R1", 100 + variant)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Issuer(key, cert)


def make_cert(
    key: PrivateKey,
    issuer: Issuer | None = None,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    common_name: str = "image signer",
) -> x509.Certificate:
    """A signing certificate for `key`: self-signed, or issued by `issuer`."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer.cert.subject if issuer else _name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + 30 * DAY)
    )
    if issuer is not None:
        return builder.sign(issuer.key, hashes.SHA256())
    # DSA and ECC keys sign their own certificate with SHA-256 as well.
    return builder.sign(key, hashes.SHA256())


def save_cert(cert_dir: Path, cert_id: str, cert: x509.Certificate) -> None:
    cert_dir.mkdir(parents=True, exist_ok=True)
    (cert_dir / ("%s.pem" % cert_id)).write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def sign(key: PrivateKey, hash_method: str, data: bytes) -> str:
    """img_signature: base64 of the signature over the data, as Glance's guide makes it."""
    algorithm = HASHES[hash_method]()
    if isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.MAX_LENGTH), algorithm)
    elif isinstance(key, dsa.DSAPrivateKey):
        raw = key.sign(data, algorithm)
    else:
        raw = key.sign(data, ec.ECDSA(algorithm))
    return base64.b64encode(raw).decode()


def signature_properties(key_type: str, hash_method: str, cert_id: str, signature: str) -> dict[str, str]:
    return {
        "img_signature": signature,
        "img_signature_hash_method": hash_method,
        "img_signature_key_type": key_type,
        "img_signature_certificate_uuid": cert_id,
    }
