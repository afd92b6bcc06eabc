"""oshaberi.example.toml and .env.example stay true to the settings dataclasses in bot/config.py."""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, fields
from pathlib import Path

from dotenv import dotenv_values

from bot.config import ENV_ALIASES, Settings, absolute_paths, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_TOML = ROOT / "oshaberi.example.toml"
EXAMPLE_ENV = ROOT / ".env.example"


def sections() -> dict[str, list[str]]:
    """Section name → its keys, from the dataclasses (what the loader accepts)."""
    return {
        section.name: [key.name for key in fields(section.default_factory())]
        for section in fields(Settings)
        if section.name not in ("source", "origins")
    }


def test_the_example_names_every_key_and_nothing_else() -> None:
    raw = tomllib.loads(EXAMPLE_TOML.read_text(encoding="utf-8"))
    expected = sections()
    assert sorted(raw) == sorted(expected), "sections differ from bot/config.py's Settings"
    for name, keys in expected.items():
        assert sorted(raw[name]) == sorted(keys), f"[{name}] differs from bot/config.py"


def test_the_example_values_are_the_defaults() -> None:
    loaded = load_settings(EXAMPLE_TOML, environ={}, base=ROOT)
    defaults = absolute_paths(Settings(), ROOT)  # relative paths are made absolute on loading
    for name in sections():
        assert asdict(getattr(loaded, name)) == asdict(getattr(defaults, name)), f"[{name}] defaults differ"


def test_one_line_per_key_each_with_a_comment() -> None:
    seen: dict[str, int] = {}
    for line in EXAMPLE_TOML.read_text(encoding="utf-8").splitlines():
        match = re.match(r"([a-z_]+) = ", line)
        if match:
            assert "  # " in line, f"no comment on: {line}"
            seen[match[1]] = seen.get(match[1], 0) + 1
    every_key = [key for keys in sections().values() for key in keys]
    # A key name used in two sections (none today) would be counted twice; compare per name.
    for key in every_key:
        assert seen.get(key) == every_key.count(key), f"{key} is not on exactly one line"


def test_env_example_names_only_variables_the_bot_reads() -> None:
    text = EXAMPLE_ENV.read_text(encoding="utf-8")
    # Commented examples count too: an operator uncomments them as they are.
    assignments = dict(
        re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE),
    )
    known = {"DISCORD_TOKEN", "DISCORD_API_BASE", "OSHABERI_CONFIG", *ENV_ALIASES}
    known |= {f"OSHABERI_{s.upper()}__{k.upper()}" for s, keys in sections().items() for k in keys}
    assert "DISCORD_TOKEN" in assignments
    assert set(assignments) <= known, set(assignments) - known
    settings_vars = {
        k: v for k, v in assignments.items() if k.startswith("OSHABERI_") and k != "OSHABERI_CONFIG"
    }
    load_settings(EXAMPLE_TOML, environ=settings_vars)  # every example value is accepted as written
    # The file as it stands sets no token, so copying it unchanged starts the console, not a login.
    assert not (dotenv_values(EXAMPLE_ENV).get("DISCORD_TOKEN") or "")
