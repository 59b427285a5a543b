"""Domain errors. Only api/middleware.py maps them to HTTP status codes (and so to titles)."""

from __future__ import annotations


class ApplianceError(Exception):
    """Base of every error the daemon reports to a client."""


class BadRequest(ApplianceError):
    """The request itself is malformed or names invalid values."""


class FormatRejected(BadRequest):
    """Image bytes do not match the claimed format or carry an unsafe feature."""


class NotFound(ApplianceError):
    """No such thing, or the caller may not see it."""


class Conflict(ApplianceError):
    """The request clashes with the current state (wrong status, duplicate, lock held)."""


class Forbidden(ApplianceError):
    """The caller is known but may not do this."""


class Unauthorized(ApplianceError):
    """No valid credentials."""


class TooLarge(ApplianceError):
    """An upload exceeds a size cap."""


class RangeNotSatisfiable(ApplianceError):
    """A byte range outside the data, or one that cannot be served."""


class UnsupportedMediaType(ApplianceError):
    """A request body of a type the endpoint does not take."""


class StorageError(ApplianceError):
    """A store failed to read or write (I/O error, missing directory, ...)."""


class StorageFull(StorageError):
    """A store has no room left for the data."""


class StoreReadOnly(StorageError):
    """A store refuses writes (read-only mount, missing mount point)."""


class RequestTimeout(ApplianceError):
    """A request body arrived too slowly, or not within its time limit."""


class TooManyRequests(ApplianceError):
    """A client's request rate is over a limit; it may try again later."""


class UpstreamUnavailable(ApplianceError):
    """The hub (or a web-download source) could not be reached or broke off."""


class HubUnreachable(UpstreamUnavailable):
    """The hub (upstream) cannot be reached and the data is not held here."""


class IdentityUnavailable(ApplianceError):
    """Keystone cannot be reached (or cannot validate for us), and the caller's token was not
    validated before: nothing says the token is bad, so this is not Unauthorized."""


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the problem."""
