"""Reading Glance's own INI files (glance-api.conf, glance-cache.conf, glance-image-import.conf)
into this appliance's TOML sections, so an operator can reuse the files of a Glance installation."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path
from typing import Any

from appliance.config.sections import IMPORT_PLUGINS, ImportConfig
from appliance.errors import ConfigError
from appliance.urifilter import FETCHABLE_SCHEMES, UriFilterConfig


def _ini_list(raw: str) -> list[str]:
    """Glance's list options: `a,b` or the Python-literal form `['a', 'b']` from its docs."""
    raw = raw.strip()
    if raw.startswith("[") and raw.endswith("]"):
        raw = raw[1:-1]
    return [item.strip().strip("'\"") for item in raw.split(",") if item.strip().strip("'\"")]


def _read_ini(path: Path, parser: configparser.ConfigParser) -> configparser.ConfigParser:
    try:
        with open(path) as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError("import.glance_conf: cannot read %s: %s" % (path, exc.strerror)) from exc
    except configparser.Error as exc:
        raise ConfigError("import.glance_conf: %s is not a valid INI file: %s" % (path, exc)) from exc
    return parser


def read_glance_import_conf(path: Path, base: ImportConfig) -> ImportConfig:
    """Take plugins and their options from a Glance glance-image-import.conf (INI), so an
    operator can reuse an existing file; what it does not set keeps the TOML value."""
    parser = _read_ini(path, configparser.ConfigParser(interpolation=None))
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
    # [DEFAULT] read as a section of its own: its options are glance-api.conf's main ones.
    parser = _read_ini(path, configparser.ConfigParser(interpolation=None, default_section="\0"))
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
