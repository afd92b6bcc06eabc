"""The configuration reference (docs/configuration.md) names every setting, with its environment form."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from bot.config import ENV_ALIASES, Settings, section_names

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
DISCORD_SETUP = (ROOT / "docs" / "discord-bot.md").read_text(encoding="utf-8")


def test_every_setting_and_alias_is_documented() -> None:
    missing = []
    for section in section_names():
        for key in fields(getattr(Settings(), section)):
            for needle in (
                f"`{section}.{key.name}`",
                f"OSHABERI_{section.upper()}__{key.name.upper()}",
            ):
                if needle not in REFERENCE:
                    missing.append(needle)
    missing += [alias for alias in ENV_ALIASES if f"`{alias}`" not in REFERENCE]
    assert not missing, f"docs/configuration.md lacks: {missing}"


def test_readme_documents_the_discord_setup() -> None:
    for needle in (
        "Message Content",
        "Manage Webhooks",
        "applications.commands",
        "sync-commands",
        "docker/compose.yaml",
    ):
        assert needle in README, needle
        if needle != "docker/compose.yaml":
            assert needle in DISCORD_SETUP, needle
