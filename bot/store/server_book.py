"""Every Discord server's settings, read once from the store and kept current by the changes made
through this book: the bot resolves a server's settings on every message and every check, and a
read from memory never waits for a busy database.

Only the bot process changes server settings (``/settings``), so this copy cannot go stale; the
trainer reads the database itself (:func:`bot.store.privacy.training_allowed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from bot.config import Settings
from bot.store.server_settings import (
    ServerSettings,
    ServerSettingsRow,
    SettingChange,
    SettingOutcome,
    SettingValue,
    resolve,
)
from bot.store.sqlite_db import StoreError
from bot.store.store import Store


class ServerSettingsBook:
    """Resolved settings per server. ``settings()`` gives the current TOML settings (read at each
    use, so a changed default applies); ``store`` is None for a bot without a database, which then
    serves every server with the defaults."""

    def __init__(self, settings: Callable[[], Settings], store: Store | None) -> None:
        self._settings = settings
        self.store = store
        self._rows: dict[int, ServerSettingsRow] = {}

    async def load(self) -> None:
        """Read every server's settings from the store (at start-up: they survive restarts)."""
        if self.store is not None:
            self._rows = await self.store.all_server_settings()

    def get(self, guild_id: int) -> ServerSettings:
        """``guild_id``'s settings: its own where it set them, the operator's defaults elsewhere."""
        return resolve(self._settings(), guild_id, self._rows.get(guild_id))

    def row(self, guild_id: int) -> ServerSettingsRow:
        """What ``guild_id`` set itself (every value None: nothing)."""
        return self._rows.get(guild_id) or ServerSettingsRow(guild_id)

    async def change(self, guild_id: int, key: str, value: SettingValue, changed_by: int) -> SettingOutcome:
        """Set ``key`` (None: back to the default), unless another change landed since this book
        last saw the setting: then nothing is written and the outcome says ``conflict``.

        Raises ValueError for a value the setting cannot hold, StoreError without a database, and
        what the store raises when the database stays locked.
        """
        store = self._need_store()
        outcome = await store.change_server_setting(
            guild_id, key, value, changed_by, expected=self.row(guild_id).value(key)
        )
        self.remember(outcome.row)
        return outcome

    async def edit_list(
        self, guild_id: int, key: str, changed_by: int, *, add: Iterable[int] = (), remove: Iterable[int] = ()
    ) -> SettingOutcome:
        """Add ids to or remove them from list setting ``key``; a server that never set it starts
        from the operator's list. Raises like :meth:`change`."""
        store = self._need_store()
        defaults: tuple[int, ...] = getattr(self._settings().discord, key)
        outcome = await store.edit_server_list(
            guild_id, key, changed_by, add=add, remove=remove, defaults=defaults
        )
        self.remember(outcome.row)
        return outcome

    def remember(self, row: ServerSettingsRow) -> None:
        """Keep ``row`` as its server's settings (what the store holds for it now)."""
        self._rows[row.guild_id] = row

    async def changes(self, guild_id: int, limit: int = 5) -> list[SettingChange]:
        """The newest recorded changes of ``guild_id``'s settings (none without a database)."""
        return await self.store.server_setting_changes(guild_id, limit) if self.store is not None else []

    def _need_store(self) -> Store:
        if self.store is None:
            raise StoreError("there is no database to keep the settings in")
        return self.store
