"""The log of answered messages after the fact: a deleted question takes its log row and review
card with it, and rows the database refused earlier are written on the next round.

The chat cog calls ``forget`` for a deleted message that is no longer being answered, and starts
``flusher`` with the cog; the shutdown stops it and flushes once more itself.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

from discord.ext import tasks

from bot.discord.bot_protocol import BotServices
from bot.store.store import Store, StoreError

if TYPE_CHECKING:
    from bot.chatflow.replyflow import ReplyFlow
    from bot.discord.review_queue import ReviewQueue

log = logging.getLogger(__name__)


class ReplyLog:
    """``store`` and ``flow`` are None for a bot that only syncs commands (then nothing is
    logged and there is nothing to forget); ``reviews`` deletes review cards."""

    def __init__(
        self, bot: BotServices, store: Store | None, flow: ReplyFlow | None, reviews: ReviewQueue | None
    ) -> None:
        self.store = store
        self.flow = flow
        self.reviews = reviews
        # Log entries the database could not take yet are retried on the review poll's interval.
        self.flusher = tasks.loop(seconds=max(1.0, bot.settings.discord.review_poll_s))(self.flush_spool)
        self.flusher.before_loop(bot.wait_until_ready)

    async def forget(self, message_id: int) -> None:
        """Delete the log row and review card of answered message ``message_id`` (nothing when it
        has none). A locked or unavailable database defers the deletion to the spool, like a log
        entry; it never raises."""
        if self.store is None:
            return
        if self.flow is not None:
            self.flow.spool.withdraw(message_id)  # logged only in memory so far: never written
        try:
            result = await self.store.forget_message(message_id)
        except (sqlite3.OperationalError, StoreError) as exc:
            # Kept like a log entry: the rows go once the database takes writes again.
            log.warning("database unavailable (%s); deleting the log of message %s later", exc, message_id)
            if self.flow is not None:
                self.flow.spool.forget_later(message_id)
            return
        except Exception:
            log.exception("could not remove the log of deleted message %s", message_id)
            return
        if self.reviews is not None and result.review_cards:
            await self.reviews.delete_cards(result.review_cards)

    async def flush_spool(self) -> None:
        """Write the log entries (and deletions) the database refused earlier; the review cards of
        rows deleted late go too. Never raises: what still fails waits for the next round."""
        if self.flow is None or not len(self.flow.spool):
            return
        try:
            await self.flow.spool.flush()
            late = self.flow.spool.take_cards()  # review cards of rows deleted late
            if self.reviews is not None:
                await self.reviews.delete_cards(late)
        except Exception:
            log.exception("writing spooled logs failed; trying again next round")
