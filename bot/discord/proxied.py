"""Proxy bots (PluralKit, Tupperbox) on the chat cog's side: a member's message is answered
once, by the persona, and logged once under the member who wrote it, though a proxy reposts it
through its webhook and deletes the original a second later.

The original is answered as it arrives (no added wait for the many members who use no proxy).
When the proxy's repost arrives it is paired with the original (bot/chatflow/proxy_pairing.py)
and is not answered itself; when the original is then deleted, that deletion hands the answer
over to the repost instead of withdrawing it: the reply goes on, the log row names the repost
(the message that stays, so deleting it later still withdraws the row) and the member.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot.chatflow.proxy_pairing import Pair, ProxyPairing
from bot.chatflow.replyflow import ReplyFlow
from bot.discord.bot_protocol import BotServices
from bot.discord.message_parts import said
from bot.store.store import Store

log = logging.getLogger(__name__)
# A deletion seen before its repost (not PluralKit's order, but the network may reorder) waits
# this long for one, only where a proxy bot is known to be around.
REPOST_GRACE_S = 3.0


class ProxiedMessages:
    """Which messages are proxies' reposts, whose words they are, and which originals they replaced."""

    grace_s = REPOST_GRACE_S

    def __init__(self, bot: BotServices, store: Store | None, flow: ReplyFlow | None = None) -> None:
        self.bot = bot
        self.store = store
        self.flow = flow
        self.pairing = ProxyPairing()
        # Originals deleted by their proxy: original id -> the repost that replaced it.
        self.moved: dict[int, Pair] = {}
        self._guilds_seen: set[int] = set()  # guilds where a proxy repost was seen

    @property
    def proxy_bots(self) -> frozenset[int]:
        return frozenset(self.bot.settings.discord.proxy_bots)

    def is_repost(self, message: discord.Message) -> bool:
        """A message a configured proxy bot posted through its webhook."""
        return message.webhook_id is not None and message.application_id in self.proxy_bots

    def remember(self, message: discord.Message) -> None:
        """A member's message that a proxy may repost (call before the handler's first await)."""
        if self.proxy_bots:
            self.pairing.remember(
                message.id, message.channel.id, message.author.id, said(message).text or "", message
            )

    def pair(self, repost: discord.Message) -> Pair | None:
        """Pair a repost with its original, synchronously (before the original's deletion is
        handled). None when the original was not seen: its author is unknown, so it is left alone."""
        if repost.guild is not None:
            self._guilds_seen.add(repost.guild.id)
        found = self.pairing.pair(repost.id, repost.channel.id, said(repost).text or "", repost)
        kept = self.pairing.reposted()
        self.moved = {k: v for k, v in self.moved.items() if k in kept}  # bounded like the pairs
        if found is None:
            log.info(
                "a proxied message (%s) whose original this bot did not see is not answered: its author is unknown",
                repost.id,
            )
        return found

    async def record(self, found: Pair) -> None:
        """Keep whose words the repost is, for history, reply chains and /forget later."""
        if self.store is None:
            return
        try:
            await self.store.record_proxied(
                found.repost_id, found.original.message_id, found.author_id, found.original.channel_id
            )
        except Exception as exc:  # history then leaves the line out: nothing else is lost
            log.warning("could not record proxied message %s: %s", found.repost_id, exc)

    def reposted(self) -> set[int]:
        """Originals a proxy already reposted (their words are read from the repost)."""
        return self.pairing.reposted()

    async def replacement(self, message_id: int, guild_id: int | None) -> Pair | None:
        """The repost that replaced ``message_id``, which was just deleted; waits a moment for one
        when the deletion came first and a proxy bot is around. None: a real withdrawal."""
        found = self.pairing.repost_of(message_id)
        if found is None and self.pairing.is_recent(message_id) and self._expected(guild_id):
            found = await self.pairing.wait_for_repost(message_id, self.grace_s)
        if found is not None:
            self.moved[message_id] = found
        return found

    async def move_log(self, old_id: int, new_id: int) -> None:
        """The log row (written or spooled) of ``old_id`` now names ``new_id``, its proxy's repost."""
        if self.flow is not None:
            self.flow.spool.move(old_id, new_id)
        if self.store is None:
            return
        try:
            await self.store.move_message(old_id, new_id)
        except Exception as exc:  # the row keeps the original's id: only a later deletion misses it
            log.warning("could not move the log of message %s to its repost %s: %s", old_id, new_id, exc)

    def logged_id(self, message_id: int) -> int:
        """The message a log row of ``message_id`` should name: its repost once it replaced it."""
        found = self.moved.get(message_id)
        return found.repost_id if found is not None else message_id

    def reply_target(self, message: discord.Message) -> Any:
        """What a reply should reference: the repost once the original is gone."""
        found = self.moved.get(message.id)
        return found.repost if found is not None and found.repost is not None else message

    def _expected(self, guild_id: int | None) -> bool:
        if guild_id is None:
            return False
        if guild_id in self._guilds_seen:
            return True
        guild = self.bot.get_guild(guild_id)
        return guild is not None and any(guild.get_member(app) is not None for app in self.proxy_bots)
