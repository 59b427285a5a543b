"""Configuration: one TOML file, validated strictly into frozen dataclasses.

Every key has a default, so an empty file (or none at all) is the embedded default config;
`config/appliance.toml` documents the same values and a test keeps the two in step.
Relative paths are resolved against the state directory, so several daemons can run side by
side with nothing but `--state-dir` to tell them apart.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.errors import BadRequest, ConfigError
from appliance.formats import CONTAINER_FORMATS, DISK_FORMATS
from appliance.text import check_text
from appliance.urifilter import FETCHABLE_SCHEMES, UriFilterConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Section = TypeVar("Section", bound="DataclassInstance")

ROLES = ("edge", "hub")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class SiteConfig:
    name: str = "edge"
    role: str = "edge"


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 9292
    # Relative to the state directory; "" disables the socket.
    unix_socket: str = "appliance.sock"
    # Largest accepted image upload (bytes); Glance's image_size_cap defaults to 1 TiB.
    max_upload_bytes: int = 1 << 40
    # Largest JSON request body.
    max_json_bytes: int = 1 << 20
    # Default and maximum page size of image lists (Glance: limit_param_default / api_limit_max).
    default_page_size: int = 25
    max_page_size: int = 1000
    # The base URL clients reach this API at, as /versions answers it ("" = the address of the
    # listener the request came in on; never the client's Host header).
    public_url: str = ""
    # Connections (seconds): request line and headers must arrive within header_timeout of
    # connecting (or of a request's first byte on a kept-alive connection); a connection with
    # no request is closed after idle_timeout; a request body slower than min_body_rate bytes/s
    # over body_rate_window seconds, or taking longer than body_timeout, is cut off (408).
    header_timeout: int = 10
    idle_timeout: int = 60
    min_body_rate: int = 1024
    body_rate_window: int = 30
    body_timeout: int = 21600
    # Concurrent connections on the TCP listener, and on the Unix socket. The Unix socket has
    # its own cap and file descriptors set aside, so an administrator can always reach it.
    max_connections: int = 4096
    unix_max_connections: int = 64
    # Glance's show_multiple_locations / show_image_direct_url: the image body carries
    # `locations` (and location-add/-delete work) / `direct_url`, for callers that pass
    # get_image_location. Off, as in Glance: locations name server paths and site URLs.
    show_multiple_locations: bool = False
    show_image_direct_url: bool = False


@dataclass(frozen=True)
class LimitsConfig:
    # Glance's image_property_quota and image_tag_quota (per image; -1 = unlimited). Over →
    # 413 "Attempted: N, Maximum: M" as in Glance. Names and tags are at most 255 characters.
    image_property_quota: int = 128
    image_tag_quota: int = 128
    # Glance's image_member_quota: projects one image may be shared with (-1 = unlimited).
    image_member_quota: int = 128
    # Longest value of one custom property, in characters (Glance's column is TEXT, i.e. 64 KiB
    # in MySQL). With the quotas above, one image's metadata stays below ~8 MiB.
    max_property_value_length: int = 65535


# Glance's unified-limit names; -1 = unlimited. Sizes in MiB, as in Glance.
QUOTA_NAMES = ("image_size_total", "image_stage_total", "image_count_total", "image_count_uploading")


@dataclass(frozen=True)
class QuotaLimits:
    image_size_total: int = -1
    image_stage_total: int = -1
    image_count_total: int = -1
    image_count_uploading: int = -1


@dataclass(frozen=True)
class QuotasConfig:
    default: QuotaLimits = field(default_factory=QuotaLimits)
    # project id → its own limits (keys not set there take the default)
    projects: tuple[tuple[str, QuotaLimits], ...] = ()

    def for_project(self, project: str | None) -> QuotaLimits:
        return next((limits for name, limits in self.projects if name == project), self.default)


@dataclass(frozen=True)
class TokenConfig:
    token: str = ""
    token_file: str = ""
    user: str = ""
    project: str = ""
    roles: tuple[str, ...] = ("member", "reader")


@dataclass(frozen=True)
class AuthConfig:
    # Written with a random admin token on first start when no tokens are configured.
    admin_token_file: str = "admin-token"
    tokens: tuple[TokenConfig, ...] = ()
    # An oslo.policy file (YAML or JSON) whose rules replace Glance's defaults by name; "" = none.
    policy_file: str = ""


@dataclass(frozen=True)
class KeystoneConfig:
    """Keystone v3 (keystonemiddleware's [keystone_authtoken] names): callers' tokens are validated
    there with the appliance's own service credentials, and the hub link may authenticate with
    them. auth_url = "" keeps Keystone out (static tokens only)."""

    auth_url: str = ""
    # The appliance's own user (password) ...
    username: str = ""
    password: str = ""
    user_domain_name: str = "Default"
    project_name: str = "service"
    project_domain_name: str = "Default"
    # ... or an application credential (then the fields above are not used).
    application_credential_id: str = ""
    application_credential_secret: str = ""
    # Catalog lookups (the hub's image endpoint): region and interface.
    region_name: str = ""
    interface: str = "internal"
    # A validated token is trusted this long (s) before Keystone is asked again, and never past
    # its expiry; at most token_cache_size tokens are remembered (least recently used go first).
    token_cache_time: int = 300
    token_cache_size: int = 10000
    # Seconds to wait for Keystone before answering 503.
    http_connect_timeout: int = 10
    # An X-Service-Token must carry one of these roles; with service_token_roles_required a
    # service token without one is refused, otherwise only logged (keystonemiddleware's default).
    service_token_roles: tuple[str, ...] = ("service",)
    service_token_roles_required: bool = False


@dataclass(frozen=True)
class StoreConfig:
    name: str
    path: str = ""
    thin_provisioning: bool = False
    description: str = ""
    # Refuse writes unless the directory is a mount point (an NFS/iSCSI mount that went away
    # must not be filled through the bare directory underneath).
    require_mount: bool = False
    # Writes that would leave less free space than this on the store's filesystem are refused
    # (507) before a byte is written, so the catalog and the system keep room. 0 = no floor.
    min_free_bytes: int = 1 << 30
    # "filesystem" (path) or "rbd" (a Ceph pool, laid out as Glance's RBD driver does; the
    # rbd_store_* options of Glance: pool, user, ceph.conf, keyring, object size in MiB).
    type: str = "filesystem"
    pool: str = "images"
    user: str = "glance"
    conf_file: str = "/etc/ceph/ceph.conf"
    keyring: str = ""
    chunk_size: int = 8


@dataclass(frozen=True)
class StoresConfig:
    default: str = "local"
    stores: tuple[StoreConfig, ...] = (StoreConfig(name="local", path="images", description="Local filesystem store"),)


@dataclass(frozen=True)
class CatalogConfig:
    path: str = "catalog.sqlite"


@dataclass(frozen=True)
class FormatsConfig:
    disk_formats: tuple[str, ...] = DISK_FORMATS
    container_formats: tuple[str, ...] = CONTAINER_FORMATS
    # Largest virtual (guest-visible) disk size accepted, in bytes, whatever the upload's
    # size: a small qcow2 can claim exabytes. Checked by the format inspector on uploads and
    # imports (a qcow2 L1 table mapping more is refused too). 0 = no limit.
    max_virtual_size: int = 1 << 40


# glance-download (a hub image into local stores) is offered only with a [hub] url.
IMPORT_METHODS = ("glance-direct", "web-download", "copy-image", "glance-download")
IMPORT_PLUGINS = ("image_decompression", "image_conversion", "inject_image_metadata")


@dataclass(frozen=True)
class ImportConfig:
    enabled_methods: tuple[str, ...] = IMPORT_METHODS
    # Glance's image_import_plugins: run in this order, one after the other.
    plugins: tuple[str, ...] = ()
    # Where glance-direct data is staged and imports do their work (relative: state dir).
    staging_dir: str = "staging"
    # Staging and web-downloads stop (507) rather than leave less free space than this there.
    staging_min_free_bytes: int = 1 << 30
    # A Glance glance-image-import.conf to take plugins and their options from ("": none).
    glance_conf: str = ""
    # image_decompression limits: output size and expansion ratio (decompression bombs).
    max_decompressed_bytes: int = 1 << 40
    max_expansion_ratio: int = 1000
    # image_conversion
    output_format: str = "raw"
    # inject_image_metadata
    inject: tuple[tuple[str, str], ...] = ()
    ignore_user_roles: tuple[str, ...] = ("admin",)
    # web-download
    max_download_bytes: int = 1 << 40
    download_idle_timeout: int = 60
    # Longest a whole web-download may take, in seconds (0 = no limit).
    download_timeout: int = 21600
    uri_filter: UriFilterConfig = field(default_factory=UriFilterConfig)


@dataclass(frozen=True)
class ScrubberConfig:
    # Re-hash every stored copy against its recorded SHA-512 this often (seconds).
    enabled: bool = True
    interval: int = 86400
    # Read rate limit while scrubbing, so serving is not starved.
    rate_mib_per_s: int = 50


@dataclass(frozen=True)
class HubConfig:
    # The hub: an appliance hub or a central Glance v2 endpoint; "" = none (or, with keystone,
    # the image endpoint of region_name in the Keystone catalog).
    url: str = ""
    # Token sent to the hub (X-Auth-Token); set at most one of the two.
    token: str = ""
    token_file: str = ""
    # Authenticate to the hub with the [keystone] credentials (a Keystone token, renewed)
    # instead of a static token.
    keystone: bool = False
    # The hub's region in the Keystone catalog ("" = [keystone] region_name).
    region_name: str = ""
    # Explicit timeouts: a dead WAN link must fail a request, never hang it.
    connect_timeout: int = 10
    read_timeout: int = 30
    # Hub transfer rate limit in bytes per second (0 = unlimited).
    bandwidth_limit: int = 0
    # How often a broken transfer is resumed before it fails, and the back-off ceiling (s).
    resume_attempts: int = 5
    retry_max_seconds: int = 300
    # Hub link (edge role): catalog mirror, full reconcile, heartbeat and sync intervals (s).
    mirror_interval: int = 60
    reconcile_interval: int = 3600
    heartbeat_interval: int = 15
    sync_interval: int = 30
    # This site's API URL as the hub should record it in locations ("" = not advertised).
    api_url: str = ""
    # Lookups of ids this site does not know (edge role): a hub miss is remembered for
    # miss_ttl seconds (at most miss_cache_size ids), and each project may ask the hub about
    # lookup_burst unknown ids at once, refilled at lookups_per_minute; beyond that, 429.
    miss_ttl: int = 60
    miss_cache_size: int = 10000
    lookup_burst: int = 20
    lookups_per_minute: int = 60


@dataclass(frozen=True)
class CacheConfig:
    # Copies of images whose data lives at the hub ([hub] url); never the site's own images.
    enabled: bool = True
    dir: str = "cache"
    max_size: int = 10 << 30
    # Percent of max_size: crossing the high mark evicts least-recently-used entries down to
    # the low mark.
    high_watermark: int = 90
    low_watermark: int = 75
    # Never fill the filesystem below this many free bytes.
    min_free_bytes: int = 1 << 30
    # Partial files untouched this long are removed by the cleaner (Glance: 86400).
    stall_time: int = 86400
    clean_interval: int = 600
    # Queued images are fetched this often (Glance's cache_prefetcher_interval) and also at
    # once when queued through the API, at most `prefetch_workers` at a time.
    prefetch_interval: int = 300
    prefetch_workers: int = 2


@dataclass(frozen=True)
class InboxConfig:
    # A directory watched for bundles and image files with a sidecar ("" = no inbox).
    dir: str = ""
    # The store inbox imports go to ("" = the default store).
    store: str = ""
    # A file is taken once its size and mtime have not changed for this long (s).
    settle_seconds: int = 5


@dataclass(frozen=True)
class BundlesConfig:
    # Refuse bundles without a valid signature from one of `trusted_keys`.
    require_signed: bool = False
    # Paths of ed25519 public keys (PEM or raw 32-byte) whose signatures are accepted.
    trusted_keys: tuple[str, ...] = ()
    # This site's ed25519 private key (PEM) used by `bundle export --sign` ("" = none).
    signing_key: str = ""


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    # The same warning or error repeated is logged at most a few times per this many seconds,
    # then once with the count of those left out (0 = log every one).
    repeat_interval: int = 60


@dataclass(frozen=True)
class SignaturesConfig:
    # Certificates for Glance's image signature verification (img_signature_certificate_uuid):
    # one PEM file per certificate id, named <id>.pem ("" = none: signed images are refused).
    cert_dir: str = ""
    # Glance's enable_certificate_validation idea: the signing certificate must be within its
    # validity dates and chain to a CA in trusted_ca (a PEM file or a directory of them).
    enable_certificate_validation: bool = False
    trusted_ca: str = ""


@dataclass(frozen=True)
class Config:
    state_dir: Path = Path("var")
    site: SiteConfig = field(default_factory=SiteConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    keystone: KeystoneConfig = field(default_factory=KeystoneConfig)
    stores: StoresConfig = field(default_factory=StoresConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    formats: FormatsConfig = field(default_factory=FormatsConfig)
    imports: ImportConfig = field(default_factory=ImportConfig)
    scrubber: ScrubberConfig = field(default_factory=ScrubberConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    inbox: InboxConfig = field(default_factory=InboxConfig)
    bundles: BundlesConfig = field(default_factory=BundlesConfig)
    signatures: SignaturesConfig = field(default_factory=SignaturesConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def path(self, value: str) -> Path:
        """Resolve a configured path: absolute stays, relative hangs off the state dir."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.state_dir / p)


# ---------------------------------------------------------------------------------------------
# Validation: a tiny typed reader so every error names its key.


def _check_keys(section: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            "%s: unknown key %s (allowed: %s)"
            % (section or "top level", ", ".join(repr(k) for k in unknown), ", ".join(sorted(allowed)))
        )


def _typed(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    # bool is an int subclass; refuse it where a number is meant.
    if isinstance(value, bool) and kind is int:
        raise ConfigError("%s: expected %s, got %r" % (key, what, value))
    if not isinstance(value, kind):
        raise ConfigError("%s: expected %s, got %r" % (key, what, value))
    return value


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("%s: expected a list of strings, got %r" % (key, value))
    return tuple(value)


def _simple_section(name: str, cls: type[Section], data: Any) -> Section:
    """Read a section whose fields are all str/int/bool/tuple[str]."""
    if data is None:
        return cls()
    _typed(name, data, dict, "a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _check_keys(name, data, set(fields))
    values: dict[str, Any] = {}
    defaults = cls()
    for key, raw in data.items():
        current = getattr(defaults, key)
        full = "%s.%s" % (name, key)
        if isinstance(current, bool):
            values[key] = _typed(full, raw, bool, "true or false")
        elif isinstance(current, int):
            values[key] = _typed(full, raw, int, "an integer")
        elif isinstance(current, str):
            values[key] = _typed(full, raw, str, "a string")
        elif isinstance(current, tuple):
            values[key] = _str_list(full, raw)
        else:  # pragma: no cover - only reached by a programming error
            raise AssertionError(full)
    return cls(**values)


def _int_list(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError("%s: expected a list of integers, got %r" % (key, value))
    bad = [v for v in value if not 0 <= v <= 65535]
    if bad:
        raise ConfigError("%s: ports must be 0..65535, got %s" % (key, bad))
    return tuple(value)


def _read_import(data: Any) -> ImportConfig:
    if data is None:
        return ImportConfig()
    _typed("import", data, dict, "a table")
    data = dict(data)
    filt_data = data.pop("uri_filter", None)
    inject_data = data.pop("inject", None)
    base = _simple_section("import", ImportConfig, {k: v for k, v in data.items()})
    inject: tuple[tuple[str, str], ...] = ()
    if inject_data is not None:
        if not isinstance(inject_data, dict) or not all(isinstance(v, str) for v in inject_data.values()):
            raise ConfigError('import.inject: expected a table of string values, e.g. inject = { site = "edge-1" }')
        inject = tuple(inject_data.items())
        for key, value in inject:  # the same rules as a client's properties
            try:
                check_text("Property name %r" % key, key, 255)
                check_text("Value of property %r" % key, value, LimitsConfig.max_property_value_length, multiline=True)
            except BadRequest as exc:
                raise ConfigError("import.inject: %s" % exc) from None
    filt = UriFilterConfig()
    if filt_data is not None:
        _typed("import.uri_filter", filt_data, dict, "a table")
        names = {f.name for f in dataclasses.fields(UriFilterConfig)}
        _check_keys("import.uri_filter", filt_data, names)
        values: dict[str, Any] = {}
        for key, raw in filt_data.items():
            full = "import.uri_filter." + key
            values[key] = _int_list(full, raw) if key.endswith("ports") else _str_list(full, raw)
        filt = UriFilterConfig(**values)
        unfetchable = [s for s in filt.allowed_schemes if s.lower() not in FETCHABLE_SCHEMES]
        if unfetchable:
            raise ConfigError(
                "import.uri_filter.allowed_schemes: %s cannot be downloaded (only %s); remove %s"
                % (
                    ", ".join(map(repr, unfetchable)),
                    ", ".join(FETCHABLE_SCHEMES),
                    "them" if len(unfetchable) > 1 else "it",
                )
            )
    for m in base.enabled_methods:
        if m not in IMPORT_METHODS:
            raise ConfigError("import.enabled_methods: unknown method %r (known: %s)" % (m, ", ".join(IMPORT_METHODS)))
    for p in base.plugins:
        if p not in IMPORT_PLUGINS:
            raise ConfigError("import.plugins: unknown plugin %r (known: %s)" % (p, ", ".join(IMPORT_PLUGINS)))
    if base.output_format not in ("raw", "qcow2", "vmdk"):
        raise ConfigError("import.output_format: must be raw, qcow2 or vmdk, got %r" % base.output_format)
    if base.download_timeout < 0:
        raise ConfigError("import.download_timeout: must be 0 (no limit) or positive")
    return dataclasses.replace(base, inject=inject, uri_filter=filt)


def _ini_list(raw: str) -> list[str]:
    """Glance's list options: `a,b` or the Python-literal form `['a', 'b']` from its docs."""
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
    return [item.strip().strip("'\"") for item in raw.split(",") if item.strip().strip("'\"")]


def read_glance_import_conf(path: Path, base: ImportConfig) -> ImportConfig:
    """Take plugins and their options from a Glance glance-image-import.conf (INI), so an
    operator can reuse an existing file; what it does not set keeps the TOML value."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path) as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError("import.glance_conf: cannot read %s: %s" % (path, exc.strerror)) from exc
    except configparser.Error as exc:
        raise ConfigError("import.glance_conf: %s is not a valid INI file: %s" % (path, exc)) from exc
    changes: dict[str, Any] = {}
    if parser.has_option("image_import_opts", "image_import_plugins"):
        plugins = _ini_list(parser.get("image_import_opts", "image_import_plugins"))
        bad = [p for p in plugins if p not in IMPORT_PLUGINS]
        if bad:
            raise ConfigError(
                "%s: [image_import_opts] image_import_plugins: unknown plugin %s" % (path, ", ".join(bad))
            )
        changes["plugins"] = tuple(plugins)
    if parser.has_option("image_conversion", "output_format"):
        fmt = parser.get("image_conversion", "output_format").strip()
        if fmt not in ("raw", "qcow2", "vmdk"):
            raise ConfigError("%s: [image_conversion] output_format: must be raw, qcow2 or vmdk" % path)
        changes["output_format"] = fmt
    if parser.has_section("inject_metadata_properties"):
        sec = parser["inject_metadata_properties"]
        if "inject" in sec:
            pairs = []
            for item in _ini_list(sec["inject"]):
                key, sep, value = item.partition(":")
                if not sep or not key.strip():
                    raise ConfigError("%s: [inject_metadata_properties] inject: %r is not key:value" % (path, item))
                pairs.append((key.strip(), value.strip()))
            changes["inject"] = tuple(pairs)
        if "ignore_user_roles" in sec:
            changes["ignore_user_roles"] = tuple(_ini_list(sec["ignore_user_roles"]))
    if parser.has_section("import_filtering_opts"):
        filt: dict[str, Any] = {}
        for key in (f.name for f in dataclasses.fields(UriFilterConfig)):
            if parser.has_option("import_filtering_opts", key):
                items = _ini_list(parser.get("import_filtering_opts", key))
                if key.endswith("ports"):
                    try:
                        filt[key] = tuple(int(i) for i in items)
                    except ValueError:
                        raise ConfigError(
                            "%s: [import_filtering_opts] %s: ports must be integers" % (path, key)
                        ) from None
                else:
                    filt[key] = tuple(items)
        changes["uri_filter"] = dataclasses.replace(base.uri_filter, **filt)
        unfetchable = [s for s in changes["uri_filter"].allowed_schemes if s.lower() not in FETCHABLE_SCHEMES]
        if unfetchable:
            raise ConfigError(
                "%s: [import_filtering_opts] allowed_schemes: %s cannot be downloaded (only %s)"
                % (path, ", ".join(map(repr, unfetchable)), ", ".join(FETCHABLE_SCHEMES))
            )
    return dataclasses.replace(base, **changes)


# Options of a glance-api.conf / glance-cache.conf with an equivalent here:
# (INI section, option) -> (TOML section, key, kind). The import options are read by
# read_glance_import_conf.
_GLANCE_CONF_OPTIONS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("DEFAULT", "show_multiple_locations"): ("api", "show_multiple_locations", "bool"),
    ("DEFAULT", "show_image_direct_url"): ("api", "show_image_direct_url", "bool"),
    ("DEFAULT", "image_size_cap"): ("api", "max_upload_bytes", "int"),
    ("DEFAULT", "limit_param_default"): ("api", "default_page_size", "int"),
    ("DEFAULT", "api_limit_max"): ("api", "max_page_size", "int"),
    ("DEFAULT", "image_property_quota"): ("limits", "image_property_quota", "int"),
    ("DEFAULT", "image_tag_quota"): ("limits", "image_tag_quota", "int"),
    ("DEFAULT", "image_member_quota"): ("limits", "image_member_quota", "int"),
    ("DEFAULT", "enabled_import_methods"): ("import", "enabled_methods", "list"),
    ("DEFAULT", "image_cache_dir"): ("cache", "dir", "str"),
    ("DEFAULT", "image_cache_max_size"): ("cache", "max_size", "int"),
    ("DEFAULT", "image_cache_stall_time"): ("cache", "stall_time", "int"),
    ("image_format", "disk_formats"): ("formats", "disk_formats", "list"),
    ("image_format", "container_formats"): ("formats", "container_formats", "list"),
}
_GLANCE_IMPORT_OPTIONS = {
    ("image_import_opts", "image_import_plugins"),
    ("image_conversion", "output_format"),
    ("inject_metadata_properties", "inject"),
    ("inject_metadata_properties", "ignore_user_roles"),
} | {("import_filtering_opts", f.name) for f in dataclasses.fields(UriFilterConfig)}


def glance_conf_overlay(path: Path) -> dict[str, dict[str, Any]]:
    """The TOML sections a Glance INI file (glance-api.conf, glance-cache.conf or
    glance-image-import.conf) sets, for the options that have an equivalent here. A file that
    sets any other option is refused with those options named, never half-read in silence."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None, default_section="\0")  # [DEFAULT] as a section
    try:
        with open(path) as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError("import.glance_conf: cannot read %s: %s" % (path, exc.strerror)) from exc
    except configparser.Error as exc:
        raise ConfigError("import.glance_conf: %s is not a valid INI file: %s" % (path, exc)) from exc
    overlay: dict[str, dict[str, Any]] = {}
    unusable: list[str] = []
    for section in parser.sections():
        for option, raw in parser.items(section, raw=True):
            known = _GLANCE_CONF_OPTIONS.get((section, option))
            if known is None:
                if (section, option) not in _GLANCE_IMPORT_OPTIONS:
                    unusable.append("[%s] %s" % (section, option))
                continue
            table, key, kind = known
            overlay.setdefault(table, {})[key] = _ini_value(path, section, option, raw, kind)
    if unusable:
        shown = ", ".join(unusable[:20]) + (" and %d more" % (len(unusable) - 20) if len(unusable) > 20 else "")
        raise ConfigError(
            "import.glance_conf: %s sets options this appliance has no equivalent for: %s; remove them "
            "from the file (or give their TOML equivalents in the config instead)" % (path, shown)
        )
    return overlay


def _ini_value(path: Path, section: str, option: str, raw: str, kind: str) -> Any:
    text = raw.strip()
    if kind == "list":
        return _ini_list(text)
    if kind == "str":
        return text
    if kind == "bool":
        if text.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            raise ConfigError("%s: [%s] %s: expected true or false, got %r" % (path, section, option, text))
        return text.lower() in ("true", "yes", "on", "1")
    try:
        return int(text)
    except ValueError:
        raise ConfigError("%s: [%s] %s: expected an integer, got %r" % (path, section, option, text)) from None


def _read_tokens(data: Any) -> tuple[TokenConfig, ...]:
    if not isinstance(data, list):
        raise ConfigError("auth.tokens: expected an array of tables ([[auth.tokens]])")
    tokens = []
    for i, item in enumerate(data):
        name = "auth.tokens[%d]" % i
        tok = _simple_section(name, TokenConfig, item)
        if bool(tok.token) == bool(tok.token_file):
            raise ConfigError("%s: set exactly one of 'token' or 'token_file'" % name)
        if not tok.user or not tok.project:
            raise ConfigError("%s: 'user' and 'project' are required" % name)
        tokens.append(tok)
    return tuple(tokens)


def _read_auth(data: Any) -> AuthConfig:
    if data is None:
        return AuthConfig()
    _typed("auth", data, dict, "a table")
    _check_keys("auth", data, {"admin_token_file", "tokens", "policy_file"})
    admin = _typed("auth.admin_token_file", data.get("admin_token_file", AuthConfig.admin_token_file), str, "a string")
    tokens = _read_tokens(data["tokens"]) if "tokens" in data else ()
    policy_file = _typed("auth.policy_file", data.get("policy_file", AuthConfig.policy_file), str, "a string")
    return AuthConfig(admin_token_file=admin, tokens=tokens, policy_file=policy_file)


def _read_rbd_store(name: str, section: str, body: dict[str, Any]) -> StoreConfig:
    _check_keys(section, body, {"type", "pool", "user", "conf_file", "keyring", "chunk_size", "description"})
    chunk = _typed(section + ".chunk_size", body.get("chunk_size", StoreConfig.chunk_size), int, "an integer")
    if chunk < 1 or chunk & (chunk - 1):
        raise ConfigError("%s.chunk_size: expected a power of two of MiB (Glance: 8), not %d" % (section, chunk))
    return StoreConfig(
        name=name,
        type="rbd",
        pool=_typed(section + ".pool", body.get("pool", StoreConfig.pool), str, "a string"),
        user=_typed(section + ".user", body.get("user", StoreConfig.user), str, "a string"),
        conf_file=_typed(section + ".conf_file", body.get("conf_file", StoreConfig.conf_file), str, "a string"),
        keyring=_typed(section + ".keyring", body.get("keyring", ""), str, "a string"),
        chunk_size=chunk,
        description=_typed(section + ".description", body.get("description", ""), str, "a string"),
    )


def _read_stores(data: Any) -> StoresConfig:
    if data is None:
        return StoresConfig()
    _typed("stores", data, dict, "a table")
    default = _typed("stores.default", data.get("default", StoresConfig.default), str, "a string")
    stores = []
    for name, body in data.items():
        if name == "default":
            continue
        if not isinstance(body, dict):
            raise ConfigError("stores.%s: expected a table [stores.%s] with a 'path'" % (name, name))
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("stores.%s: store names may hold letters, digits, '-' and '_' only" % name)
        section = "stores.%s" % name
        kind = _typed(section + ".type", body.get("type", "filesystem"), str, "a string")
        if kind == "rbd":
            stores.append(_read_rbd_store(name, section, body))
            continue
        if kind != "filesystem":
            raise ConfigError('%s.type: expected "filesystem" or "rbd", not %r' % (section, kind))
        _check_keys(
            section, body, {"type", "path", "thin_provisioning", "description", "require_mount", "min_free_bytes"}
        )
        if "path" not in body:
            raise ConfigError("%s.path: required" % section)
        stores.append(
            StoreConfig(
                name=name,
                path=_typed(section + ".path", body["path"], str, "a string"),
                thin_provisioning=_typed(
                    section + ".thin_provisioning", body.get("thin_provisioning", False), bool, "true or false"
                ),
                description=_typed(section + ".description", body.get("description", ""), str, "a string"),
                require_mount=_typed(
                    section + ".require_mount", body.get("require_mount", False), bool, "true or false"
                ),
                min_free_bytes=_non_negative(
                    section + ".min_free_bytes",
                    _typed(section + ".min_free_bytes", body.get("min_free_bytes", 1 << 30), int, "an integer"),
                ),
            )
        )
    if not stores:
        stores = list(StoresConfig.stores)
    names = [s.name for s in stores]
    if default not in names:
        raise ConfigError("stores.default: %r is not a configured store (configured: %s)" % (default, ", ".join(names)))
    return StoresConfig(default=default, stores=tuple(stores))


def parse_config(data: Mapping[str, Any], state_dir: Path) -> Config:
    """Validate a parsed TOML document into a Config."""
    sections = {
        "site",
        "api",
        "limits",
        "quotas",
        "auth",
        "keystone",
        "stores",
        "catalog",
        "formats",
        "import",
        "scrubber",
        "hub",
        "cache",
        "inbox",
        "bundles",
        "signatures",
        "logging",
    }
    _check_keys("", data, sections)
    site = _simple_section("site", SiteConfig, data.get("site"))
    if site.role not in ROLES:
        raise ConfigError("site.role: must be one of %s, got %r" % (", ".join(ROLES), site.role))
    if not site.name:
        raise ConfigError("site.name: must not be empty")
    api = _simple_section("api", ApiConfig, data.get("api"))
    if not 0 <= api.port <= 65535:
        raise ConfigError("api.port: must be 0..65535, got %d" % api.port)
    if api.max_upload_bytes <= 0:
        raise ConfigError("api.max_upload_bytes: must be positive")
    if not 1 <= api.default_page_size <= api.max_page_size:
        raise ConfigError("api.default_page_size: must be between 1 and api.max_page_size")
    _check_connections(api)
    formats = _simple_section("formats", FormatsConfig, data.get("formats"))
    for key, chosen, known in (
        ("formats.disk_formats", formats.disk_formats, DISK_FORMATS),
        ("formats.container_formats", formats.container_formats, CONTAINER_FORMATS),
    ):
        bad = [f for f in chosen if f not in known]
        if bad:
            raise ConfigError("%s: unknown format %s (known: %s)" % (key, ", ".join(bad), ", ".join(known)))
        if not chosen:
            raise ConfigError("%s: at least one format must be enabled" % key)
    if formats.max_virtual_size < 0:
        raise ConfigError("formats.max_virtual_size: must be 0 (no limit) or positive")
    log = _simple_section("logging", LoggingConfig, data.get("logging"))
    if log.level not in LOG_LEVELS:
        raise ConfigError("logging.level: must be one of %s, got %r" % (", ".join(LOG_LEVELS), log.level))
    if log.repeat_interval < 0:
        raise ConfigError("logging.repeat_interval: must be 0 (off) or positive")
    keystone = _keystone(data.get("keystone"))
    hub = _hub(data.get("hub"))
    if hub.keystone and not keystone.auth_url:
        raise ConfigError("hub.keystone: needs [keystone] auth_url and the appliance's credentials")
    stores = _read_stores(data.get("stores"))
    if (hub.url or hub.keystone) and any(s.name == stores.default and s.type == "rbd" for s in stores.stores):
        # Pins from the hub are pulled into a resumable file and adopted by rename.
        raise ConfigError(
            "stores.default: %r is an rbd store; with a [hub], hub-driven pins go into the default "
            "store, which must be a filesystem store (name an rbd store in uploads and imports)" % stores.default
        )
    return Config(
        state_dir=state_dir,
        site=site,
        api=api,
        limits=_limits(data.get("limits")),
        quotas=_quotas(data.get("quotas")),
        auth=_read_auth(data.get("auth")),
        keystone=keystone,
        stores=stores,
        catalog=_simple_section("catalog", CatalogConfig, data.get("catalog")),
        formats=formats,
        imports=_read_import(data.get("import")),
        scrubber=_scrubber(data.get("scrubber")),
        hub=hub,
        cache=_cache(data.get("cache")),
        inbox=_simple_section("inbox", InboxConfig, data.get("inbox")),
        bundles=_simple_section("bundles", BundlesConfig, data.get("bundles")),
        signatures=_signatures(data.get("signatures")),
        logging=log,
    )


def _signatures(data: Any) -> SignaturesConfig:
    conf = _simple_section("signatures", SignaturesConfig, data)
    if conf.enable_certificate_validation and not conf.trusted_ca:
        raise ConfigError("signatures.enable_certificate_validation: needs signatures.trusted_ca (the CA certificates)")
    return conf


def _check_connections(api: ApiConfig) -> None:
    for key in ("header_timeout", "idle_timeout", "body_rate_window", "max_connections", "unix_max_connections"):
        if getattr(api, key) <= 0:
            raise ConfigError("api.%s: must be positive" % key)
    for key in ("min_body_rate", "body_timeout"):
        if getattr(api, key) < 0:
            raise ConfigError("api.%s: must be 0 (off) or positive" % key)
    if api.public_url and not api.public_url.startswith(("http://", "https://")):
        raise ConfigError("api.public_url: must be an http:// or https:// URL, got %r" % api.public_url)


def _keystone(data: Any) -> KeystoneConfig:
    conf = _simple_section("keystone", KeystoneConfig, data)
    if conf.auth_url and not conf.auth_url.startswith(("http://", "https://")):
        raise ConfigError("keystone.auth_url: must be an http:// or https:// URL, got %r" % conf.auth_url)
    if conf.interface not in ("public", "internal", "admin"):
        raise ConfigError("keystone.interface: must be public, internal or admin, got %r" % conf.interface)
    for key in ("token_cache_time", "token_cache_size", "http_connect_timeout"):
        if getattr(conf, key) <= 0:
            raise ConfigError("keystone.%s: must be positive" % key)
    if bool(conf.application_credential_id) != bool(conf.application_credential_secret):
        raise ConfigError("keystone: set both application_credential_id and application_credential_secret, or neither")
    if conf.auth_url and not conf.application_credential_id and not (conf.username and conf.password):
        raise ConfigError(
            "keystone: auth_url needs the appliance's own credentials: username and password, "
            "or application_credential_id and application_credential_secret"
        )
    return dataclasses.replace(conf, auth_url=conf.auth_url.rstrip("/"))


def _hub(data: Any) -> HubConfig:
    conf = _simple_section("hub", HubConfig, data)
    if conf.url and not conf.url.startswith(("http://", "https://")):
        raise ConfigError("hub.url: must be an http:// or https:// URL, got %r" % conf.url)
    if conf.token and conf.token_file:
        raise ConfigError("hub: set at most one of 'token' or 'token_file'")
    if conf.keystone and (conf.token or conf.token_file):
        raise ConfigError("hub: keystone = true takes the token from Keystone; remove 'token'/'token_file'")
    for key in (
        "connect_timeout",
        "read_timeout",
        "mirror_interval",
        "reconcile_interval",
        "heartbeat_interval",
        "sync_interval",
        "retry_max_seconds",
        "miss_cache_size",
        "lookup_burst",
        "lookups_per_minute",
    ):
        if getattr(conf, key) <= 0:
            raise ConfigError("hub.%s: must be positive" % key)
    if conf.bandwidth_limit < 0 or conf.resume_attempts < 0 or conf.miss_ttl < 0:
        raise ConfigError("hub: bandwidth_limit, resume_attempts and miss_ttl must not be negative")
    return dataclasses.replace(conf, url=conf.url.rstrip("/"))


def _cache(data: Any) -> CacheConfig:
    conf = _simple_section("cache", CacheConfig, data)
    if conf.max_size <= 0:
        raise ConfigError("cache.max_size: must be positive")
    if not 0 < conf.low_watermark <= conf.high_watermark <= 100:
        raise ConfigError("cache: need 0 < low_watermark <= high_watermark <= 100 (percent of max_size)")
    for key in ("stall_time", "clean_interval", "prefetch_interval", "prefetch_workers"):
        if getattr(conf, key) <= 0:
            raise ConfigError("cache.%s: must be positive" % key)
    if conf.min_free_bytes < 0:
        raise ConfigError("cache.min_free_bytes: must not be negative")
    return conf


def _non_negative(key: str, value: int) -> int:
    if value < 0:
        raise ConfigError("%s: must not be negative, got %d" % (key, value))
    return value


def _limits(data: Any) -> LimitsConfig:
    conf = _simple_section("limits", LimitsConfig, data)
    for key in ("image_property_quota", "image_tag_quota", "image_member_quota"):
        if getattr(conf, key) < -1:
            raise ConfigError("limits.%s: must be -1 (unlimited) or a count, got %d" % (key, getattr(conf, key)))
    if conf.max_property_value_length <= 0:
        raise ConfigError("limits.max_property_value_length: must be positive")
    return conf


def _quota_limits(section: str, data: Any, base: QuotaLimits) -> QuotaLimits:
    _typed(section, data, dict, "a table")
    _check_keys(section, data, set(QUOTA_NAMES))
    values = {}
    for key, raw in data.items():
        value = _typed("%s.%s" % (section, key), raw, int, "an integer")
        if value < -1:
            raise ConfigError("%s.%s: must be -1 (unlimited) or a limit, got %d" % (section, key, value))
        values[key] = value
    return dataclasses.replace(base, **values)


def _quotas(data: Any) -> QuotasConfig:
    """[quotas] holds the default limits; [quotas.projects.ID] one project's (Glance's unified
    limits: registered defaults and per-project overrides)."""
    if data is None:
        return QuotasConfig()
    _typed("quotas", data, dict, "a table")
    data = dict(data)
    projects = data.pop("projects", {})
    default = _quota_limits("quotas", data, QuotaLimits())
    _typed("quotas.projects", projects, dict, "a table of [quotas.projects.ID] tables")
    return QuotasConfig(
        default=default,
        projects=tuple(
            (name, _quota_limits("quotas.projects.%s" % name, body, default)) for name, body in projects.items()
        ),
    )


def _scrubber(data: Any) -> ScrubberConfig:
    conf = _simple_section("scrubber", ScrubberConfig, data)
    if conf.interval <= 0 or conf.rate_mib_per_s <= 0:
        raise ConfigError("scrubber: interval and rate_mib_per_s must be positive")
    return conf


def default_state_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """systemd's StateDirectory= sets STATE_DIRECTORY; otherwise ./var beside the checkout."""
    return Path(environ.get("STATE_DIRECTORY", "var").split(":")[0])


def load_config(path: Path | None, state_dir: Path | None = None, **overrides: Any) -> Config:
    """Read and validate a config file (None: the embedded defaults).

    `overrides` replace api.host / api.port after validation (the CLI flags win)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError("%s: cannot read: %s" % (path, exc.strerror)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("%s: not valid TOML: %s" % (path, exc)) from exc
    config = parse_config(data, (state_dir or default_state_dir()).absolute())
    if config.imports.glance_conf:
        overlay = glance_conf_overlay(config.path(config.imports.glance_conf))
        if overlay:  # validated as if the TOML had said it; the Glance file wins
            merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
            for table, values in overlay.items():
                merged[table] = {**merged.get(table, {}), **values}
            config = parse_config(merged, config.state_dir)
        imports = read_glance_import_conf(config.path(config.imports.glance_conf), config.imports)
        config = dataclasses.replace(config, imports=imports)
    api_changes = {k: v for k, v in overrides.items() if v is not None and k in ("host", "port")}
    if api_changes:
        config = dataclasses.replace(config, api=dataclasses.replace(config.api, **api_changes))
    return config
