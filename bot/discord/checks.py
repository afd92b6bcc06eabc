"""Who may do what, decided from what Discord itself reports (never from what a client shows)."""

from __future__ import annotations

from typing import Any

import discord

from bot.config import DiscordSettings


def role_ids(user: Any) -> set[int]:
    return {role.id for role in getattr(user, "roles", ()) or ()}


def is_moderator(settings: DiscordSettings, user: Any, permissions: discord.Permissions | None) -> bool:
    """A configured owner, a holder of the moderator role, or anyone with Manage Messages here.

    ``permissions`` should be :attr:`discord.Interaction.permissions`: Discord resolves it for the
    member in that channel, overwrites included, so a button click cannot claim rights it lacks.
    """
    if user is None:
        return False
    if user.id in settings.owner_ids:
        return True
    if permissions is not None and (permissions.manage_messages or permissions.administrator):
        return True
    return bool(settings.moderator_role and settings.moderator_role in role_ids(user))


def channel_allowed(settings: DiscordSettings, channel: Any) -> bool:
    """Allowed channels; a thread is allowed when its parent channel is."""
    if not settings.allowed_channels:
        return True
    if channel is None:
        return False
    ids = {getattr(channel, "id", None), getattr(channel, "parent_id", None)}
    return bool(ids & set(settings.allowed_channels))


def member_allowed(settings: DiscordSettings, user: Any) -> bool:
    if not settings.allowed_roles:
        return True
    return bool(role_ids(user) & set(settings.allowed_roles)) or user.id in settings.owner_ids
