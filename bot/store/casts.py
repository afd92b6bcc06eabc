"""Who answers in a channel: its cast of personas, in order (the first is the lead).

Discord-free, part of :class:`bot.store.store.Store`. A channel (a thread or a forum post is a
channel too) either has a cast of its own, set with ``/persona`` or ``/cast`` (an empty cast,
``/persona off``, counts as set), or none, and then a thread takes its parent's (see
:func:`bot.chatflow.cast.effective_cast`). ``channel_state.persona_id`` is kept equal to the lead
in the same transaction, so "the channel's persona" still has one answer.

Changes are single write transactions that read the cast they change, so two members adding
personas at the same moment both land, and the size limit holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.store.rows import utc_now
from bot.store.sqlite_db import SqliteDatabase

MAX_CAST = 8  # personas in one channel's cast: each speaks in turn, so more only crowds the channel


# One read, so the "set here" flag and the members come from the same snapshot.
_CAST_SQL = """
    SELECT s.cast_set AS cast_set, c.persona_id AS persona_id
    FROM channel_state s LEFT JOIN channel_cast c ON c.channel_id = s.channel_id
    WHERE s.channel_id = ? ORDER BY c.position
"""


def _cast_of(rows: list[Any]) -> tuple[str, ...] | None:
    if not rows or not rows[0]["cast_set"]:
        return None
    return tuple(str(r["persona_id"]) for r in rows if r["persona_id"] is not None)


class CastFullError(ValueError):
    """The cast already has :data:`MAX_CAST` members; the message is fit for the user."""


@dataclass(frozen=True)
class CastChange:
    """A cast before and after a change; ``changed`` is False when it was already so."""

    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.before != self.after


class CastStore(SqliteDatabase):
    """The cast half of :class:`bot.store.store.Store` (same database, same connections)."""

    async def channel_cast(self, channel_id: int) -> tuple[str, ...] | None:
        """The persona ids of the cast set in ``channel_id`` itself, lead first; ``()`` when it was
        set to none (``/persona off``); None when never set here (a thread then inherits)."""
        return _cast_of(await self._fetchall(_CAST_SQL, (channel_id,)))

    async def set_cast(self, channel_id: int, persona_ids: Sequence[str]) -> CastChange:
        """Make ``persona_ids`` (lead first, duplicates dropped) the cast of ``channel_id``.

        Raises CastFullError for more than :data:`MAX_CAST` personas.
        """
        wanted = tuple(dict.fromkeys(persona_ids))
        if len(wanted) > MAX_CAST:
            raise CastFullError(f"A cast holds at most {MAX_CAST} personas.")

        async def body() -> CastChange:
            before = await self._own_cast(channel_id)
            await self._write_cast(channel_id, wanted)
            return CastChange(before or (), wanted)

        return await self._write(body)

    async def add_to_cast(
        self, channel_id: int, persona_id: str, inherited: Sequence[str] = ()
    ) -> CastChange:
        """Add ``persona_id`` at the end of ``channel_id``'s cast (the lead when it is the first).

        A channel without a cast of its own starts from ``inherited`` (a thread: its parent's
        cast), so adding to a thread keeps who already answered there. Raises CastFullError.
        """

        async def body() -> CastChange:
            own = await self._own_cast(channel_id)
            before = own if own is not None else tuple(inherited)
            if persona_id in before:
                await self._write_cast(channel_id, before)  # now set here, even if inherited before
                return CastChange(before, before)
            if len(before) >= MAX_CAST:
                raise CastFullError(f"This cast already has {MAX_CAST} personas; remove one first.")
            after = (*before, persona_id)
            await self._write_cast(channel_id, after)
            return CastChange(before, after)

        return await self._write(body)

    async def remove_from_cast(
        self, channel_id: int, persona_id: str, inherited: Sequence[str] = ()
    ) -> CastChange:
        """Take ``persona_id`` out of ``channel_id``'s cast; the next one leads if it was the lead.

        Like :meth:`add_to_cast`, a channel without a cast of its own starts from ``inherited``.
        """

        async def body() -> CastChange:
            own = await self._own_cast(channel_id)
            before = own if own is not None else tuple(inherited)
            if persona_id not in before:
                return CastChange(before, before)
            after = tuple(p for p in before if p != persona_id)
            await self._write_cast(channel_id, after)
            return CastChange(before, after)

        return await self._write(body)

    # -- inside a write transaction --------------------------------------------------------------

    async def _own_cast(self, channel_id: int) -> tuple[str, ...] | None:
        """:meth:`channel_cast`, read on the write connection (inside the running transaction)."""
        async with self._conn.execute(_CAST_SQL, (channel_id,)) as cur:
            return _cast_of(list(await cur.fetchall()))

    async def _write_cast(self, channel_id: int, persona_ids: tuple[str, ...]) -> None:
        now = utc_now()
        await self._conn.execute("DELETE FROM channel_cast WHERE channel_id = ?", (channel_id,))
        await self._conn.executemany(
            "INSERT INTO channel_cast (channel_id, persona_id, position, added_at) VALUES (?, ?, ?, ?)",
            [(channel_id, pid, position, now) for position, pid in enumerate(persona_ids)],
        )
        await self._conn.execute(
            """
            INSERT INTO channel_state (channel_id, persona_id, updated_at, cast_set) VALUES (?, ?, ?, 1)
            ON CONFLICT (channel_id) DO UPDATE SET persona_id = excluded.persona_id,
                                                   updated_at = excluded.updated_at, cast_set = 1
            """,
            (channel_id, persona_ids[0] if persona_ids else None, now),
        )
