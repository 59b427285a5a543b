"""The admin token a fresh site creates can be passed to the CLIs as a separate argument."""

from __future__ import annotations

import stat
from pathlib import Path

from appliance.auth import _ensure_admin_token


def test_generated_tokens_never_look_like_an_option(tmp_path: Path) -> None:
    """argparse takes "-x..." for an option (`--os-token $(cat admin-token)` failed one run in 32
    with base64url tokens); 200 fresh tokens are all hex, 256 bits, private, and kept once made."""
    for n in range(200):
        path = tmp_path / ("t%d" % n) / "admin-token"
        token = _ensure_admin_token(path)
        assert not token.startswith("-")
        assert len(token) == 64 and int(token, 16) >= 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert _ensure_admin_token(path) == token
