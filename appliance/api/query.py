"""Query strings → typed requests: what `GET /v2/images?...` asks for, checked and parsed in
Glance's words before any service runs (Glance's request deserializer does the same)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from appliance import wire
from appliance.catalog import SORT_KEYS, ImageQuery
from appliance.clock import parse_timestamp, timestamp
from appliance.config import ApiConfig
from appliance.errors import BadRequest
from appliance.ids import parse_uuid
from appliance.model import MEMBER_ACCEPTED, MEMBER_STATUSES, VISIBILITIES

# List filters on image columns that take plain equality (or Glance's `in:` operator).
COLUMN_FILTERS = ("name", "status", "visibility", "owner", "disk_format", "container_format", "id", "protected")
# Glance's time filters: `updated_at=gte:2026-01-01T00:00:00Z` (operator required).
TIME_FILTERS = ("created_at", "updated_at")
TIME_OPERATORS = {"gt": ">", "gte": ">=", "eq": "=", "neq": "!=", "lt": "<", "lte": "<="}
# Each filter is a clause (a property or tag one a join) in one SQL statement; SQLite refuses
# past its expression-depth limit, and no client needs more than a few.
MAX_LIST_FILTERS = 64
LIST_PARAMS = frozenset(
    {
        "limit",
        "marker",
        "sort_key",
        "sort_dir",
        "sort",
        "tag",
        "os_hidden",
        "size_min",
        "size_max",
        "member_status",
    }
)


def image_list_query(
    params: Mapping[str, str], tags: Sequence[str], pages: ApiConfig, most: int | None = None
) -> ImageQuery:
    """`params`: the query string (single values, the last one wins as in Glance); `tags`: every
    `tag=` value. The caller's scope (project, admin) is the service's to add; `limit` is the
    page size asked for, capped at `most` (default: `pages.max_page_size`)."""
    limit = _int_param(params, "limit", pages.default_page_size, minimum=0)
    limit = min(limit, pages.max_page_size if most is None else most)
    filters: list[tuple[str, Any]] = []
    ids: tuple[str, ...] = ()
    props: list[tuple[str, str]] = []
    times: list[tuple[str, str, str]] = []
    visibility = params.get("visibility")
    if visibility is not None and visibility not in (*VISIBILITIES, "all"):
        raise BadRequest("Invalid visibility value: %s" % visibility)
    member_status = params.get("member_status", MEMBER_ACCEPTED)
    if member_status not in (*MEMBER_STATUSES, "all"):
        raise BadRequest(
            "Invalid status: %s (member_status is one of %s or all)" % (member_status, ", ".join(MEMBER_STATUSES))
        )
    for key, value in params.items():
        if key in LIST_PARAMS or key == "visibility":
            continue
        if key in TIME_FILTERS:
            times.append(_time_filter(key, value))
        elif key in COLUMN_FILTERS:
            values = _split_in(key, value)
            if key == "protected":
                filters.append(("protected", int(_bool_param(key, value))))
            elif key == "id" and len(values) > 1:
                ids = tuple(values)
            elif len(values) > 1:
                raise BadRequest("The 'in:' operator is supported for id only here, not %s" % key)
            else:
                filters.append((key, values[0]))
        else:
            props.append((key, value))
    count = len(filters) + len(props) + len(times) + len(tags) + (1 if ids else 0)
    if count > MAX_LIST_FILTERS:
        raise BadRequest("Too many filters in one image list query: %d (at most %d)" % (count, MAX_LIST_FILTERS))
    return ImageQuery(
        filters=tuple(filters),
        property_filters=tuple(props),
        tags=tuple(tags),
        ids=ids,
        visibility=visibility,
        member_status=member_status,
        os_hidden=_bool_param("os_hidden", params["os_hidden"]) if "os_hidden" in params else False,
        size_min=_int_param(params, "size_min", None, minimum=0),
        size_max=_int_param(params, "size_max", None, minimum=0),
        time_filters=tuple(times),
        sort=_sort(params),
        limit=limit,
        marker=parse_uuid(params["marker"], "marker") if "marker" in params else None,
    )


def _int_param(params: Mapping[str, str], key: str, default: int | None, minimum: int) -> Any:
    if key not in params:
        return default
    try:
        return wire.parse_int(params[key], key, minimum)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _bool_param(key: str, value: str) -> bool:
    low = value.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise BadRequest("%s must be true or false, got %r" % (key, value))


def _sort(params: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    def check(key: str, direction: str) -> tuple[str, str]:
        if key not in SORT_KEYS:
            raise BadRequest("Invalid sort key: %s (allowed: %s)" % (key, ", ".join(SORT_KEYS)))
        if direction not in ("asc", "desc"):
            raise BadRequest("Invalid sort direction: %s" % direction)
        return key, direction

    if "sort" in params:
        if "sort_key" in params or "sort_dir" in params:
            raise BadRequest("The 'sort' parameter cannot be combined with sort_key/sort_dir")
        out = []
        for part in params["sort"].split(","):
            key, _, direction = part.strip().partition(":")
            out.append(check(key, direction or "desc"))
        return tuple(out)
    # An empty value (`sort_key=`, `sort_dir=,`) means the default, as an absent one.
    keys = [k for k in params.get("sort_key", "").split(",") if k] or ["created_at"]
    dirs = [d for d in params.get("sort_dir", "").split(",") if d] or ["desc"]
    if len(dirs) > 1 and len(dirs) != len(keys):
        raise BadRequest("Number of sort_dir values must match the number of sort_key values")
    return tuple(check(k, dirs[i] if len(dirs) > 1 else dirs[0]) for i, k in enumerate(keys))


def _split_in(key: str, value: str) -> list[str]:
    if value.startswith("in:"):
        items = [v.strip().strip('"') for v in value[3:].split(",") if v.strip()]
        if not items:
            raise BadRequest("Empty 'in:' list for %s" % key)
        return items
    return [value]


def _time_filter(key: str, value: str) -> tuple[str, str, str]:
    op, sep, stamp = value.partition(":")
    if not sep or op not in TIME_OPERATORS:
        raise BadRequest(
            "Invalid %s filter %r: expected OPERATOR:TIMESTAMP with an operator of %s"
            % (key, value, ", ".join(TIME_OPERATORS))
        )
    try:
        when = parse_timestamp(stamp)
    except ValueError:
        raise BadRequest("Invalid %s filter %r: %r is not an ISO 8601 time" % (key, value, stamp)) from None
    return key, TIME_OPERATORS[op], timestamp(when.timestamp())
