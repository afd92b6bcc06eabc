"""Threads and forum posts: starting them (a member through a test hook, the bot over REST) and
the events Discord sends for them.

As on Discord: a thread started from a message takes that message's id, and a forum post's
thread takes its first message's id; a thread started without a message leaves a "thread
created" system message (type 18, content = the thread's name) in its channel; a thread started
from a message gets a starter message (type 21) that references it. Every new thread is
announced with THREAD_CREATE (``newly_created``) before any message in it, so a bot has it
cached when the first message arrives; the active ones are part of GUILD_CREATE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ApiError, form_error
from .rest import ApiRequest, Reply, Router
from .state import (
    CHANNEL_FORUM,
    CHANNEL_PRIVATE_THREAD,
    CHANNEL_PUBLIC_THREAD,
    StoredMessage,
    snowflake_time_iso,
)

if TYPE_CHECKING:
    from .server import DiscordEmulator

MT_THREAD_CREATED = 18
MT_THREAD_STARTER_MESSAGE = 21
MAX_NAME = 100


class Threads:
    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    def register(self, r: Router) -> None:
        r.add("POST", "/channels/{channel_id}/messages/{message_id}/threads", self.rest_from_message)
        r.add("POST", "/channels/{channel_id}/threads", self.rest_without_message)
        r.add("GET", "/guilds/{guild_id}/threads/active", self.rest_active)

    # -- what happens ------------------------------------------------------------------------------

    def start(
        self,
        parent_id: str,
        creator_id: str,
        name: str,
        *,
        message_id: str | None = None,
        private: bool = False,
    ) -> dict[str, Any]:
        """Start a thread in a text channel, from ``message_id`` or without a message; returns
        the thread's channel object."""
        _check_name(name)
        parent = self.state.channel_payload(parent_id)
        if parent["type"] == CHANNEL_FORUM:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        if message_id is not None:
            started = self.state.get_message(parent_id, message_id)
            if any(str(c.get("id")) == started.id for c in self.state.channels.values()):
                raise ApiError(400, 160004, "A thread has already been created for this message")
            thread = self.state.add_thread(None, parent_id, name, creator_id, thread_id=started.id)
            self._announce(thread)
            self._message(
                thread["id"],
                creator_id,
                "",
                msg_type=MT_THREAD_STARTER_MESSAGE,
                reference={
                    "message_id": started.id,
                    "channel_id": parent_id,
                    "guild_id": parent["guild_id"],
                },
            )
            return thread
        kind = CHANNEL_PRIVATE_THREAD if private else CHANNEL_PUBLIC_THREAD
        thread = self.state.add_thread(None, parent_id, name, creator_id, thread_type=kind)
        self._announce(thread)
        self._message(
            parent_id,
            creator_id,
            name,
            msg_type=MT_THREAD_CREATED,
            reference={"channel_id": thread["id"], "guild_id": parent["guild_id"]},
        )
        return thread

    def forum_post(
        self, forum_id: str, creator_id: str, name: str, content: str, *, source: str = "user"
    ) -> tuple[dict[str, Any], StoredMessage]:
        """A new post in a forum: a thread, and its first message (both with one id)."""
        _check_name(name)
        forum = self.state.channel_payload(forum_id)
        if forum["type"] != CHANNEL_FORUM:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        if not content.strip():
            raise form_error("message", "BASE_TYPE_REQUIRED", "A forum post needs a first message")
        post_id = self.state.ids.next()
        thread = self.state.add_thread(None, forum_id, name, creator_id, thread_id=post_id)
        self._announce(thread)
        first = self._message(post_id, creator_id, content, message_id=post_id, source=source)
        return thread, first

    def _announce(self, thread: dict[str, Any]) -> None:
        self.emu.gateway.dispatch("THREAD_CREATE", {**thread, "newly_created": True})

    def _message(
        self,
        channel_id: str,
        author_id: str,
        content: str,
        *,
        msg_type: int | None = None,
        reference: dict[str, Any] | None = None,
        message_id: str | None = None,
        source: str = "user",
    ) -> StoredMessage:
        factory = self.emu.factory
        payload = factory.build(
            channel_id=channel_id,
            author=self.state.user_payload(author_id),
            content=content,
            msg_type=msg_type,
        )
        if message_id is not None:
            payload["id"] = message_id
            payload["timestamp"] = snowflake_time_iso(message_id)
        if reference is not None:
            payload["message_reference"] = {"type": 0, **reference}
        msg = StoredMessage(payload=payload, source=source)
        self.state.messages[msg.id] = msg
        channel = self.state.channels.get(channel_id)
        if channel is not None:
            channel["last_message_id"] = msg.id
            if "message_count" in channel and msg_type != MT_THREAD_STARTER_MESSAGE:
                channel["message_count"] += 1
                channel["total_message_sent"] += 1
        self.emu.gateway.dispatch("MESSAGE_CREATE", factory.gateway_payload(msg), channel_id=channel_id)
        return msg

    # -- REST (the bot) ----------------------------------------------------------------------------

    async def rest_from_message(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        cid = self.state.resolve_channel(p["channel_id"])
        body = req.body()
        thread = self.start(
            cid, self.state.application_id, str(body.get("name") or ""), message_id=p["message_id"]
        )
        return Reply(201, thread)

    async def rest_without_message(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        cid = self.state.resolve_channel(p["channel_id"])
        body = req.body()
        name = str(body.get("name") or "")
        if self.state.channel_payload(cid)["type"] == CHANNEL_FORUM:
            message = body.get("message") or {}
            thread, first = self.forum_post(
                cid, self.state.application_id, name, str(message.get("content") or ""), source="bot"
            )
            return Reply(201, {**thread, "message": first.payload})
        private = int(body.get("type") or CHANNEL_PRIVATE_THREAD) == CHANNEL_PRIVATE_THREAD
        return Reply(201, self.start(cid, self.state.application_id, name, private=private))

    async def rest_active(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body={"threads": self.state.active_threads(p["guild_id"]), "members": []})


def _check_name(name: str) -> None:
    if not 1 <= len(name) <= MAX_NAME:
        raise form_error("name", "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_NAME} in length.")
