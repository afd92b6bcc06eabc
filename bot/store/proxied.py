"""Proxied messages: which member wrote a message a proxy bot (PluralKit, Tupperbox) reposted
through its webhook. The repost is the message that stays on Discord; its author on Discord is a
webhook, so this table is how history, reply chains, /forget and opt-out reach the member."""

from __future__ import annotations

from collections.abc import Iterable

from bot.store.rows import utc_now
from bot.store.sqlite_db import SqliteDatabase


class ProxiedStore(SqliteDatabase):
    """The proxied-message half of :class:`bot.store.store.Store` (same database, same connections)."""

    async def record_proxied(
        self, message_id: int, original_id: int, user_id: int, channel_id: int | None
    ) -> None:
        """Record that repost ``message_id`` carries the words of ``user_id``'s ``original_id``."""

        async def body() -> None:
            await self._conn.execute(
                """
                INSERT INTO proxied_messages (message_id, original_id, user_id, channel_id, created_at)
                VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (message_id) DO NOTHING
                """,
                (message_id, original_id, user_id, channel_id, utc_now()),
            )

        await self._write(body)

    async def proxied_authors(self, message_ids: Iterable[int]) -> dict[int, int]:
        """The member behind each proxied repost among ``message_ids`` (others are left out)."""
        ids = sorted(set(message_ids))
        found: dict[int, int] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self._fetchall(
                f"SELECT message_id, user_id FROM proxied_messages WHERE message_id IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update({int(r["message_id"]): int(r["user_id"]) for r in rows})
        return found

    async def move_message(self, old_id: int, new_id: int) -> int:
        """Log rows that answered ``old_id`` now answer ``new_id`` (a proxy reposted the message and
        deleted the original); returns how many rows moved."""

        async def body() -> int:
            cur = await self._conn.execute(
                "UPDATE logs SET message_id = ? WHERE message_id = ?", (new_id, old_id)
            )
            return cur.rowcount

        return await self._write(body)
