"""REST routes for channel messages: create, fetch, history, edit, delete, typing, reactions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .errors import CANNOT_EDIT_OTHERS_MESSAGE, ApiError, form_error
from .rest import ApiRequest, Reply, Router

if TYPE_CHECKING:
    from .server import DiscordEmulator


class MessageRoutes:
    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    def register(self, r: Router) -> None:
        r.add("GET", "/channels/{channel_id}/messages", self.history)
        r.add("POST", "/channels/{channel_id}/messages", self.create)
        r.add("POST", "/channels/{channel_id}/messages/bulk-delete", self.bulk_delete)
        r.add("GET", "/channels/{channel_id}/messages/{message_id}", self.get)
        r.add("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit)
        r.add("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete)
        r.add("POST", "/channels/{channel_id}/typing", self.typing)
        r.add("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self.react)
        r.add("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self.unreact)

    async def history(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        """Newest first, like Discord; ``after`` returns the messages *just* after the anchor."""
        cid = self.state.resolve_channel(p["channel_id"])
        limit = int(req.query.get("limit", 50))
        if not 1 <= limit <= 100:
            raise form_error("limit", "NUMBER_TYPE_MAX", "int value should be between 1 and 100.")
        msgs = self.state.channel_messages(cid)
        if "around" in req.query:
            anchor = int(req.query["around"])
            older = [m for m in msgs if int(m.id) <= anchor][-((limit + 1) // 2) :]
            newer = [m for m in msgs if int(m.id) > anchor][: limit - len(older)]
            picked = older + newer
        elif "after" in req.query:
            after = int(req.query["after"])
            picked = [m for m in msgs if int(m.id) > after][:limit]
        else:
            before = int(req.query.get("before", 1 << 63))
            picked = [m for m in msgs if int(m.id) < before][-limit:]
        return Reply(body=[m.payload for m in reversed(picked)])

    async def create(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        cid = self.state.resolve_channel(p["channel_id"])
        author = self.state.user_payload(self.state.application_id)
        msg = self.emu.actions.create_from_body(cid, req.body(), req.uploads, author=author, source="bot")
        return Reply(body=msg.payload)

    async def get(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        msg = self.state.get_message(p["channel_id"], p["message_id"])
        return Reply(body=msg.payload)

    async def edit(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        msg = self.state.get_message(p["channel_id"], p["message_id"])
        if str(msg.payload["author"]["id"]) != self.state.application_id or "webhook_id" in msg.payload:
            raise ApiError(403, CANNOT_EDIT_OTHERS_MESSAGE, "Cannot edit a message authored by another user")
        self.emu.actions.edit_from_body(msg, req.body(), req.uploads)
        return Reply(body=msg.payload)

    async def delete(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        msg = self.state.get_message(p["channel_id"], p["message_id"])
        self.emu.actions.delete(msg)
        return Reply(204)

    async def bulk_delete(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        cid = self.state.resolve_channel(p["channel_id"])
        ids = [str(i) for i in req.body().get("messages") or []]
        if not 2 <= len(ids) <= 100:
            raise form_error("messages", "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 100 in length.")
        for mid in ids:
            msg = self.state.messages.get(mid)
            if msg is not None and msg.channel_id == cid and not msg.deleted:
                msg.deleted = True
        data = {"ids": ids, "channel_id": cid}
        if self.state.is_guild_channel(cid):
            data["guild_id"] = self.state.guild_of(cid)
        self.emu.gateway.dispatch("MESSAGE_DELETE_BULK", data, channel_id=cid)
        return Reply(204)

    async def typing(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        self.state.resolve_channel(p["channel_id"])
        return Reply(204)

    def _reaction(self, req: ApiRequest, p: dict[str, str], delta: int) -> Reply:
        msg = self.state.get_message(p["channel_id"], p["message_id"])
        emoji = unquote(p["emoji"])
        name, _, emoji_id = emoji.partition(":")
        reactions = msg.payload.setdefault("reactions", [])
        entry = next((r for r in reactions if r["emoji"]["name"] == name), None)
        if entry is None and delta > 0:
            entry = {"emoji": {"id": emoji_id or None, "name": name}, "count": 0, "me": False}
            reactions.append(entry)
        if entry is not None and entry["me"] != (delta > 0):
            entry["me"] = delta > 0
            entry["count"] += delta
            if entry["count"] <= 0:
                reactions.remove(entry)
        data: dict[str, Any] = {
            "user_id": self.state.application_id,
            "channel_id": msg.channel_id,
            "message_id": msg.id,
            "emoji": {"id": emoji_id or None, "name": name},
            "burst": False,
            "type": 0,
        }
        if delta > 0:
            data["message_author_id"] = str(msg.payload["author"]["id"])
        guild_id = self.state.guild_of(msg.channel_id)
        if guild_id is not None:
            data["guild_id"] = guild_id
            if delta > 0:
                data["member"] = self.state.member_payload(self.state.application_id, guild_id=guild_id)
        event = "MESSAGE_REACTION_ADD" if delta > 0 else "MESSAGE_REACTION_REMOVE"
        self.emu.gateway.dispatch(event, data, channel_id=msg.channel_id)
        return Reply(204)

    async def react(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return self._reaction(req, p, +1)

    async def unreact(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return self._reaction(req, p, -1)
