"""What leaves the store for training, and what users' privacy choices remove from it.

Privacy is enforced where data leaves: :meth:`PrivacyStore.approved_for_export` never returns a
row in which an opted-out or forgotten user took part, nor one from a Discord server that does
not allow training (:func:`training_allowed`), whatever else happened before. ``/forget`` and a
deleted message remove rows (and say which review cards showed them).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from bot.store.heldout import is_heldout
from bot.store.rows import EXPORT_COLUMNS, ExportRow, ForgetResult, export_row, normalize_iso, utc_now
from bot.store.sqlite_db import SqliteDatabase

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


def training_allowed(listed_servers: Collection[int]) -> tuple[str, list[Any]]:
    """A WHERE condition on ``logs l``: the row's server allows training. Returns (sql, params).

    ``listed_servers`` is ``discord.allowed_servers``. A row without a server (a trainer
    candidate) always may; a server's own ``training`` setting decides, else the default: on for
    a listed server, off otherwise. With a non-empty list, a server not on it (no longer served)
    never trains. The rule is :func:`bot.store.server_settings.resolve`'s, in SQL.
    """
    listed = sorted({int(g) for g in listed_servers})
    marks = ",".join("?" * len(listed))
    served = f"l.guild_id IN ({marks})" if listed else "1"
    default = f"(l.guild_id IN ({marks}))" if listed else "0"
    sql = f"""
        (l.guild_id IS NULL OR (
            {served}
            AND COALESCE((SELECT s.training FROM server_settings s WHERE s.guild_id = l.guild_id), {default}) = 1
        ))
    """
    return sql, [*listed, *listed]


APPROVED = "l.decision IN ('approved', 'edited')"


class PrivacyStore(SqliteDatabase):
    """The export and privacy half of :class:`bot.store.store.Store` (same database, same connections)."""

    # -- export --------------------------------------------------------------------------------
    # ``listed_servers`` is ``discord.allowed_servers`` everywhere below (see training_allowed).

    async def approved_for_export(
        self, persona_id: str | None = None, *, listed_servers: Collection[int] = ()
    ) -> list[ExportRow]:
        """Approved and edited replies for training: never with an opted-out or forgotten user in
        them, never from a server that does not allow training."""
        return await self._exportable(APPROVED, persona_id, listed_servers)

    async def decisions_for_export(
        self, persona_id: str | None = None, *, listed_servers: Collection[int] = ()
    ) -> list[ExportRow]:
        """Every decided reply and every word-filter block (decided or not), for preference
        training, under exactly the rules of :meth:`approved_for_export`; oldest first."""
        return await self._exportable(
            "(l.decision IS NOT NULL OR l.status = 'blocked')", persona_id, listed_servers
        )

    async def count_preference_decisions(
        self, persona_id: str | None, *, listed_servers: Collection[int] = ()
    ) -> int:
        """How many contrasting decisions (rejections, edits, undecided word-filter blocks) a
        persona has for the preference stage: exportable and outside the held-out split."""
        rows = await self._exportable(
            "(l.decision IN ('rejected', 'edited') OR (l.status = 'blocked' AND l.decision IS NULL))",
            persona_id,
            listed_servers,
        )
        return sum(not is_heldout(r.log_id) for r in rows)

    async def count_approved_since(
        self, persona_id: str | None, since_iso: str | None, *, listed_servers: Collection[int] = ()
    ) -> int:
        """How many exportable approvals a persona gained after ``since_iso`` (all of them if None)."""
        where, params = self._exportable_where(APPROVED, persona_id, listed_servers)
        if since_iso:
            where += " AND l.decided_at > ?"
            params.append(normalize_iso(since_iso))
        row = await self._fetchone(f"SELECT COUNT(*) FROM logs l WHERE {where}", params)
        return int(row[0])

    async def count_held_back_by_servers(
        self, persona_id: str | None = None, *, listed_servers: Collection[int] = ()
    ) -> int:
        """Approvals an export leaves out only because their server does not allow training (so
        ``export-reviews`` can say why a file is shorter than the approvals moderators made)."""
        allowed, allowed_params = training_allowed(listed_servers)
        where = f"{APPROVED} AND {_PRIVACY_EXCLUSION} AND NOT {allowed}"
        params: list[Any] = list(allowed_params)
        if persona_id is not None:
            where += " AND l.persona_id = ?"
            params.append(persona_id)
        row = await self._fetchone(f"SELECT COUNT(*) FROM logs l WHERE {where}", params)
        return int(row[0])

    async def _exportable(
        self, where: str, persona_id: str | None, listed_servers: Collection[int]
    ) -> list[ExportRow]:
        """The one path every training export takes (see :meth:`_exportable_where`)."""
        where, params = self._exportable_where(where, persona_id, listed_servers)
        rows = await self._fetchall(
            f"SELECT {EXPORT_COLUMNS} FROM logs l WHERE {where} ORDER BY l.id", params
        )
        return [export_row(r) for r in rows]

    @staticmethod
    def _exportable_where(
        where: str, persona_id: str | None, listed_servers: Collection[int]
    ) -> tuple[str, list[Any]]:
        """``where`` (SQL on ``logs l``) narrowed to a persona and to rows no privacy rule
        withholds and whose server allows training. Returns (sql, params). A new rule goes here
        and so reaches every export and every count at once."""
        allowed, allowed_params = training_allowed(listed_servers)
        sql = f"{where} AND {_PRIVACY_EXCLUSION} AND {allowed}"
        params: list[Any] = list(allowed_params)
        if persona_id is not None:
            sql += " AND l.persona_id = ?"
            params.append(persona_id)
        return sql, params

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
            # Which reply buttons they pressed is theirs too.
            await self._conn.execute("DELETE FROM reply_presses WHERE user_id = ?", (user_id,))
            # Which proxied reposts were theirs is their data too.
            await self._conn.execute("DELETE FROM proxied_messages WHERE user_id = ?", (user_id,))
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
        found = await self._fetchone(
            "SELECT 1 FROM logs WHERE message_id = ? UNION ALL SELECT 1 FROM proxied_messages WHERE message_id = ?",
            (message_id, message_id),
        )
        if found is None:
            return ForgetResult(0, ())

        async def body() -> ForgetResult:
            await self._conn.execute("DELETE FROM proxied_messages WHERE message_id = ?", (message_id,))
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
