"""Validation: a small typed reader from a parsed TOML document to `Config`, so every error
names its key. Relative paths are resolved against the state directory, so several daemons can
run side by side with nothing but `--state-dir` to tell them apart."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.config.glanceconf import glance_conf_overlay, read_glance_import_conf
from appliance.config.sections import (
    IMPORT_METHODS,
    IMPORT_PLUGINS,
    LOG_LEVELS,
    QUOTA_NAMES,
    ROLES,
    ApiConfig,
    AuthConfig,
    BundlesConfig,
    CacheConfig,
    CatalogConfig,
    Config,
    FormatsConfig,
    HubConfig,
    ImportConfig,
    InboxConfig,
    KeystoneConfig,
    LimitsConfig,
    LoggingConfig,
    QuotaLimits,
    QuotasConfig,
    ScrubberConfig,
    SignaturesConfig,
    SiteConfig,
    StoreConfig,
    StoresConfig,
    TokenConfig,
)
from appliance.errors import BadRequest, ConfigError
from appliance.formats import CONTAINER_FORMATS, DISK_FORMATS
from appliance.pipeline.steps.ovf import DEFAULT_METADATA_FILE, load_ovf_metadata
from appliance.text import check_text
from appliance.urifilter import FETCHABLE_SCHEMES, UriFilterConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Section = TypeVar("Section", bound="DataclassInstance")


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
        cache=_cache(data.get("cache"), stores),
        inbox=_simple_section("inbox", InboxConfig, data.get("inbox")),
        bundles=_simple_section("bundles", BundlesConfig, data.get("bundles")),
        signatures=_signatures(data.get("signatures"), keystone),
        logging=log,
    )


def _signatures(data: Any, keystone: KeystoneConfig) -> SignaturesConfig:
    conf = _simple_section("signatures", SignaturesConfig, data)
    if conf.enable_certificate_validation and not conf.trusted_ca:
        raise ConfigError("signatures.enable_certificate_validation: needs signatures.trusted_ca (the CA certificates)")
    for key, value, allowed in (
        ("key_manager", conf.key_manager, ("cert_dir", "barbican")),
        ("barbican_endpoint_type", conf.barbican_endpoint_type, ("public", "internal", "admin")),
        ("auth_type", conf.auth_type, ("token", "keystone_password")),
    ):
        if value not in allowed:
            raise ConfigError("signatures.%s: must be one of %s, got %r" % (key, ", ".join(allowed), value))
    if conf.barbican_endpoint and not conf.barbican_endpoint.startswith(("http://", "https://")):
        raise ConfigError(
            "signatures.barbican_endpoint: must be an http:// or https:// URL, got %r" % conf.barbican_endpoint
        )
    if conf.key_manager == "barbican" and not keystone.auth_url:
        # Barbican takes Keystone tokens only, and the catalog and the own token come from Keystone.
        raise ConfigError(
            'signatures.key_manager = "barbican": needs [keystone] auth_url and the appliance\'s credentials'
        )
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


def _cache(data: Any, stores: StoresConfig) -> CacheConfig:
    conf = _simple_section("cache", CacheConfig, data)
    if conf.store:
        kinds = {s.name: s.type for s in stores.stores}
        if conf.store not in kinds:
            raise ConfigError("cache.store: %r is not a store of [stores] (%s)" % (conf.store, ", ".join(kinds)))
        if kinds[conf.store] != "rbd":
            # A filesystem store's directory holds image files by id; the cache's files go in [cache] dir.
            raise ConfigError(
                'cache.store: %r is a filesystem store; name an rbd store, or leave it "" to keep the cache '
                "under [cache] dir" % conf.store
            )
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


def _check_ovf_process(config: Config) -> None:
    """ovf_process comes before image_conversion (the disk inside the OVA is what is converted),
    and its metadata file is readable and well-formed."""
    plugins = config.imports.plugins
    if "ovf_process" not in plugins:
        return
    if "image_conversion" in plugins and plugins.index("image_conversion") < plugins.index("ovf_process"):
        raise ConfigError(
            "import.plugins: ovf_process must come before image_conversion (the disk inside the OVA is what "
            "is converted)"
        )
    name = config.imports.ovf_metadata_file
    load_ovf_metadata(config.path(name), required=name != DEFAULT_METADATA_FILE)


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
    _check_ovf_process(config)
    api_changes = {k: v for k, v in overrides.items() if v is not None and k in ("host", "port")}
    if api_changes:
        config = dataclasses.replace(config, api=dataclasses.replace(config.api, **api_changes))
    return config
