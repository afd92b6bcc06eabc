"""Which servers the bot serves: the operator's allow-list (``discord.allowed_servers``).

In a server not on it the bot answers no message and logs nothing (``bot/discord/cogs/chat.py``),
refuses its commands except the privacy ones (``bot/discord/command_tree.py``), and says so once
to whoever added it: a direct message to the member the audit log names (Discord records who
added a bot), else a message in the server's system channel. The notice is remembered in the
database, so a restart does not repeat it. With ``discord.leave_unlisted_servers`` it then leaves.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import discord
from discord.ext import commands

from bot.discord.bot_protocol import BotServices
from bot.discord.sender import NO_PINGS
from bot.store.store import Store

log = logging.getLogger(__name__)


def notice_text(bot_name: str, guild_name: str, guild_id: int, leaving: bool) -> str:
    """What whoever added the bot to an unlisted server is told."""
    where = f"**{discord.utils.escape_markdown(guild_name)}** (id `{guild_id}`)"
    then = (
        "so I have left it."
        if leaving
        else "so I stay silent there: I answer no messages and keep no logs of it."
    )
    return (
        f"Hello! {bot_name} was added to {where}, but that server is not on the list of servers "
        f"this bot's operator lets it serve, {then} To use it there, ask the bot's operator to add "
        f"`{guild_id}` to `discord.allowed_servers`."
    )


class ServerAccess(commands.Cog):
    """Tells an unlisted server once why the bot is silent, and leaves it when configured."""

    def __init__(self, bot: BotServices, store: Store | None) -> None:
        self.bot = bot
        self.store = store

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.check(guild)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """Servers that added the bot while it was offline are only seen here."""
        for guild in list(self.bot.guilds):
            await self.check(guild)

    async def check(self, guild: discord.Guild) -> None:
        """Nothing for a served server; for another: the notice (once), then leave if configured."""
        if self.bot.servers.get(guild.id).served:
            return
        leaving = self.bot.settings.discord.leave_unlisted_servers
        log.warning(
            "server %s (%s) is not on discord.allowed_servers: %s",
            guild.id,
            guild.name,
            "leaving it" if leaving else "staying silent there",
        )
        try:
            first = self.store is not None and await self.store.claim_server_notice(guild.id)
        except Exception:
            log.exception("could not record the notice to server %s; not sending it now", guild.id)
            first = False
        if first:
            await self.send_notice(guild, leaving)
        if leaving:
            try:
                await guild.leave()
            except discord.HTTPException as exc:
                log.error("could not leave server %s: %s", guild.id, exc)

    async def send_notice(self, guild: discord.Guild, leaving: bool) -> bool:
        """The notice to the member who added the bot, else to the system channel; False when
        neither could be reached (logged)."""
        me = self.bot.user
        text = notice_text(me.name if me else "This bot", guild.name, guild.id, leaving)
        adder = await self._who_added_me(guild)
        if adder is not None:
            try:
                await adder.send(text, allowed_mentions=NO_PINGS)
                return True
            except discord.HTTPException as exc:  # DMs closed: try the server instead
                log.info("could not tell %s in a DM: %s", adder.id, exc)
        channel = guild.system_channel
        if channel is not None and guild.me is not None and channel.permissions_for(guild.me).send_messages:
            with contextlib.suppress(discord.HTTPException):
                await channel.send(text, allowed_mentions=NO_PINGS)
                return True
        log.warning("could not tell server %s why the bot is silent there", guild.id)
        return False

    async def _who_added_me(self, guild: discord.Guild) -> Any:
        """The member the audit log names as having added this bot (needs View Audit Log), or None."""
        me = self.bot.user
        if me is None:
            return None
        try:
            async for entry in guild.audit_logs(limit=10, action=discord.AuditLogAction.bot_add):
                if getattr(entry.target, "id", None) == me.id and entry.user is not None:
                    return entry.user
        except discord.HTTPException as exc:  # no View Audit Log permission
            log.info("cannot read the audit log of server %s: %s", guild.id, exc)
        return None
