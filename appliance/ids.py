"""Ids as clients send them: checked and normalised in one place."""

from __future__ import annotations

import uuid

from appliance.errors import BadRequest


def parse_uuid(value: str, what: str = "image ID") -> str:
    """`value` in canonical UUID form (lower case, hyphens); BadRequest naming `what` if it is
    not a UUID."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise BadRequest("%r is not a valid %s (expected a UUID)" % (value, what)) from None
