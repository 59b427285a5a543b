"""The operator's side of bundles (`edge-appliance bundle ...`): export images from an Image API
(this site's daemon on its Unix socket, or any appliance or Glance v2 endpoint by URL) into a
bundle file; send a bundle file to a daemon to import; verify a file; make a signing key."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from appliance.bundles.manifest import ImageRecord, Manifest
from appliance.bundles.report import BundleReport
from appliance.bundles.signing import generate_key, load_private_key, load_public_key, sign_manifest
from appliance.bundles.stream import IMAGE_DIR, create_bundle, verify_bundle
from appliance.commands import target as target_options
from appliance.commands.target import Target, target_from_args
from appliance.config import HubConfig, load_config
from appliance.digest import ChecksumMismatch
from appliance.errors import ApplianceError, ConfigError
from appliance.hub.client import HubClient
from appliance.stores.files import file_chunks


class TransferFailed(ApplianceError):
    """The daemon or endpoint could not be reached, or refused the request."""


async def export_bundle(target: Target, image_ids: list[str], output: Path, key_file: Path | None = None) -> Manifest:
    """Write the images to a bundle at `output` (via output.partial; nothing is left on failure).
    The data is hashed while it streams and must match each image's record."""
    key = load_private_key(key_file) if key_file is not None else None
    client = HubClient(HubConfig(url=target.base), target.token, session=target.session())
    try:
        records = tuple([ImageRecord.from_glance(await client.get_image(i)) for i in dict.fromkeys(image_ids)])
        manifest = Manifest(images=records, source=target.describe())
        raw = manifest.encode()
        async with create_bundle(output) as writer:
            await writer.start(raw, sign_manifest(raw, key) if key is not None else None)
            for record in records:
                async with client.open_data(record.id) as data:
                    digest = await writer.add_stream(IMAGE_DIR + record.id, record.size, data.chunks)
                try:
                    record.check(digest)
                except ChecksumMismatch as exc:
                    raise ChecksumMismatch(
                        "image %s: the data %s sent does not match its record: %s" % (record.id, target.describe(), exc)
                    ) from None
        return manifest
    finally:
        await client.close()


async def send_bundle(target: Target, path: Path, store: str | None = None) -> BundleReport:
    """POST the bundle to the daemon's /v2/edge/bundles and return its import report."""
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size), "Accept": "application/json"}
    if target.token:
        headers["X-Auth-Token"] = target.token
    try:
        async with target.session() as session:
            async with session.post(
                target.base + "/v2/edge/bundles",
                params={"store": store} if store else None,
                data=file_chunks(path),
                headers=headers,
            ) as resp:
                body = await resp.read()
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise TransferFailed(
            "cannot reach the daemon at %s: %s" % (target.describe(), str(exc) or type(exc).__name__)
        ) from None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if resp.status != 200:
        message = answer.get("message") if isinstance(answer, dict) else body[:300].decode(errors="replace")
        raise TransferFailed("%s refused the bundle (%d): %s" % (target.describe(), resp.status, message))
    return BundleReport.from_json(answer)


# -- the `bundle` command ---------------------------------------------------------------------


def add_arguments(b: argparse.ArgumentParser) -> None:
    sub = b.add_subparsers(dest="bundle_command", required=True)

    def target(p: argparse.ArgumentParser) -> None:
        target_options.add_arguments(p)
        p.add_argument("--config", type=Path, help="TOML config file ([bundles] settings)")

    e = sub.add_parser("export", help="write images (data, ids, metadata, hashes) to one bundle file")
    e.add_argument("ids", nargs="+", metavar="ID")
    e.add_argument("-o", "--output", type=Path, required=True, help="the bundle file to write")
    e.add_argument(
        "--sign",
        nargs="?",
        const="",
        metavar="KEYFILE",
        help="sign with this ed25519 private key (PEM); alone: [bundles] signing_key of --config",
    )
    target(e)
    v = sub.add_parser("verify", help="check a bundle's structure, signature and every hash; imports nothing")
    v.add_argument("file", type=Path)
    v.add_argument(
        "--trusted-key",
        type=Path,
        action="append",
        default=[],
        metavar="PUB",
        help="require a signature by this ed25519 public key (repeatable)",
    )
    v.add_argument("--config", type=Path, help="also apply [bundles] trusted_keys and require_signed of this config")
    v.add_argument("--state-dir", type=Path, help=argparse.SUPPRESS)
    i = sub.add_parser("import", help="import a bundle into the running daemon")
    i.add_argument("file", type=Path)
    i.add_argument("--store", help="the store to import into (default: the site's default store)")
    target(i)
    k = sub.add_parser("keygen", help="make an ed25519 signing key (KEYFILE) and its public key (KEYFILE.pub)")
    k.add_argument("keyfile", type=Path)


def _print_report(report: BundleReport) -> int:
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


def run(args: argparse.Namespace) -> int:
    """`edge-appliance bundle export|verify|import|keygen`: exit 0 on success, 1 if anything
    failed (with the reason printed), 2 for bad configuration or arguments."""
    try:
        if args.bundle_command == "keygen":
            print("wrote %s and %s.pub (%s)" % (args.keyfile, args.keyfile, generate_key(args.keyfile)))
            return 0
        config = load_config(args.config, args.state_dir) if args.config is not None else None
        if args.bundle_command == "verify":
            keys = [load_public_key(p) for p in args.trusted_key]
            require = bool(keys)
            if config is not None:
                keys += [load_public_key(config.path(p)) for p in config.bundles.trusted_keys]
                require = require or config.bundles.require_signed
            return _print_report(asyncio.run(verify_bundle(args.file, keys, require)))
        if args.bundle_command == "import":
            return _print_report(asyncio.run(send_bundle(target_from_args(args), args.file, args.store)))
        key_file = None
        if args.sign is not None:
            key_file = Path(args.sign) if args.sign else None
            if key_file is None:
                if config is None or not config.bundles.signing_key:
                    raise ConfigError(
                        "--sign without a key file uses [bundles] signing_key of --config, which is not set"
                    )
                key_file = config.path(config.bundles.signing_key)
        manifest = asyncio.run(export_bundle(target_from_args(args), args.ids, args.output, key_file))
        total = sum(r.size for r in manifest.images)
        print(
            "wrote %s: %d image(s), %d bytes of image data in %d bytes%s"
            % (args.output, len(manifest.images), total, args.output.stat().st_size, ", signed" if key_file else "")
        )
        return 0
    except ConfigError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    except (ApplianceError, OSError) as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
