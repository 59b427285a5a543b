"""`edge-appliance policy list|check`: the rules a config puts in force, read from its files
(the TOML config and its `[auth] policy_file`) the way the daemon reads them at start and on
SIGHUP, so a file can be tried before the daemon is told to reload.

Exit codes: `list` 0; `check` 0 allow, 1 deny; both 2 when the config or the policy file is
refused (the message names the line and rule) or RULE is no rule.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance import policy
from appliance.auth import Context
from appliance.config import load_config
from appliance.errors import ConfigError

ALLOW, DENY, REFUSED = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="policy_command", required=True)
    listing = sub.add_parser("list", help="every rule in force, its check string and where it comes from")
    _source_options(listing)
    check = sub.add_parser("check", help="would a caller pass RULE? prints allow or deny (exit 0 or 1)")
    _source_options(check)
    check.add_argument("rule", metavar="RULE", help="a rule name, e.g. upload_image")
    check.add_argument("--roles", default="", help="the caller's roles, comma-separated (e.g. member,reader)")
    check.add_argument("--project", required=True, help="the caller's project")
    check.add_argument("--user", default="cli", help="the caller's user (default: cli)")
    check.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="what the rule is checked on, repeatable (default: project_id and owner are --project; "
        "an image's are e.g. project_id=OWNER visibility=public)",
    )


def _source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (default: the embedded defaults)")
    p.add_argument("--state-dir", type=Path, help="base of a relative policy_file (default: $STATE_DIRECTORY or ./var)")
    p.add_argument("--policy-file", type=Path, help="this oslo.policy file instead of the config's [auth] policy_file")


def _rules(args: argparse.Namespace) -> policy.Policy:
    if args.policy_file is not None:
        loaded = policy.Policy.load(args.policy_file)
    else:
        config = load_config(args.config, args.state_dir)
        path = config.auth.policy_file
        loaded = policy.Policy.load(config.path(path)) if path else policy.Policy.defaults()
    for warning in loaded.warnings:
        print("warning: %s" % warning, file=sys.stderr)
    return loaded


def _target(args: argparse.Namespace) -> dict[str, object]:
    target: dict[str, object] = {"project_id": args.project, "owner": args.project}
    for item in args.target:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError("--target %r: expected KEY=VALUE" % item)
        target[key] = value
    return target


def _quoted(text: str) -> str:
    return text if text else '""'


def run(args: argparse.Namespace) -> int:
    try:
        rules = _rules(args)
        if args.policy_command == "list":
            width = max(len(rule.name) for rule in rules)
            for rule in rules:
                print("%-*s  %s  [%s]" % (width, rule.name, _quoted(rule.text), rule.origin))
            return 0
        if args.rule not in rules:
            raise ConfigError("%s is not a rule (edge-appliance policy list shows them)" % args.rule)
        roles = frozenset(r.strip() for r in args.roles.split(",") if r.strip())
        ctx = Context(user=args.user, project=args.project, roles=roles)
        allowed = rules.allows(ctx, args.rule, _target(args))
    except ConfigError as exc:
        print("policy error: %s" % exc, file=sys.stderr)
        return REFUSED
    rule = rules.rule(args.rule)
    print("%s  %s: %s  [%s]" % ("allow" if allowed else "deny", rule.name, _quoted(rule.text), rule.origin))
    return ALLOW if allowed else DENY
