"""/settings: this server's own settings for the bot, changed by members with Manage Server.

The TOML (``oshaberi.toml``) holds the defaults; a server changes any of them for itself here,
and ``/settings reset`` goes back to the default. Every change is checked server-side
(``manages_server``: Discord's resolved permissions, not the hidden command), validated against
the server itself (a channel or role of another server, a deleted one, a role nobody can hold),
recorded with who made it, and answered privately. Two admins changing one setting at once: one
change wins, the other is told what stands (the store's compare-and-set).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord.bot_protocol import BotServices
from bot.discord.checks import Refusal, manages_server, model_loaded
from bot.discord.persona_options import LoadedPersona
from bot.discord.sender import NO_PINGS
from bot.discord.settings_text import COMMANDS, change_line, outcome_text, settings_lines
from bot.store.server_settings import SettingOutcome, SettingValue
from personas.card import PersonaCard

if TYPE_CHECKING:
    from bot.runtime import Runtime

log = logging.getLogger(__name__)
NOT_SAVED = "That could not be saved (database busy or unavailable). Nothing changed; please try again."
# The bot must see, write and embed in its review channel, and read it back after a restart.
REVIEW_PERMISSIONS = ("view_channel", "send_messages", "embed_links", "read_message_history")
SettingName = Literal[
    "review-channel", "moderator-role", "default-persona", "allowed-roles", "allowed-channels", "training"
]
TalkChannel = discord.TextChannel | discord.ForumChannel


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ServerSettingsCog(
    commands.GroupCog,
    group_name="settings",
    group_description="This server's settings for the bot (Manage Server)",
):
    """The ``/settings`` group. ``runtime`` (None until the model loads) knows the personas."""

    def __init__(self, bot: BotServices, runtime: Runtime | None) -> None:
        self.bot = bot
        self.runtime = runtime

    # -- reading -----------------------------------------------------------------------------------

    @app_commands.command(name="show", description="This server's settings, and the last changes")
    @manages_server()
    async def show(self, interaction: discord.Interaction[Any]) -> None:
        guild = self._guild(interaction)
        server = self.bot.servers.get(guild.id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        lines = [f"**Settings of {discord.utils.escape_markdown(guild.name)}**"]
        lines += settings_lines(server, guild, self._persona_ids())
        try:
            changes = await self.bot.servers.changes(guild.id, limit=5)
        except Exception:
            log.exception("could not read the settings changes of server %s", guild.id)
            changes = []
            lines.append("(The database is busy, so the recent changes are not shown.)")
        if changes:
            lines += ["", "**Recent changes**", *(change_line(c) for c in changes)]
        lines += [
            "",
            "Change one with `/settings <name>`; `/settings reset` goes back to the operator's default.",
        ]
        await interaction.followup.send("\n".join(lines)[:2000], ephemeral=True, allowed_mentions=NO_PINGS)

    # -- changing ----------------------------------------------------------------------------------

    @app_commands.command(name="review-channel", description="Where this server's review cards are posted")
    @app_commands.describe(channel="A text channel of this server the bot can post in")
    @manages_server()
    async def review_channel(
        self, interaction: discord.Interaction[Any], channel: discord.TextChannel
    ) -> None:
        guild = self._guild(interaction)
        real = self._own_channel(guild, channel)
        me = guild.me
        if me is not None and hasattr(real, "permissions_for"):
            perms = real.permissions_for(me)
            missing = [p for p in REVIEW_PERMISSIONS if not getattr(perms, p)]
            if missing:
                names = ", ".join(p.replace("_", " ").title() for p in missing)
                raise Refusal(
                    f"The bot cannot use {real.mention} (it lacks: {names}). Give it those there first."
                )
        await self._change(interaction, "review_channel", real.id)

    @app_commands.command(name="moderator-role", description="The role whose members decide on review cards")
    @app_commands.describe(role="Members with it moderate (as do members with Manage Messages)")
    @manages_server()
    async def moderator_role(self, interaction: discord.Interaction[Any], role: discord.Role) -> None:
        guild = self._guild(interaction)
        real = self._own_role(guild, role)
        if real.is_default():
            raise Refusal("@everyone cannot be the moderator role: every member would moderate.")
        await self._change(interaction, "moderator_role", real.id)

    @app_commands.command(name="default-persona", description="Who answers mentions where no /persona is set")
    @app_commands.describe(persona="A persona id from /personas")
    @manages_server()
    @model_loaded()
    async def default_persona(
        self,
        interaction: discord.Interaction[Any],
        persona: app_commands.Transform[PersonaCard, LoadedPersona],
    ) -> None:
        await self._change(interaction, "default_persona", persona.id)

    @app_commands.command(name="allowed-roles", description="Which roles may talk to the bot here")
    @app_commands.describe(
        action="add or remove a role, or let everyone talk", role="The role to add or remove"
    )
    @manages_server()
    async def allowed_roles(
        self,
        interaction: discord.Interaction[Any],
        action: Literal["add", "remove", "everyone"],
        role: discord.Role | None = None,
    ) -> None:
        guild = self._guild(interaction)
        if action == "everyone":
            await self._change(interaction, "allowed_roles", ())
            return
        if role is None:
            raise Refusal(f"Name the role to {action}.")
        if role.is_default():
            raise Refusal("@everyone is every member: use `action: everyone` to let everyone talk.")
        real = self._own_role(guild, role) if action == "add" else role
        await self._edit_list(interaction, "allowed_roles", action, real.id)

    @app_commands.command(name="allowed-channels", description="Which channels the bot talks in here")
    @app_commands.describe(
        action="add or remove a channel, or let the bot talk everywhere",
        channel="The channel to add or remove",
    )
    @manages_server()
    async def allowed_channels(
        self,
        interaction: discord.Interaction[Any],
        action: Literal["add", "remove", "all"],
        channel: TalkChannel | None = None,
    ) -> None:
        guild = self._guild(interaction)
        if action == "all":
            await self._change(interaction, "allowed_channels", ())
            return
        if channel is None:
            raise Refusal(f"Name the channel to {action}.")
        real_id = self._own_channel(guild, channel).id if action == "add" else channel.id
        await self._edit_list(interaction, "allowed_channels", action, real_id)

    @app_commands.command(
        name="training", description="May this server's approved replies train the personas?"
    )
    @app_commands.describe(state="on: approved replies may be used for training; off: never")
    @manages_server()
    async def training(self, interaction: discord.Interaction[Any], state: Literal["on", "off"]) -> None:
        await self._change(interaction, "training", state == "on")

    @app_commands.command(name="reset", description="Go back to the operator's default for one setting")
    @app_commands.describe(setting="The setting to reset")
    @manages_server()
    async def reset(self, interaction: discord.Interaction[Any], setting: SettingName) -> None:
        key = next(k for k, name in COMMANDS.items() if name == setting)
        await self._change(interaction, key, None)

    # -- plumbing ----------------------------------------------------------------------------------

    def _guild(self, interaction: discord.Interaction[Any]) -> discord.Guild:
        guild = interaction.guild
        if guild is None:  # guild_only and manages_server ran first; the cache may still lack it
            raise Refusal("This server is not known to the bot yet; try again in a moment.")
        return guild

    def _own_channel(self, guild: discord.Guild, channel: Any) -> Any:
        """The cached channel behind a channel option, if it is this server's; else a Refusal."""
        if getattr(channel, "guild_id", guild.id) != guild.id:
            raise Refusal("That channel is in another server; pick one of this server's channels.")
        real = guild.get_channel(channel.id)
        if real is None:
            raise Refusal("That channel no longer exists (deleted?); pick another one.")
        return real

    def _own_role(self, guild: discord.Guild, role: discord.Role) -> discord.Role:
        """The cached role behind a role option, if it is this server's; else a Refusal."""
        real = guild.get_role(role.id)
        if real is None:
            raise Refusal("That role is not one of this server's (deleted?); pick another one.")
        if real.is_bot_managed():
            raise Refusal(f"{real.mention} belongs to a bot; no member can be given it.")
        return real

    def _persona_ids(self) -> set[str] | None:
        return set(self.runtime.cards.cards) if self.runtime is not None else None

    async def _change(self, interaction: discord.Interaction[Any], key: str, value: SettingValue) -> None:
        guild = self._guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            outcome = await self.bot.servers.change(guild.id, key, value, interaction.user.id)
        except Exception:
            log.exception("/settings: %s of server %s not saved", key, guild.id)
            await interaction.followup.send(NOT_SAVED, ephemeral=True)
            return
        await self._answer(interaction, key, outcome, value)

    async def _edit_list(
        self, interaction: discord.Interaction[Any], key: str, action: str, item: int
    ) -> None:
        guild = self._guild(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        add, remove = ((item,), ()) if action == "add" else ((), (item,))
        try:
            outcome = await self.bot.servers.edit_list(
                guild.id, key, interaction.user.id, add=add, remove=remove
            )
        except ValueError as exc:
            await interaction.followup.send(f"{exc}. Nothing changed.", ephemeral=True)
            return
        except Exception:
            log.exception("/settings: %s of server %s not saved", key, guild.id)
            await interaction.followup.send(NOT_SAVED, ephemeral=True)
            return
        await self._answer(interaction, key, outcome, outcome.row.value(key))

    async def _answer(
        self, interaction: discord.Interaction[Any], key: str, outcome: SettingOutcome, wanted: SettingValue
    ) -> None:
        assert interaction.guild_id is not None
        now = self.bot.servers.get(interaction.guild_id).value(key)
        text = outcome_text(key, outcome, now, wanted)
        if outcome.changed:
            log.info(
                "server %s: %s changed by %s (%s → %s)",
                interaction.guild_id,
                key,
                interaction.user.id,
                outcome.previous,
                outcome.row.value(key),
            )
        await interaction.followup.send(text[:2000], ephemeral=True, allowed_mentions=NO_PINGS)
