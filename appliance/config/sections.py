"""The configuration's sections: frozen dataclasses whose defaults are the embedded config.

`config/appliance.toml` documents the same values and a test keeps the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.formats import CONTAINER_FORMATS, DISK_FORMATS
from appliance.urifilter import UriFilterConfig

__all__ = [
    "IMPORT_METHODS",
    "IMPORT_PLUGINS",
    "LOG_LEVELS",
    "QUOTA_NAMES",
    "ROLES",
    "ApiConfig",
    "AuthConfig",
    "BundlesConfig",
    "CacheConfig",
    "CatalogConfig",
    "Config",
    "FormatsConfig",
    "HubConfig",
    "ImportConfig",
    "InboxConfig",
    "KeystoneConfig",
    "LimitsConfig",
    "LoggingConfig",
    "QuotaLimits",
    "QuotasConfig",
    "ScrubberConfig",
    "SignaturesConfig",
    "SiteConfig",
    "StoreConfig",
    "StoresConfig",
    "TokenConfig",
]

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
IMPORT_PLUGINS = ("image_decompression", "ovf_process", "image_conversion", "inject_image_metadata")


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
    # ovf_process: Glance's ovf-metadata.json, the CIM_ProcessorAllocationSettingData names
    # (under "cim_pasd") to record as cim_pasd_<Name> properties.
    ovf_metadata_file: str = "ovf-metadata.json"
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
    # An rbd store whose pool keeps the committed entries (RBD images cache.<id>); "" = files
    # under `dir`. Fills in progress stay under `dir` either way (they resume from there).
    store: str = ""
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
    # Where certificates come from: "cert_dir", or "barbican" (castellan's [key_manager] backend:
    # the secret of that uuid in Barbican's secrets API; needs [keystone] auth_url).
    key_manager: str = "cert_dir"
    # castellan's [barbican] options: Barbican's URL ("" = the key-manager service of the
    # Keystone catalog, barbican_endpoint_type interface, barbican_region_name region or
    # [keystone] region_name), and the API version added to it.
    barbican_endpoint: str = ""
    barbican_api_version: str = "v1"
    barbican_endpoint_type: str = "public"
    barbican_region_name: str = ""
    # castellan's [key_manager] auth_type: whose token reads the secret: "token" (the caller's
    # Keystone token) or "keystone_password" (the appliance's own [keystone] user).
    auth_type: str = "token"
    # With the caller's token, send the appliance's own as X-Service-Token too (castellan's).
    send_service_user_token: bool = False


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
