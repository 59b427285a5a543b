"""Untrusted text from clients (JSON bodies, bundle manifests, query strings, headers) → Python
values the rest of the daemon can store and walk without surprises: integers the catalog's
SQLite INTEGER can hold, JSON nested no deeper than a real document needs, ASCII digits only."""

from __future__ import annotations

import json
import re
from typing import Any

# SQLite INTEGER is a signed 64-bit number; a larger one raises OverflowError at bind time.
INT64_MAX = (1 << 63) - 1
# No document this API takes nests past a few levels (a JSON patch is 3); 32 leaves room and
# keeps every later walk (json.dumps, comparisons) far below the interpreter's recursion limit.
MAX_JSON_DEPTH = 32
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)


def _bounded_int(text: str) -> int:
    if len(text) > 20 or not -INT64_MAX - 1 <= (value := int(text)) <= INT64_MAX:
        raise ValueError(
            "the integer %s%s is out of range (at most %d)" % (text[:24], "..." if len(text) > 24 else "", INT64_MAX)
        )
    return value


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not a JSON value" % name)


def loads(raw: bytes | str) -> Any:
    """json.loads for client documents. Raises ValueError (with a message fit for the client)
    for malformed JSON, NaN/Infinity, integers outside 64 bits, and nesting deeper than
    MAX_JSON_DEPTH (a deep document makes the C parser raise RecursionError, not ValueError)."""
    try:
        data = json.loads(raw, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("the document is nested deeper than %d levels" % MAX_JSON_DEPTH) from None
    _check_depth(data)
    return data


def _check_depth(data: Any) -> None:
    # Iterative, so a deep document cannot exhaust the stack here either.
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError("the document is nested deeper than %d levels" % MAX_JSON_DEPTH)
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def parse_int(text: str, what: str, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    """A decimal integer in ASCII digits (int() also takes '²', '٣', ' 1_0 '), within bounds.
    Raises ValueError naming `what`, the value and the bounds."""
    if not _INTEGER.fullmatch(text) or len(text) > 20:
        raise ValueError("%s must be an integer of at most 19 digits, got %r" % (what, text[:40]))
    value = int(text)
    if not minimum <= value <= maximum:
        raise ValueError("%s must be between %d and %d, got %d" % (what, minimum, maximum, value))
    return value
