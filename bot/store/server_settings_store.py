"""The store's half for settings per Discord server: read them, change them (each change recorded
with who made it), and the one notice a server not on the allow-list gets.

Why it is built this way:

* A change is a compare-and-set inside one write transaction: the caller says which value it saw
  (``expected``), and when another admin changed the setting since, nothing is written and the
  caller learns who set what stands. Two admins at once: one change wins, the other is told.
* Adding to or removing from a list is read-modify-write inside one transaction, so two admins
  adding different roles at once both keep theirs.
* The change and its record are written in the same transaction: no change without its record.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bot.store.rows import utc_now
from bot.store.server_settings import (
    LIST_KEYS,
    MAX_LIST_IDS,
    SETTING_KEYS,
    ServerSettingsRow,
    SettingChange,
    SettingOutcome,
    SettingValue,
    check_value,
    column_value,
    encode_value,
    row_from_columns,
)
from bot.store.sqlite_db import SqliteDatabase

_ROW_COLUMNS = "guild_id, " + ", ".join(SETTING_KEYS) + ", updated_at"
_CHANGE_COLUMNS = "guild_id, setting, old_value, new_value, changed_by, changed_at"


class _Unset:
    """The caller did not say which value it saw: the change is not compared."""


UNSET: Any = _Unset()


class ServerSettingsStore(SqliteDatabase):
    """Per-server settings in the same database (see :class:`bot.store.store.Store`)."""

    async def server_settings(self, guild_id: int) -> ServerSettingsRow | None:
        """The settings ``guild_id`` set itself, or None (it uses the operator's defaults)."""
        row = await self._fetchone(
            f"SELECT {_ROW_COLUMNS} FROM server_settings WHERE guild_id = ?", (guild_id,)
        )
        return row_from_columns(dict(row)) if row is not None else None

    async def all_server_settings(self) -> dict[int, ServerSettingsRow]:
        """Every server's own settings by guild id (the bot reads them once at start-up)."""
        rows = await self._fetchall(f"SELECT {_ROW_COLUMNS} FROM server_settings")
        found = [row_from_columns(dict(r)) for r in rows]
        return {row.guild_id: row for row in found}

    async def server_setting_changes(self, guild_id: int, limit: int = 5) -> list[SettingChange]:
        """The newest ``limit`` recorded changes of ``guild_id``'s settings, newest first."""
        rows = await self._fetchall(
            f"SELECT {_CHANGE_COLUMNS} FROM server_setting_changes WHERE guild_id = ? "
            "ORDER BY id DESC LIMIT ?",
            (guild_id, limit),
        )
        return [SettingChange(**dict(r)) for r in rows]

    async def change_server_setting(
        self,
        guild_id: int,
        key: str,
        value: SettingValue,
        changed_by: int,
        *,
        expected: SettingValue = UNSET,
    ) -> SettingOutcome:
        """Set ``key`` to ``value`` for ``guild_id`` (None: back to the operator's default).

        With ``expected`` (the value the caller saw), a setting changed since is left alone and
        the outcome says ``conflict``. Raises ValueError for an unknown key or a value it cannot
        hold (see :func:`~bot.store.server_settings.check_value`).
        """
        check_value(key, value)

        async def body() -> SettingOutcome:
            current = await self._read_row(guild_id)
            previous = current.value(key)
            if _normal(key, previous) == _normal(key, value):
                return SettingOutcome(
                    current, False, previous, last_change=await self._last_change(guild_id, key)
                )
            if expected is not UNSET and _normal(key, previous) != _normal(key, expected):
                return SettingOutcome(
                    current,
                    False,
                    previous,
                    conflict=True,
                    last_change=await self._last_change(guild_id, key),
                )
            return await self._apply(guild_id, key, previous, value, changed_by)

        return await self._write(body)

    async def edit_server_list(
        self,
        guild_id: int,
        key: str,
        changed_by: int,
        *,
        add: Iterable[int] = (),
        remove: Iterable[int] = (),
        defaults: tuple[int, ...] = (),
    ) -> SettingOutcome:
        """Add ids to, or remove them from, the list setting ``key`` in one transaction.

        A server that never set the list starts from ``defaults`` (the operator's list). Raises
        ValueError for a key that is not a list, or a list that would grow past MAX_LIST_IDS.
        """
        if key not in LIST_KEYS:
            raise ValueError(f"{key!r} is not a list setting")
        adding, removing = [int(i) for i in add], {int(i) for i in remove}

        async def body() -> SettingOutcome:
            current = await self._read_row(guild_id)
            previous = current.value(key)
            start = previous if isinstance(previous, tuple) else tuple(defaults)
            wanted = tuple(sorted({*start, *adding} - removing))
            if len(wanted) > MAX_LIST_IDS:
                raise ValueError(f"{key}: at most {MAX_LIST_IDS} ids")
            if _normal(key, start) == _normal(key, wanted):
                return SettingOutcome(
                    current, False, previous, last_change=await self._last_change(guild_id, key)
                )
            return await self._apply(guild_id, key, previous, wanted, changed_by)

        return await self._write(body)

    async def claim_server_notice(self, guild_id: int) -> bool:
        """True the first time it is asked for ``guild_id`` (send the notice), False ever after."""

        async def body() -> bool:
            cur = await self._conn.execute(
                "INSERT OR IGNORE INTO server_notices (guild_id, noticed_at) VALUES (?, ?)",
                (guild_id, utc_now()),
            )
            return cur.rowcount == 1

        return await self._write(body)

    # -- inside a write transaction ----------------------------------------------------------------

    async def _read_row(self, guild_id: int) -> ServerSettingsRow:
        async with self._conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM server_settings WHERE guild_id = ?", (guild_id,)
        ) as cur:
            row = await cur.fetchone()
        return row_from_columns(dict(row)) if row is not None else ServerSettingsRow(guild_id)

    async def _last_change(self, guild_id: int, key: str) -> SettingChange | None:
        async with self._conn.execute(
            f"SELECT {_CHANGE_COLUMNS} FROM server_setting_changes WHERE guild_id = ? AND setting = ? "
            "ORDER BY id DESC LIMIT 1",
            (guild_id, key),
        ) as cur:
            row = await cur.fetchone()
        return SettingChange(**dict(row)) if row is not None else None

    async def _apply(
        self, guild_id: int, key: str, previous: SettingValue, value: SettingValue, changed_by: int
    ) -> SettingOutcome:
        assert key in SETTING_KEYS  # a column name, never user input
        now = utc_now()
        await self._conn.execute(
            f"""
            INSERT INTO server_settings (guild_id, {key}, updated_at) VALUES (?, ?, ?)
            ON CONFLICT (guild_id) DO UPDATE SET {key} = excluded.{key}, updated_at = excluded.updated_at
            """,
            (guild_id, column_value(key, value), now),
        )
        change = SettingChange(
            guild_id, key, encode_value(key, previous), encode_value(key, value), changed_by, now
        )
        await self._conn.execute(
            f"INSERT INTO server_setting_changes ({_CHANGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (change.guild_id, key, change.old_value, change.new_value, changed_by, now),
        )
        return SettingOutcome(await self._read_row(guild_id), True, previous, last_change=change)


def _normal(key: str, value: SettingValue) -> Any:
    """A value in one comparable form (lists as sorted sets, ids as ints)."""
    if value is None:
        return None
    if key in LIST_KEYS and isinstance(value, tuple):
        return tuple(sorted({int(v) for v in value}))
    return value
