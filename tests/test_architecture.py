"""The package boundaries docs/architecture.md describes, checked on the source itself:
imports point one way (trainer → bot → personas), and only bot/discord/ imports discord.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def offenders(package: str, forbidden: tuple[str, ...], skip: str | None = None) -> list[str]:
    bad = []
    for path in sources(package):
        rel = path.relative_to(ROOT).as_posix()
        if skip and rel.startswith(skip):
            continue
        for module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                bad.append(f"{rel} imports {module}")
    return bad


@pytest.mark.parametrize(("package", "forbidden"), [("bot", ("trainer",)), ("personas", ("bot", "trainer"))])
def test_imports_point_one_way(package: str, forbidden: tuple[str, ...]) -> None:
    assert sources(package), f"no sources found under {package}/"
    assert offenders(package, forbidden) == []


def test_only_the_discord_layer_imports_discord() -> None:
    assert offenders("bot", ("discord",), skip="bot/discord/") == []
    assert offenders("trainer", ("discord",)) == []
    assert offenders("personas", ("discord",)) == []


def test_the_import_finder_sees_function_local_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "def f():\n    from trainer.schedule import X\n    import discord.ui\n", encoding="utf-8"
    )
    assert imported_modules(probe) == {"trainer.schedule", "discord.ui"}


def test_cogs_are_wired_not_looked_up() -> None:
    """Cogs get their collaborators in their constructors: no lookups by name, no silenced types."""
    found = []
    for path in sources("bot/discord"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "get_cog(" in line or "type: ignore" in line:
                found.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {line.strip()}")
    assert found == []
