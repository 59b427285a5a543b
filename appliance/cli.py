"""edge-appliance: serve | check-config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from aiohttp import web

from appliance import __version__, systemd
from appliance.app import build_app
from appliance.config import Config, load_config
from appliance.errors import ConfigError
from appliance.logconfig import configure_logging
from appliance.services import open_services

log = logging.getLogger("appliance")


async def serve(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(config) as services:
        runner = web.AppRunner(build_app(services), access_log=logging.getLogger("aiohttp.access"))
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.api.host, config.api.port)
            await site.start()
            bound = [s.getsockname() for s in (site._server.sockets if site._server else [])]  # noqa: SLF001
            for addr in bound:
                log.info("serving the Image API on http://%s:%d", addr[0], addr[1])
            if config.api.unix_socket:
                sock_path = config.path(config.api.unix_socket)
                sock_path.parent.mkdir(parents=True, exist_ok=True)
                sock_path.unlink(missing_ok=True)
                await web.UnixSite(runner, str(sock_path)).start()
                os.chmod(sock_path, 0o660)
                log.info("serving the Image API on unix:%s", sock_path)
            systemd.notify("READY=1\nSTATUS=serving %d store(s) as %s site %s" % (
                len(services.stores), config.site.role, config.site.name))
            log.info("site %s (%s) ready; state in %s", config.site.name, config.site.role, config.state_dir)
            await stop.wait()
            log.info("stopping")
        finally:
            systemd.notify("STOPPING=1")
            await runner.cleanup()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-appliance", description="Edge Image Appliance daemon")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon in the foreground")
    s.add_argument("--config", type=Path, help="TOML config file (default: the embedded defaults)")
    s.add_argument("--state-dir", type=Path, help="base of every relative path in the config "
                   "(default: $STATE_DIRECTORY or ./var)")
    s.add_argument("--host", help="listen address (overrides api.host)")
    s.add_argument("--port", type=int, help="listen port (overrides api.port; 0 picks a free one)")
    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("path", type=Path)
    u = sub.add_parser("check-uri", help="would web-download fetch this URL? (exit 0: accept, 1: refuse)")
    u.add_argument("--config", type=Path, help="TOML config file (default: the embedded defaults)")
    u.add_argument("url")
    return p


def check_uri(config_path: Path | None, url: str) -> int:
    from appliance.imports import build_uri_filter

    config = load_config(config_path, Path("."))
    decision = asyncio.run(build_uri_filter(config).check(url))
    print("accept" if decision.allowed else "refuse: %s" % decision.reason)
    return 0 if decision.allowed else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-uri":
        try:
            return check_uri(args.config, args.url)
        except ConfigError as exc:
            print("config error: %s" % exc, file=sys.stderr)
            return 2
    if args.command == "check-config":
        try:
            load_config(args.path, Path("."))
        except ConfigError as exc:
            print("config error: %s" % exc, file=sys.stderr)
            return 2
        print("%s: OK" % args.path)
        return 0
    try:
        config = load_config(args.config, args.state_dir, host=args.host, port=args.port)
    except ConfigError as exc:
        print("config error: %s" % exc, file=sys.stderr)
        return 2
    configure_logging(config.logging.level)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    except Exception:
        log.exception("daemon failed")
        return 1
    return 0
