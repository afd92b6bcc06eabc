"""One SQLite database file for asyncio code: a write connection, a read connection, retries.

Why it is built this way:

* WAL mode and ``busy_timeout`` let the bot and the trainer use one file at once; a write that
  still meets ``database is locked`` is retried with backoff, so a busy moment loses nothing.
* One write connection and one asyncio lock around every write: statements of two coroutines
  never interleave inside one transaction; a transaction once begun always ends.
* Reads have a connection (and lock) of their own: in WAL mode a reader never waits for a writer,
  so a write that is itself waiting for another process's lock (the trainer, a backup) does not
  hold up a read. Interactive code bounds its reads with :func:`within` and says "busy" rather
  than miss Discord's 3-second deadline.
* Migrations (``bot/store/migrations.py``) run at open, inside one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite

from bot.store.migrations import LATEST_VERSION, MIGRATIONS
from bot.store.rows import utc_now
from bot.store.text_binding import TextSafeConnection

log = logging.getLogger(__name__)
T = TypeVar("T")
# How long a read may take before an interaction has been answered: Discord allows 3 s from the
# click to the first response, and delivery and the response itself need some of that.
INTERACTIVE_READ_S = 1.5


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


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteDatabase:
    """Async access to one database file; open with :meth:`open`, close with :meth:`close`.

    Every read and write raises StoreError once closed, and sqlite3.OperationalError when the
    database stays locked through all retries (or fails otherwise).
    """

    def __init__(
        self, conn: aiosqlite.Connection, path: Path, *, max_attempts: int, base_delay_s: float
    ) -> None:
        # Every statement binds storable text only (a lone surrogate would fail the bind).
        self._conn = TextSafeConnection(conn)
        self.path = path
        self._lock = asyncio.Lock()
        # Until open() adds a read connection (never for ":memory:", which is private to one
        # connection), reads share the write connection and its lock.
        self._reader = self._conn
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
    ) -> Self:
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
            if store._reader is not store._conn:
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
        self._reader = TextSafeConnection(reader)
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
