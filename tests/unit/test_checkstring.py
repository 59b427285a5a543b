"""oslo.policy's check-string language (appliance/checkstring.py) and the policy file over Glance's
defaults (appliance/policy.py): every syntax element, what it allows, and the errors an operator
sees, with the line and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import policy
from appliance.auth import Context
from appliance.checkstring import Check, CheckSyntaxError, parse, tokenize
from appliance.errors import ConfigError, Forbidden

CREDS: dict[str, object] = {
    "user_id": "mia",
    "project_id": "p1",
    "roles": ["member", "reader"],
    "is_admin": False,
    "system_scope": None,
    "service_roles": ["service"],
    "token": {"user": {"domain": {"id": "default"}}, "methods": ["password", "totp"]},
}


def no_rules(name: str) -> Check:
    raise KeyError(name)


def passes(text: str, target: dict[str, object] | None = None, creds: dict[str, object] | None = None) -> bool:
    return parse(text)(CREDS if creds is None else creds, target or {}, no_rules)


@pytest.mark.parametrize(
    ("text", "target", "expected"),
    [
        ("", {}, True),  # the empty rule allows everyone
        ("@", {}, True),
        ("!", {}, False),
        ("role:member", {}, True),
        ("role:MEMBER", {}, True),  # roles compare in any case, as in oslo.policy
        ("role:admin", {}, False),
        ("role:%(wanted)s", {"wanted": "reader"}, True),
        ("project_id:%(project_id)s", {"project_id": "p1"}, True),
        ("project_id:%(project_id)s", {"project_id": "p2"}, False),
        ("project_id:%(project_id)s", {}, False),  # a key the target lacks never matches
        ("project_id:%(owner)s", {"owner": None}, False),  # nor one it holds as None
        ("project_id:p1", {}, True),
        ("user_id:%(site)s", {"site": "mia"}, True),
        ("is_admin:True", {}, False),
        ("is_admin:False", {}, True),
        ('"public":%(visibility)s', {"visibility": "public"}, True),
        ("'public':%(visibility)s", {"visibility": "private"}, False),
        ("'shared':%(visibility)s", {"visibility": "shared"}, True),
        ("'with space':%(v)s", {"v": "with space"}, True),
        ("True:%(protected)s", {"protected": True}, True),  # a literal kind, compared as text
        ("42:%(min_disk)s", {"min_disk": 42}, True),
        ("service_roles:service", {}, True),  # any item of a list credential
        ("token.user.domain.id:default", {}, True),  # a dotted path into nested credentials
        ("token.methods:totp", {}, True),
        ("token.user.name:mia", {}, False),
        ("system_scope:all", {}, False),
        ("nosuchcred:x", {}, False),
        ("project_id:50%%", {}, False),  # %% is a literal percent sign
        ("not role:admin", {}, True),
        ("not role:member", {}, False),
        ("NOT role:admin AND role:member", {}, True),  # keywords in any case
        ("role:admin or role:member", {}, True),
        ("role:admin and role:member", {}, False),
        ("role:member and project_id:%(project_id)s", {"project_id": "p1"}, True),
        ("((role:member))", {}, True),
    ],
)
def test_check_elements(text: str, target: dict[str, object], expected: bool) -> None:
    assert passes(text, target) is expected


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        # `and` binds tighter than `or`, `not` tighter than both (oslo.policy's grammar)
        ("role:a or role:b and role:c", "(role:a or (role:b and role:c))"),
        ("role:a and role:b or role:c", "((role:a and role:b) or role:c)"),
        ("not role:a and role:b", "(not role:a and role:b)"),
        ("not (role:a and role:b)", "not (role:a and role:b)"),
        ("(role:a or role:b) and role:c", "((role:a or role:b) and role:c)"),
        ("role:a or role:b or role:c", "(role:a or role:b or role:c)"),
        # Glance's get_member default has no parentheses around its `and`
        (
            policy.RULES["get_member"],
            "(rule:context_is_admin or (role:reader and (project_id:%(project_id)s or project_id:%(member_id)s)))",
        ),
    ],
)
def test_precedence(text: str, tree: str) -> None:
    assert str(parse(text)) in (tree, "(%s)" % tree)


def test_precedence_decides() -> None:
    # a or (b and c) passes on `a` alone; (a or b) and c would not
    assert passes("role:member or role:admin and role:nobody") is True
    assert passes("(role:member or role:admin) and role:nobody") is False


def test_parentheses_are_split_from_words() -> None:
    kinds = [t.kind for t in tokenize("((role:a) or not (role:b))")]
    assert kinds == ["(", "(", "check", ")", "or", "not", "(", "check", ")", ")"]
    # the %(...)s of a substitution is not a parenthesis
    assert [t.text for t in tokenize("(project_id:%(project_id)s)")] == ["(", "project_id:%(project_id)s", ")"]


def test_rule_references_follow_the_named_rule() -> None:
    rules = {"admin_required": parse("role:admin"), "owner": parse("project_id:%(project_id)s")}
    check = parse("rule:admin_required or rule:owner")
    assert check(CREDS, {"project_id": "p1"}, rules.__getitem__) is True
    assert check(CREDS, {"project_id": "p2"}, rules.__getitem__) is False
    assert parse("rule:missing")(CREDS, {}, rules.__getitem__) is False  # fails closed
    assert list(check.references()) == ["admin_required", "owner"]


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("role:", "has nothing after ':'", 1),
        (":admin", "has nothing before ':'", 1),
        ("admin", "is not a check", 1),
        ("role:admin or", "a check is missing after 'or'", 14),
        ("role:admin and", "a check is missing after 'and'", 15),
        ("or role:admin", "expected a check, found 'or'", 1),
        ("role:a role:b", "expected 'and' or 'or' before 'role:b'", 8),
        ("(role:a", "'(' is never closed", 1),
        ("role:a)", "unbalanced ')'", 7),
        ("()", "expected a check, found ')'", 2),
        ("'public:%(visibility)s", "unterminated quote", 1),
        ("'public'x:%(visibility)s", "expected ':' after the literal 'public'", 9),
        ("project_id:%(project_id)", "only %(key)s substitutions", 1),
        ("project_id:100%", "only %(key)s substitutions", 1),
        ("rule:%(name)s", "a rule name takes no substitution", 1),
        ("http://policy.example.com/check", "not supported", 1),
        ("token..id:x", "is not a credential name", 1),
        ("not(role:b)", "is not a credential name", 1),  # as in oslo.policy, `not` is a word of its own
        ("   ", "only spaces", 1),
        ("(" * 60 + "role:a" + ")" * 60, "nested more than 50 deep", 51),
    ],
)
def test_syntax_errors_say_what_and_where(text: str, message: str, column: int) -> None:
    with pytest.raises(CheckSyntaxError) as info:
        parse(text)
    assert message in str(info.value)
    assert info.value.column == column
    assert "(column %d)" % column in str(info.value)


# -- Glance's defaults ---------------------------------------------------------------------------

MEMBER = Context(user="mia", project="p1", roles=frozenset({"member"}))  # reader is implied
READER = Context(user="rex", project="p1", roles=frozenset({"reader"}))
ADMIN = Context(user="root", project="admin", roles=frozenset({"admin"}))
SITE = Context(user="dcn0", project="edge-sites", roles=frozenset({policy.SITE_ROLE}))


def test_defaults_are_glances_check_strings() -> None:
    defaults = policy.Policy.defaults()
    # spelled exactly as glance/policies/base.py, image.py and metadef.py spell them
    assert defaults.rule("default").text == ""
    assert defaults.rule("context_is_admin").text == "role:admin"
    assert defaults.rule("upload_image").text == "rule:context_is_admin or (role:member and project_id:%(project_id)s)"
    assert defaults.rule("add_image").text == (
        "rule:context_is_admin or (role:member and project_id:%(project_id)s and project_id:%(owner)s)"
    )
    assert defaults.rule("copy_image").text == "rule:context_is_admin"
    assert defaults.rule("modify_member").text == "rule:context_is_admin or (role:member and project_id:%(member_id)s)"
    assert defaults.rule("add_metadef_namespace").text == "rule:metadef_admin"
    assert defaults.rule("metadef_admin").text == "rule:context_is_admin"
    # Glance's, plus the edge-site role as on the image read rules (an edge mirrors every namespace).
    assert defaults.rule("get_metadef_namespace").text == (
        "rule:context_is_admin or (role:reader and (project_id:%(project_id)s or 'public':%(visibility)s))"
        " or role:edge-site"
    )
    assert {r.origin for r in defaults} == {"default"}
    assert set(policy.RULES) <= {r.name for r in defaults}


@pytest.mark.parametrize(
    ("ctx", "rule", "target", "expected"),
    [
        (MEMBER, "upload_image", {"project_id": "p1"}, True),
        (MEMBER, "upload_image", {"project_id": "p2"}, False),
        (READER, "upload_image", {"project_id": "p1"}, False),
        (ADMIN, "upload_image", {"project_id": "p2"}, True),  # admin implies member, and is context_is_admin
        (READER, "get_image", {"project_id": "p2", "visibility": "public"}, True),
        (MEMBER, "download_image", {"project_id": "p2", "visibility": "community"}, True),
        (READER, "download_image", {"project_id": "p1", "visibility": "private"}, False),
        (SITE, "get_images", {"project_id": "edge-sites"}, True),
        (SITE, "upload_image", {"project_id": "edge-sites"}, False),
        (SITE, "edge:site_heartbeat", {"site": "dcn0"}, True),
        (SITE, "edge:site_heartbeat", {"site": "dcn1"}, False),
        (MEMBER, "add_metadef_namespace", {"project_id": "p1"}, False),  # 17.1: writes are admin-only
        (ADMIN, "add_metadef_namespace", {"project_id": "admin"}, True),
        (READER, "get_metadef_namespace", {"project_id": "p2", "visibility": "public"}, True),
    ],
)
def test_defaults_decide(ctx: Context, rule: str, target: dict[str, object], expected: bool) -> None:
    assert policy.Policy.defaults().allows(ctx, rule, target) is expected


def test_enforce_names_the_rule_and_what_it_needs() -> None:
    with pytest.raises(Forbidden) as info:
        policy.enforce(READER, "upload_image", {"project_id": "p1"})
    assert "Policy doesn't allow upload_image to be performed" in str(info.value)
    assert "(it needs rule:context_is_admin or (role:member and project_id:%(project_id)s))" in str(info.value)
    policy.enforce(MEMBER, "add_image")  # no target: the caller's project, which owns what it creates


# -- the policy file ----------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_file_over_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "policy.yaml",
        '# the seeds\n"upload_image": "role:admin"\n'
        'copy_image: "role:admin or (role:member and project_id:%(project_id)s)"\n'
        'context_is_admin: "role:cloud_admin"\n'
        'admin_or_owner: "is_admin:True or project_id:%(project_id)s"\n'
        'deactivate: "rule:admin_or_owner"\n',
    )
    loaded = policy.Policy.load(path)
    assert loaded.rule("upload_image").origin == "%s:2" % path
    assert loaded.rule("deactivate").origin == "%s:6" % path
    assert loaded.rule("modify_image").origin == "default"
    assert loaded.warnings == ()  # admin_or_owner is not ours, but a rule refers to it
    assert not loaded.allows(MEMBER, "upload_image", {"project_id": "p1"})
    assert loaded.allows(MEMBER, "copy_image", {"project_id": "p1"})
    assert not loaded.allows(MEMBER, "copy_image", {"project_id": "p2"})
    # is_admin is what context_is_admin answers: the admin role is no longer enough, cloud_admin is
    cloud_admin = Context(user="c", project="x", roles=frozenset({"cloud_admin"}))
    assert not loaded.allows(ADMIN, "deactivate", {"project_id": "p2"})
    assert loaded.allows(cloud_admin, "deactivate", {"project_id": "p2"})
    assert loaded.allows(cloud_admin, "publicize_image", {"project_id": "p2"})  # rule:context_is_admin


def test_json_file_and_unknown_rules_warn(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "policy.json",
        '{\n\t"upload_image": "role:admin",\n  "tasks_api_access": "role:admin",\n  "add_metadef_namespace": ""\n}\n',
    )
    loaded = policy.Policy.load(path)
    assert loaded.rule("upload_image").origin == "%s:2" % path
    assert loaded.rule("add_metadef_namespace").origin == "%s:4" % path
    assert loaded.allows(READER, "add_metadef_namespace", {"project_id": "p1"})
    assert loaded.warnings == (
        "policy file %s line 3: tasks_api_access is not a rule this appliance checks, and no rule refers to it;"
        " ignored" % path,
    )


def test_empty_and_comment_only_files_are_the_defaults(tmp_path: Path) -> None:
    for text in ("", "# nothing overridden yet\n", "{}\n"):
        loaded = policy.Policy.load(write(tmp_path, "p.yaml", text))
        assert {r.origin for r in loaded} == {"default"}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.yaml", 'a: "role:x"\nb: [1\n', "line 3: not valid YAML or JSON"),
        ("p.yaml", 'a: "role:x"\n  b: "role:y"\n', "line 2: not valid YAML or JSON"),
        ("p.json", '{\n  "a": "role:x",\n  "b": "role:y" oops\n}\n', "line 3: not valid JSON: Expecting ',' delimiter"),
        ("p.yaml", '"a": "role:x"\nupload_image: "role:admin or"\n', "line 2: rule upload_image: a check is missing"),
        ("p.json", '{\n "a": "role:x",\n "copy_image": "role:admin)"\n}', "line 3: rule copy_image: unbalanced ')'"),
        ("p.yaml", "upload_image:\n", "line 1: rule upload_image: expected a check string in quotes, found null"),
        ("p.yaml", "upload_image: true\n", "line 1: rule upload_image: expected a check string in quotes, found bool"),
        ("p.json", '{"upload_image": ["role:admin"]}', "line 1: rule upload_image: expected a check string"),
        ("p.yaml", 'x: "role:a"\nupload_image: "rule:admins"\n', "line 2: rule upload_image: rule:admins names no"),
        ("p.yaml", 'a: "rule:b"\nb: "rule:c"\nc: "rule:a"\n', "line 1: rule a: rules refer to each other in a loop"),
        ("p.yaml", 'context_is_admin: "rule:upload_image"\n', "line 1: rule context_is_admin: rules refer to each"),
        ("p.yaml", 'a: "role:x"\na: "role:y"\n', "line 2: rule a: set twice (also line 1)"),
        ("p.yaml", "- upload_image\n", "line 1: expected rule names mapped to check strings"),
        ("p.yaml", '1: "role:x"\n', "line 1: a rule name must be a string"),
        ("p.yaml", "upload_image: @\n", "line 1: not valid YAML or JSON"),  # YAML needs "@" quoted
    ],
)
def test_invalid_files_name_line_and_rule(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        policy.Policy.load(path)
    assert str(info.value).startswith("policy file %s " % path)
    assert message in str(info.value)


def test_loop_message_names_the_chain(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        policy.Policy.load(write(tmp_path, "p.yaml", 'a: "rule:b"\nb: "role:x or rule:a"\n'))
    assert "(a -> b -> a)" in str(info.value)


def test_a_deep_chain_is_refused(tmp_path: Path) -> None:
    chain = "".join('r%d: "rule:r%d"\n' % (i, i + 1) for i in range(60)) + 'r60: "role:x"\n'
    with pytest.raises(ConfigError) as info:
        policy.Policy.load(write(tmp_path, "p.yaml", chain))
    assert "nest too deep" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        policy.Policy.load(tmp_path / "missing.yaml")
    assert "cannot read it" in str(info.value)


def test_owner_change_follows_context_is_admin(tmp_path: Path) -> None:
    policy.check_owner_change(ADMIN)
    with pytest.raises(Forbidden):
        policy.check_owner_change(MEMBER)
    loaded = policy.Policy.load(write(tmp_path, "p.yaml", 'context_is_admin: "role:cloud_admin"\n'))
    previous = policy.install(loaded)
    try:
        policy.check_owner_change(Context(user="c", project="x", roles=frozenset({"cloud_admin"})))
        with pytest.raises(Forbidden):
            policy.check_owner_change(ADMIN)
    finally:
        policy.install(previous)
