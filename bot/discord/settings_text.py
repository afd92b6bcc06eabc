"""How a server's settings read in Discord: ``/settings show``, ``/status`` and the answers to a change.

Every value is shown as a mention (``<#channel>``, ``<@&role>``) for display only: messages are
sent with NO_PINGS. A value that points at something the server no longer has (a deleted
channel or role, the operator's default channel that lives in another server) says so, because
it silently does nothing.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

from bot.store.server_settings import ServerSettings, SettingChange, SettingOutcome, SettingValue

LABELS = {
    "review_channel": "Review channel",
    "moderator_role": "Moderator role",
    "default_persona": "Default persona",
    "allowed_roles": "Roles that may talk",
    "allowed_channels": "Channels the bot talks in",
    "training": "Training",
}
# /settings subcommand (and reset choice) name for each setting key.
COMMANDS = {key: key.replace("_", "-") for key in LABELS}


def shown_value(key: str, value: SettingValue) -> str:
    """A setting's value as a reader sees it (mentions only display: sent without pings)."""
    if value is None:
        return "the operator's default"
    if key == "review_channel":
        return f"<#{value}>" if value else "none (replies are only logged)"
    if key == "moderator_role":
        return f"<@&{value}>" if value else "none (Manage Messages only)"
    if key == "default_persona":
        return f"`{value}`"
    if key == "allowed_roles":
        return " ".join(f"<@&{i}>" for i in value) if isinstance(value, tuple) and value else "everyone"
    if key == "allowed_channels":
        return " ".join(f"<#{i}>" for i in value) if isinstance(value, tuple) and value else "every channel"
    if key == "training":
        return "on" if value else "off"
    return str(value)


def shown_change_value(key: str, text: str | None) -> str:
    """A value as the change log holds it (:func:`bot.store.server_settings.encode_value`)."""
    if text is None:
        return "the operator's default"
    if key in ("allowed_roles", "allowed_channels"):
        return shown_value(key, tuple(json.loads(text)))
    if key == "training":
        return text
    if key in ("review_channel", "moderator_role"):
        return shown_value(key, int(text))
    return shown_value(key, text)


def when(iso: str) -> str:
    """A stored UTC time as Discord's relative timestamp (``<t:…:R>``), or the text itself."""
    with contextlib.suppress(ValueError):
        return f"<t:{int(datetime.fromisoformat(iso).timestamp())}:R>"
    return iso


def change_line(change: SettingChange) -> str:
    who = f"<@{change.changed_by}>" if change.changed_by else "the upgrade"
    return (
        f"• {LABELS.get(change.setting, change.setting)} → {shown_change_value(change.setting, change.new_value)} "
        f"by {who} {when(change.changed_at)}"
    )


def problems(server: ServerSettings, guild: Any, persona_ids: set[str] | None) -> dict[str, str]:
    """Settings that point at nothing in ``guild`` (a :class:`discord.Guild`), by key: why each
    does nothing now. ``persona_ids``: the loaded personas (None: not known yet)."""
    found: dict[str, str] = {}
    if server.review_channel and guild.get_channel(server.review_channel) is None:
        found["review_channel"] = "not a channel of this server (deleted, or another server's): cards wait"
    if server.moderator_role and guild.get_role(server.moderator_role) is None:
        found["moderator_role"] = "not a role of this server (deleted?)"
    gone_roles = [r for r in server.allowed_roles if guild.get_role(r) is None]
    if gone_roles:
        found["allowed_roles"] = f"{len(gone_roles)} of these are not roles of this server (deleted?)"
    gone_channels = [c for c in server.allowed_channels if guild.get_channel(c) is None]
    if gone_channels:
        found["allowed_channels"] = (
            f"{len(gone_channels)} of these are not channels of this server (deleted?)"
        )
    if persona_ids is not None and server.default_persona not in persona_ids:
        found["default_persona"] = "not loaded: mentions get a notice instead of a reply"
    return found


def settings_lines(server: ServerSettings, guild: Any, persona_ids: set[str] | None) -> list[str]:
    """One line per setting: its value, whose it is (this server's or the operator's default), and
    what is wrong with it, if anything."""
    trouble = problems(server, guild, persona_ids)
    lines = []
    if not server.served:
        lines.append("⚠️ This server is not on the operator's allow-list: the bot does not work here.")
    for key, label in LABELS.items():
        origin = "set here" if key in server.own else "the operator's default"
        if key == "training" and key not in server.own:
            origin += " for listed servers" if server.training else " for servers the operator does not list"
        line = f"**{label}**: {shown_value(key, server.value(key))} ({origin})"
        if key in trouble:
            line += f" ⚠️ {trouble[key]}"
        lines.append(line)
    return lines


def outcome_text(
    key: str,
    outcome: SettingOutcome,
    now: SettingValue,
    wanted: SettingValue,
) -> str:
    """The private answer to a change: done, already so, or someone else changed it first.

    ``now`` is the value in force after it (the default filled in), ``wanted`` what was asked for.
    """
    changed, conflict, previous, last = (
        outcome.changed,
        outcome.conflict,
        outcome.previous,
        outcome.last_change,
    )
    label = LABELS[key]
    by = f" (set by <@{last.changed_by}> {when(last.changed_at)})" if last and last.changed_by else ""
    if conflict:
        return (
            f"⚠️ Someone else changed **{label}** a moment ago{by}: it is now {shown_value(key, now)}. "
            f"Nothing was changed; run the command again if you still want {shown_value(key, wanted)}."
        )
    if not changed:
        return f"**{label}** is already {shown_value(key, now)}{by}. Nothing changed."
    return f"✅ **{label}** is now {shown_value(key, now)} (was {shown_value(key, previous)})."
