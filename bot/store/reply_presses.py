"""Members' buttons on persona replies, as the store records them: each press counts once, and a
regenerated-away reply keeps its own label.

Discord-free, part of :class:`bot.store.store.Store`.

* A press is a row whose primary key is (action, the message carrying the button): of two
  presses at once, in one process or two, or before and after a restart, exactly one inserts
  it and the other learns who pressed first (the same idea as a review decision's atomic update).
* A reply replaced through Regenerate is marked in its own columns (``regenerated_by``,
  ``regenerated_at``; the new row's ``replaces`` names it). ``decision`` is left alone: a
  member asking for another answer is a weak preference signal, never a moderator's rejection,
  and the learning loop's export can tell the two apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bot.store.rows import LOG_COLUMNS, ReviewItem, review_item, utc_now
from bot.store.sqlite_db import SqliteDatabase

REGENERATE = "regenerate"


@dataclass(frozen=True)
class PressOutcome:
    """The press that stands for a button; ``won`` is False when it was someone else's (or an
    earlier press of the same member's)."""

    won: bool
    user_id: int
    pressed_at: str


class ReplyPressStore(SqliteDatabase):
    """The reply-button half of :class:`bot.store.store.Store` (same database, same connections)."""

    async def record_press(self, action: str, message_id: int, user_id: int) -> PressOutcome:
        """Record ``user_id`` pressing ``action`` on the reply message ``message_id``, once."""
        now = utc_now()

        async def body() -> PressOutcome:
            cur = await self._conn.execute(
                "INSERT OR IGNORE INTO reply_presses (action, message_id, user_id, pressed_at) "
                "VALUES (?, ?, ?, ?)",
                (action, message_id, user_id, now),
            )
            won = cur.rowcount == 1
            async with self._conn.execute(
                "SELECT user_id, pressed_at FROM reply_presses WHERE action = ? AND message_id = ?",
                (action, message_id),
            ) as read:
                row = await read.fetchone()
            return PressOutcome(won, int(row["user_id"]), str(row["pressed_at"]))

        return await self._write(body)

    async def release_press(self, action: str, message_id: int) -> None:
        """Forget a press whose action could not be carried out, so the button may be pressed again."""

        async def body() -> None:
            await self._conn.execute(
                "DELETE FROM reply_presses WHERE action = ? AND message_id = ?", (action, message_id)
            )

        await self._write(body)

    async def review_for_messages(self, message_ids: Iterable[int]) -> ReviewItem | None:
        """The live log row whose reply was posted as one of ``message_ids`` (a reply split over
        several messages records its first), or None (not logged: opt-out, or the database refused)."""
        ids = sorted(set(message_ids))
        if not ids:
            return None
        row = await self._fetchone(
            f"SELECT {LOG_COLUMNS} FROM logs WHERE origin = 'live' AND reply_message_id IN "
            f"({','.join('?' * len(ids))}) ORDER BY id DESC LIMIT 1",
            ids,
        )
        return review_item(row) if row else None

    async def mark_regenerated(self, log_id: int, user_id: int) -> bool:
        """Label ``log_id`` as replaced through Regenerate by ``user_id``; False if it was already
        (or the row is gone). Leaves any moderator's decision as it is."""

        async def body() -> bool:
            cur = await self._conn.execute(
                "UPDATE logs SET regenerated_by = ?, regenerated_at = ? WHERE id = ? AND regenerated_by IS NULL",
                (user_id, utc_now(), log_id),
            )
            return cur.rowcount == 1

        return await self._write(body)
