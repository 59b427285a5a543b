"""Policy is decided in services only (appliance/policy.py's docstring): no API module imports it."""

from __future__ import annotations

import ast
from pathlib import Path

import appliance.api

API = Path(appliance.api.__file__).resolve().parent


def imports_policy(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "appliance"
            and any(a.name == "policy" for a in node.names)
        ):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "appliance.policy":
            return True
        if isinstance(node, ast.Import) and any(a.name == "appliance.policy" for a in node.names):
            return True
    return False


def test_no_api_module_decides_policy() -> None:
    modules = sorted(API.glob("*.py"))
    assert len(modules) > 5
    assert [p.name for p in modules if imports_policy(p)] == []
