"""The slash-command tree, with the one error handler every command shares.

A check or a transformer that refuses a command raises a :class:`~bot.discord.checks.Refusal`
carrying the user's line; this handler shows it privately, whether or not the command had
answered Discord yet. Anything else is a bug: logged, and the user gets a short apology instead
of "The application did not respond".
"""

from __future__ import annotations

import logging
from typing import Any

import discord
from discord import app_commands

from bot.discord.bot_protocol import services
from bot.discord.checks import Refusal
from bot.discord.sender import NO_PINGS

log = logging.getLogger(__name__)
FAILED = "Sorry, that command failed. The moderators can find the reason in the bot's log."
GONE = {
    discord.AppCommandOptionType.channel: "channel",
    discord.AppCommandOptionType.role: "role",
    discord.AppCommandOptionType.user: "member",
    discord.AppCommandOptionType.mentionable: "member or role",
}
# A member's privacy requests cover every server, so they work even where the bot does not serve.
EVERYWHERE = frozenset({"forget", "optout", "optin"})
NOT_SERVED = (
    "This server is not on the list of servers the bot's operator lets it serve, so the bot does "
    "not work here. /forget, /optout and /optin still work (they cover every server)."
)


class OshaberiTree(app_commands.CommandTree[Any]):
    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        """In a server not on ``discord.allowed_servers`` only the privacy commands run; any other
        gets one private line (an autocomplete, no choices)."""
        if interaction.guild_id is None or services(interaction).servers.get(interaction.guild_id).served:
            return True
        command = interaction.command
        if command is not None and command.qualified_name.split()[0] in EVERYWHERE:
            return True
        try:
            if interaction.type == discord.InteractionType.autocomplete:
                await interaction.response.autocomplete([])
            else:
                await interaction.response.send_message(NOT_SERVED, ephemeral=True, allowed_mentions=NO_PINGS)
        except discord.HTTPException as exc:
            log.warning("could not answer a command in unserved server %s: %s", interaction.guild_id, exc)
        return False

    async def on_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError, /
    ) -> None:
        """Tell the user why the command did nothing (``Refusal``), or that it failed (logged)."""
        if isinstance(error, Refusal):
            text = error.message
        elif isinstance(error, app_commands.TransformerError) and error.type in GONE:
            # discord.py looks a channel up in this server's cache: one of another server (a
            # forged or stale option) or one deleted meanwhile is not found. The user's mistake.
            text = f"That {GONE[error.type]} is not one of this server's (deleted, or another server's); pick another."
        else:
            name = interaction.command.qualified_name if interaction.command else "?"
            log.error("/%s failed", name, exc_info=error)
            text = FAILED
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_PINGS)
            else:
                await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_PINGS)
        except discord.HTTPException as exc:
            log.warning("could not tell the user why /%s did nothing: %s", interaction.command, exc)
