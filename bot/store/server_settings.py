"""Settings per Discord server: the stored row, and what a server ends up with once the operator's
defaults (``oshaberi.toml``) fill what it did not set.

Discord-free: the bot resolves a server's settings here, the trainer decides here which servers'
replies may train. The row is :class:`ServerSettingsRow` (``None``: not set, the default applies);
:func:`resolve` gives the :class:`ServerSettings` every check, card and command reads.

Which servers are served, and which train by default (``discord.allowed_servers``):

* empty list: every server is served; none trains until its admins run ``/settings training on``
  (servers whose replies a database already held when it was upgraded were switched on by the
  migration, so an existing deployment keeps training with no operator action);
* a list: only those servers are served, and they train unless they switch it off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bot.config import DiscordSettings, Settings

# The settings a server may change, in the order /settings show lists them.
SETTING_KEYS: tuple[str, ...] = (
    "review_channel",
    "moderator_role",
    "default_persona",
    "allowed_roles",
    "allowed_channels",
    "training",
)
LIST_KEYS: frozenset[str] = frozenset({"allowed_roles", "allowed_channels"})
# Most ids one list may hold: an allow-list longer than this is a mistake, and a row stays small.
MAX_LIST_IDS = 50

SettingValue = int | str | bool | tuple[int, ...] | None


@dataclass(frozen=True)
class ServerSettingsRow:
    """One server's own settings as stored; ``None`` means "not set: the operator's default"."""

    guild_id: int
    review_channel: int | None = None
    moderator_role: int | None = None
    default_persona: str | None = None
    allowed_roles: tuple[int, ...] | None = None
    allowed_channels: tuple[int, ...] | None = None
    training: bool | None = None
    updated_at: str | None = None

    def value(self, key: str) -> SettingValue:
        """The stored value of setting ``key`` (one of :data:`SETTING_KEYS`); raises KeyError otherwise."""
        if key not in SETTING_KEYS:
            raise KeyError(key)
        result: SettingValue = getattr(self, key)
        return result


@dataclass(frozen=True)
class SettingChange:
    """One recorded change: who (None: the schema migration), when (UTC ISO 8601), from what to what.

    Values are as :func:`encode_value` writes them (``None``: back to the default)."""

    guild_id: int
    setting: str
    old_value: str | None
    new_value: str | None
    changed_by: int | None
    changed_at: str


@dataclass(frozen=True)
class SettingOutcome:
    """What a change did. ``changed`` False: nothing was written, because the setting already had
    that value (``conflict`` False) or because someone else changed it since the caller looked
    (``conflict`` True); ``last_change`` then says who set what stands."""

    row: ServerSettingsRow
    changed: bool
    previous: SettingValue
    conflict: bool = False
    last_change: SettingChange | None = None


@dataclass(frozen=True)
class ServerSettings:
    """What a server ends up with: its own settings, the operator's defaults for the rest.

    ``own`` names the settings the server set itself. Channel and role ids are Discord snowflakes;
    ``review_channel`` and ``moderator_role`` are 0 when there is none.
    """

    guild_id: int
    served: bool
    review_channel: int
    moderator_role: int
    default_persona: str
    allowed_roles: tuple[int, ...]
    allowed_channels: tuple[int, ...]
    training: bool
    owner_ids: tuple[int, ...] = ()
    own: frozenset[str] = field(default_factory=frozenset)

    def value(self, key: str) -> SettingValue:
        """The value in force for ``key`` (one of :data:`SETTING_KEYS`)."""
        if key not in SETTING_KEYS:
            raise KeyError(key)
        result: SettingValue = getattr(self, key)
        return result


def is_served(discord: DiscordSettings, guild_id: int) -> bool:
    """Whether the bot works in ``guild_id``: on ``discord.allowed_servers``, or that list is empty."""
    return not discord.allowed_servers or guild_id in discord.allowed_servers


def training_default(discord: DiscordSettings, guild_id: int) -> bool:
    """A server's ``training`` when it set none: on for a server the operator lists, off otherwise."""
    return guild_id in discord.allowed_servers


def resolve(settings: Settings, guild_id: int, row: ServerSettingsRow | None) -> ServerSettings:
    """``guild_id``'s settings: ``row``'s values where set, ``settings`` (the TOML) elsewhere.

    A server that is not served never trains, whatever it set: its replies are not logged from
    then on, and the ones logged before are not exported either.
    """
    d = settings.discord
    row = row or ServerSettingsRow(guild_id)
    own = frozenset(key for key in SETTING_KEYS if row.value(key) is not None)
    served = is_served(d, guild_id)
    training = row.training if row.training is not None else training_default(d, guild_id)
    return ServerSettings(
        guild_id=guild_id,
        served=served,
        review_channel=d.review_channel if row.review_channel is None else row.review_channel,
        moderator_role=d.moderator_role if row.moderator_role is None else row.moderator_role,
        default_persona=row.default_persona or settings.chat.default_persona,
        allowed_roles=d.allowed_roles if row.allowed_roles is None else row.allowed_roles,
        allowed_channels=d.allowed_channels if row.allowed_channels is None else row.allowed_channels,
        training=served and training,
        owner_ids=d.owner_ids,
        own=own,
    )


# -- values as the database and the change log hold them ------------------------------------------


def encode_value(key: str, value: SettingValue) -> str | None:
    """A setting's value as text for the change log (``None`` stays None: "the default")."""
    if value is None:
        return None
    if key in LIST_KEYS:
        return json.dumps(sorted(set(_ids(value))))
    if key == "training":
        return "on" if value else "off"
    return str(value)


def column_value(key: str, value: SettingValue) -> Any:
    """A setting's value for its ``server_settings`` column."""
    if value is None:
        return None
    if key in LIST_KEYS:
        return json.dumps(sorted(set(_ids(value))))
    if key == "training":
        return int(bool(value))
    return value


def row_from_columns(columns: dict[str, Any]) -> ServerSettingsRow:
    """A :class:`ServerSettingsRow` from a ``server_settings`` row read by column name."""

    def id_list(text: str | None) -> tuple[int, ...] | None:
        return None if text is None else tuple(int(i) for i in json.loads(text))

    training = columns["training"]
    return ServerSettingsRow(
        guild_id=int(columns["guild_id"]),
        review_channel=columns["review_channel"],
        moderator_role=columns["moderator_role"],
        default_persona=columns["default_persona"],
        allowed_roles=id_list(columns["allowed_roles"]),
        allowed_channels=id_list(columns["allowed_channels"]),
        training=None if training is None else bool(training),
        updated_at=columns["updated_at"],
    )


def _ids(value: SettingValue) -> tuple[int, ...]:
    if not isinstance(value, tuple):
        raise TypeError(f"expected a tuple of ids, got {value!r}")
    return tuple(int(v) for v in value)


def check_value(key: str, value: SettingValue) -> None:
    """Raise ValueError when ``value`` cannot be setting ``key``'s (None, the default, always can)."""
    if key not in SETTING_KEYS:
        raise ValueError(f"unknown setting {key!r} (known: {', '.join(SETTING_KEYS)})")
    if value is None:
        return
    if key in LIST_KEYS:
        ids = _ids(value)
        if any(i <= 0 for i in ids):
            raise ValueError(f"{key}: Discord ids are positive numbers")
        if len(set(ids)) > MAX_LIST_IDS:
            raise ValueError(f"{key}: at most {MAX_LIST_IDS} ids")
    elif key == "training":
        if not isinstance(value, bool):
            raise ValueError("training is on or off")
    elif key == "default_persona":
        if not isinstance(value, str) or not value.strip():
            raise ValueError("default_persona must name a persona")
    elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{key}: a Discord id is a positive number")
