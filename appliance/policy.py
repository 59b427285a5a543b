"""Who may do what: Glance's policy rules as oslo.policy check strings, an operator's policy file
over them, and `enforce`.

The defaults are Glance's own (glance/policies/*.py), by Glance's names and in its syntax, plus
the appliance's `edge:*` rules and the edge-site role (a site mirrors every record of its hub).
`[auth] policy_file`, an oslo.policy file (YAML or JSON, `"rule name": "check string"`), replaces
rules by name. It is read at start and on SIGHUP; a file with any error (syntax, a check string
that does not parse, a `rule:` naming no rule, rules referring to each other in a loop) is refused
whole, naming its line and rule, and the rules in force stay.

Visibility is not a rule: an image the caller may not see is missing (404), as in Glance, whose
repository filters images before any policy runs. The rules then decide among visible images.
Services call `enforce`; handlers never decide. The rules in force are process-wide, as Glance's
one enforcer is: the composition root installs them (open_services, reload_services).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from appliance.auth import Context
from appliance.checkstring import Check, CheckSyntaxError, parse
from appliance.config import Config
from appliance.errors import ConfigError, Forbidden, NotFound
from appliance.model import Image

log = logging.getLogger(__name__)

# The role of a per-site service token: an `[[auth.tokens]]` entry whose `user` is the site name.
SITE_ROLE = "edge-site"

# Keystone's default implied roles: admin implies member, member implies reader. A token lists
# its roles explicitly here, so the implication is applied when a role is checked.
IMPLIED = {"admin": ("member", "reader"), "member": ("reader",)}

# What a rule is checked on: the names its %(key)s parts read (an image's attributes, a site's name).
Target = Mapping[str, object]


def roles_of(ctx: Context) -> frozenset[str]:
    """The caller's roles with the implied ones; a role this table does not know adds nothing."""
    return ctx.roles | frozenset(r for role in ctx.roles for r in IMPLIED.get(role, ()))


# Glance's building blocks (glance/policies/base.py), spelled as Glance spells them.
ADMIN = "rule:context_is_admin"
PROJECT_MEMBER = "role:member and project_id:%(project_id)s"
PROJECT_READER = "role:reader and project_id:%(project_id)s"
IMAGE_MEMBER_CHECK = "project_id:%(member_id)s"
_VISIBLE = (
    "project_id:%(project_id)s or project_id:%(member_id)s or 'community':%(visibility)s"
    " or 'public':%(visibility)s or 'shared':%(visibility)s"
)
ADMIN_OR_PROJECT_MEMBER = "%s or (%s)" % (ADMIN, PROJECT_MEMBER)
ADMIN_OR_PROJECT_READER = "%s or (%s)" % (ADMIN, PROJECT_READER)
# A shared image passes 'shared':%(visibility)s for every reader: Glance relies, as we do, on the
# visibility filter having answered 404 to projects that are not its members.
ADMIN_OR_PROJECT_READER_GET_IMAGE = "%s or (role:reader and (%s))" % (ADMIN, _VISIBLE)
ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE = "%s or (role:member and (%s))" % (ADMIN, _VISIBLE)
ADMIN_OR_PROJECT_MEMBER_CREATE_IMAGE = "%s or (%s and project_id:%%(owner)s)" % (ADMIN, PROJECT_MEMBER)
ADMIN_OR_PROJECT_READER_GET_NAMESPACE = (
    "%s or (role:reader and (project_id:%%(project_id)s or 'public':%%(visibility)s))" % ADMIN
)
ADMIN_OR_SHARED_MEMBER = "%s or (role:member and %s)" % (ADMIN, IMAGE_MEMBER_CHECK)
ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER = "%s or role:reader and (project_id:%%(project_id)s or %s)" % (
    ADMIN,
    IMAGE_MEMBER_CHECK,
)
# The appliance's own: what an edge site needs of its hub beyond its own records (every image
# record, which it mirrors for the users of every project at the site, and the bytes it pulls),
# and a site's own service token, which names the site as its user.
SITE_READS = " or role:%s" % SITE_ROLE
ADMIN_OR_SITE_ITSELF = "%s or (role:%s and user_id:%%(site)s)" % (ADMIN, SITE_ROLE)

# glance/policies/base.py: the rules others refer to.
BASE: dict[str, str] = {
    "default": "",
    "context_is_admin": "role:admin",
    "service_api": "role:service or role:admin",
}

# The rules the services enforce (tests/api/test_roles.py drives each against every caller).
RULES: dict[str, str] = {
    # Images (glance/policies/image.py)
    "get_images": ADMIN_OR_PROJECT_READER + SITE_READS,
    "get_image": ADMIN_OR_PROJECT_READER_GET_IMAGE + SITE_READS,
    "download_image": ADMIN_OR_PROJECT_MEMBER_DOWNLOAD_IMAGE + SITE_READS,
    "add_image": ADMIN_OR_PROJECT_MEMBER_CREATE_IMAGE,
    "modify_image": ADMIN_OR_PROJECT_MEMBER,
    "upload_image": ADMIN_OR_PROJECT_MEMBER,
    "delete_image": ADMIN_OR_PROJECT_MEMBER,
    "deactivate": ADMIN_OR_PROJECT_MEMBER,
    "reactivate": ADMIN_OR_PROJECT_MEMBER,
    "communitize_image": ADMIN_OR_PROJECT_MEMBER,
    "publicize_image": ADMIN,
    "copy_image": ADMIN,
    "get_image_location": ADMIN_OR_PROJECT_READER,
    "delete_image_location": ADMIN,
    "set_image_location": ADMIN_OR_PROJECT_MEMBER,
    # The add-location API (2.17): service users (Cinder, Nova), or the owner's members.
    "add_image_location": "rule:service_api or (%s and project_id:%%(owner)s)" % PROJECT_MEMBER,
    "fetch_image_location": "rule:service_api",
    # Image members (glance/policies/image.py)
    "add_member": ADMIN_OR_PROJECT_MEMBER,
    "delete_member": ADMIN_OR_PROJECT_MEMBER,
    "get_member": ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
    "get_members": ADMIN_OR_PROJECT_READER_OR_SHARED_MEMBER,
    "modify_member": ADMIN_OR_SHARED_MEMBER,
    # Tasks: glance/policies/tasks.py leaves these to `default` (everyone) behind its admin-only
    # `tasks_api_access`; here the tasks API is open, so a task is its project's.
    "get_task": ADMIN_OR_PROJECT_READER,
    "get_tasks": ADMIN_OR_PROJECT_READER,
    # Discovery and cache (glance/policies/discovery.py, cache.py)
    "stores_info_detail": ADMIN,
    "cache_image": ADMIN,
    "cache_list": ADMIN,
    "cache_delete": ADMIN,
    # The legacy /v2/cached_images and /v2/queued_images routes (glance/policies/image.py)
    "manage_image_cache": ADMIN,
    # The appliance's own
    "edge:site_register": ADMIN_OR_SITE_ITSELF,
    "edge:site_heartbeat": ADMIN_OR_SITE_ITSELF,
    "edge:site_get": ADMIN_OR_SITE_ITSELF,
    "edge:site_assignments": ADMIN_OR_SITE_ITSELF,
    "edge:site_report": ADMIN_OR_SITE_ITSELF,
    "edge:site_list": ADMIN,
    "edge:site_delete": ADMIN,
    "edge:changes": ADMIN + SITE_READS,
    "edge:bundle_import": ADMIN,
    "edge:check_uri": ADMIN,
    "edge:status": ADMIN,
    "edge:events": ADMIN,
    # Who the daemon takes the caller for: anyone it knows may ask about itself.
    "edge:whoami": "@",
}

# glance/policies/metadef.py: reads for a namespace's project or a public one, writes for
# administrators only (17.1's defaults after OSSN-0090); appliance/metadefs.py enforces them.
# Edge sites read every namespace too: they mirror their hub's.
METADEF_ADMIN = "rule:metadef_admin"
METADEF: dict[str, str] = {
    "metadef_default": "",
    "metadef_admin": ADMIN,
    "get_metadef_namespace": ADMIN_OR_PROJECT_READER_GET_NAMESPACE + SITE_READS,
    "get_metadef_namespaces": ADMIN_OR_PROJECT_READER + SITE_READS,
    "modify_metadef_namespace": METADEF_ADMIN,
    "add_metadef_namespace": METADEF_ADMIN,
    "delete_metadef_namespace": METADEF_ADMIN,
    "get_metadef_object": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    "get_metadef_objects": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    "modify_metadef_object": METADEF_ADMIN,
    "add_metadef_object": METADEF_ADMIN,
    "delete_metadef_object": METADEF_ADMIN,
    "list_metadef_resource_types": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    "get_metadef_resource_type": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    "add_metadef_resource_type_association": METADEF_ADMIN,
    "remove_metadef_resource_type_association": METADEF_ADMIN,
    "get_metadef_property": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    "get_metadef_properties": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    "modify_metadef_property": METADEF_ADMIN,
    "add_metadef_property": METADEF_ADMIN,
    "remove_metadef_property": METADEF_ADMIN,
    "get_metadef_tag": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    "get_metadef_tags": ADMIN_OR_PROJECT_READER_GET_NAMESPACE,
    "modify_metadef_tag": METADEF_ADMIN,
    "add_metadef_tag": METADEF_ADMIN,
    "add_metadef_tags": METADEF_ADMIN,
    "delete_metadef_tag": METADEF_ADMIN,
    "delete_metadef_tags": METADEF_ADMIN,
}

DEFAULTS: dict[str, str] = {**BASE, **RULES, **METADEF}


@dataclass(frozen=True)
class Rule:
    name: str
    text: str  # the check string as written
    check: Check
    source: Path | None = None  # the policy file that set it; None: a default
    line: int = 0

    @property
    def origin(self) -> str:
        return "default" if self.source is None else "%s:%d" % (self.source, self.line)


class Policy:
    """The rules in force: the defaults with a policy file's over them."""

    def __init__(self, rules: Mapping[str, Rule], source: Path | None = None, warnings: tuple[str, ...] = ()) -> None:
        self._rules = dict(rules)
        self.source = source
        self.warnings = warnings  # file entries that name no rule of this appliance

    @classmethod
    def defaults(cls) -> Policy:
        return _DEFAULT_POLICY

    @classmethod
    def load(cls, path: Path) -> Policy:
        """The defaults with `path`'s rules over them; ConfigError naming the line and rule of
        the first problem."""
        rules = dict(_DEFAULT_POLICY._rules)
        seen: dict[str, int] = {}
        for entry in _entries(path):
            where = "policy file %s line %d: rule %s" % (path, entry.line, entry.name)
            if entry.name in seen:
                raise ConfigError("%s: set twice (also line %d)" % (where, seen[entry.name]))
            seen[entry.name] = entry.line
            if entry.text is None:
                raise ConfigError(
                    '%s: expected a check string in quotes, found %s (allow everyone: "")' % (where, entry.found)
                )
            try:
                check = parse(entry.text)
            except CheckSyntaxError as exc:
                raise ConfigError("%s: %s in %r" % (where, exc, entry.text)) from None
            rules[entry.name] = Rule(entry.name, entry.text, check, path, entry.line)
        _check_references(rules)
        referenced = {ref for rule in rules.values() for ref in rule.check.references()}
        warnings = tuple(
            "policy file %s line %d: %s is not a rule this appliance checks, and no rule refers to it; ignored"
            % (path, line, name)
            for name, line in seen.items()
            if name not in DEFAULTS and name not in referenced
        )
        return cls(rules, path, warnings)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules.values())

    def __contains__(self, name: object) -> bool:
        return name in self._rules

    def rule(self, name: str) -> Rule:
        return self._rules[name]

    def credentials(self, ctx: Context) -> dict[str, object]:
        """oslo.policy's creds for `ctx`: its roles with the implied ones, and `is_admin` as the
        `context_is_admin` rule answers it (as in Glance, so `is_admin:True` follows that rule)."""
        creds = ctx.credentials()
        creds["roles"] = sorted(roles_of(ctx))
        creds["is_admin"] = self._check("context_is_admin", creds, {"project_id": ctx.project})
        return creds

    def allows(self, ctx: Context, rule: str, target: Target) -> bool:
        return self._check(rule, self.credentials(ctx), target)

    def _check(self, name: str, creds: Mapping[str, object], target: Target) -> bool:
        return self._rules[name].check(creds, target, self._lookup)

    def _lookup(self, name: str) -> Check:
        return self._rules[name].check


# A chain of `rule:` references deeper than this is refused (evaluation follows it per request).
MAX_DEPTH = 50


def _check_references(rules: Mapping[str, Rule]) -> None:
    """Every `rule:` names a rule, and no rule reaches itself (a loop would never answer)."""
    for rule in rules.values():
        for ref in rule.check.references():
            if ref not in rules:
                raise ConfigError("%s: rule:%s names no rule" % (_where(rule), ref))
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in done:
            return
        if name in path or len(path) >= MAX_DEPTH:
            chain = [*path[path.index(name) :], name] if name in path else [*path, name]
            # The defaults have neither, so one of these rules comes from the file.
            culprit = next(rules[n] for n in chain if rules[n].source is not None)
            problem = "rules refer to each other in a loop" if name in path else "rule: references nest too deep"
            raise ConfigError("%s: %s (%s)" % (_where(culprit), problem, " -> ".join(chain)))
        path.append(name)
        for ref in rules[name].check.references():
            visit(ref, path)
        path.pop()
        done.add(name)

    for name in rules:
        visit(name, [])


def _where(rule: Rule) -> str:
    return "policy file %s line %d: rule %s" % (rule.source, rule.line, rule.name)


@dataclass(frozen=True)
class _Entry:
    name: str
    text: str | None  # None: the value is not a string
    found: str  # what the value is, for the message
    line: int


def _entries(path: Path) -> list[_Entry]:
    """The entries of an oslo.policy file: JSON when it parses as JSON, else YAML (as
    oslo.policy reads it), each with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("policy file %s: cannot read it: %s" % (path, exc.strerror)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("policy file %s: not UTF-8 text" % path) from exc
    if text.lstrip().startswith("{"):
        try:
            return _json_entries(path, text)
        except json.JSONDecodeError as exc:
            if path.suffix == ".json":
                raise ConfigError("policy file %s line %d: not valid JSON: %s" % (path, exc.lineno, exc.msg)) from None
    return _yaml_entries(path, text)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos


def _json_entries(path: Path, text: str) -> list[_Entry]:
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ConfigError("policy file %s line 1: expected rule names mapped to check strings" % path)
    # json.loads has vouched for the text; walk its top object once more for each key's line.
    decoder = json.JSONDecoder()
    entries: list[_Entry] = []
    pos = _skip_space(text, 0) + 1  # past the '{'
    while True:
        pos = _skip_space(text, pos)
        if text[pos] == "}":
            return entries
        line = text.count("\n", 0, pos) + 1
        name, pos = decoder.raw_decode(text, pos)
        pos = _skip_space(text, pos) + 1  # past the ':'
        pos = _skip_space(text, pos)
        value, pos = decoder.raw_decode(text, pos)
        found = "a string" if isinstance(value, str) else "null" if value is None else type(value).__name__
        entries.append(_Entry(name, value if isinstance(value, str) else None, found, line))
        pos = _skip_space(text, pos)
        if text[pos] == ",":
            pos += 1


_YAML_STR = "tag:yaml.org,2002:str"


def _yaml_entries(path: Path, text: str) -> list[_Entry]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(
            "policy file %s line %d: not valid YAML or JSON: %s" % (path, line, exc.problem or exc.context)
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError("policy file %s: not valid YAML or JSON: %s" % (path, exc)) from None
    if root is None:  # empty, or only comments: no overrides
        return []
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            "policy file %s line %d: expected rule names mapped to check strings" % (path, root.start_mark.line + 1)
        )
    entries = []
    for key, value in root.value:
        line = key.start_mark.line + 1
        if not (isinstance(key, yaml.ScalarNode) and key.tag == _YAML_STR):
            raise ConfigError("policy file %s line %d: a rule name must be a string" % (path, line))
        if isinstance(value, yaml.ScalarNode) and value.tag == _YAML_STR:
            entries.append(_Entry(key.value, value.value, "a string", line))
        else:
            entries.append(_Entry(key.value, None, value.tag.rpartition(":")[2] or value.tag, line))
    return entries


_DEFAULT_POLICY = Policy({name: Rule(name, text, parse(text)) for name, text in DEFAULTS.items()})
_in_force = _DEFAULT_POLICY


def load(config: Config) -> Policy:
    """The rules `config` puts in force: its `[auth] policy_file` over the defaults. Logs what
    the file changes and the entries that name no rule of this appliance (as oslo.policy warns)."""
    if not config.auth.policy_file:
        return _DEFAULT_POLICY
    loaded = Policy.load(config.path(config.auth.policy_file))
    for warning in loaded.warnings:
        log.warning("%s", warning)
    overridden = sorted(rule.name for rule in loaded if rule.source is not None)
    log.info("policy: %d rule(s) from %s over the defaults: %s", len(overridden), loaded.source, ", ".join(overridden))
    return loaded


def install(policy: Policy) -> Policy:
    """Put `policy` in force; returns the one it replaces."""
    global _in_force
    previous, _in_force = _in_force, policy
    return previous


def in_force() -> Policy:
    return _in_force


def is_admin(ctx: Context) -> bool:
    """Glance's context.is_admin: what the `context_is_admin` rule in force answers for `ctx`."""
    return bool(_in_force.credentials(ctx)["is_admin"])


def caller(ctx: Context) -> dict[str, object]:
    """`ctx` as the rules in force see it, for the caller itself (`edge:whoami`): its user and
    project, its roles with the implied ones, and what `context_is_admin` answers for it."""
    enforce(ctx, "edge:whoami")
    creds = _in_force.credentials(ctx)
    return {"user_id": ctx.user, "project_id": ctx.project, "roles": creds["roles"], "is_admin": creds["is_admin"]}


def check_string(rule: str) -> str:
    """The rule in force, in oslo.policy's syntax, e.g. `rule:context_is_admin or (role:member and ...)`."""
    return _in_force.rule(rule).text


def allows(ctx: Context, rule: str, target: Target) -> bool:
    return _in_force.allows(ctx, rule, target)


def enforce(ctx: Context, rule: str, target: Target | None = None) -> None:
    """Raise Forbidden naming the rule and what it needs unless `ctx` passes `rule` on `target`.
    A rule without a resource (list, create, admin actions) is checked against the caller's
    project, which is also the owner of what it creates."""
    target = {"project_id": ctx.project, "owner": ctx.project} if target is None else target
    if not allows(ctx, rule, target):
        raise Forbidden(
            "Policy doesn't allow %s to be performed: you are not authorized to complete %s action "
            "(it needs %s)." % (rule, rule, check_string(rule))
        )


def caller_image_target(ctx: Context, image: Image) -> Target:
    """The image as a policy target, with Glance's `member_id`: the caller's project when it is a
    member of the image (what `project_id:%(member_id)s` checks)."""
    member = image.membership(ctx.project)
    return {**image_target(image), "member_id": member.member_id if member is not None else None}


def image_target(image: Image) -> Target:
    """Glance's ImageTarget: the image's attributes and extra properties, `project_id` its owner."""
    target: dict[str, object] = dict(image.properties)
    # Who is a member is for the members API to say, never a property the owner sets.
    target.pop("member_id", None)
    target.update(
        id=image.id,
        name=image.name,
        status=image.status,
        visibility=image.visibility,
        protected=image.protected,
        os_hidden=image.os_hidden,
        owner=image.owner,
        project_id=image.owner,
        disk_format=image.disk_format,
        container_format=image.container_format,
        min_disk=image.min_disk,
        min_ram=image.min_ram,
        size=image.size,
        virtual_size=image.virtual_size,
        checksum=image.checksum,
        os_hash_algo=image.os_hash_algo,
        os_hash_value=image.os_hash_value,
        created_at=image.created_at,
        updated_at=image.updated_at,
    )
    return target


def enforce_image(ctx: Context, rule: str, image: Image) -> None:
    enforce(ctx, rule, image_target(image))


def sees_every_image(ctx: Context) -> bool:
    """Administrators and edge sites (which mirror every record) see images of every project."""
    return "admin" in ctx.roles or SITE_ROLE in ctx.roles


def can_see(ctx: Context, image: Image) -> bool:
    """Glance's is_image_visible: public and community images are visible to all, others to the
    owner, and a shared one also to its members, whatever their status (a pending member can
    look at what it is offered; lists show it only once accepted, see ImageQuery.member_status)."""
    return (
        sees_every_image(ctx)
        or image.visibility in ("public", "community")
        or image.owner == ctx.project
        or (image.visibility == "shared" and image.membership(ctx.project) is not None)
    )


def check_visible(ctx: Context, image: Image) -> None:
    # An invisible image is indistinguishable from a missing one.
    if not can_see(ctx, image):
        raise NotFound("No image found with ID %s" % image.id)


def check_owner_change(ctx: Context) -> None:
    # Glance's code, not a policy rule: only an administrator (context.is_admin, which is what
    # `context_is_admin` answers) gives an image to another project.
    if not is_admin(ctx):
        raise Forbidden("Only an administrator may change the owner of an image.")
