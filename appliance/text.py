"""Client text that reaches records (names, tags, property values): what is refused and why."""

from __future__ import annotations

import re

from appliance.errors import BadRequest

# Unicode's control characters (category Cc: C0, DEL, C1) and lone surrogates (Cs, which
# SQLite cannot store). A regex, not a per-character loop: a value may be 64 Ki characters.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Line breaks and tabs are ordinary text in a property value (descriptions, scripts); in a
# name or tag they are not.
_CONTROL_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def check_text(what: str, value: str, max_length: int, *, multiline: bool = False) -> str:
    """`value` if it is at most `max_length` characters of printable text; BadRequest naming
    `what` otherwise, so every reader of the record (a terminal included) gets plain text."""
    if len(value) > max_length:
        raise BadRequest("%s is %d characters long; the maximum is %d" % (what, len(value), max_length))
    found = (_CONTROL_MULTILINE if multiline else _CONTROL).search(value)
    if found is not None:
        raise BadRequest(
            "%s contains U+%04X at position %d: control characters and unpaired surrogates are not "
            "allowed%s" % (what, ord(found.group()), found.start(), " (tab and line breaks are)" if multiline else "")
        )
    return value
