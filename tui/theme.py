"""Which theme the UI starts with, and remembering the one the operator picks (ctrl+p, "Theme"):
TEXTUAL_THEME if set (for one run), else the theme last chosen, else `ansi-dark`, drawn
in the terminal's own 16 colours (legible in a 16-colour terminal and over SSH; textual-dark's
true colours are approximated there). The choice is kept in a small JSON state file:
$XDG_STATE_HOME/edge-tui/state.json (default ~/.local/state/edge-tui/state.json)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_THEME = "ansi-dark"
THEME_ENV = "TEXTUAL_THEME"


def default_state_file(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".local" / "state")
    return Path(base) / "edge-tui" / "state.json"


def read_state(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the state file %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def starting_theme(
    state_file: Path | None, available: Collection[str], environ: Mapping[str, str] | None = None
) -> str:
    environ = os.environ if environ is None else environ
    for theme in (environ.get(THEME_ENV), read_state(state_file).get("theme") if state_file else None):
        if isinstance(theme, str) and theme in available:
            return theme
    return DEFAULT_THEME


def remember_theme(state_file: Path, theme: str) -> None:
    """Write the state file whole (a temporary file renamed over it: never half written); a
    failure is logged, the UI goes on."""
    state = read_state(state_file)
    state["theme"] = theme
    tmp = None
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=state_file.parent, prefix=".state-")
        with os.fdopen(fd, "w") as out:
            json.dump(state, out)
        os.replace(tmp, state_file)
    except OSError as exc:
        log.warning("cannot remember the theme in %s: %s", state_file, exc)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
