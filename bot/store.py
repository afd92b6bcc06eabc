"""The bot's SQLite store: channel state, the reply log, review decisions and user privacy choices.

Discord-free on purpose: the trainer opens the same database (``augment`` adds review candidates,
``export-reviews`` reads approved replies) without importing discord.py.

Why it is built this way:

* WAL mode and ``busy_timeout`` let the bot and the trainer use one file at once; a write that
  still meets ``database is locked`` is retried with backoff, so a busy moment loses nothing.
* One write connection per ``Store`` and one asyncio lock around every write: statements of two
  coroutines never interleave inside one transaction.
* Reads have a connection (and lock) of their own: in WAL mode a reader never waits for a writer,
  so a write that is itself waiting for another process's lock (the trainer, a backup) does not
  hold up a read. Interactive code bounds its reads with :func:`within` and says "busy" rather
  than miss Discord's 3-second deadline.
* Decisions are a single ``UPDATE … WHERE decision IS NULL``: SQLite runs it atomically, so of two
  moderators clicking at once exactly one wins and the other learns who did.
* Privacy is enforced where data leaves: :meth:`Store.approved_for_export` never returns a row in
  which an opted-out or forgotten user took part, whatever else happened before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from bot.migrations import LATEST_VERSION, MIGRATIONS

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

Decision = Literal["approved", "rejected", "edited"]
DECISIONS: tuple[str, ...] = ("approved", "rejected", "edited")
STATUSES: tuple[str, ...] = ("pending", "blocked")
ORIGINS: tuple[str, ...] = ("live", "generated")
# A claim older than this belongs to a poster that died mid-post; the item may be claimed again.
CLAIM_STALE_S = 300.0
# How long a read may take before an interaction has been answered: Discord allows 3 s from the
# click to the first response, and delivery and the response itself need some of that.
INTERACTIVE_READ_S = 1.5
MAX_EDITED_CHARS = 4000


class StoreError(RuntimeError):
    """The database cannot be used as it is (for example: written by a newer version)."""


class StoreBusyError(StoreError):
    """The database did not answer in the time the caller can wait (see :func:`within`)."""


async def within(operation: Awaitable[T], seconds: float = INTERACTIVE_READ_S) -> T:
    """Await a store operation for at most ``seconds``.

    Raises :class:`StoreBusyError` when it takes longer (the operation is abandoned; a read has no
    effect to lose). Meant for reads made before an interaction is acknowledged; never wrap a
    write in it, since an abandoned write may still happen after the caller said it did not.
    """
    try:
        return await asyncio.wait_for(operation, seconds)
    except TimeoutError:
        raise StoreBusyError(f"the database did not answer within {seconds:.1f} s") from None


class ReviewNotFoundError(LookupError):
    """The log row is gone (its user asked to be forgotten) or never existed."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def normalize_iso(value: str) -> str:
    """Any ISO 8601 time (``Z``, offset, or naive meaning UTC) as the store's own UTC format.

    Stored times are compared as strings, which is only right when they share one format.
    """
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class LogEntry:
    """One generated reply as it is logged."""

    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    user_id: int | None
    persona_id: str
    adapter_version: str | None
    prompt: str
    user_text: str
    reply: str
    params: dict[str, Any] = field(default_factory=dict)
    latency_ms: int | None = None
    status: str = "pending"  # pending | blocked (held back by the word filter, still reviewed)
    origin: str = "live"  # live | generated (the trainer's augment candidates)
    reply_message_id: int | None = None
    blocked_words: tuple[str, ...] = ()
    # Users whose words are in the prompt (the requester included): /forget and opt-out reach them.
    participants: tuple[int, ...] = ()
    # When the user's message was sent; a /forget after this time wins over a late log write.
    requested_at: str | None = None


@dataclass(frozen=True)
class ReviewItem:
    log_id: int
    created_at: str
    guild_id: int | None
    channel_id: int | None
    message_id: int | None
    user_id: int | None
    persona_id: str
    adapter_version: str | None
    prompt: str
    user_text: str
    reply: str
    params: dict[str, Any]
    latency_ms: int | None
    status: str
    origin: str
    reply_message_id: int | None
    blocked_words: tuple[str, ...]
    decision: str | None
    edited_text: str | None
    decided_by: int | None
    decided_at: str | None
    review_channel_id: int | None
    review_message_id: int | None

    @property
    def final_text(self) -> str:
        return self.edited_text or self.reply


@dataclass(frozen=True)
class DecisionOutcome:
    """The decision that stands for a row; ``already_decided`` means it was someone else's."""

    log_id: int
    decision: str
    moderator_id: int
    decided_at: str
    edited_text: str | None
    already_decided: bool


@dataclass(frozen=True)
class ExportRow:
    log_id: int
    persona_id: str
    question: str
    reply: str  # the final text: the moderator's edit, else the generated reply
    original_reply: str
    decision: str
    prompt: str
    origin: str
    adapter_version: str | None
    decided_at: str
    params: dict[str, Any]


@dataclass(frozen=True)
class ForgetResult:
    deleted: int
    # Review cards that showed the deleted rows, so the bot can delete them from Discord too.
    review_cards: tuple[tuple[int, int], ...]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


# Review items and export rows are read by column NAME (sqlite3.Row), never by position: a
# migration that adds a column, or a SELECT that lists them in another order, cannot shift a
# value into the wrong field. Each dataclass field is a column; the aliases say which it is read from.
_REVIEW_ITEM_SOURCES: dict[str, str] = {"log_id": "id"}
_EXPORT_ROW_SOURCES: dict[str, str] = {
    "log_id": "l.id",
    "question": "l.user_text",
    "reply": "COALESCE(l.edited_text, l.reply)",
    "original_reply": "l.reply",
}


def _select_list(row_type: type, sources: dict[str, str], table_alias: str = "") -> str:
    """``expr AS field`` for every field of the dataclass ``row_type``, for a SELECT list."""
    prefix = f"{table_alias}." if table_alias else ""
    return ", ".join(f"{sources.get(f.name, prefix + f.name)} AS {f.name}" for f in fields(row_type))


_LOG_COLUMNS = _select_list(ReviewItem, _REVIEW_ITEM_SOURCES)
_EXPORT_COLUMNS = _select_list(ExportRow, _EXPORT_ROW_SOURCES, "l")

# Rows no export may contain: someone in them opted out, or asked to be forgotten after they spoke.
_PRIVACY_EXCLUSION = """
    NOT EXISTS (
        SELECT 1 FROM user_prefs up
        WHERE up.opted_out = 1
          AND (up.user_id = l.user_id
               OR up.user_id IN (SELECT p.user_id FROM log_participants p WHERE p.log_id = l.id))
    )
    AND NOT EXISTS (
        SELECT 1 FROM forgotten_users f
        WHERE (f.user_id = l.user_id
               OR f.user_id IN (SELECT p.user_id FROM log_participants p WHERE p.log_id = l.id))
          AND f.forgotten_at >= COALESCE(l.requested_at, l.created_at)
    )
"""


class Store:
    """Async access to the bot's database; open with :meth:`open`, close with :meth:`close`.

    Every read and write raises StoreError once the store is closed, and sqlite3.OperationalError
    when the database stays locked through all retries (or fails otherwise); times are UTC ISO 8601
    strings, ids are Discord snowflakes (int) unless named ``log_id`` (a row of ``logs``).
    """

    def __init__(
        self, conn: aiosqlite.Connection, path: Path, *, max_attempts: int, base_delay_s: float
    ) -> None:
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()
        # Until open() adds a read connection (never for ":memory:", which is private to one
        # connection), reads share the write connection and its lock.
        self._reader = conn
        self._read_lock = self._lock
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        max_attempts: int = 8,
        base_delay_s: float = 0.05,
    ) -> Store:
        """Open (creating if needed) and migrate the database at ``path`` (or ``":memory:"``).

        ``busy_timeout_ms`` is SQLite's wait for a lock (ms); a write still locked after it is
        retried ``max_attempts`` times with backoff from ``base_delay_s`` (s). Raises StoreError
        for a database newer than this code, sqlite3.Error for a file SQLite cannot open.
        """
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: autocommit; transactions are explicit BEGIN IMMEDIATE … COMMIT.
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        conn.row_factory = sqlite3.Row  # rows are read by column name (see _from_row)
        store = cls(conn, path, max_attempts=max_attempts, base_delay_s=base_delay_s)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await store._retry(lambda: store._pragma("PRAGMA journal_mode = WAL"))
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA foreign_keys = ON")
            await store._retry(store._migrate)
            if str(path) != ":memory:":
                await store._open_reader(busy_timeout_ms)
        except BaseException:
            if store._reader is not conn:
                await store._reader.close()
            await conn.close()
            raise
        return store

    async def _open_reader(self, busy_timeout_ms: int) -> None:
        reader = await aiosqlite.connect(str(self.path), isolation_level=None)
        reader.row_factory = sqlite3.Row
        try:
            await reader.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await reader.execute("PRAGMA query_only = ON")  # a read path can never write by mistake
        except BaseException:
            await reader.close()
            raise
        self._reader = reader
        self._read_lock = asyncio.Lock()

    async def close(self) -> None:
        """Checkpoint the WAL into the main file and close; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._reader is not self._conn:
            async with self._read_lock:  # closed first: an open reader would hold up the checkpoint
                await self._reader.close()
        async with self._lock:
            try:
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:  # another process still reading: the WAL stays, nothing is lost
                log.info("WAL checkpoint skipped at close: %s", exc)
            await self._conn.close()

    async def _pragma(self, sql: str) -> None:
        await self._conn.execute(sql)

    async def schema_version(self) -> int:
        async with self._lock:
            return await self._read_version()

    async def _read_version(self) -> int:
        async with self._conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ) as cur:
            if await cur.fetchone() is None:
                return 0
        async with self._conn.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0] or 0) if row else 0

    async def _migrate(self) -> None:
        async def body() -> None:
            await self._conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)"
            )
            current = await self._read_version()
            if current > LATEST_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {current}, newer than this code knows "
                    f"({LATEST_VERSION}); upgrade oshaberi instead of downgrading the database"
                )
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.statements:
                    await self._conn.execute(statement)
                await self._conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (migration.version, utc_now()),
                )
                log.info(
                    "database %s migrated to version %d: %s",
                    self.path,
                    migration.version,
                    migration.description,
                )

        await self._transaction(body)

    # -- plumbing ------------------------------------------------------------------------------

    async def _retry(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``, retrying on ``database is locked`` with jittered exponential backoff."""
        delay = self._base_delay_s
        for attempt in range(1, self._max_attempts + 1):
            try:
                return await op()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == self._max_attempts:
                    raise
                log.warning(
                    "database busy (%s); retry %d/%d in %.2fs", exc, attempt, self._max_attempts - 1, delay
                )
                await asyncio.sleep(delay * (1 + random.random() / 2))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")

    async def _transaction(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run ``body`` inside BEGIN IMMEDIATE … COMMIT; rolled back on any error.

        A transaction once started always ends, even when its caller is cancelled (the caller
        still gets its CancelledError at once): aiosqlite's thread runs a BEGIN it was sent
        whether or not anybody still awaits it, so a cancellation at the wrong moment would
        otherwise leave the connection inside a transaction and every later write failing.
        """
        if self._closed:
            raise StoreError("the store is closed")
        task = asyncio.ensure_future(self._run_transaction(body))
        # A caller that was cancelled never reads the outcome; reading it here keeps asyncio from
        # reporting "exception was never retrieved" (the error itself is logged by whoever retries).
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(task)

    async def _run_transaction(self, body: Callable[[], Awaitable[T]]) -> T:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = await body()
                await self._conn.execute("COMMIT")
                return result
            except BaseException:
                if self._conn.in_transaction:
                    await self._conn.execute("ROLLBACK")
                raise

    async def _write(self, body: Callable[[], Awaitable[T]]) -> T:
        return await self._retry(lambda: self._transaction(body))

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async def op() -> list[Any]:
            if self._closed:
                raise StoreError("the store is closed")
            async with self._read_lock, self._reader.execute(sql, tuple(params)) as cur:
                return list(await cur.fetchall())

        return await self._retry(op)

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    # -- channel state -------------------------------------------------------------------------

    async def set_channel_persona(self, channel_id: int, persona_id: str | None) -> None:
        """The persona that answers every message in ``channel_id``; None: only when addressed."""
        await self._set_channel_field(channel_id, "persona_id", persona_id)

    async def channel_persona(self, channel_id: int) -> str | None:
        """The persona set with :meth:`set_channel_persona`, or None."""
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
                    origin, reply_message_id, blocked_words)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
        row = await self._fetchone(f"SELECT {_LOG_COLUMNS} FROM logs WHERE id = ?", (log_id,))
        return _review_item(row) if row else None

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

    async def unposted_reviews(self, limit: int = 20) -> list[ReviewItem]:
        """Items without a review card yet (oldest first), skipping ones a live poster has claimed."""
        stale = time.time() - CLAIM_STALE_S
        rows = await self._fetchall(
            f"""
            SELECT {_LOG_COLUMNS} FROM logs
            WHERE review_message_id IS NULL AND decision IS NULL
              AND (review_claimed_at IS NULL OR review_claimed_at < ?)
            ORDER BY id LIMIT ?
            """,
            (stale, limit),
        )
        return [_review_item(r) for r in rows]

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

    # -- export --------------------------------------------------------------------------------

    async def approved_for_export(self, persona_id: str | None = None) -> list[ExportRow]:
        """Approved and edited replies for training, never with an opted-out or forgotten user in them."""
        where = "l.decision IN ('approved', 'edited')"
        params: list[Any] = []
        if persona_id is not None:
            where += " AND l.persona_id = ?"
            params.append(persona_id)
        rows = await self._fetchall(
            f"""
            SELECT {_EXPORT_COLUMNS}
            FROM logs l WHERE {where} AND {_PRIVACY_EXCLUSION}
            ORDER BY l.id
            """,
            params,
        )
        return [_export_row(r) for r in rows]

    async def count_approved_since(self, persona_id: str | None, since_iso: str | None) -> int:
        """How many exportable approvals a persona gained after ``since_iso`` (all of them if None)."""
        where = "l.decision IN ('approved', 'edited')"
        params: list[Any] = []
        if persona_id is not None:
            where += " AND l.persona_id = ?"
            params.append(persona_id)
        if since_iso:
            where += " AND l.decided_at > ?"
            params.append(normalize_iso(since_iso))
        row = await self._fetchone(
            f"SELECT COUNT(*) FROM logs l WHERE {where} AND {_PRIVACY_EXCLUSION}", params
        )
        return int(row[0])

    # -- privacy -------------------------------------------------------------------------------

    async def set_opt_out(self, user_id: int, opted_out: bool) -> None:
        """/optout (True) or /optin (False): an opted-out user's words are never logged or exported."""

        async def body() -> None:
            await self._conn.execute(
                """
                INSERT INTO user_prefs (user_id, opted_out, updated_at) VALUES (?, ?, ?)
                ON CONFLICT (user_id) DO UPDATE SET opted_out = excluded.opted_out,
                                                    updated_at = excluded.updated_at
                """,
                (user_id, int(opted_out), utc_now()),
            )

        await self._write(body)

    async def is_opted_out(self, user_id: int) -> bool:
        """Whether ``user_id`` opted out (False for a user never seen)."""
        row = await self._fetchone("SELECT opted_out FROM user_prefs WHERE user_id = ?", (user_id,))
        return bool(row and row[0])

    async def opted_out_among(self, user_ids: Iterable[int]) -> set[int]:
        """The subset of ``user_ids`` that opted out (one query for a whole conversation)."""
        ids = sorted(set(user_ids))
        if not ids:
            return set()
        rows = await self._fetchall(
            f"SELECT user_id FROM user_prefs WHERE opted_out = 1 AND user_id IN ({','.join('?' * len(ids))})",
            ids,
        )
        return {int(r[0]) for r in rows}

    async def forget_user(self, user_id: int) -> int:
        """Delete every row the user wrote or spoke in; returns how many rows went."""
        return (await self.forget_user_detailed(user_id)).deleted

    async def forget_user_detailed(self, user_id: int) -> ForgetResult:
        """Like :meth:`forget_user`, also naming the review cards that showed the deleted rows.

        The tombstone stays: a reply that was generating during the forget and logs afterwards is
        refused by :meth:`log_reply` and, should it slip in, never exported.
        """

        async def body() -> ForgetResult:
            result = await self._delete_rows(
                """
                SELECT id, review_channel_id, review_message_id FROM logs
                WHERE user_id = ? OR id IN (SELECT log_id FROM log_participants WHERE user_id = ?)
                """,
                (user_id, user_id),
            )
            await self._conn.execute(
                """
                INSERT INTO forgotten_users (user_id, forgotten_at) VALUES (?, ?)
                ON CONFLICT (user_id) DO UPDATE SET forgotten_at = excluded.forgotten_at
                """,
                (user_id, utc_now()),
            )
            return result

        return await self._write(body)

    async def forget_message(self, message_id: int) -> ForgetResult:
        """Delete the rows that answered ``message_id``: its author deleted it on Discord.

        Words taken back must not stay in the review queue or reach training data, whether or not
        the reply was already approved.
        """

        # Discord reports every deleted message, the bot's own notices included: most match no
        # row, and a read answers that without taking the write lock.
        if await self._fetchone("SELECT 1 FROM logs WHERE message_id = ? LIMIT 1", (message_id,)) is None:
            return ForgetResult(0, ())

        async def body() -> ForgetResult:
            return await self._delete_rows(
                "SELECT id, review_channel_id, review_message_id FROM logs WHERE message_id = ?",
                (message_id,),
            )

        return await self._write(body)

    async def _delete_rows(self, select_sql: str, params: tuple[Any, ...]) -> ForgetResult:
        """Delete the rows ``select_sql`` finds (id, review channel, review message), inside a write."""
        async with self._conn.execute(select_sql, params) as cur:
            rows = list(await cur.fetchall())
        ids = [r["id"] for r in rows]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            await self._conn.execute(f"DELETE FROM log_participants WHERE log_id IN ({marks})", chunk)
            await self._conn.execute(f"DELETE FROM logs WHERE id IN ({marks})", chunk)
        cards = tuple(
            (int(r["review_channel_id"]), int(r["review_message_id"]))
            for r in rows
            if r["review_channel_id"] is not None and r["review_message_id"] is not None
        )
        return ForgetResult(len(ids), cards)

    async def stats(self) -> dict[str, int]:
        """Counts for /status: logged, awaiting decision, decided."""
        row = await self._fetchone(
            "SELECT COUNT(*) AS logged, SUM(decision IS NULL) AS undecided, "
            "SUM(decision IS NOT NULL) AS decided, SUM(status = 'blocked') AS blocked FROM logs"
        )
        return {name: int(row[name] or 0) for name in ("logged", "undecided", "decided", "blocked")}


def _from_row(row_type: type[R], row: sqlite3.Row, decoded: dict[str, Any]) -> R:
    """Build ``row_type`` from ``row`` by column name; ``decoded`` overrides fields parsed from JSON.

    Raises IndexError naming the column when the SELECT lacks one of the dataclass's fields.
    """
    return row_type(
        **{f.name: decoded[f.name] if f.name in decoded else row[f.name] for f in fields(row_type)}
    )


def _review_item(row: sqlite3.Row) -> ReviewItem:
    """A ``logs`` row selected with :data:`_LOG_COLUMNS` as a :class:`ReviewItem`."""
    return _from_row(
        ReviewItem,
        row,
        {
            "params": json.loads(row["params"] or "{}"),
            "blocked_words": tuple(json.loads(row["blocked_words"] or "[]")),
        },
    )


def _export_row(row: sqlite3.Row) -> ExportRow:
    """A ``logs`` row selected with :data:`_EXPORT_COLUMNS` as an :class:`ExportRow`."""
    return _from_row(ExportRow, row, {"params": json.loads(row["params"] or "{}")})
