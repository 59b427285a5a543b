"""`edge-appliance metadefs load DIR` / `export DIR`: metadata definition namespaces in Glance's
file format (what `glance-manage db_load_metadefs` loads from a Glance installation's `metadefs`
directory: one JSON file per namespace with namespace, display_name, description, visibility,
protected, resource_type_associations, properties, objects and tags), through the daemon's API
(its Unix socket, or --url and a token), so the daemon's rules and its edge read-only apply."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from appliance.commands import target as target_options
from appliance.commands.target import Target, target_from_args
from appliance.errors import ConfigError
from appliance.metadefshape import file_format

NAMESPACES = "/v2/metadefs/namespaces"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("verb", choices=("load", "export"))
    p.add_argument("dir", type=Path, metavar="DIR", help="the directory of namespace files (*.json)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="load: replace namespaces that exist (default: leave them as they are and say so)",
    )
    target_options.add_arguments(p)


class MetadefsCommandFailed(Exception):
    pass


async def _call(session: aiohttp.ClientSession, target: Target, method: str, path: str, body: Any = None) -> Any:
    headers = {"Accept": "application/json"}
    if target.token:
        headers["X-Auth-Token"] = target.token
    async with session.request(method, target.base + path, headers=headers, json=body) as resp:
        raw = await resp.read()
        if resp.status >= 400:
            try:
                message = json.loads(raw)["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace").strip()
            raise MetadefsCommandFailed("%s %s: %d %s" % (method, path, resp.status, message))
        return json.loads(raw) if raw else None


def _path(namespace: str) -> str:
    return "%s/%s" % (NAMESPACES, quote(namespace, safe=":"))


def file_name(namespace: str) -> str:
    return namespace.replace("::", "-").replace("/", "-") + ".json"


def read_files(directory: Path) -> list[tuple[Path, Any]]:
    """Each namespace file with its parsed document, or the error that kept it from parsing."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise MetadefsCommandFailed("no namespace files (*.json) in %s" % directory)
    docs: list[tuple[Path, Any]] = []
    for path in files:
        try:
            docs.append((path, json.loads(path.read_text(encoding="utf-8"))))
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            docs.append((path, exc))
    return docs


async def load(target: Target, docs: list[tuple[Path, Any]], overwrite: bool) -> int:
    failed = 0
    async with target.session() as session:
        existing = {n["namespace"] for n in await _all(session, target)}
        for path, doc in docs:
            try:
                if isinstance(doc, Exception):
                    raise MetadefsCommandFailed(str(doc))
                name = doc.get("namespace") if isinstance(doc, dict) else None
                if not isinstance(name, str):
                    raise MetadefsCommandFailed("no namespace name")
                if name in existing:
                    if not overwrite:
                        print("%s: namespace %s exists; left as it is (--overwrite replaces it)" % (path, name))
                        continue
                    await _remove(session, target, name)
                await _call(session, target, "POST", NAMESPACES, doc)
                print("%s: namespace %s loaded" % (path, name))
            except MetadefsCommandFailed as exc:
                print("%s: not loaded: %s" % (path, exc), file=sys.stderr)
                failed += 1
    return 1 if failed else 0


async def _remove(session: aiohttp.ClientSession, target: Target, name: str) -> None:
    current = await _call(session, target, "GET", _path(name))
    if current.get("protected"):  # a protected namespace must be unprotected to go
        fields = {k: current[k] for k in ("namespace", "display_name", "description", "visibility") if k in current}
        await _call(session, target, "PUT", _path(name), {**fields, "protected": False})
    await _call(session, target, "DELETE", _path(name))


async def _all(session: aiohttp.ClientSession, target: Target) -> list[dict[str, Any]]:
    """Every namespace the caller may read, page by page."""
    found: list[dict[str, Any]] = []
    page = await _call(session, target, "GET", NAMESPACES + "?limit=1000")
    while True:
        found += page["namespaces"]
        if "next" not in page or not page["namespaces"]:
            return found
        page = await _call(session, target, "GET", page["next"])


async def export(target: Target) -> list[dict[str, Any]]:
    """Every namespace the caller may read, in the file format."""
    async with target.session() as session:
        return [
            file_format(await _call(session, target, "GET", _path(ns["namespace"])))
            for ns in await _all(session, target)
        ]


def write_files(directory: Path, docs: list[dict[str, Any]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for doc in docs:
        path = directory / file_name(doc["namespace"])
        path.write_text(json.dumps(doc, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        print("namespace %s exported to %s" % (doc["namespace"], path))


def run(args: argparse.Namespace) -> int:
    """Exit 0 on success, 1 if a namespace was not loaded or the daemon refused, 2 for bad arguments."""
    try:
        target = target_from_args(args)
    except ConfigError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    try:
        if args.verb == "load":
            return asyncio.run(load(target, read_files(args.dir), args.overwrite))
        write_files(args.dir, asyncio.run(export(target)))
        return 0
    except MetadefsCommandFailed as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as exc:
        print("error: cannot reach the daemon at %s: %s" % (target.describe(), exc), file=sys.stderr)
        return 1
