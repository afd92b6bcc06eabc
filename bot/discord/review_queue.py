"""The review queue: every logged reply gets one card in the review channel of the server where
the conversation happened, and every trainer candidate one in the operator's review channel
(``discord.review_channel``). Posting, claiming, reconciling after a restart, deleting cards, and
the poller that retries what could not be posted at once.

Why it is built this way:

* A card is only ever posted in a channel of the row's own server: the channel a server set (or
  the operator's default) is checked against the row's server before each post, so one server's
  conversations never reach another's moderators. A row whose server has no usable review
  channel waits, logged, and never holds up another server's cards.
* Posting claims the item in the database first: a live reply and the poller cannot both post
  it, and a restart reconciles cards found in the channel before posting again. Cards an older
  version posted in another server's channel are deleted there and posted again at home.
* The poller only posts cards. The chat side's log spool has its own flusher
  (``bot/discord/cogs/chat.py``), so the two jobs fail and retry independently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import discord
from discord.ext import tasks

from bot.discord.bot_protocol import BotServices
from bot.discord.checks import home_guild_id
from bot.discord.review_views import card_ids_in, review_embed, review_view
from bot.discord.sender import NO_PINGS
from bot.store.store import ReviewItem, Store

log = logging.getLogger(__name__)
RECONCILE_SCAN = 200  # recent review-channel messages searched for cards posted before a restart
POLL_BATCH = 20  # cards posted per poll, so a long backlog cannot hold the loop
MAX_PLACES = 500  # servers asked for in one poll query (SQLite's host parameters are bounded)


class ReviewQueue:
    """Posts review cards for ``store``'s items through ``bot`` (the Discord client).

    ``persona_name(persona_id)`` gives the display name a card shows (None: show the id). Review
    channels are read from ``bot.servers`` at each use, so a changed setting applies at once.
    """

    def __init__(self, bot: BotServices, store: Store, persona_name: Callable[[str], str | None]) -> None:
        self.bot = bot
        self.store = store
        self.persona_name = persona_name
        self._unmarked: dict[int, tuple[int, int]] = {}  # posted, but the database did not take it yet
        self._reconciled = False
        self._warned: set[tuple[int | None, int]] = set()  # (server, channel) pairs already logged
        self.poller = tasks.loop(seconds=max(1.0, bot.settings.discord.review_poll_s))(self.poll)
        self.poller.before_loop(self._before_poll)

    def start_polling(self) -> None:
        self.poller.start()

    def stop_polling(self) -> None:
        self.poller.cancel()

    def home_guild_id(self) -> int | None:
        """The server of the operator's review channel (``discord.review_channel``), where trainer
        candidates, which belong to no server, are reviewed; None when it is not set or not seen."""
        return home_guild_id(self.bot)

    async def review_channel(self, guild_id: int | None) -> Any:
        """The channel for the cards of ``guild_id``'s rows (None: trainer candidates, the
        operator's channel), or None: not set, not reachable, not in that server, or the server is
        not served (each logged once)."""
        if guild_id is None:
            channel_id = self.bot.settings.discord.review_channel
        else:
            server = self.bot.servers.get(guild_id)
            channel_id = server.review_channel if server.served else 0
        if not channel_id:
            return None
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except discord.HTTPException as exc:
                self._warn_once(guild_id, channel_id, f"review channel {channel_id} is not reachable: {exc}")
                return None
        if guild_id is not None and getattr(getattr(channel, "guild", None), "id", None) != guild_id:
            # The operator's default channel seen from another server, or a setting gone wrong.
            self._warn_once(
                guild_id,
                channel_id,
                f"review channel {channel_id} is not in server {guild_id}; its cards wait",
            )
            return None
        return channel

    def _warn_once(self, guild_id: int | None, channel_id: int, message: str) -> None:
        if (guild_id, channel_id) not in self._warned:
            self._warned.add((guild_id, channel_id))
            log.warning("%s", message)

    async def post_new(self, log_id: int) -> None:
        """Post the card for a reply just logged; the poller retries whatever fails here."""
        try:
            item = await self.store.get_review(log_id)
            if item is not None:
                await self.post(item)
        except Exception:
            log.exception("review card for #%s not posted now; the poller will retry", log_id)

    async def post(self, item: ReviewItem) -> bool:
        """Claim ``item`` and post its card; False when there is no channel, another poster
        has it, or Discord refused (the claim is then released for the next try)."""
        channel = await self.review_channel(item.guild_id)
        if channel is None:
            return False
        if not await self.store.claim_review(item.log_id):
            return False  # posted already, or another poster is on it
        try:
            message = await channel.send(
                embed=review_embed(item, self.persona_name(item.persona_id)),
                view=review_view(item.log_id),
                allowed_mentions=NO_PINGS,
            )
        except discord.HTTPException as exc:
            log.warning("could not post review card #%s: %s", item.log_id, exc)
            await self.store.release_review(item.log_id)
            return False
        try:
            await self.store.mark_posted(item.log_id, channel.id, message.id)
        except Exception:
            # Claimed and posted: remember it so it is marked later instead of posted twice.
            log.exception("review card #%s posted but not yet recorded", item.log_id)
            self._unmarked[item.log_id] = (channel.id, message.id)
        return True

    async def refresh(self, log_id: int) -> None:
        """Redraw ``log_id``'s card (a member regenerated the reply it shows); never raises."""
        try:
            item = await self.store.get_review(log_id)
            if item is None or not item.review_channel_id or not item.review_message_id:
                return
            channel = self.bot.get_channel(item.review_channel_id)
            if channel is None or not hasattr(channel, "get_partial_message"):
                return
            await channel.get_partial_message(item.review_message_id).edit(
                embed=review_embed(item, self.persona_name(item.persona_id)),
                view=review_view(item.log_id, decided=item.decision is not None),
                allowed_mentions=NO_PINGS,
            )
        except Exception as exc:
            log.warning("could not redraw review card #%s: %s", log_id, exc)

    async def poll(self) -> None:
        """One round: record cards posted but not yet marked, reconcile once after a restart,
        then post cards for anything still without one (trainer candidates, replies whose card
        failed), for every server that has a usable review channel. Never raises: a failed round
        is logged and the next one tries again."""
        try:
            for log_id, (channel_id, message_id) in list(self._unmarked.items()):
                await self.store.mark_posted(log_id, channel_id, message_id)
                del self._unmarked[log_id]
            if not self._reconciled:
                await self.reconcile()
            places = [
                g for g in await self.store.unposted_guilds() if await self.review_channel(g) is not None
            ]
            if not places:
                return
            for item in await self.store.unposted_reviews(limit=POLL_BATCH, guilds=places[:MAX_PLACES]):
                await self.post(item)
        except Exception:
            log.exception("review poll failed; trying again next round")

    async def _before_poll(self) -> None:
        await self.bot.wait_until_ready()

    async def reconcile(self) -> None:
        """After a restart: cards the last run posted but could not record are marked, not reposted;
        cards posted in another server's channel (by a version without settings per server) are
        deleted there and their rows posted again at home; then every claim is released."""
        me = self.bot.user.id if self.bot.user else None
        for guild_id in await self.store.unposted_guilds():
            channel = await self.review_channel(guild_id)
            if channel is None or not hasattr(channel, "history"):
                continue
            try:
                async for message in channel.history(limit=RECONCILE_SCAN):
                    if message.author.id != me:
                        continue
                    for log_id in card_ids_in(message):
                        item = await self.store.get_review(log_id)
                        if item is not None and item.review_message_id is None and item.guild_id == guild_id:
                            await self.store.mark_posted(log_id, channel.id, message.id)
            except Exception as exc:  # best effort: never let it stop cards from being posted
                log.warning("could not read review channel %s to reconcile cards: %s", channel.id, exc)
        await self.retire_misplaced_cards()
        await self.store.release_all_claims()
        self._reconciled = True

    async def retire_misplaced_cards(self) -> int:
        """Delete cards that show a server's rows in a channel of another server; their rows are
        posted again in their own server's review channel. Returns how many cards were found."""
        found = 0
        for guild_id, channel_id in await self.store.posted_card_places():
            channel = self.bot.get_channel(channel_id)
            where = getattr(getattr(channel, "guild", None), "id", None)
            if guild_id is None or where is None or where == guild_id:
                continue  # candidates may be anywhere; an unknown channel cannot be judged
            cards = await self.store.unpost_cards(guild_id, channel_id)
            found += len(cards)
            deleted = await self.delete_cards(cards)
            log.warning(
                "%d review cards of server %s were in channel %s of server %s; %d deleted, "
                "their rows go to server %s's own review channel",
                len(cards),
                guild_id,
                channel_id,
                where,
                deleted,
                guild_id,
            )
        return found

    async def delete_cards(self, cards: Iterable[tuple[int, int]]) -> int:
        """Remove review cards, given as (channel id, message id), from Discord (after /forget or a
        deleted message); returns how many went. A card Discord refuses to delete is logged."""
        deleted = 0
        for channel_id, message_id in cards:
            channel = self.bot.get_channel(channel_id)
            if channel is None or not hasattr(channel, "get_partial_message"):
                continue
            try:
                await channel.get_partial_message(message_id).delete()
                deleted += 1
            except discord.HTTPException as exc:
                log.warning("could not delete review card %s: %s", message_id, exc)
        return deleted
