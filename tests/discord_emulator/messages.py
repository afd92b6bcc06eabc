"""Turning message bodies (from the bot's REST calls or from test hooks) into Discord message objects.

The point of doing this carefully rather than echoing the body back: a bot that
lets an LLM write ``@everyone`` or a 2,500-character reply must see the same
outcome it would get from Discord (no ping when ``allowed_mentions`` forbids it,
a 400 for the long reply), or the tests prove nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import EMPTY_MESSAGE, ApiError, form_error
from .state import EmulatorState, StoredMessage, snowflake_time_iso

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_CHARS = 6000

MT_DEFAULT = 0
MT_REPLY = 19
MT_CHAT_INPUT_COMMAND = 20

FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

_USER_RE = re.compile(r"<@!?(\d+)>")
_ROLE_RE = re.compile(r"<@&(\d+)>")
_EVERYONE_RE = re.compile(r"@(everyone|here)\b")


@dataclass
class UploadedFile:
    """One ``files[n]`` part of a multipart message request."""

    index: int
    filename: str
    content_type: str
    data: bytes


def _embed_chars(embed: dict[str, Any]) -> int:
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "")
    total += len((embed.get("author") or {}).get("name") or "")
    for f in embed.get("fields") or []:
        total += len(f.get("name") or "") + len(f.get("value") or "")
    return total


def validate_body(body: dict[str, Any], *, has_files: bool, edit: bool) -> None:
    """Reject what Discord rejects: over-long content, too many/too large embeds, empty messages."""
    content = body.get("content")
    if content is not None and len(content) > MAX_CONTENT:
        raise form_error("content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length.")
    embeds = body.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    if sum(_embed_chars(e) for e in embeds) > MAX_EMBED_CHARS:
        raise form_error("embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000")
    if edit:
        return
    if not (
        content
        or embeds
        or has_files
        or body.get("components")
        or body.get("sticker_ids")
        or body.get("poll")
        or body.get("attachments")
    ):
        raise ApiError(400, EMPTY_MESSAGE, "Cannot send an empty message")


class MessageFactory:
    """Builds message payloads against an :class:`EmulatorState`."""

    def __init__(self, state: EmulatorState, base_url: str) -> None:
        self.state = state
        self.base_url = base_url

    # ------------------------------------------------------------- mentions
    def mentions_for_bot_message(
        self,
        content: str,
        allowed_mentions: dict[str, Any] | None,
        replied_author: str | None,
    ) -> tuple[list[str], list[str], bool]:
        """Which users/roles/everyone a message *actually* pings, honouring allowed_mentions.

        Mirrors Discord: without ``allowed_mentions`` everything in the content
        pings and a reply pings its author; with it, only the listed ``parse``
        kinds or explicit ids ping and ``replied_user`` defaults to false.
        """
        users = [u for u in _USER_RE.findall(content) if u in self.state.users]
        roles = [r for r in _ROLE_RE.findall(content) if r in self.state.roles]
        everyone = bool(_EVERYONE_RE.search(content))
        if allowed_mentions is None:
            ping_reply = True
        else:
            parse = allowed_mentions.get("parse") or []
            allowed_users = {str(u) for u in allowed_mentions.get("users") or []}
            allowed_roles = {str(r) for r in allowed_mentions.get("roles") or []}
            users = [u for u in users if "users" in parse or u in allowed_users]
            roles = [r for r in roles if "roles" in parse or r in allowed_roles]
            everyone = everyone and "everyone" in parse
            ping_reply = bool(allowed_mentions.get("replied_user", False))
        if ping_reply and replied_author and replied_author not in users:
            users.append(replied_author)
        return _dedupe(users), _dedupe(roles), everyone

    def mention_payloads(self, channel_id: str, user_ids: list[str]) -> list[dict[str, Any]]:
        out = []
        for uid in user_ids:
            user = self.state.user_payload(uid)
            guild_id = self.state.guild_of(channel_id)
            if self.state.is_member(uid, guild_id):
                user["member"] = self.state.member_payload(uid, with_user=False, guild_id=guild_id)
            out.append(user)
        return out

    # ---------------------------------------------------------- attachments
    def store_upload(self, channel_id: str, upload: UploadedFile, description: str | None) -> dict[str, Any]:
        att_id = self.state.ids.next()
        self.state.blobs[att_id] = upload.data
        url = f"{self.base_url}/attachments/{channel_id}/{att_id}/{upload.filename}"
        att: dict[str, Any] = {
            "id": att_id,
            "filename": upload.filename,
            "size": len(upload.data),
            "url": url,
            "proxy_url": url,
            "content_type": upload.content_type,
        }
        if description:
            att["description"] = description
        return att

    def attachments_from_body(
        self,
        channel_id: str,
        body: dict[str, Any],
        uploads: list[UploadedFile],
        existing: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Resolve ``attachments`` in a body: new uploads by index, kept ones by id (edits)."""
        by_index = {u.index: u for u in uploads}
        kept = {a["id"]: a for a in existing or []}
        declared = body.get("attachments")
        if declared is None:
            out = list(existing or [])
            out += [self.store_upload(channel_id, u, None) for u in uploads]
            return out
        out = []
        for spec in declared:
            sid = str(spec.get("id"))
            if sid in kept:
                out.append(kept[sid])
            elif sid.isdigit() and int(sid) in by_index:
                out.append(self.store_upload(channel_id, by_index.pop(int(sid)), spec.get("description")))
        out += [self.store_upload(channel_id, u, None) for u in by_index.values()]
        return out

    def hook_attachment(self, channel_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """An attachment on a simulated user message: ``{"filename", "content"?, "content_type"?}``."""
        data = spec.get("content", b"")
        if isinstance(data, str):
            data = data.encode("utf-8")
        upload = UploadedFile(
            0, spec.get("filename", "file.bin"), spec.get("content_type", "text/plain"), data
        )
        att = self.store_upload(channel_id, upload, spec.get("description"))
        for key in ("width", "height"):
            if key in spec:
                att[key] = spec[key]
        return att

    # --------------------------------------------------------------- build
    def reference(
        self, channel_id: str, ref: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, StoredMessage | None]:
        """Validate a ``message_reference`` and find the message it points at."""
        if not ref:
            return None, None
        mid = str(ref.get("message_id"))
        cid = str(ref.get("channel_id") or channel_id)
        target = self.state.messages.get(mid)
        if target is None or target.deleted or target.channel_id != cid:
            if ref.get("fail_if_not_exists", True):
                raise form_error(
                    "message_reference",
                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                    "Unknown message",
                )
            return None, None
        full = {"type": int(ref.get("type", 0)), "message_id": mid, "channel_id": cid}
        if self.state.is_guild_channel(cid):
            full["guild_id"] = self.state.guild_of(cid)
        return full, target

    def build(
        self,
        *,
        channel_id: str,
        author: dict[str, Any],
        content: str = "",
        embeds: list[dict[str, Any]] | None = None,
        components: list[dict[str, Any]] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        flags: int = 0,
        mentions: list[str] | None = None,
        mention_roles: list[str] | None = None,
        mention_everyone: bool = False,
        reference: dict[str, Any] | None = None,
        referenced: StoredMessage | None = None,
        msg_type: int | None = None,
        tts: bool = False,
        nonce: str | int | None = None,
        webhook_id: str | None = None,
        application_id: str | None = None,
        interaction_metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        mid = self.state.ids.next()
        payload: dict[str, Any] = {
            "id": mid,
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": snowflake_time_iso(mid),
            "edited_timestamp": None,
            "tts": tts,
            "mention_everyone": mention_everyone,
            "mentions": self.mention_payloads(channel_id, mentions or []),
            "mention_roles": list(mention_roles or []),
            "attachments": attachments or [],
            "embeds": embeds or [],
            "components": components or [],
            "pinned": False,
            "type": msg_type if msg_type is not None else (MT_REPLY if reference else MT_DEFAULT),
            "flags": flags,
        }
        if nonce is not None:
            payload["nonce"] = nonce
        if webhook_id is not None:
            payload["webhook_id"] = webhook_id
        if application_id is not None:
            payload["application_id"] = application_id
        if interaction_metadata is not None:
            payload["interaction_metadata"] = interaction_metadata
        if reference is not None:
            payload["message_reference"] = reference
            if referenced is not None:
                inner = dict(referenced.payload)
                inner.pop("referenced_message", None)
                payload["referenced_message"] = inner
        channel = self.state.channels.get(channel_id)
        if channel is not None:
            channel["last_message_id"] = mid
        return payload

    def gateway_payload(self, msg: StoredMessage) -> dict[str, Any]:
        """The MESSAGE_CREATE/UPDATE shape: the REST object plus ``guild_id`` and the author's ``member``."""
        payload = dict(msg.payload)
        guild_id = self.state.guild_of(msg.channel_id)
        if guild_id is not None:
            payload["guild_id"] = guild_id
            author_id = str(payload["author"]["id"])
            if "webhook_id" not in payload and self.state.is_member(author_id, guild_id):
                payload["member"] = self.state.member_payload(author_id, with_user=False, guild_id=guild_id)
        return payload


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
