"""The signature hash rides on the digest threads, and a Signer checks what they computed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from appliance.config import Config, SignaturesConfig, parse_config
from appliance.digest import DigestSink
from appliance.errors import ConfigError
from appliance.signature import SignatureFailed, SignatureVerifier
from tests.signkit import HASHES, make_cert, new_key, save_cert, sign, signature_properties


@pytest.mark.parametrize("method", list(HASHES))
async def test_digest_sink_computes_the_signature_hash(method: str, tmp_path: Path) -> None:
    data = [os.urandom(100_000) for _ in range(30)]
    name = method.replace("-", "").lower()
    sink = DigestSink(signed_hash=name)
    for piece in data:
        await sink.feed([piece])
    digest = await sink.close()
    joined = b"".join(data)
    assert digest.signed_hash == hashlib.new(name, joined).digest()
    assert digest.os_hash_value == hashlib.sha512(joined).hexdigest()
    plain = DigestSink()
    await plain.feed([joined])
    assert (await plain.close()).signed_hash is None


async def test_signer_checks_the_streamed_hash(tmp_path: Path) -> None:
    root = tmp_path
    key = new_key("ECC_SECP384R1")
    save_cert(root / "certs", "c1", make_cert(key))
    verifier = SignatureVerifier(Config(state_dir=root, signatures=SignaturesConfig(cert_dir="certs")))
    data = os.urandom(50_000)
    props = signature_properties("ECC_SECP384R1", "SHA-384", "c1", sign(key, "SHA-384", data))
    assert await verifier.prepare("img", {"os_distro": "x"}) is None  # unsigned: nothing to do
    signer = await verifier.prepare("img", props)
    assert signer is not None and signer.hash_name == "sha384"
    signer.check(hashlib.sha384(data).digest())
    with pytest.raises(SignatureFailed, match="bad signature"):
        signer.check(hashlib.sha384(data + b"!").digest())


@pytest.mark.parametrize(
    ("signatures", "error"),
    [
        ({"key_manager": "barbican"}, 'signatures.key_manager = "barbican": needs [keystone] auth_url'),
        ({"key_manager": "vault"}, "signatures.key_manager: must be one of cert_dir, barbican, got 'vault'"),
        ({"auth_type": "password"}, "signatures.auth_type: must be one of token, keystone_password"),
        ({"barbican_endpoint_type": "private"}, "signatures.barbican_endpoint_type: must be one of public"),
        ({"barbican_endpoint": "barbican:9311"}, "signatures.barbican_endpoint: must be an http:// or https://"),
    ],
)
def test_barbican_settings_are_checked(signatures: dict[str, str], error: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"signatures": signatures}, tmp_path)
    assert error in str(info.value)
    # With Keystone configured, Barbican is accepted.
    keystone = {"auth_url": "http://127.0.0.1:5000/v3", "username": "u", "password": "p"}
    parsed = parse_config({"signatures": {"key_manager": "barbican"}, "keystone": keystone}, tmp_path)
    assert parsed.signatures.key_manager == "barbican"
