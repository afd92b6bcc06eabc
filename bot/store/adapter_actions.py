"""Moderators' adapter moves from Discord (``/adapter promote|rollback|canary-start|canary-stop``),
each recorded once: the interaction id is unique, so a command that reaches the bot twice (a
retried delivery, two processes) is carried out once, and the record outlives restarts.

The pointers themselves live on disk (``bot/model/rollout.py``, with its own history of every
move from any source); this table says which moderator asked for what, and what came of it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from bot.store.rows import utc_now
from bot.store.sqlite_db import SqliteDatabase

OUTCOMES = ("pending", "moved", "unchanged", "refused", "failed")


@dataclass(frozen=True)
class AdapterAction:
    id: int
    interaction_id: int
    created_at: str
    guild_id: int | None
    channel_id: int | None
    moderator_id: int
    persona_id: str
    action: str
    requested_version: str | None
    forced: bool
    outcome: str
    from_version: str | None
    to_version: str | None
    message: str | None
    finished_at: str | None


_COLUMNS = (
    "id, interaction_id, created_at, guild_id, channel_id, moderator_id, persona_id, action, "
    "requested_version, forced, outcome, from_version, to_version, message, finished_at"
)


def _action(row) -> AdapterAction:
    # By column name (as bot/store/rows.py reads every row), never by position.
    return AdapterAction(
        **{f.name: row[f.name] for f in fields(AdapterAction)} | {"forced": bool(row["forced"])}
    )


class AdapterActionStore(SqliteDatabase):
    """The adapter-move half of :class:`bot.store.store.Store` (same database, same connections)."""

    async def claim_adapter_action(
        self,
        interaction_id: int,
        *,
        guild_id: int | None,
        channel_id: int | None,
        moderator_id: int,
        persona_id: str,
        action: str,
        requested_version: str | None,
        forced: bool = False,
    ) -> tuple[AdapterAction, bool]:
        """Record a moderator's command; returns (its record, True) the first time, and
        (the record already there, False) for an interaction seen before."""

        async def body() -> tuple[AdapterAction, bool]:
            cur = await self._conn.execute(
                """
                INSERT OR IGNORE INTO adapter_actions (interaction_id, created_at, guild_id, channel_id,
                    moderator_id, persona_id, action, requested_version, forced)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    interaction_id,
                    utc_now(),
                    guild_id,
                    channel_id,
                    moderator_id,
                    persona_id,
                    action,
                    requested_version,
                    int(forced),
                ),
            )
            async with self._conn.execute(
                f"SELECT {_COLUMNS} FROM adapter_actions WHERE interaction_id = ?", (interaction_id,)
            ) as read:
                row = await read.fetchone()
            return _action(row), cur.rowcount == 1

        return await self._write(body)

    async def finish_adapter_action(
        self,
        action_id: int,
        outcome: str,
        message: str,
        from_version: str | None = None,
        to_version: str | None = None,
    ) -> None:
        """Write what came of a recorded command (once: a finished record is not changed again)."""
        if outcome not in OUTCOMES[1:]:
            raise ValueError(f"outcome must be one of {OUTCOMES[1:]}, not {outcome!r}")

        async def body() -> None:
            await self._conn.execute(
                """
                UPDATE adapter_actions SET outcome = ?, message = ?, from_version = ?, to_version = ?,
                    finished_at = ?
                WHERE id = ? AND outcome = 'pending'
                """,
                (outcome, message, from_version, to_version, utc_now(), action_id),
            )

        await self._write(body)

    async def adapter_actions(self, persona_id: str | None = None, limit: int = 20) -> list[AdapterAction]:
        """The newest recorded commands first, for one persona or all."""
        where, params = ("WHERE persona_id = ?", [persona_id]) if persona_id else ("", [])
        rows = await self._fetchall(
            f"SELECT {_COLUMNS} FROM adapter_actions {where} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [_action(r) for r in rows]
