"""Configuration: one TOML file, validated strictly into frozen dataclasses.

Every key has a default, so an empty file (or none at all) is the embedded default config.
`sections` holds the dataclasses, `reader` validates a TOML document into them, `glanceconf`
reads the options a Glance installation's INI files share with them.
"""

from appliance.config.reader import default_state_dir, load_config, parse_config
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
    "default_state_dir",
    "load_config",
    "parse_config",
]
