"""The emulator's world: users, guilds, channels, roles, messages, webhooks, commands.

The seed world is one guild (``guild_id``, the *primary* guild every guild-less helper means);
tests add more with :meth:`EmulatorState.add_guild` and pass ``guild=`` to the ``add_*`` helpers.
A channel names its guild (``guild_id``), so payloads about a channel's messages and
interactions carry the right guild and member.

Everything is plain JSON-able dicts so the state can be written to a file and
read back by a fresh emulator process: a test that restarts the *emulator* (not
just the bot) still finds the messages, webhooks and synced commands it left.
Payload builders live here too, so REST responses and gateway events describe
the same objects the same way.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import wire
from .errors import (
    UNKNOWN_CHANNEL,
    UNKNOWN_GUILD,
    UNKNOWN_MEMBER,
    UNKNOWN_MESSAGE,
    UNKNOWN_USER,
    not_found,
)

DISCORD_EPOCH_MS = 1420070400000
# Seed ids are fixed (so a bot's config can name the review channel or the
# moderator role) and look like snowflakes from 2024-01-01.
_SEED_BASE = (1704067200000 - DISCORD_EPOCH_MS) << 22

# Permission bits (https://discord.com/developers/docs/topics/permissions).
P_KICK = 1 << 1
P_BAN = 1 << 2
P_ADMINISTRATOR = 1 << 3
P_MANAGE_GUILD = 1 << 5
P_ADD_REACTIONS = 1 << 6
P_VIEW_AUDIT_LOG = 1 << 7
P_VIEW_CHANNEL = 1 << 10
P_SEND_MESSAGES = 1 << 11
P_MANAGE_MESSAGES = 1 << 13
P_EMBED_LINKS = 1 << 14
P_ATTACH_FILES = 1 << 15
P_READ_HISTORY = 1 << 16
P_MENTION_EVERYONE = 1 << 17
P_USE_EXTERNAL_EMOJIS = 1 << 18
P_MANAGE_ROLES = 1 << 28
P_MANAGE_WEBHOOKS = 1 << 29
P_USE_APP_COMMANDS = 1 << 31
P_SEND_IN_THREADS = 1 << 38
P_MODERATE_MEMBERS = 1 << 40
P_ALL = (1 << 51) - 1

EVERYONE_PERMISSIONS = (
    P_VIEW_CHANNEL
    | P_SEND_MESSAGES
    | P_READ_HISTORY
    | P_ADD_REACTIONS
    | P_EMBED_LINKS
    | P_ATTACH_FILES
    | P_USE_EXTERNAL_EMOJIS
    | P_USE_APP_COMMANDS
    | P_SEND_IN_THREADS
)
MODERATOR_PERMISSIONS = EVERYONE_PERMISSIONS | P_MANAGE_MESSAGES | P_KICK | P_BAN | P_MODERATE_MEMBERS

STATE_VERSION = 2
AUDIT_BOT_ADD = 28  # audit log action type: a bot was added to the guild

# Channel types (https://discord.com/developers/docs/resources/channel#channel-object-channel-types).
CHANNEL_TEXT = 0
CHANNEL_NEWS = 5
CHANNEL_NEWS_THREAD = 10
CHANNEL_PUBLIC_THREAD = 11
CHANNEL_PRIVATE_THREAD = 12
CHANNEL_FORUM = 15
THREAD_TYPES = (CHANNEL_NEWS_THREAD, CHANNEL_PUBLIC_THREAD, CHANNEL_PRIVATE_THREAD)


def seed_id(n: int) -> str:
    return str(_SEED_BASE + n)


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


def snowflake_time_iso(snowflake: str | int) -> str:
    ms = (int(snowflake) >> 22) + DISCORD_EPOCH_MS
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class SnowflakeGenerator:
    """Time-ordered unique ids, so ``before``/``after`` history paging works like Discord's."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def next(self) -> str:
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self.last = max(self.last + 1, now)
        return str(self.last)


@dataclass
class StoredMessage:
    """A message plus what Discord would not echo back but tests want to assert on."""

    payload: dict[str, Any]
    source: str  # "user" (test hook), "bot" (REST), "webhook", "interaction"
    allowed_mentions: dict[str, Any] | None = None
    username: str | None = None  # webhook execute overrides
    avatar_url: str | None = None
    ephemeral: bool = False
    deleted: bool = False
    interaction_id: str | None = None

    @property
    def id(self) -> str:
        return str(self.payload["id"])

    @property
    def channel_id(self) -> str:
        return str(self.payload["channel_id"])

    @property
    def content(self) -> str:
        return str(self.payload.get("content", ""))


@dataclass
class InteractionRecord:
    """An interaction the emulator dispatched, and how the bot answered it."""

    id: str
    token: str
    type: int
    channel_id: str
    user_id: str
    data: dict[str, Any]
    created_at: float
    message_id: str | None = None  # the component's message (type 3) or modal origin
    responses: list[dict[str, Any]] = field(default_factory=list)  # callback bodies, in order
    original_message_id: str | None = None
    modal: dict[str, Any] | None = None  # the modal the bot opened with callback type 9

    @property
    def acknowledged(self) -> bool:
        return bool(self.responses)

    @property
    def response_type(self) -> int | None:
        return int(self.responses[0]["type"]) if self.responses else None


class EmulatorState:
    """In-memory world with optional JSON persistence (see :meth:`save`/:meth:`load`)."""

    def __init__(self, state_file: str | os.PathLike[str] | None = None) -> None:
        self.state_file = Path(state_file) if state_file else None
        self.ids = SnowflakeGenerator()
        self.guild_id = ""
        self.application_id = ""
        self.users: dict[str, dict[str, Any]] = {}
        self.user_keys: dict[str, str] = {}
        self.guilds: dict[str, dict[str, Any]] = {}
        self.guild_keys: dict[str, str] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.channel_keys: dict[str, str] = {}
        self.roles: dict[str, dict[str, Any]] = {}
        self.role_keys: dict[str, str] = {}
        self.role_guilds: dict[str, str] = {}  # role id → its guild (roles carry no guild_id)
        self.guild_members: dict[str, dict[str, dict[str, Any]]] = {}  # guild id → user id → member
        self.audit_log: dict[str, list[dict[str, Any]]] = {}  # guild id → entries, oldest first
        self.messages: dict[str, StoredMessage] = {}
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.interactions: dict[str, InteractionRecord] = {}
        self.blobs: dict[str, bytes] = {}
        if self.state_file is not None and self.state_file.exists():
            self.load()
        else:
            self.seed()

    # ------------------------------------------------------------------ seeding
    def seed(self) -> None:
        """The default world: one guild, a review channel, a moderator and a plain member."""
        self.guild_id = seed_id(1)
        self.application_id = seed_id(2)
        self.add_user("bot", self.application_id, "oshaberi", global_name="おしゃべり", bot=True)
        self.add_user("moderator", seed_id(3), "hanako_mod", global_name="花子")
        self.add_user("member", seed_id(4), "taro", global_name="太郎")
        self.add_user("member2", seed_id(5), "jiro", global_name="次郎")
        self.add_guild(
            "main", self.guild_id, "Oshaberi Test Server", owner="moderator", bot_role_id=seed_id(11)
        )
        self.add_role(
            "moderator", seed_id(10), "Moderator", MODERATOR_PERMISSIONS, position=2, color=0x3498DB
        )
        self.add_channel("general", seed_id(20), "general", position=0, topic="雑談")
        self.add_channel("chat", seed_id(21), "persona-chat", position=1, topic="Talk to the personas")
        self.add_channel("review", seed_id(22), "mod-review", position=2, topic="Moderator review queue")
        self.guild["system_channel_id"] = self.channel_keys["general"]
        self.add_member(self.user_keys["moderator"], roles=["moderator"])
        self.add_member(self.user_keys["member"])
        self.add_member(self.user_keys["member2"])

    def add_guild(
        self,
        key: str,
        guild_id: str | None,
        name: str,
        *,
        owner: str,
        bot_member: bool = True,
        bot_role_id: str | None = None,
    ) -> dict[str, Any]:
        """A guild with its @everyone role (the guild's id) and, with ``bot_member``, the bot in
        it holding its managed role. ``owner`` is a user key or id (the owner has every permission)."""
        guild_id = guild_id or self.ids.next()
        self.guilds[guild_id] = {
            "id": guild_id,
            "name": name,
            "icon": None,
            "owner_id": self.resolve_user(owner),
            "preferred_locale": "ja",
            "features": [],
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "afk_timeout": 300,
            "description": None,
            "banner": None,
            "splash": None,
            "discovery_splash": None,
            "vanity_url_code": None,
            "joined_at": "2024-01-01T00:00:00+00:00",
        }
        self.guild_keys[key] = guild_id
        self.guild_members.setdefault(guild_id, {})
        everyone = "everyone" if guild_id == self.guild_id else f"{key}:everyone"
        self.add_role(everyone, guild_id, "@everyone", EVERYONE_PERMISSIONS, position=0, guild=guild_id)
        bot_role = "bot" if guild_id == self.guild_id else f"{key}:bot"
        self.add_role(
            bot_role,
            bot_role_id,
            "oshaberi",
            P_ALL,
            position=1,
            managed=True,
            tags={"bot_id": self.application_id},
            guild=guild_id,
        )
        if bot_member:
            self.add_member(self.application_id, roles=[bot_role], guild=guild_id)
        return self.guilds[guild_id]

    @property
    def guild(self) -> dict[str, Any]:
        """The primary guild's object."""
        return self.guilds[self.guild_id]

    @property
    def members(self) -> dict[str, dict[str, Any]]:
        """The primary guild's members by user id."""
        return self.guild_members.setdefault(self.guild_id, {})

    def resolve_guild(self, ref: str | int | None) -> str:
        """A guild key (``"main"``), an id, or None (the primary guild); returns the id."""
        if ref is None:
            return self.guild_id
        ref = str(ref)
        if ref in self.guild_keys:
            return self.guild_keys[ref]
        if ref in self.guilds:
            return ref
        raise not_found(UNKNOWN_GUILD, "Guild")

    def guild_of(self, channel_id: str | int) -> str | None:
        """The guild a channel belongs to (None: a DM)."""
        guild = self.channels.get(str(channel_id), {}).get("guild_id")
        return str(guild) if guild is not None else None

    def members_of(self, guild_id: str | None) -> dict[str, dict[str, Any]]:
        return self.guild_members.setdefault(self.resolve_guild(guild_id), {})

    def is_member(self, user_id: str, guild_id: str | None) -> bool:
        return guild_id is not None and str(user_id) in self.guild_members.get(str(guild_id), {})

    def bot_guilds(self) -> list[str]:
        """The guilds the bot is a member of (the ones READY names)."""
        return [gid for gid in self.guilds if self.application_id in self.guild_members.get(gid, {})]

    def add_user(
        self,
        key: str,
        user_id: str | None,
        username: str,
        *,
        global_name: str | None = None,
        bot: bool = False,
    ) -> dict[str, Any]:
        user_id = user_id or self.ids.next()
        self.users[user_id] = {
            "id": user_id,
            "username": username,
            "global_name": global_name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }
        self.user_keys[key] = user_id
        return self.users[user_id]

    def add_role(
        self,
        key: str,
        role_id: str | None,
        name: str,
        permissions: int,
        *,
        position: int,
        color: int = 0,
        managed: bool = False,
        tags: dict[str, Any] | None = None,
        guild: str | int | None = None,
    ) -> dict[str, Any]:
        role_id = role_id or self.ids.next()
        role: dict[str, Any] = {
            "id": role_id,
            "name": name,
            "color": color,
            "colors": {"primary_color": color, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": str(permissions),
            "managed": managed,
            "mentionable": True,
            "flags": 0,
        }
        if tags:
            role["tags"] = tags
        self.roles[role_id] = role
        self.role_keys[key] = role_id
        self.role_guilds[role_id] = self.resolve_guild(guild)
        return role

    def add_channel(
        self,
        key: str,
        channel_id: str | None,
        name: str,
        *,
        position: int,
        topic: str | None = None,
        guild: str | int | None = None,
        channel_type: int = CHANNEL_TEXT,
    ) -> dict[str, Any]:
        """A guild channel: text (0) by default, or a forum (15), whose posts are threads."""
        channel_id = channel_id or self.ids.next()
        self.channels[channel_id] = {
            "id": channel_id,
            "type": channel_type,
            "guild_id": self.resolve_guild(guild),
            "name": name,
            "position": position,
            "permission_overwrites": [],
            "topic": topic,
            "nsfw": False,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }
        if channel_type == CHANNEL_FORUM:
            self.channels[channel_id].update(
                {
                    "available_tags": [],
                    "default_reaction_emoji": None,
                    "default_thread_rate_limit_per_user": 0,
                    "default_sort_order": None,
                    "default_forum_layout": 0,
                    "default_auto_archive_duration": 1440,
                }
            )
        self.channel_keys[key] = channel_id
        return self.channels[channel_id]

    def add_thread(
        self,
        key: str | None,
        parent_id: str,
        name: str,
        owner_id: str,
        *,
        thread_id: str | None = None,
        thread_type: int = CHANNEL_PUBLIC_THREAD,
    ) -> dict[str, Any]:
        """A thread under ``parent_id`` (a text channel, or a forum: then it is a forum post).

        ``thread_id`` is the starting message's id for a thread started from a message and for
        a forum post (Discord gives both the same id); a new snowflake otherwise.
        """
        parent = self.channels.get(parent_id)
        if parent is None or parent.get("type") not in (CHANNEL_TEXT, CHANNEL_NEWS, CHANNEL_FORUM):
            raise not_found(UNKNOWN_CHANNEL, "Channel")
        thread_id = thread_id or self.ids.next()
        now = iso_now()
        self.channels[thread_id] = {
            "id": thread_id,
            "type": thread_type,
            "guild_id": parent["guild_id"],
            "parent_id": parent_id,
            "owner_id": owner_id,
            "name": name,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "flags": 0,
            "applied_tags": [],
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": now,
                "locked": False,
                "create_timestamp": now,
            },
        }
        if key is not None:
            self.channel_keys[key] = thread_id
        return self.channels[thread_id]

    def is_thread(self, channel_id: str) -> bool:
        return self.channels.get(str(channel_id), {}).get("type") in THREAD_TYPES

    def add_member(
        self,
        user_id: str,
        *,
        roles: list[str] | None = None,
        nick: str | None = None,
        guild: str | int | None = None,
    ) -> None:
        role_ids = [self.role_keys.get(r, r) for r in roles or []]
        self.members_of(guild)[user_id] = {
            "roles": role_ids,
            "nick": nick,
            "joined_at": "2024-01-01T00:00:00+00:00",
        }

    def dm_channel(self, user_id: str) -> str:
        """The bot's DM channel with a user, created on first use (as Discord does)."""
        for channel in self.channels.values():
            if channel["type"] == 1 and channel["recipients"][0]["id"] == user_id:
                return str(channel["id"])
        cid = self.ids.next()
        self.channels[cid] = {
            "id": cid,
            "type": 1,
            "last_message_id": None,
            "recipients": [self.user_payload(user_id)],
            "flags": 0,
        }
        return cid

    # --------------------------------------------------------------- resolution
    def resolve_user(self, ref: str | int | dict[str, Any]) -> str:
        """Accept a seed key (``"moderator"``), an id, or a user dict; return the id."""
        if isinstance(ref, dict):
            ref = ref["id"]
        ref = str(ref)
        if ref in self.user_keys:
            return self.user_keys[ref]
        if ref in self.users:
            return ref
        raise not_found(UNKNOWN_USER, "User")

    def resolve_channel(self, ref: str | int) -> str:
        ref = str(ref)
        if ref in self.channel_keys:
            return self.channel_keys[ref]
        if ref in self.channels:
            return ref
        raise not_found(UNKNOWN_CHANNEL, "Channel")

    def resolve_role(self, ref: str | int) -> str:
        ref = str(ref)
        return self.role_keys.get(ref, ref)

    def get_message(self, channel_id: str, message_id: str) -> StoredMessage:
        msg = self.messages.get(str(message_id))
        if msg is None or msg.deleted or msg.channel_id != str(channel_id):
            raise not_found(UNKNOWN_MESSAGE, "Message")
        return msg

    def channel_messages(self, channel_id: str) -> list[StoredMessage]:
        """Live, non-ephemeral messages in a channel, oldest first."""
        found = [
            m
            for m in self.messages.values()
            if m.channel_id == str(channel_id) and not m.deleted and not m.ephemeral
        ]
        return sorted(found, key=lambda m: int(m.id))

    def is_guild_channel(self, channel_id: str) -> bool:
        return self.channels.get(str(channel_id), {}).get("guild_id") is not None

    # ----------------------------------------------------------------- payloads
    def user_payload(self, user_id: str) -> dict[str, Any]:
        try:
            return dict(self.users[str(user_id)])
        except KeyError:
            raise not_found(UNKNOWN_USER, "User") from None

    def member_permissions(self, user_id: str, guild_id: str | None = None) -> int:
        guild_id = self.resolve_guild(guild_id)
        member = self.guild_members.get(guild_id, {}).get(str(user_id))
        if member is None:
            return 0
        if self.guilds[guild_id].get("owner_id") == str(user_id):
            return P_ALL
        perms = int(self.roles[guild_id]["permissions"])
        for rid in member["roles"]:
            if rid in self.roles:
                perms |= int(self.roles[rid]["permissions"])
        return P_ALL if perms & P_ADMINISTRATOR else perms

    def member_payload(
        self,
        user_id: str,
        *,
        with_user: bool = True,
        with_permissions: bool = False,
        guild_id: str | None = None,
    ) -> dict[str, Any]:
        guild_id = self.resolve_guild(guild_id)
        member = self.guild_members.get(guild_id, {}).get(str(user_id))
        if member is None:
            raise not_found(UNKNOWN_MEMBER, "Member")
        payload: dict[str, Any] = {
            "roles": list(member["roles"]),
            "nick": member.get("nick"),
            "avatar": None,
            "banner": None,
            "joined_at": member["joined_at"],
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": member.get("communication_disabled_until"),
        }
        if with_user:
            payload["user"] = self.user_payload(user_id)
        if with_permissions:
            payload["permissions"] = str(self.member_permissions(user_id, guild_id))
        return payload

    def channel_payload(self, channel_id: str) -> dict[str, Any]:
        try:
            return dict(self.channels[str(channel_id)])
        except KeyError:
            raise not_found(UNKNOWN_CHANNEL, "Channel") from None

    def guild_roles(self, guild_id: str | None = None) -> list[dict[str, Any]]:
        guild_id = self.resolve_guild(guild_id)
        return [
            dict(r) for rid, r in self.roles.items() if self.role_guilds.get(rid, self.guild_id) == guild_id
        ]

    def guild_payload(self, guild_id: str | None = None) -> dict[str, Any]:
        payload = dict(self.guilds[self.resolve_guild(guild_id)])
        payload.pop("joined_at", None)
        payload["roles"] = self.guild_roles(guild_id)
        payload["emojis"] = []
        payload["stickers"] = []
        return payload

    def guild_channels(self, guild_id: str | None = None) -> list[dict[str, Any]]:
        """The guild's channels; threads are not among them (Discord lists those apart)."""
        guild_id = self.resolve_guild(guild_id)
        return [
            dict(c)
            for c in self.channels.values()
            if c.get("guild_id") == guild_id and c.get("type") not in THREAD_TYPES
        ]

    def active_threads(self, guild_id: str | None = None) -> list[dict[str, Any]]:
        guild_id = self.resolve_guild(guild_id)
        return [
            dict(c)
            for c in self.channels.values()
            if c.get("guild_id") == guild_id
            and c.get("type") in THREAD_TYPES
            and not c["thread_metadata"]["archived"]
        ]

    def guild_create_payload(self, guild_id: str | None = None, *, include_members: bool) -> dict[str, Any]:
        """GUILD_CREATE as sent after READY (or when the bot joins a guild).

        Without the GUILD_MEMBERS intent Discord only includes the bot's own
        member; ``member_count`` always reflects the whole guild so
        discord.py's "is this guild chunked?" check behaves as in production.
        """
        guild_id = self.resolve_guild(guild_id)
        members = self.guild_members.get(guild_id, {})
        payload = self.guild_payload(guild_id)
        member_ids = list(members) if include_members else [self.application_id]
        payload.update(
            {
                "joined_at": self.guilds[guild_id].get("joined_at"),
                "large": False,
                "unavailable": False,
                "member_count": len(members),
                "members": [self.member_payload(uid, guild_id=guild_id) for uid in member_ids],
                "channels": [
                    {k: v for k, v in c.items() if k != "guild_id"} for c in self.guild_channels(guild_id)
                ],
                "threads": self.active_threads(guild_id),
                "presences": [],
                "voice_states": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
            }
        )
        return payload

    def application_payload(self) -> dict[str, Any]:
        owner = self.user_payload(self.guild.get("owner_id") or self.user_keys["moderator"])
        return {
            "id": self.application_id,
            "name": self.users[self.application_id]["username"],
            "icon": None,
            "description": "Discord emulator application",
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "bot": self.user_payload(self.application_id),
            "owner": owner,
            "team": None,
            "verify_key": "0" * 64,
            "flags": (1 << 19) | (1 << 15) | (1 << 13),  # message content, members, presence (limited)
            "summary": "",
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "tags": [],
            "install_params": None,
            "custom_install_url": None,
            "integration_types_config": {"0": {}},
            "approximate_guild_count": len(self.bot_guilds()),
            "redirect_uris": [],
        }

    def new_token(self) -> str:
        return secrets.token_urlsafe(24)

    # -------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "last_id": self.ids.last,
            "guild_id": self.guild_id,
            "application_id": self.application_id,
            "users": self.users,
            "user_keys": self.user_keys,
            "guilds": self.guilds,
            "guild_keys": self.guild_keys,
            "channels": self.channels,
            "channel_keys": self.channel_keys,
            "roles": self.roles,
            "role_keys": self.role_keys,
            "role_guilds": self.role_guilds,
            "guild_members": self.guild_members,
            "audit_log": self.audit_log,
            "messages": [asdict(m) for m in self.messages.values()],
            "webhooks": self.webhooks,
            "commands": self.commands,
            "interactions": [asdict(i) for i in self.interactions.values()],
            "blobs": {k: base64.b64encode(v).decode() for k, v in self.blobs.items()},
        }

    def save(self) -> None:
        """Write the state atomically (tmp file + rename) so a crash never leaves half a file."""
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(self.state_file.suffix + ".tmp")
        tmp.write_text(wire.dumps(self.to_json()), encoding="utf-8")
        os.replace(tmp, self.state_file)

    def load(self) -> None:
        assert self.state_file is not None
        data = json.loads(self.state_file.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported emulator state version {data.get('version')!r}")
        self.ids = SnowflakeGenerator(int(data["last_id"]))
        self.guild_id = data["guild_id"]
        self.application_id = data["application_id"]
        self.users = data["users"]
        self.user_keys = data["user_keys"]
        self.guilds = data["guilds"]
        self.guild_keys = data["guild_keys"]
        self.channels = data["channels"]
        self.channel_keys = data["channel_keys"]
        self.roles = data["roles"]
        self.role_keys = data["role_keys"]
        self.role_guilds = data["role_guilds"]
        self.guild_members = data["guild_members"]
        self.audit_log = data["audit_log"]
        self.messages = {m["payload"]["id"]: StoredMessage(**m) for m in data["messages"]}
        self.webhooks = data["webhooks"]
        self.commands = data["commands"]
        self.interactions = {i["id"]: InteractionRecord(**i) for i in data["interactions"]}
        self.blobs = {k: base64.b64decode(v) for k, v in data["blobs"].items()}
