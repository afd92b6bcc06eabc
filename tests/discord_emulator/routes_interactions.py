"""REST routes for application commands, interaction callbacks/follow-ups and channel webhooks.

Interaction rules are enforced, not just recorded: a callback later than the
ack window gets 10062 Unknown interaction, a second callback gets 40060, and a
follow-up before any callback is refused. An LLM bot that forgets to defer
while it generates fails here the way it would on Discord.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from .errors import (
    INTERACTION_ALREADY_ACKNOWLEDGED,
    UNKNOWN_APPLICATION_COMMAND,
    UNKNOWN_CHANNEL,
    UNKNOWN_INTERACTION,
    UNKNOWN_MESSAGE,
    UNKNOWN_WEBHOOK,
    ApiError,
    form_error,
    not_found,
)
from .messages import FLAG_EPHEMERAL, FLAG_LOADING, MT_CHAT_INPUT_COMMAND
from .rest import ApiRequest, Reply, Router
from .state import CHANNEL_FORUM, InteractionRecord, StoredMessage

if TYPE_CHECKING:
    from .server import DiscordEmulator

CB_PONG = 1
CB_CHANNEL_MESSAGE = 4
CB_DEFERRED_CHANNEL_MESSAGE = 5
CB_DEFERRED_UPDATE_MESSAGE = 6
CB_UPDATE_MESSAGE = 7
CB_AUTOCOMPLETE_RESULT = 8
CB_MODAL = 9
MAX_WEBHOOKS_PER_CHANNEL = 15


class InteractionRoutes:
    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.state = emu.state

    def register(self, r: Router) -> None:
        for scope in ("/applications/{app_id}", "/applications/{app_id}/guilds/{guild_id}"):
            r.add("GET", f"{scope}/commands", self.list_commands)
            r.add("PUT", f"{scope}/commands", self.bulk_overwrite)
            r.add("POST", f"{scope}/commands", self.upsert_command)
            r.add("GET", f"{scope}/commands/permissions", self.command_permissions)
            r.add("GET", scope + "/commands/{command_id}", self.get_command)
            r.add("PATCH", scope + "/commands/{command_id}", self.edit_command)
            r.add("DELETE", scope + "/commands/{command_id}", self.delete_command)
        r.add("POST", "/interactions/{interaction_id}/{token}/callback", self.callback)
        r.add("GET", "/channels/{channel_id}/webhooks", self.channel_webhooks)
        r.add("POST", "/channels/{channel_id}/webhooks", self.create_webhook)
        r.add("GET", "/guilds/{guild_id}/webhooks", self.guild_webhooks)
        r.add("GET", "/webhooks/{webhook_id}", self.get_webhook)
        r.add("PATCH", "/webhooks/{webhook_id}", self.edit_webhook)
        r.add("DELETE", "/webhooks/{webhook_id}", self.delete_webhook)
        r.add("GET", "/webhooks/{webhook_id}/{token}", self.get_webhook)
        r.add("PATCH", "/webhooks/{webhook_id}/{token}", self.edit_webhook)
        r.add("DELETE", "/webhooks/{webhook_id}/{token}", self.delete_webhook)
        r.add("POST", "/webhooks/{webhook_id}/{token}", self.execute)
        r.add("GET", "/webhooks/{webhook_id}/{token}/messages/{message_id}", self.get_webhook_message)
        r.add("PATCH", "/webhooks/{webhook_id}/{token}/messages/{message_id}", self.edit_webhook_message)
        r.add("DELETE", "/webhooks/{webhook_id}/{token}/messages/{message_id}", self.delete_webhook_message)

    # ------------------------------------------------------------- commands
    def _scope(self, p: dict[str, str]) -> str:
        if p["app_id"] != self.state.application_id:
            raise ApiError(403, 50001, "Missing Access")
        return p.get("guild_id") or "global"

    def _normalise_command(
        self, scope: str, body: dict[str, Any], existing: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Fill in what Discord adds; a command keeps its id when re-synced under the same name and type."""
        name = body.get("name")
        if not name:
            raise form_error("name", "BASE_TYPE_REQUIRED", "This field is required")
        ctype = int(body.get("type", 1))
        same = next((c for c in existing if c["name"] == name and int(c.get("type", 1)) == ctype), None)
        cmd = dict(body)
        cmd.update(
            {
                "id": same["id"] if same else self.state.ids.next(),
                "application_id": self.state.application_id,
                "type": ctype,
                "description": body.get("description", ""),
                "version": self.state.ids.next(),
                "default_member_permissions": body.get("default_member_permissions"),
                "nsfw": bool(body.get("nsfw", False)),
            }
        )
        cmd.setdefault("options", [])
        if scope != "global":
            cmd["guild_id"] = scope
        else:
            cmd.setdefault("integration_types", [0])
            cmd.setdefault("contexts", None)
        return cmd

    async def list_commands(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body=self.state.commands.get(self._scope(p), []))

    async def bulk_overwrite(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        scope = self._scope(p)
        if not isinstance(req.json, list):
            raise form_error("_root", "LIST_TYPE_CONVERT", "Must be a list.")
        existing = self.state.commands.get(scope, [])
        self.state.commands[scope] = [self._normalise_command(scope, c, existing) for c in req.json]
        return Reply(body=self.state.commands[scope])

    async def upsert_command(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        scope = self._scope(p)
        existing = self.state.commands.setdefault(scope, [])
        cmd = self._normalise_command(scope, req.body(), existing)
        existing[:] = [c for c in existing if c["id"] != cmd["id"]] + [cmd]
        return Reply(201, cmd)

    def _find_command(self, scope: str, command_id: str) -> dict[str, Any]:
        for cmd in self.state.commands.get(scope, []):
            if cmd["id"] == command_id:
                return cmd
        raise not_found(UNKNOWN_APPLICATION_COMMAND, "application command")

    async def get_command(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body=self._find_command(self._scope(p), p["command_id"]))

    async def edit_command(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        cmd = self._find_command(self._scope(p), p["command_id"])
        cmd.update({k: v for k, v in req.body().items() if k not in ("id", "application_id")})
        return Reply(body=cmd)

    async def delete_command(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        scope = self._scope(p)
        cmd = self._find_command(scope, p["command_id"])
        self.state.commands[scope].remove(cmd)
        return Reply(204)

    async def command_permissions(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        self._scope(p)
        return Reply(body=[])

    # --------------------------------------------------------- interactions
    def _interaction(self, interaction_id: str, token: str) -> InteractionRecord:
        record = self.state.interactions.get(interaction_id)
        if record is None or record.token != token:
            raise not_found(UNKNOWN_INTERACTION, "interaction")
        return record

    def _bot_author(self) -> dict[str, Any]:
        return self.state.user_payload(self.state.application_id)

    def _interaction_message(
        self, record: InteractionRecord, body: dict[str, Any], req: ApiRequest, *, extra_flags: int = 0
    ) -> StoredMessage:
        return self.emu.actions.create_from_body(
            record.channel_id,
            body,
            req.uploads,
            author=self._bot_author(),
            source="interaction",
            webhook_id=self.state.application_id,
            application_id=self.state.application_id,
            interaction=record,
            msg_type=MT_CHAT_INPUT_COMMAND if record.type == 2 else 0,
            extra_flags=extra_flags,
            validate=not extra_flags & FLAG_LOADING,
        )

    async def callback(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        record = self._interaction(p["interaction_id"], p["token"])
        body = req.body()
        cb_type = int(body.get("type", 0))
        data = body.get("data") or {}
        age = time.time() - record.created_at
        if record.acknowledged:
            raise ApiError(
                400, INTERACTION_ALREADY_ACKNOWLEDGED, "Interaction has already been acknowledged."
            )
        if self.emu.interaction_ack_timeout is not None and age > self.emu.interaction_ack_timeout:
            raise not_found(UNKNOWN_INTERACTION, "interaction")
        message: StoredMessage | None = None
        if cb_type == CB_CHANNEL_MESSAGE:
            message = self._interaction_message(record, data, req)
        elif cb_type == CB_DEFERRED_CHANNEL_MESSAGE:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = self._interaction_message(record, {}, req, extra_flags=flags)
        elif cb_type in (CB_DEFERRED_UPDATE_MESSAGE, CB_UPDATE_MESSAGE):
            if record.message_id is None:
                raise ApiError(400, 40004, "Interaction response type is not valid for this interaction")
            message = self.state.get_message(record.channel_id, record.message_id)
            if cb_type == CB_UPDATE_MESSAGE:
                self.emu.actions.edit_from_body(message, data, req.uploads)
        elif cb_type == CB_MODAL:
            if record.type == 5:
                raise ApiError(400, 40004, "Cannot respond to a modal submit with a modal")
            record.modal = data
        elif cb_type != CB_AUTOCOMPLETE_RESULT:
            raise form_error(
                "type", "BASE_TYPE_CHOICES", f"Value must be one of (4, 5, 6, 7, 8, 9); got {cb_type}."
            )
        record.responses.append(body)
        if message is not None:
            record.original_message_id = message.id
        if "with_response" not in req.query or req.query["with_response"] in ("false", "0"):
            return Reply(204)
        interaction: dict[str, Any] = {"id": record.id, "type": record.type}
        resource: dict[str, Any] = {"type": cb_type}
        if message is not None:
            flags = int(message.payload.get("flags") or 0)
            interaction.update(
                {
                    "response_message_id": message.id,
                    "response_message_loading": bool(flags & FLAG_LOADING),
                    "response_message_ephemeral": bool(flags & FLAG_EPHEMERAL),
                }
            )
            if cb_type in (CB_CHANNEL_MESSAGE, CB_UPDATE_MESSAGE):
                resource["message"] = message.payload
        return Reply(200, {"interaction": interaction, "resource": resource})

    def _interaction_by_token(self, webhook_id: str, token: str) -> InteractionRecord | None:
        if webhook_id != self.state.application_id:
            return None
        for record in self.state.interactions.values():
            if record.token == token:
                if time.time() - record.created_at > self.emu.interaction_token_ttl:
                    raise ApiError(401, 50027, "Invalid Webhook Token")
                return record
        return None

    # ------------------------------------------------------------- webhooks
    def _webhook_payload(self, hook: dict[str, Any], *, with_token: bool = True) -> dict[str, Any]:
        payload = dict(hook)
        if not with_token:
            payload.pop("token", None)
        return payload

    def _webhook(self, webhook_id: str, token: str | None = None) -> dict[str, Any]:
        hook = self.state.webhooks.get(webhook_id)
        if hook is None or (token is not None and hook["token"] != token):
            raise not_found(UNKNOWN_WEBHOOK, "Webhook")
        return hook

    @staticmethod
    def _check_name(name: Any, field: str) -> None:
        if not isinstance(name, str) or not 1 <= len(name) <= 80:
            raise form_error(field, "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 80 in length.")
        lowered = name.lower()
        for banned in ("discord", "clyde"):
            if banned in lowered:
                raise form_error(field, "USERNAME_INVALID_CONTAINS", f'Username cannot contain "{banned}"')

    async def channel_webhooks(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        cid = self.state.resolve_channel(p["channel_id"])
        return Reply(
            body=[self._webhook_payload(h) for h in self.state.webhooks.values() if h["channel_id"] == cid]
        )

    async def guild_webhooks(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        guild_id = self.state.resolve_guild(p["guild_id"])
        hooks = [
            h for h in self.state.webhooks.values() if h.get("guild_id", self.state.guild_id) == guild_id
        ]
        return Reply(body=[self._webhook_payload(h) for h in hooks])

    async def create_webhook(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        cid = self.state.resolve_channel(p["channel_id"])
        body = req.body()
        self._check_name(body.get("name"), "name")
        if sum(1 for h in self.state.webhooks.values() if h["channel_id"] == cid) >= MAX_WEBHOOKS_PER_CHANNEL:
            raise ApiError(400, 30007, "Maximum number of webhooks reached (15)")
        wid = self.state.ids.next()
        avatar = body.get("avatar")
        self.state.webhooks[wid] = {
            "id": wid,
            "type": 1,
            "token": self.state.new_token(),
            "channel_id": cid,
            "guild_id": self.state.guild_of(cid),
            "name": body["name"],
            "avatar": hashlib.md5(avatar.encode()).hexdigest() if avatar else None,
            "application_id": self.state.application_id,
            "user": self._bot_author(),
        }
        return Reply(body=self._webhook_payload(self.state.webhooks[wid]))

    async def get_webhook(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        hook = self._webhook(p["webhook_id"], p.get("token"))
        return Reply(body=self._webhook_payload(hook, with_token="token" not in p))

    async def edit_webhook(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        hook = self._webhook(p["webhook_id"], p.get("token"))
        body = req.body()
        if "name" in body:
            self._check_name(body["name"], "name")
            hook["name"] = body["name"]
        if "channel_id" in body and "token" not in p:
            hook["channel_id"] = self.state.resolve_channel(body["channel_id"])
        return Reply(body=self._webhook_payload(hook, with_token="token" not in p))

    async def delete_webhook(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        self._webhook(p["webhook_id"], p.get("token"))
        del self.state.webhooks[p["webhook_id"]]
        return Reply(204)

    async def execute(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        """Webhook execute, or an interaction follow-up when the id is the application's."""
        body = req.body()
        record = self._interaction_by_token(p["webhook_id"], p["token"])
        if record is not None:
            if not record.acknowledged:
                raise not_found(UNKNOWN_WEBHOOK, "Webhook")
            msg = self._interaction_message(record, body, req)
            return Reply(body=msg.payload)
        hook = self._webhook(p["webhook_id"], p["token"])
        username = body.get("username")
        if username is not None:
            self._check_name(username, "username")
        author = {
            "id": hook["id"],
            "username": username or hook["name"],
            "avatar": hook["avatar"],
            "discriminator": "0000",
            "bot": True,
            "global_name": None,
        }
        channel_id = str(req.query.get("thread_id") or hook["channel_id"])
        if "thread_id" in req.query:
            thread = self.state.channels.get(channel_id)
            if thread is None or thread.get("parent_id") != hook["channel_id"]:
                raise not_found(UNKNOWN_CHANNEL, "Channel")  # not a thread of the webhook's channel
        elif self.state.channels.get(channel_id, {}).get("type") == CHANNEL_FORUM:
            raise ApiError(
                400, 220001, "Webhooks posted to forum channels must have a thread_name or thread_id"
            )
        msg = self.emu.actions.create_from_body(
            channel_id,
            body,
            req.uploads,
            author=author,
            source="webhook",
            webhook_id=hook["id"],
            application_id=hook.get("application_id"),
            username=username,
            avatar_url=body.get("avatar_url"),
        )
        if req.query.get("wait") in ("true", "True", "1"):
            return Reply(body=msg.payload)
        return Reply(204)

    def _webhook_message(self, p: dict[str, str]) -> StoredMessage:
        record = self._interaction_by_token(p["webhook_id"], p["token"])
        if record is not None:
            mid = record.original_message_id if p["message_id"] == "@original" else p["message_id"]
            msg = self.state.messages.get(mid or "")
            if (
                msg is None
                or msg.deleted
                or (p["message_id"] != "@original" and msg.interaction_id != record.id)
            ):
                raise not_found(UNKNOWN_MESSAGE, "Message")
            return msg
        hook = self._webhook(p["webhook_id"], p["token"])
        msg = self.state.messages.get(p["message_id"])
        if msg is None or msg.deleted or msg.payload.get("webhook_id") != hook["id"]:
            raise not_found(UNKNOWN_MESSAGE, "Message")
        return msg

    async def get_webhook_message(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        return Reply(body=self._webhook_message(p).payload)

    async def edit_webhook_message(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        msg = self._webhook_message(p)
        self.emu.actions.edit_from_body(msg, req.body(), req.uploads)
        return Reply(body=msg.payload)

    async def delete_webhook_message(self, req: ApiRequest, p: dict[str, str]) -> Reply:
        self.emu.actions.delete(self._webhook_message(p))
        return Reply(204)
