"""oslo.policy's check-string language: parsed once, evaluated on every request.

    rule_text := "" | expr            ("" allows everyone)
    expr      := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | "(" expr ")" | check

so `not` binds tighter than `and`, and `and` tighter than `or`, as in oslo.policy. A check is `@`
(always), `!` (never), `rule:NAME` (another rule), `role:NAME` (one of the caller's roles, any
case) or `KIND:MATCH`: KIND is a credential (`project_id`, `is_admin`, dotted for nested values,
any item of a list) or a literal (`"public"`, `'shared'`, `True`, `42`); MATCH is text whose
`%(key)s` parts come from the target. The two sides are compared as strings.

Two departures from oslo.policy, both toward refusing: text it cannot parse is an error here
(oslo.policy logs it and denies), and a `%(key)s` whose target value is None never matches
(oslo.policy compares the text "None", so an owner-less image would match a project-less caller).
"""

from __future__ import annotations

import ast
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import ClassVar

Creds = Mapping[str, object]
Target = Mapping[str, object]
RuleLookup = Callable[[str], "Check"]  # raises KeyError for a rule it does not know

KEYWORDS = ("and", "or", "not")
# Parentheses and `not`s nest at most this deep (the parser recurses once per level).
MAX_NESTING = 50
# A whole %(key)s substitution, or an escaped percent sign.
_SUBSTITUTION = re.compile(r"%\(([^)]+)\)s|%%")
_NAME = re.compile(r"[\w-]+")  # one part of a (dotted) credential name
_COLLECTIONS = (list, tuple, set, frozenset)  # a credential holding several values (roles)


class CheckSyntaxError(ValueError):
    """The text is not a check string; `column` (1-based) is where the problem is."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__("%s (column %d)" % (message, column))
        self.column = column


class Check(ABC):
    @abstractmethod
    def __call__(self, creds: Creds, target: Target, rules: RuleLookup) -> bool: ...

    def references(self) -> Iterator[str]:
        """The rule names this check refers to with `rule:`."""
        return iter(())


@dataclass(frozen=True)
class Always(Check):
    allow: bool

    def __call__(self, creds: Creds, target: Target, rules: RuleLookup) -> bool:
        return self.allow

    def __str__(self) -> str:
        return "@" if self.allow else "!"


@dataclass(frozen=True)
class RuleCheck(Check):
    name: str

    def __call__(self, creds: Creds, target: Target, rules: RuleLookup) -> bool:
        try:
            check = rules(self.name)
        except KeyError:
            return False  # fail closed (oslo.policy would fall back to its `default` rule)
        return check(creds, target, rules)

    def references(self) -> Iterator[str]:
        yield self.name

    def __str__(self) -> str:
        return "rule:%s" % self.name


@dataclass(frozen=True)
class RoleCheck(Check):
    match: str

    def __call__(self, creds: Creds, target: Target, rules: RuleLookup) -> bool:
        role = substitute(self.match, target)
        roles = creds.get("roles")
        if role is None or not isinstance(roles, _COLLECTIONS):
            return False
        wanted = role.lower()
        return any(str(r).lower() == wanted for r in roles)

    def __str__(self) -> str:
        return "role:%s" % self.match


@dataclass(frozen=True)
class GenericCheck(Check):
    """`KIND:MATCH` against the credentials, or a literal KIND against MATCH."""

    kind: str
    match: str
    literal: str | None  # str() of KIND's literal value; None: KIND names a credential

    def __call__(self, creds: Creds, target: Target, rules: RuleLookup) -> bool:
        match = substitute(self.match, target)
        if match is None:
            return False
        if self.literal is not None:
            return match == self.literal
        return _found(creds, tuple(self.kind.split(".")), match)

    def __str__(self) -> str:
        return "%s:%s" % (self.kind, self.match)


@dataclass(frozen=True)
class Not(Check):
    check: Check

    def __call__(self, creds: Creds, target: Target, rules: RuleLookup) -> bool:
        return not self.check(creds, target, rules)

    def references(self) -> Iterator[str]:
        return self.check.references()

    def __str__(self) -> str:
        return "not %s" % self.check


@dataclass(frozen=True)
class _Group(Check):
    checks: tuple[Check, ...]
    word: ClassVar[str]

    def references(self) -> Iterator[str]:
        for c in self.checks:
            yield from c.references()

    def __str__(self) -> str:
        return "(%s)" % (" %s " % self.word).join(str(c) for c in self.checks)


class And(_Group):
    word = "and"

    def __call__(self, creds: Creds, target: Target, rules: RuleLookup) -> bool:
        return all(c(creds, target, rules) for c in self.checks)


class Or(_Group):
    word = "or"

    def __call__(self, creds: Creds, target: Target, rules: RuleLookup) -> bool:
        return any(c(creds, target, rules) for c in self.checks)


def substitute(match: str, target: Target) -> str | None:
    """MATCH with its %(key)s parts filled from the target; None when a key is missing or None."""
    if "%" not in match:
        return match
    missing = False

    def fill(m: re.Match[str]) -> str:
        nonlocal missing
        if m.group(0) == "%%":
            return "%"
        value = target.get(m.group(1))
        if value is None:
            missing = True
            return ""
        return str(value)

    filled = _SUBSTITUTION.sub(fill, match)
    return None if missing else filled


def _found(value: object, path: tuple[str, ...], match: str) -> bool:
    # oslo.policy's walk: one path segment per nesting level; a list matches when any item does.
    if isinstance(value, _COLLECTIONS):
        return any(_found(item, path, match) for item in value)
    if not path:
        return match == str(value)
    if not isinstance(value, Mapping) or path[0] not in value:
        return False
    return _found(value[path[0]], path[1:], match)


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # "(", ")", "and", "or", "not", "check"
    text: str
    column: int  # 1-based


def tokenize(text: str) -> list[Token]:
    """Words split on whitespace (a word that opens with a quote runs to its closing quote); as in
    oslo.policy, parentheses are the leading `(` and trailing `)` of a word."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start = i
        while i < n and text[i] == "(":
            tokens.append(Token("(", "(", i + 1))
            i += 1
        if i < n and text[i] in "'\"":
            close = text.find(text[i], i + 1)
            if close < 0:
                raise CheckSyntaxError("unterminated quote %s" % text[i], i + 1)
            i = close + 1
        while i < n and not text[i].isspace():
            i += 1
        word = text[start:i].lstrip("(")
        closing = len(word) - len(word.rstrip(")"))
        word = word.rstrip(")")
        column = i - len(word) - closing + 1
        if word:
            lowered = word.lower()
            tokens.append(Token(lowered if lowered in KEYWORDS else "check", word, column))
        tokens.extend(Token(")", ")", i - closing + k + 1) for k in range(closing))
    return tokens


def parse(text: str) -> Check:
    """The check string as a tree; raises CheckSyntaxError saying what is wrong and where."""
    if text == "":
        return Always(True)
    tokens = tokenize(text)
    if not tokens:
        raise CheckSyntaxError('a rule of only spaces is not a check string; allow everyone with ""', 1)
    parser = _Parser(tokens, len(text))
    check = parser.expr()
    if parser.pos < len(tokens):
        tok = tokens[parser.pos]
        if tok.kind == ")":
            raise CheckSyntaxError("unbalanced ')'", tok.column)
        raise CheckSyntaxError("expected 'and' or 'or' before %r" % tok.text, tok.column)
    return check


class _Parser:
    def __init__(self, tokens: list[Token], length: int) -> None:
        self.tokens = tokens
        self.pos = 0
        self.end = length + 1  # the column just past the text
        self.depth = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self) -> Check:
        checks = [self.and_expr()]
        while (tok := self.peek()) is not None and tok.kind == "or":
            self.pos += 1
            checks.append(self.and_expr())
        return checks[0] if len(checks) == 1 else Or(tuple(checks))

    def and_expr(self) -> Check:
        checks = [self.not_expr()]
        while (tok := self.peek()) is not None and tok.kind == "and":
            self.pos += 1
            checks.append(self.not_expr())
        return checks[0] if len(checks) == 1 else And(tuple(checks))

    def not_expr(self) -> Check:
        tok = self.peek()
        if tok is None:
            after = self.tokens[self.pos - 1]
            raise CheckSyntaxError("a check is missing after %r at the end" % after.text, self.end)
        self.pos += 1
        if tok.kind in ("not", "("):
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise CheckSyntaxError("nested more than %d deep" % MAX_NESTING, tok.column)
            inner = Not(self.not_expr()) if tok.kind == "not" else self.expr()
            self.depth -= 1
            if tok.kind == "not":
                return inner
            close = self.peek()
            if close is None or close.kind != ")":
                raise CheckSyntaxError("'(' is never closed", tok.column)
            self.pos += 1
            return inner
        if tok.kind == "check":
            return parse_check(tok.text, tok.column)
        raise CheckSyntaxError("expected a check, found %r" % tok.text, tok.column)


def parse_check(word: str, column: int = 1) -> Check:
    """One check: `@`, `!`, `rule:`, `role:` or `KIND:MATCH`."""
    if word == "@":
        return Always(True)
    if word == "!":
        return Always(False)
    if word[0] in "'\"":
        close = word.index(word[0], 1) + 1  # tokenize found the closing quote
        kind, sep, match = word[:close], word[close : close + 1], word[close + 1 :]
        if sep != ":":
            raise CheckSyntaxError("expected ':' after the literal %s" % kind, column + close)
    else:
        kind, sep, match = word.partition(":")
        if not sep:
            raise CheckSyntaxError("%r is not a check: expected KIND:MATCH, @ or !" % word, column)
        if not kind:
            raise CheckSyntaxError("%r has nothing before ':'" % word, column)
    if not match:
        raise CheckSyntaxError("%r has nothing after ':'" % word, column)
    leftover = _SUBSTITUTION.sub("", match)
    if "%" in leftover:
        raise CheckSyntaxError("%r: only %%(key)s substitutions may follow ':' (write %%%% for %%)" % word, column)
    if kind == "rule":
        if "%" in match:
            raise CheckSyntaxError("%r: a rule name takes no substitution" % word, column)
        return RuleCheck(match)
    if kind == "role":
        return RoleCheck(match)
    if kind in ("http", "https"):
        raise CheckSyntaxError("%r: http(s) checks (a remote policy server) are not supported" % word, column)
    try:
        value = ast.literal_eval(kind)
    except (ValueError, SyntaxError):
        if kind[0] in "'\"":
            raise CheckSyntaxError("%r: bad quoted literal %s" % (word, kind), column) from None
        if not all(_NAME.fullmatch(part) for part in kind.split(".")):
            raise CheckSyntaxError("%r: %r is not a credential name (dotted words)" % (word, kind), column) from None
        return GenericCheck(kind, match, None)
    return GenericCheck(kind, match, str(value))
