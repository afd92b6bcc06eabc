"""The package boundaries docs/architecture.md describes, checked on the source itself:
imports point one way (trainer → bot → personas; inside bot/, from one wing only to the wings
below it), no two files import each other, and only bot/discord/ imports discord.py."""

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


# Inside bot/: which wing may import which. A wing is a folder of bot/ (bot/serving/ splits in
# three: the interface, local/ and vllm/), or one of the top-level files. Only the runtime picks a
# backend, so nothing else imports serving/local or serving/vllm.
BELOW_EVERYTHING = {"config", "ops"}
WINGS: dict[str, set[str]] = {
    "config": set(),
    "ops": {"config"},
    "text": BELOW_EVERYTHING,
    "store": BELOW_EVERYTHING,
    "model": BELOW_EVERYTHING,
    "serving": {"model"} | BELOW_EVERYTHING,
    "serving/local": {"serving", "model"} | BELOW_EVERYTHING,
    "serving/vllm": {"serving", "model"} | BELOW_EVERYTHING,
    "learning": {"store", "model"} | BELOW_EVERYTHING,
    "chatflow": {"serving", "store", "text", "model"} | BELOW_EVERYTHING,
}
WINGS["runtime"] = {"serving/local", "serving/vllm", *WINGS["chatflow"], "chatflow", "learning"}
WINGS["console"] = {"runtime", *WINGS["chatflow"], "chatflow"}
WINGS["discord"] = {"runtime", *WINGS["runtime"]} - {"serving/local", "serving/vllm"}
WINGS["__main__"] = {"console", "discord", *WINGS["runtime"], "runtime"}


def wing(module: str) -> str:
    """``bot.serving.local.engine`` → ``serving/local``; ``bot.store.rows`` → ``store``."""
    parts = module.split(".")[1:]
    if parts[:1] == ["serving"] and parts[1:2] in (["local"], ["vllm"]):
        return f"serving/{parts[1]}"
    return parts[0] if parts else "bot"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_wing_of_bot_is_known() -> None:
    found = {wing(module_name(path)) for path in sources("bot")} - {"bot"}
    assert found == set(WINGS)


def test_bot_has_only_its_entry_files_at_the_top() -> None:
    top = {path.name for path in (ROOT / "bot").glob("*.py")}
    assert top == {"__init__.py", "__main__.py", "config.py", "runtime.py", "console.py"}


def test_wings_import_only_the_wings_below_them() -> None:
    wrong = []
    for path in sources("bot"):
        here = wing(module_name(path))
        for module in imported_modules(path):
            if module.split(".")[0] != "bot" or module == "bot":
                continue
            there = wing(module)
            if there != here and there not in WINGS.get(here, set()):
                wrong.append(f"{path.relative_to(ROOT).as_posix()} ({here}) imports {module} ({there})")
    assert wrong == []


def import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module → the project modules it imports (a ``from package import name`` counts as the
    module ``package.name`` when that is a module of its own)."""
    files = {module_name(path): path for package in packages for path in sources(package)}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[module] = {target for target in targets if target in files and target != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, 1972)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_files_import_each_other() -> None:
    """Type-only imports count: a circle under ``if TYPE_CHECKING`` is still a circle to read."""
    graph = import_graph(("bot", "personas", "trainer", "benchmarks"))
    assert len(graph) > 100
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]
