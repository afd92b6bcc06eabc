"""/help: how to talk to the bot in this channel, and the commands this member may use.

Always ephemeral: it describes the asker's situation (their roles, this channel, this server's
settings), not the channel's. The command list is read from the bot's own command tree, so a new command shows
up here without editing this file; a command with default permissions is a moderator's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.chatflow.cast import effective_cast
from bot.discord.bot_protocol import BotServices
from bot.discord.checks import access, channel_allowed, is_moderator, member_allowed, server_of
from bot.discord.sender import NO_PINGS
from bot.store.store import Store

if TYPE_CHECKING:
    from bot.runtime import Runtime


def command_lines(tree: app_commands.CommandTree[Any]) -> tuple[list[str], list[str]]:
    """(everyone's, moderators') commands as ``/name — description`` lines, sorted by name."""
    everyone: list[str] = []
    moderators: list[str] = []
    for cmd in sorted(tree.get_commands(type=discord.AppCommandType.chat_input), key=lambda c: c.name):
        description = cmd.description.removesuffix(" (moderators)")
        line = f"`/{cmd.name}` — {description}"
        perms = getattr(cmd, "default_permissions", None)
        (moderators if perms is not None and perms.value else everyone).append(line)
    return everyone, moderators


class Help(commands.Cog):
    def __init__(self, bot: BotServices, store: Store | None, runtime: Runtime | None) -> None:
        self.bot = bot
        self.store = store
        self.runtime = runtime

    async def how_to_talk_here(self, interaction: discord.Interaction[Any]) -> str:
        """One or two sentences on who answers in this channel and how to get an answer."""
        server = server_of(interaction)
        if server is None:
            return "Personas talk in server channels only: use `/help` in a channel of the server."
        if not channel_allowed(server, interaction.channel):
            guild = interaction.guild
            # Only this server's channels: an id from another server (the TOML's) shows nothing.
            here = [
                c for c in server.allowed_channels if guild is not None and guild.get_channel(c) is not None
            ]
            if not here:
                return "The bot does not talk in any channel of this server yet; ask an admin (`/settings`)."
            return f"The bot does not talk in this channel. It talks in {' '.join(f'<#{c}>' for c in here[:10])}."
        if not member_allowed(server, interaction.user):
            return "You do not have a role that may talk to the bot; ask a moderator."
        cards = self.runtime.cards.cards if self.runtime is not None else {}
        cast: tuple[str, ...] = ()
        if self.store is not None and interaction.channel_id is not None:
            parent = getattr(interaction.channel, "parent_id", None)  # a thread takes its channel's
            cast = (await effective_cast(self.store, interaction.channel_id, parent)).persona_ids
        active = cast[0] if cast else None
        me = f"<@{self.bot.user.id}>" if self.bot.user is not None else "the bot"
        if len(cast) > 1 and active in cards:
            names = ", ".join(cards[p].display_name for p in cast[1:] if p in cards)
            return (
                f"**{cards[active].display_name}** leads the cast here and answers every message; "
                f"start a message with a name ({names}) or reply to a persona's message to talk to that one. "
                "`/cast list` shows the cast."
            )
        if active is not None and active in cards:
            return (
                f"**{cards[active].display_name}** (`{active}`) answers every message in this channel: "
                "just write. `/reset` starts the conversation afresh."
            )
        if active is not None:
            return f"The persona set here (`{active}`) is not loaded; choose another with `/persona`."
        default = server.default_persona
        name = cards[default].display_name if default in cards else default
        return (
            f"No persona answers every message here: mention {me} or reply to one of its messages, "
            f"and **{name}** answers. `/persona` makes a persona answer every message in this channel."
        )

    @app_commands.command(name="help", description="How to talk to the bot here, and its commands")
    async def help(self, interaction: discord.Interaction[Any]) -> None:
        everyone, moderators = command_lines(self.bot.tree)
        parts = ["**Talking here**", await self.how_to_talk_here(interaction), "", "**Commands**", *everyone]
        if moderators and is_moderator(access(interaction), interaction.user, interaction.permissions):
            parts += ["", "**For moderators**", *moderators]
            server, guild = server_of(interaction), interaction.guild
            review = server.review_channel if server is not None else 0
            if review and guild is not None and guild.get_channel(review) is not None:
                parts.append(f"Replies are reviewed in <#{review}> with the buttons on each card.")
            elif server is not None:
                parts.append("This server has no review channel: `/settings review-channel` sets one.")
            if server is not None:
                training = "may" if server.training else "may not"
                parts.append(
                    f"This server's approved replies {training} train the personas (`/settings training`)."
                )
        # Mentions are written for display only: NO_PINGS makes sure nobody is notified.
        await interaction.response.send_message(
            "\n".join(parts)[:2000], ephemeral=True, allowed_mentions=NO_PINGS
        )
