"""The architecture holds in the imports: only the data layer talks to Redis, and the
agent never imports the control plane or the gateway."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_only_the_data_layer_talks_to_redis() -> None:
    offenders = []
    for path in sources("plugin", "api", "agent", "hodei"):
        if path.is_relative_to(ROOT / "plugin" / "data") or path.is_symlink():
            continue
        if (ROOT / "hodei") in path.parents and path.parent != ROOT / "hodei":
            continue  # hodei/api... are symlinks to the folders checked above
        talks = {m for m in imports_of(path) if m == "redis" or m.startswith("redis.")}
        if talks:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(talks)}")
    assert offenders == []


def test_the_agent_imports_neither_the_control_plane_nor_the_gateway() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sources("agent")
        for module in imports_of(path)
        if module.startswith(("hodei.plugin", "hodei.api"))
    ]
    assert offenders == []


def test_every_lua_script_documents_its_keys_and_arguments() -> None:
    for path in sorted((ROOT / "plugin" / "data" / "lua").glob("*.lua")):
        head = path.read_text().split("\n\n")[0]
        if path.name == "lib.lua":
            assert "ARGV[1]" in head, path.name
            continue
        assert "ARGV" in head and ("Returns" in path.read_text()), path.name
