"""Who may do what, decided from what Discord itself reports (never from what a client shows)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import discord
from discord import app_commands

from bot.discord.bot_protocol import BotServices, services
from bot.store.server_settings import ServerSettings

T = TypeVar("T")


class AccessSettings(Protocol):
    """Who may do what: a server's resolved settings (:class:`ServerSettings`), or the operator's
    defaults (:class:`~bot.config.DiscordSettings`) where there is no server (a DM)."""

    @property
    def owner_ids(self) -> tuple[int, ...]: ...
    @property
    def moderator_role(self) -> int: ...
    @property
    def allowed_roles(self) -> tuple[int, ...]: ...
    @property
    def allowed_channels(self) -> tuple[int, ...]: ...


def access(interaction: discord.Interaction[Any]) -> AccessSettings:
    """The settings that decide for this interaction: its server's, or in a DM the defaults."""
    bot = services(interaction)
    if interaction.guild_id is None:
        return bot.settings.discord
    return bot.servers.get(interaction.guild_id)


def server_of(interaction: discord.Interaction[Any]) -> ServerSettings | None:
    """The interaction's server's settings, or None in a DM."""
    if interaction.guild_id is None:
        return None
    return services(interaction).servers.get(interaction.guild_id)


def role_ids(user: Any) -> set[int]:
    return {role.id for role in getattr(user, "roles", ()) or ()}


def is_moderator(settings: AccessSettings, user: Any, permissions: discord.Permissions | None) -> bool:
    """A configured owner, a holder of the server's moderator role, or anyone with Manage Messages here.

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


def channel_allowed(settings: AccessSettings, channel: Any) -> bool:
    """Allowed channels; a thread is allowed when its parent channel is."""
    if not settings.allowed_channels:
        return True
    if channel is None:
        return False
    ids = {getattr(channel, "id", None), getattr(channel, "parent_id", None)}
    return bool(ids & set(settings.allowed_channels))


def member_allowed(settings: AccessSettings, user: Any) -> bool:
    if not settings.allowed_roles:
        return True
    return bool(role_ids(user) & set(settings.allowed_roles)) or user.id in settings.owner_ids


# -- app_commands checks -----------------------------------------------------------------------
# Each refusal carries the one line the user sees; the command tree's single error handler
# (``OshaberiTree.on_error`` in bot/discord/app.py) sends it privately. A check runs before the
# command's arguments are converted, so "may you use this here" is answered before "is that a
# persona".

NOT_MODERATOR = "Only moderators can use this command."


class Refusal(app_commands.CheckFailure):
    """A command refused with a message meant for the user (shown as is, privately)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def moderator_only() -> Callable[[T], T]:
    """Only a moderator (see :func:`is_moderator`) may run the command. Default permissions hide
    moderator commands from others, but a server can change those: this checks again."""

    def predicate(interaction: discord.Interaction[Any]) -> bool:
        if not is_moderator(access(interaction), interaction.user, interaction.permissions):
            raise Refusal(NOT_MODERATOR)
        return True

    return app_commands.check(predicate)


NOT_OPERATORS_SERVER = (
    "Adapter versions serve every server the bot is in, so only moderators of the operator's own "
    "server move them (a server in discord.allowed_servers, or the one holding "
    "discord.review_channel); the operator can also run python -m trainer rollback on the host."
)


def home_guild_id(bot: BotServices) -> int | None:
    """The server of the operator's review channel (``discord.review_channel``); None when it is
    not set or not seen."""
    channel_id = bot.settings.discord.review_channel
    channel = bot.get_channel(channel_id) if channel_id else None
    guild = getattr(channel, "guild", None)
    return guild.id if guild is not None else None


def operator_servers(bot: BotServices) -> set[int]:
    """The servers whose moderators speak for the operator about what every server is served:
    ``discord.allowed_servers`` when it lists any, else the server of ``discord.review_channel``
    (none when neither is set: then only the configured owners)."""
    listed = set(bot.settings.discord.allowed_servers)
    if listed:
        return listed
    home = home_guild_id(bot)
    return {home} if home is not None else set()


def operators_server() -> Callable[[T], T]:
    """The command changes what every server is served (the personas are the operator's, shared
    by all servers): a configured owner anywhere, else only in the operator's own server(s). Put
    it with :func:`moderator_only`, which decides who in that server may."""

    def predicate(interaction: discord.Interaction[Any]) -> bool:
        bot = services(interaction)
        if interaction.user.id in bot.settings.discord.owner_ids:
            return True
        if interaction.guild_id is None or interaction.guild_id not in operator_servers(bot):
            raise Refusal(NOT_OPERATORS_SERVER)
        return True

    return app_commands.check(predicate)


NOT_MANAGER = "Only members with the Manage Server permission can change this server's settings."


def manages_server() -> Callable[[T], T]:
    """Only a member with Manage Server (or Administrator) in this server, as Discord resolved it
    for the interaction: default permissions hide the command from others, this checks again."""

    def predicate(interaction: discord.Interaction[Any]) -> bool:
        if interaction.guild_id is None:
            raise Refusal("Server settings are changed in the server, not in a direct message.")
        perms = interaction.permissions
        if not (perms.manage_guild or perms.administrator):
            raise Refusal(NOT_MANAGER)
        return True

    return app_commands.check(predicate)


def model_loaded() -> Callable[[T], T]:
    """The command needs the runtime (cards, model): refused while it is not there."""

    def predicate(interaction: discord.Interaction[Any]) -> bool:
        if services(interaction).runtime is None:
            raise Refusal("The model is not loaded yet.")
        return True

    return app_commands.check(predicate)


def talks_here() -> Callable[[T], T]:
    """The command changes this channel's conversation: a server channel the bot talks in, a
    member with an allowed role, and a database to write to."""

    def predicate(interaction: discord.Interaction[Any]) -> bool:
        bot = services(interaction)
        if interaction.guild_id is None:
            raise Refusal("Personas talk in server channels only.")
        settings = bot.servers.get(interaction.guild_id)
        if not channel_allowed(settings, interaction.channel):
            raise Refusal("The bot does not talk in this channel.")
        if not member_allowed(settings, interaction.user):
            raise Refusal("You do not have a role that may use the bot.")
        if bot.store is None:
            raise Refusal("The bot is still starting up.")
        return True

    return app_commands.check(predicate)
