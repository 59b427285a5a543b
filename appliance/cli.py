"""edge-appliance: serve | check-config | check-uri | bundle | cache | policy."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import stat
import sys
from pathlib import Path

from aiohttp import web

from appliance import __version__, memory, systemd, workers
from appliance.api.listener import (
    Budget,
    ConnectionLimits,
    GuardedTCPSite,
    GuardedUnixSite,
    Listener,
    connection_budget,
    raise_fd_limit,
)
from appliance.app import build_app
from appliance.commands import bundle as bundle_command
from appliance.commands import cache as cache_command
from appliance.commands import metadefs as metadefs_command
from appliance.commands import policy as policy_command
from appliance.config import Config, load_config
from appliance.errors import ConfigError
from appliance.logconfig import configure_logging, set_level, set_repeat_interval
from appliance.services import Services, open_services, reload_services

log = logging.getLogger("appliance")


# In-flight downloads get this long to finish after SIGTERM (systemd's TimeoutStopSec is longer).
STOP_GRACE_SECONDS = 30.0


async def _watchdog(interval: float) -> None:
    # Runs on the event loop: a loop blocked for longer than WatchdogSec stops the pings and
    # systemd restarts the service.
    while True:
        systemd.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _status_line(services: Services) -> str:
    config = services.config
    return "STATUS=%s site %s: %d store(s), %d import(s) running" % (
        config.site.role,
        config.site.name,
        len(services.stores),
        services.imports.running_count(),
    )


def _reload(services: Services, config_path: Path | None, overrides: dict[str, object]) -> None:
    systemd.reloading()
    try:
        new = load_config(config_path, services.config.state_dir, **overrides)
        pending = reload_services(services, new)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
        systemd.notify("READY=1\nSTATUS=reload failed: %s" % exc)
        return
    set_level(new.logging.level)
    set_repeat_interval(new.logging.repeat_interval)
    if pending:
        log.warning("reload applied; these changed but need a restart to take effect: %s", ", ".join(pending))
    else:
        log.info("reload applied")
    systemd.notify("READY=1\n" + _status_line(services))


def _private_state(config: Config) -> None:
    """Whatever the daemon creates is its user's alone (0600 files, 0700 directories), also when
    it is started outside systemd with a permissive umask; an existing state directory loses
    its world bits (systemd's 0750 stays: the group reaches the socket), the catalog is 0600.
    Under systemd the unit's UMask= (0027: group-readable, by design) is kept, less any world bits."""
    inherited = os.umask(0o077)
    if os.environ.get("INVOCATION_ID"):  # started by systemd
        os.umask(inherited | 0o007)
        return
    config.state_dir.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(config.state_dir.stat().st_mode)
    if mode & 0o027:
        os.chmod(config.state_dir, mode & ~0o027)
    catalog = config.path(config.catalog.path)
    for path in (catalog, catalog.with_name(catalog.name + "-wal"), catalog.with_name(catalog.name + "-shm")):
        if path.exists():
            os.chmod(path, 0o600)


def _listeners(runner: web.AppRunner, config: Config) -> tuple[Listener, Listener, Budget]:
    api = config.api
    limits = ConnectionLimits(
        header_timeout=float(api.header_timeout),
        min_body_rate=api.min_body_rate,
        body_rate_window=float(api.body_rate_window),
        body_timeout=float(api.body_timeout),
    )
    assert runner.server is not None
    budget = connection_budget(api.max_connections, api.unix_max_connections, raise_fd_limit())
    return (
        Listener("listener %s:%d" % (api.host, api.port), runner.server, limits, budget.tcp_cap),
        Listener("unix socket", runner.server, limits, api.unix_max_connections),
        budget,
    )


async def serve(config: Config, config_path: Path | None = None, overrides: dict[str, object] | None = None) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP re-reads `config_path` with the same CLI `overrides`."""
    memory.one_arena()  # before any thread starts
    _private_state(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # asyncio.to_thread work (file I/O, decompression, scrubbing) runs below the loop's priority.
    loop.set_default_executor(workers.executor(min(32, (os.cpu_count() or 1) + 4), "worker"))
    workers.watch_children_by_pidfd(loop)
    workers.LANES.warm(background=False, count=2)  # an upload's hash threads
    workers.LANES.warm(background=True, count=3)  # an import's spool and hash threads
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(config) as services:
        loop.add_signal_handler(signal.SIGHUP, _reload, services, config_path, overrides or {})
        runner = web.AppRunner(
            build_app(services),
            access_log=logging.getLogger("aiohttp.access"),
            shutdown_timeout=STOP_GRACE_SECONDS,
            keepalive_timeout=float(config.api.idle_timeout),
        )
        await runner.setup()
        tcp, unix, budget = _listeners(runner, config)
        watchdog = None
        try:
            site = GuardedTCPSite(runner, tcp, config.api.host, config.api.port, budget.backlog)
            await site.start()
            server = site._server
            bound = [s.getsockname() for s in server.sockets] if isinstance(server, asyncio.Server) else []
            for addr in bound:
                log.info("serving the Image API on http://%s:%d", addr[0], addr[1])
            if bound:
                tcp.name = "listener %s:%d" % (bound[0][0], bound[0][1])
            if config.api.unix_socket:
                sock_path = config.path(config.api.unix_socket)
                sock_path.parent.mkdir(parents=True, exist_ok=True)
                sock_path.unlink(missing_ok=True)
                await GuardedUnixSite(runner, unix, str(sock_path), budget.unix_backlog).start()
                os.chmod(sock_path, 0o660)
                log.info("serving the Image API on unix:%s", sock_path)
            systemd.notify("READY=1\n" + _status_line(services))
            interval = systemd.watchdog_interval()
            if interval:
                watchdog = asyncio.create_task(_watchdog(interval), name="watchdog")
            memory.freeze_startup()
            log.info("site %s (%s) ready; state in %s", config.site.name, config.site.role, config.state_dir)
            loops = [asyncio.create_task(run(), name=name) for name, run in services.background_loops()]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in (stopper, *loops):
                task.cancel()
            await asyncio.gather(stopper, *loops, return_exceptions=True)
            crashed = [t for t in done if t is not stopper and not t.cancelled() and t.exception() is not None]
            if crashed:
                # A dead background loop stops the daemon (exit 1) so systemd restarts it.
                raise RuntimeError("background loop %s failed" % crashed[0].get_name()) from crashed[0].exception()
            log.info("stopping: no new requests; in-flight transfers get %.0f s", STOP_GRACE_SECONDS)
        finally:
            systemd.notify("STOPPING=1")
            loop.remove_signal_handler(signal.SIGHUP)
            # Closes the listeners first, then waits for in-flight requests (the grace period).
            await runner.cleanup()
            if watchdog is not None:
                watchdog.cancel()
    log.info("stopped")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-appliance", description="Edge Image Appliance daemon")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the daemon in the foreground")
    s.add_argument("--config", type=Path, help="TOML config file (default: the embedded defaults)")
    s.add_argument(
        "--state-dir", type=Path, help="base of every relative path in the config (default: $STATE_DIRECTORY or ./var)"
    )
    s.add_argument("--host", help="listen address (overrides api.host)")
    s.add_argument("--port", type=int, help="listen port (overrides api.port; 0 picks a free one)")
    s.add_argument(
        "--log-format",
        choices=("auto", "text", "journal", "json"),
        default="auto",
        help="auto: journal-style under systemd, else text; json: one JSON object per line",
    )
    c = sub.add_parser("check-config", help="validate a config file and exit")
    c.add_argument("path", type=Path)
    u = sub.add_parser("check-uri", help="would web-download fetch this URL? (exit 0: accept, 1: refuse)")
    u.add_argument("--config", type=Path, help="TOML config file (default: the embedded defaults)")
    u.add_argument("url")
    bundle_command.add_arguments(
        sub.add_parser("bundle", help="portable image bundles for sites the hub never reaches")
    )
    cache_command.add_arguments(sub.add_parser("cache", help="the image cache (glance-cache-manage verbs, and stats)"))
    policy_command.add_arguments(
        sub.add_parser("policy", help="the policy rules in force (defaults and [auth] policy_file); try a caller")
    )
    metadefs_command.add_arguments(
        sub.add_parser("metadefs", help="load or export metadata definition namespaces (Glance's file format)")
    )
    return p


def check_uri(config_path: Path | None, url: str) -> int:
    from appliance.imports import build_uri_filter

    config = load_config(config_path, Path("."))
    decision = asyncio.run(build_uri_filter(config).check(url))
    print("accept" if decision.allowed else "refuse: %s" % decision.reason)
    return 0 if decision.allowed else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "cache":
        return cache_command.run(args)
    if args.command == "bundle":
        return bundle_command.run(args)
    if args.command == "policy":
        return policy_command.run(args)
    if args.command == "metadefs":
        return metadefs_command.run(args)
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
    configure_logging(config.logging.level, args.log_format, config.logging.repeat_interval)
    try:
        asyncio.run(serve(config, args.config, {"host": args.host, "port": args.port}))
    except ConfigError as exc:
        log.error("config error: %s", exc)
        return 2
    except Exception:
        log.exception("daemon failed")
        return 1
    return 0
