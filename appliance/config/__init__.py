"""Configuration: one TOML file, validated strictly into frozen dataclasses.

Every key has a default, so an empty file (or none at all) is the embedded default config.
`sections` holds the dataclasses, `reader` validates a TOML document into them, `glanceconf`
reads the options a Glance installation's INI files share with them.
"""

from appliance.config import sections
from appliance.config.reader import default_state_dir, load_config, parse_config
from appliance.config.sections import *  # noqa: F403 - the sections are this package's interface

__all__ = [*sections.__all__, "default_state_dir", "load_config", "parse_config"]
