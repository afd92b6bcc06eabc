"""The bot's SQLite store: channel state, the reply log, review decisions and user privacy choices.

Discord-free on purpose: the trainer opens the same database (``augment`` adds review candidates,
``export-reviews`` reads approved replies) without importing discord.py. The connection handling
(WAL, retries, a read connection beside the write one) is :mod:`bot.store.sqlite_db`; the row types are
:mod:`bot.store.rows`; decisions counted per adapter version are :mod:`bot.store.decision_stats`.

* Decisions are a single ``UPDATE … WHERE decision IS NULL``: SQLite runs it atomically, so of two
  moderators clicking at once exactly one wins and the other learns who did.
* Privacy is enforced where data leaves: :meth:`Store.approved_for_export` never returns a row in
  which an opted-out or forgotten user took part, whatever else happened before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from typing import Any

from bot.store.adapter_actions import AdapterAction, AdapterActionStore
from bot.store.casts import CastStore
from bot.store.decision_stats import DecisionStats, VersionDecisions
from bot.store.privacy import PrivacyStore
from bot.store.proxied import ProxiedStore
from bot.store.reply_presses import ReplyPressStore
from bot.store.rows import (
    DECISIONS,
    LOG_COLUMNS,
    MAX_EDITED_CHARS,
    ORIGINS,
    STATUSES,
    Decision,
    DecisionOutcome,
    ExportRow,
    ForgetResult,
    LogEntry,
    ReviewItem,
    normalize_iso,
    review_item,
    utc_now,
)
from bot.store.server_settings_store import ServerSettingsStore
from bot.store.sqlite_db import INTERACTIVE_READ_S, StoreBusyError, StoreError, within

__all__ = [
    "DECISIONS",
    "INTERACTIVE_READ_S",
    "ORIGINS",
    "STATUSES",
    "AdapterAction",
    "Decision",
    "DecisionOutcome",
    "ExportRow",
    "ForgetResult",
    "LogEntry",
    "ReviewItem",
    "ReviewNotFoundError",
    "Store",
    "StoreBusyError",
    "StoreError",
    "VersionDecisions",
    "normalize_iso",
    "utc_now",
    "within",
]

# A claim older than this belongs to a poster that died mid-post; the item may be claimed again.
CLAIM_STALE_S = 300.0


class ReviewNotFoundError(LookupError):
    """The log row is gone (its user asked to be forgotten) or never existed."""


class Store(
    ServerSettingsStore,
    PrivacyStore,
    DecisionStats,
    CastStore,
    ReplyPressStore,
    AdapterActionStore,
    ProxiedStore,
):
    """Async access to the bot's database; open with :meth:`open`, close with :meth:`close`.

    Every read and write raises StoreError once the store is closed, and sqlite3.OperationalError
    when the database stays locked through all retries (or fails otherwise); times are UTC ISO 8601
    strings, ids are Discord snowflakes (int) unless named ``log_id`` (a row of ``logs``).
    """

    # -- channel state -------------------------------------------------------------------------

    async def set_channel_persona(self, channel_id: int, persona_id: str | None) -> None:
        """The persona that answers every message in ``channel_id``; None: only when addressed.

        The channel's whole cast becomes that one persona (see :meth:`CastStore.set_cast`).
        """
        await self.set_cast(channel_id, [persona_id] if persona_id else [])

    async def channel_persona(self, channel_id: int) -> str | None:
        """The lead of the cast set in ``channel_id`` itself (not inherited), or None."""
        row = await self._fetchone("SELECT persona_id FROM channel_state WHERE channel_id = ?", (channel_id,))
        return row[0] if row else None

    async def reset_channel(self, channel_id: int, before_message_id: int | None) -> None:
        """Forget the conversation so far: history starts after ``before_message_id``.

        A snowflake (an interaction's id works) marks the moment; None clears the marker.
        """
        await self._set_channel_field(channel_id, "reset_after", before_message_id)

    async def _set_channel_field(self, channel_id: int, column: str, value: Any) -> None:
        assert column in ("persona_id", "reset_after")  # a column name, never user input

        async def body() -> None:
            await self._conn.execute(
                f"""
                INSERT INTO channel_state (channel_id, {column}, updated_at) VALUES (?, ?, ?)
                ON CONFLICT (channel_id) DO UPDATE SET {column} = excluded.{column},
                                                       updated_at = excluded.updated_at
                """,
                (channel_id, value, utc_now()),
            )

        await self._write(body)

    async def channel_reset_marker(self, channel_id: int) -> int | None:
        """The snowflake set by :meth:`reset_channel` (history starts after it), or None."""
        row = await self._fetchone(
            "SELECT reset_after FROM channel_state WHERE channel_id = ?", (channel_id,)
        )
        return row[0] if row else None

    # -- the reply log -------------------------------------------------------------------------

    async def log_reply(self, entry: LogEntry) -> int | None:
        """Log one reply; returns its id, or None when privacy forbids keeping it.

        Checked inside the write transaction, so a /optout or /forget that lands while the reply
        was generating still wins: an opted-out participant, or a forget newer than the request,
        means nothing is written.
        """
        if entry.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {entry.status!r}")
        if entry.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {entry.origin!r}")
        people = sorted({*entry.participants, *([entry.user_id] if entry.user_id is not None else [])})
        created = utc_now()
        requested = normalize_iso(entry.requested_at) if entry.requested_at else created

        async def body() -> int | None:
            if people:
                marks = ",".join("?" * len(people))
                async with self._conn.execute(
                    f"SELECT 1 FROM user_prefs WHERE opted_out = 1 AND user_id IN ({marks}) "
                    f"UNION ALL SELECT 1 FROM forgotten_users WHERE user_id IN ({marks}) AND forgotten_at >= ?",
                    (*people, *people, requested),
                ) as cur:
                    if await cur.fetchone() is not None:
                        return None
            cur = await self._conn.execute(
                """
                INSERT INTO logs (created_at, requested_at, guild_id, channel_id, message_id, user_id,
                    persona_id, adapter_version, prompt, user_text, reply, params, latency_ms, status,
                    origin, reply_message_id, blocked_words, turn, stopped_by, replaces)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    created,
                    requested,
                    entry.guild_id,
                    entry.channel_id,
                    entry.message_id,
                    entry.user_id,
                    entry.persona_id,
                    entry.adapter_version,
                    entry.prompt,
                    entry.user_text,
                    entry.reply,
                    json.dumps(entry.params, ensure_ascii=False, sort_keys=True),
                    entry.latency_ms,
                    entry.status,
                    entry.origin,
                    entry.reply_message_id,
                    json.dumps(list(entry.blocked_words), ensure_ascii=False),
                    entry.turn,
                    entry.stopped_by,
                    entry.replaces,
                ),
            )
            log_id = int(cur.lastrowid or 0)
            await self._conn.executemany(
                "INSERT OR IGNORE INTO log_participants (log_id, user_id) VALUES (?, ?)",
                [(log_id, user) for user in people],
            )
            return log_id

        return await self._write(body)

    async def set_reply_message(self, log_id: int, reply_message_id: int) -> None:
        """Record the Discord message that carried a reply (known only after sending)."""

        async def body() -> None:
            await self._conn.execute(
                "UPDATE logs SET reply_message_id = ? WHERE id = ?", (reply_message_id, log_id)
            )

        await self._write(body)

    async def message_answered_by(self, reply_message_id: int) -> int | None:
        """The user message a logged reply answered: webhook replies cannot carry a reply
        reference, so this is how a reply chain is followed through them."""
        row = await self._fetchone(
            "SELECT message_id FROM logs WHERE reply_message_id = ? AND origin = 'live' LIMIT 1",
            (reply_message_id,),
        )
        return int(row[0]) if row and row[0] is not None else None

    async def add_candidate(
        self,
        persona_id: str,
        question: str,
        reply: str,
        prompt: str,
        adapter_version: str | None,
        params: dict[str, Any] | None = None,
    ) -> int:
        """A reply the trainer generated (``augment``), queued for the same moderator review."""
        log_id = await self.log_reply(
            LogEntry(
                guild_id=None,
                channel_id=None,
                message_id=None,
                user_id=None,
                persona_id=persona_id,
                adapter_version=adapter_version,
                prompt=prompt,
                user_text=question,
                reply=reply,
                params=dict(params or {}),
                origin="generated",
            )
        )
        assert log_id is not None  # no user: no privacy rule can refuse it
        return log_id

    async def get_review(self, log_id: int) -> ReviewItem | None:
        """The logged reply ``log_id`` with its decision and card, or None if deleted or never logged."""
        row = await self._fetchone(f"SELECT {LOG_COLUMNS} FROM logs WHERE id = ?", (log_id,))
        return review_item(row) if row else None

    # -- review decisions ----------------------------------------------------------------------

    async def decide(
        self, log_id: int, moderator_id: int, decision: str, edited_text: str | None = None
    ) -> DecisionOutcome:
        """Record a moderator's decision once; a later caller gets the standing decision back."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, not {decision!r}")
        if decision == "edited":
            edited_text = (edited_text or "").strip()
            if not edited_text:
                raise ValueError("an edit needs the edited text")
            if len(edited_text) > MAX_EDITED_CHARS:
                raise ValueError(f"the edited text is over {MAX_EDITED_CHARS} characters")
        else:
            edited_text = None
        now = utc_now()

        async def body() -> DecisionOutcome:
            cur = await self._conn.execute(
                """
                UPDATE logs SET decision = ?, edited_text = ?, decided_by = ?, decided_at = ?
                WHERE id = ? AND decision IS NULL
                """,
                (decision, edited_text, moderator_id, now, log_id),
            )
            won = cur.rowcount == 1
            async with self._conn.execute(
                "SELECT decision, decided_by, decided_at, edited_text FROM logs WHERE id = ?", (log_id,)
            ) as read:
                row = await read.fetchone()
            if row is None:
                raise ReviewNotFoundError(f"review item {log_id} does not exist (deleted or never logged)")
            return DecisionOutcome(
                log_id,
                decision=row["decision"],
                moderator_id=int(row["decided_by"]),
                decided_at=row["decided_at"],
                edited_text=row["edited_text"],
                already_decided=not won,
            )

        return await self._write(body)

    # -- posting review cards ------------------------------------------------------------------

    async def unposted_reviews(
        self, limit: int = 20, *, guilds: Collection[int | None] | None = None
    ) -> list[ReviewItem]:
        """Items without a review card yet (oldest first), skipping ones a live poster has claimed.

        ``guilds``: only items of these Discord servers (``None`` in it: trainer candidates, which
        have no server); by default every item. A server without a review channel is left out by
        its caller, so its backlog never holds up another server's cards.
        """
        stale = time.time() - CLAIM_STALE_S
        where, params = _guild_filter(guilds)
        rows = await self._fetchall(
            f"""
            SELECT {LOG_COLUMNS} FROM logs
            WHERE review_message_id IS NULL AND decision IS NULL
              AND (review_claimed_at IS NULL OR review_claimed_at < ?) AND {where}
            ORDER BY id LIMIT ?
            """,
            (stale, *params, limit),
        )
        return [review_item(r) for r in rows]

    async def unposted_guilds(self) -> list[int | None]:
        """The servers with items still waiting for a card (``None``: trainer candidates)."""
        rows = await self._fetchall(
            "SELECT DISTINCT guild_id FROM logs WHERE review_message_id IS NULL AND decision IS NULL"
        )
        return [None if r[0] is None else int(r[0]) for r in rows]

    async def claim_review(self, log_id: int) -> bool:
        """Take the right to post ``log_id``'s card; False if it is posted or someone else holds it."""
        now = time.time()

        async def body() -> bool:
            cur = await self._conn.execute(
                """
                UPDATE logs SET review_claimed_at = ?
                WHERE id = ? AND review_message_id IS NULL
                  AND (review_claimed_at IS NULL OR review_claimed_at < ?)
                """,
                (now, log_id, now - CLAIM_STALE_S),
            )
            return cur.rowcount == 1

        return await self._write(body)

    async def release_review(self, log_id: int) -> None:
        """Give a claim back after a failed post, so the next poll tries again."""

        async def body() -> None:
            await self._conn.execute(
                "UPDATE logs SET review_claimed_at = NULL WHERE id = ? AND review_message_id IS NULL",
                (log_id,),
            )

        await self._write(body)

    async def release_all_claims(self) -> int:
        """At start-up: claims left by a previous run were never posted (or were reconciled)."""

        async def body() -> int:
            cur = await self._conn.execute(
                "UPDATE logs SET review_claimed_at = NULL "
                "WHERE review_message_id IS NULL AND review_claimed_at IS NOT NULL"
            )
            return cur.rowcount

        return await self._write(body)

    async def mark_posted(self, log_id: int, channel_id: int, message_id: int) -> None:
        """Record the review card (channel and message snowflakes) posted for ``log_id``."""

        async def body() -> None:
            await self._conn.execute(
                "UPDATE logs SET review_channel_id = ?, review_message_id = ?, review_claimed_at = NULL "
                "WHERE id = ?",
                (channel_id, message_id, log_id),
            )

        await self._write(body)

    async def posted_card_places(self) -> list[tuple[int | None, int]]:
        """Each (server, review channel) pair some posted card has, to find cards in the wrong server."""
        rows = await self._fetchall(
            "SELECT DISTINCT guild_id, review_channel_id FROM logs "
            "WHERE review_message_id IS NOT NULL AND review_channel_id IS NOT NULL"
        )
        return [(r[0], int(r[1])) for r in rows]

    async def unpost_cards(self, guild_id: int | None, channel_id: int) -> tuple[tuple[int, int], ...]:
        """Forget the cards of ``guild_id``'s rows posted in ``channel_id`` (a channel of another
        server: posted before cards were kept per server). Their rows are posted again, in their
        own server; returns the cards as (channel id, message id) so the caller deletes them."""

        async def body() -> tuple[tuple[int, int], ...]:
            async with self._conn.execute(
                "SELECT review_message_id FROM logs WHERE guild_id IS ? AND review_channel_id = ? "
                "AND review_message_id IS NOT NULL",
                (guild_id, channel_id),
            ) as cur:
                messages = [int(r[0]) for r in await cur.fetchall()]
            await self._conn.execute(
                "UPDATE logs SET review_channel_id = NULL, review_message_id = NULL, review_claimed_at = NULL "
                "WHERE guild_id IS ? AND review_channel_id = ?",
                (guild_id, channel_id),
            )
            return tuple((channel_id, m) for m in messages)

        return await self._write(body)

    async def stats(self, guilds: Collection[int | None] | None = None) -> dict[str, int]:
        """Counts for /status: logged, awaiting decision, decided, blocked; of ``guilds`` only when
        given (``None`` in it: trainer candidates), else of every row."""
        where, params = _guild_filter(guilds)
        row = await self._fetchone(
            "SELECT COUNT(*) AS logged, SUM(decision IS NULL) AS undecided, "
            f"SUM(decision IS NOT NULL) AS decided, SUM(status = 'blocked') AS blocked FROM logs WHERE {where}",
            params,
        )
        return {name: int(row[name] or 0) for name in ("logged", "undecided", "decided", "blocked")}


def _guild_filter(guilds: Collection[int | None] | None) -> tuple[str, list[int]]:
    """A WHERE condition on ``guild_id``: one of ``guilds`` (None in it matches rows without one)."""
    if guilds is None:
        return "1", []
    ids = sorted({int(g) for g in guilds if g is not None})
    parts = [f"guild_id IN ({','.join('?' * len(ids))})"] if ids else []
    if None in guilds:
        parts.append("guild_id IS NULL")
    return f"({' OR '.join(parts) or '0'})", ids
