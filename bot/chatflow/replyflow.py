"""The Discord-free steps of answering a message: rate limit, queue, wait, filter, log.

The Discord cog does the I/O (history, typing, sending, review cards) and calls these for every
decision, so each rule is tested here without a client.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.chatflow.conversation import Conversation
from bot.chatflow.ratelimit import RateDecision, RateLimiter
from bot.store.store import LogEntry, Store, StoreError
from bot.text.mentions import defuse_mentions
from bot.text.wordfilter import WordFilter
from personas.card import GenerationParams, PersonaCard
from personas.render import Turn

log = logging.getLogger(__name__)


class PendingLike(Protocol):
    """What the flow needs of :class:`bot.chatflow.service.PendingReply` (a fake in tests)."""

    card: PersonaCard
    prompt: str
    result: Any

    @property
    def params(self) -> GenerationParams: ...

    @property
    def position(self) -> int: ...

    async def text(self) -> str: ...

    def cancel(self) -> None: ...


class ChatLike(Protocol):
    def submit(self, persona_id: str, history: list[Turn]) -> PendingLike: ...


@dataclass(frozen=True)
class Incoming:
    """The message being answered, as logged."""

    guild_id: int | None
    channel_id: int
    message_id: int
    user_id: int
    created_at: datetime


@dataclass(frozen=True)
class Filtered:
    text: str  # mentions defused; what would be posted
    blocked: tuple[str, ...]  # blocked words found; non-empty means it is not posted

    @property
    def is_blocked(self) -> bool:
        return bool(self.blocked)


class LogSpool:
    """Log entries the database could not take yet, kept in order and retried until written.

    A locked or briefly unavailable database must not lose a reply's log (it is training data and
    the moderators' audit trail), and must not make the user wait either.
    """

    def __init__(self, store: Store, max_entries: int = 10_000) -> None:
        self.store = store
        self._pending: collections.deque[LogEntry] = collections.deque()
        # Deleted messages whose rows the database could not delete yet, and the review cards of
        # rows deleted late (for the Discord side to remove: this module does not touch Discord).
        self._forgets: collections.deque[int] = collections.deque()
        self._cards: list[tuple[int, int]] = []
        self._max = max_entries
        self._flush_lock = asyncio.Lock()

    def __len__(self) -> int:
        """Changes waiting for the database: log entries and deletions."""
        return len(self._pending) + len(self._forgets)

    async def write(self, entry: LogEntry) -> int | None:
        """Log now if possible; None when refused for privacy or spooled for later."""
        if self._pending:  # keep order: older spooled entries go first
            await self.flush()
        if self._pending:
            self._spool(entry)
            return None
        try:
            return await self.store.log_reply(entry)
        except (sqlite3.OperationalError, StoreError) as exc:
            log.warning("database unavailable (%s); the log entry is kept and retried", exc)
            self._spool(entry)
            return None

    def withdraw(self, message_id: int) -> int:
        """Drop the spooled entries that answered ``message_id`` (its author deleted it); returns
        how many. Without this a deletion meets no row (the entry is not written yet) and the
        words taken back would still be written, reviewed and trained on later."""
        kept = collections.deque(e for e in self._pending if e.message_id != message_id)
        dropped = len(self._pending) - len(kept)
        self._pending = kept
        return dropped

    def move(self, old_id: int, new_id: int) -> int:
        """Spooled entries that answered ``old_id`` now answer ``new_id`` (a proxy bot reposted the
        message and deleted the original); returns how many."""
        moved = 0
        for i, entry in enumerate(self._pending):
            if entry.message_id == old_id:
                self._pending[i] = dataclasses.replace(entry, message_id=new_id)
                moved += 1
        return moved

    def forget_later(self, message_id: int) -> None:
        """Keep the deletion of ``message_id``'s rows for the next flush (the database refused it)."""
        if message_id not in self._forgets:
            self._forgets.append(message_id)

    def take_cards(self) -> list[tuple[int, int]]:
        """(channel id, message id) of review cards whose rows a flush deleted; cleared on return."""
        cards, self._cards = self._cards, []
        return cards

    def _spool(self, entry: LogEntry) -> None:
        if len(self._pending) >= self._max:
            dropped = self._pending.popleft()
            log.error("log spool full: dropped the entry for message %s", dropped.message_id)
        self._pending.append(entry)

    async def flush(self) -> list[int]:
        """Write what is spooled, oldest first, then the kept deletions; stops at the first
        failure. Returns the new log ids (cards of deleted rows: :meth:`take_cards`)."""
        written: list[int] = []
        async with self._flush_lock:
            while self._pending:
                try:
                    log_id = await self.store.log_reply(self._pending[0])
                except (sqlite3.OperationalError, StoreError) as exc:
                    log.warning("log spool flush stopped (%d left): %s", len(self), exc)
                    return written
                self._pending.popleft()
                if log_id is not None:
                    written.append(log_id)
            while self._forgets:
                try:
                    result = await self.store.forget_message(self._forgets[0])
                except (sqlite3.OperationalError, StoreError) as exc:
                    log.warning("log spool flush stopped (%d deletions left): %s", len(self._forgets), exc)
                    break
                self._forgets.popleft()
                self._cards.extend(result.review_cards)
        return written


class ReplyFlow:
    def __init__(self, limiter: RateLimiter, words: WordFilter, spool: LogSpool) -> None:
        self.limiter = limiter
        self.words = words
        self.spool = spool

    def rate(self, user_id: int) -> RateDecision:
        return self.limiter.check(user_id)

    async def wait(
        self,
        pending: PendingLike,
        on_position: Callable[[int], Awaitable[None]],
        poll_s: float = 2.0,
    ) -> str:
        """Await the reply, reporting queue position changes (0 = generating) as they happen."""
        waiter = asyncio.ensure_future(pending.text())
        last = None
        try:
            while True:
                position = pending.position
                if position != last:
                    last = position
                    try:
                        await on_position(position)
                    except Exception:  # a failed notice must not lose the reply
                        log.exception("queue position notice failed")
                done, _ = await asyncio.wait({waiter}, timeout=poll_s)
                if done:
                    return waiter.result()
        finally:
            if not waiter.done():
                # Our caller went away (shutdown, cancelled task): nobody will read this reply.
                pending.cancel()
                waiter.cancel()

    def filter(self, text: str) -> Filtered:
        return Filtered(defuse_mentions(text), tuple(self.words.check(text)))

    @staticmethod
    def entry(
        incoming: Incoming,
        conversation: Conversation,
        pending: PendingLike,
        filtered: Filtered,
        latency_ms: int,
        reply_message_id: int | None,
        shown: str = "full",
        shown_text: str = "",
    ) -> LogEntry:
        """The log row of one reply. ``shown`` says what the channel shows of it: "full",
        "partial" (``shown_text``, an earlier draft it could not replace) or "none"; anything but
        "full" is recorded in the row's params, so the row never claims more than was shown."""
        result = pending.result
        newest = conversation.turns[-1].text if conversation.turns else ""
        params = _params_dict(pending, result)
        if shown != "full":
            params["shown"] = shown
            if shown == "partial":
                params["shown_text"] = shown_text
        return LogEntry(
            guild_id=incoming.guild_id,
            channel_id=incoming.channel_id,
            message_id=incoming.message_id,
            user_id=incoming.user_id,
            persona_id=pending.card.id,
            adapter_version=getattr(result, "adapter_version", None),
            prompt=pending.prompt,
            user_text=newest,
            reply=filtered.text,
            params=params,
            latency_ms=latency_ms,
            status="blocked" if filtered.is_blocked else "pending",
            origin="live",
            reply_message_id=reply_message_id,
            blocked_words=filtered.blocked,
            participants=conversation.participants,
            requested_at=incoming.created_at.astimezone(UTC).isoformat(),
        )

    async def record(self, entry: LogEntry) -> int | None:
        return await self.spool.write(entry)


def _params_dict(pending: PendingLike, result: Any) -> dict[str, Any]:
    params: dict[str, Any] = pending.params.as_dict()
    # What the engine reports about the run belongs with the sampling settings for review.
    for name in ("new_tokens", "finish_reason", "batch_size", "seconds", "adapter"):
        value = getattr(result, name, None)
        if value is not None:
            params[name] = value
    return params


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)
