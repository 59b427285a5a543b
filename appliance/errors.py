"""Domain errors. Only api/middleware.py maps them to HTTP status codes."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the daemon reports to a client."""

    title = "Error"


class BadRequest(ApplianceError):
    """The request itself is malformed or names invalid values."""

    title = "Bad Request"


class FormatRejected(BadRequest):
    """Image bytes do not match the claimed format or carry an unsafe feature."""


class NotFound(ApplianceError):
    title = "Not Found"


class Conflict(ApplianceError):
    """The request clashes with the current state (wrong status, duplicate, lock held)."""

    title = "Conflict"


class Forbidden(ApplianceError):
    title = "Forbidden"


class Unauthorized(ApplianceError):
    title = "Unauthorized"


class TooLarge(ApplianceError):
    """An upload exceeds a size cap."""

    title = "Request Entity Too Large"


class RangeNotSatisfiable(ApplianceError):
    title = "Requested Range Not Satisfiable"


class UnsupportedMediaType(ApplianceError):
    title = "Unsupported Media Type"


class StorageError(ApplianceError):
    """A store failed to read or write (I/O error, missing directory, ...)."""

    title = "Internal Server Error"


class StorageFull(StorageError):
    title = "Insufficient Storage"


class StoreReadOnly(StorageError):
    title = "Store Read-Only"


class TooManyRequests(ApplianceError):
    """A client's request rate is over a limit; it may try again later."""

    title = "Too Many Requests"


class UpstreamUnavailable(ApplianceError):
    title = "Bad Gateway"


class HubUnreachable(UpstreamUnavailable):
    """The hub (upstream) cannot be reached and the data is not held here."""

    title = "Service Unavailable"


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem."""
