"""Message mutations shared by REST handlers and test hooks: store, then tell the gateway.

Discord echoes a bot's own messages (and webhook posts) back over the gateway
as MESSAGE_CREATE, so a bot that forgets to ignore them loops in production;
creating, editing and deleting through one place keeps that echo faithful
whichever side caused the change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import EMPTY_MESSAGE, ApiError
from .messages import FLAG_EPHEMERAL, FLAG_LOADING, UploadedFile, validate_body
from .state import InteractionRecord, StoredMessage, iso_now

if TYPE_CHECKING:
    from .server import DiscordEmulator

FLAG_SUPPRESS_EMBEDS = 1 << 2
_EDITABLE_FLAGS = FLAG_SUPPRESS_EMBEDS | (1 << 12) | (1 << 15)  # suppress embeds, silent, components v2


class Actions:
    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu

    def create_from_body(
        self,
        channel_id: str,
        body: dict[str, Any],
        uploads: list[UploadedFile],
        *,
        author: dict[str, Any],
        source: str,
        webhook_id: str | None = None,
        application_id: str | None = None,
        username: str | None = None,
        avatar_url: str | None = None,
        interaction: InteractionRecord | None = None,
        msg_type: int | None = None,
        extra_flags: int = 0,
        validate: bool = True,
    ) -> StoredMessage:
        """Create a message the bot sent (REST, webhook or interaction) and dispatch MESSAGE_CREATE."""
        factory = self.emu.factory
        if validate:
            validate_body(body, has_files=bool(uploads), edit=False)
        reference, referenced = factory.reference(channel_id, body.get("message_reference"))
        allowed = body.get("allowed_mentions")
        content = body.get("content") or ""
        replied_author = str(referenced.payload["author"]["id"]) if referenced else None
        users, roles, everyone = factory.mentions_for_bot_message(content, allowed, replied_author)
        flags = int(body.get("flags") or 0) | extra_flags
        ephemeral = bool(flags & FLAG_EPHEMERAL) and interaction is not None
        if interaction is None:
            flags &= ~FLAG_EPHEMERAL  # only interaction responses can be ephemeral
        metadata = None
        if interaction is not None:
            metadata = {
                "id": interaction.id,
                "type": interaction.type,
                "user": self.emu.state.user_payload(interaction.user_id),
                "authorizing_integration_owners": {
                    "0": self.emu.state.guild_of(interaction.channel_id) or self.emu.state.guild_id
                },
            }
            if interaction.type == 2:
                metadata["name"] = interaction.data.get("name")
        payload = factory.build(
            channel_id=channel_id,
            author=author,
            content=content,
            embeds=body.get("embeds"),
            components=body.get("components"),
            attachments=factory.attachments_from_body(channel_id, body, uploads),
            flags=flags,
            mentions=users,
            mention_roles=roles,
            mention_everyone=everyone,
            reference=reference,
            referenced=referenced,
            msg_type=msg_type,
            tts=bool(body.get("tts")),
            nonce=body.get("nonce"),
            webhook_id=webhook_id,
            application_id=application_id,
            interaction_metadata=metadata,
        )
        msg = StoredMessage(
            payload=payload,
            source=source,
            allowed_mentions=allowed,
            username=username,
            avatar_url=avatar_url,
            ephemeral=ephemeral,
            interaction_id=interaction.id if interaction else None,
        )
        self.emu.state.messages[msg.id] = msg
        if not ephemeral:
            self.emu.gateway.dispatch("MESSAGE_CREATE", factory.gateway_payload(msg), channel_id=channel_id)
        return msg

    def edit_from_body(
        self, msg: StoredMessage, body: dict[str, Any], uploads: list[UploadedFile], *, by_bot: bool = True
    ) -> StoredMessage:
        """Apply a PATCH body; finishing a deferred ("thinking…") response clears the loading flag."""
        factory = self.emu.factory
        validate_body(body, has_files=bool(uploads), edit=True)
        old = msg.payload
        new = dict(old)
        for key in ("content", "embeds", "components"):
            if key in body:
                new[key] = body[key] if body[key] is not None else ("" if key == "content" else [])
        if "attachments" in body or uploads:
            new["attachments"] = factory.attachments_from_body(
                msg.channel_id, body, uploads, existing=old.get("attachments")
            )
        was_loading = bool(int(old.get("flags") or 0) & FLAG_LOADING)
        flags = int(old.get("flags") or 0) & ~FLAG_LOADING
        if body.get("flags") is not None:
            flags = (flags & ~_EDITABLE_FLAGS) | (int(body["flags"]) & _EDITABLE_FLAGS)
        new["flags"] = flags
        if not (new.get("content") or new.get("embeds") or new.get("attachments") or new.get("components")):
            raise ApiError(400, EMPTY_MESSAGE, "Cannot send an empty message")
        if by_bot and "allowed_mentions" in body:
            msg.allowed_mentions = body["allowed_mentions"]
        if "content" in body:
            referenced = None
            ref = old.get("message_reference")
            if ref:
                referenced = self.emu.state.messages.get(str(ref.get("message_id")))
            replied = str(referenced.payload["author"]["id"]) if referenced else None
            allowed = msg.allowed_mentions if by_bot else None
            users, roles, everyone = factory.mentions_for_bot_message(new["content"] or "", allowed, replied)
            new["mentions"] = factory.mention_payloads(msg.channel_id, users)
            new["mention_roles"] = roles
            new["mention_everyone"] = everyone
        if not was_loading:
            new["edited_timestamp"] = iso_now()
        msg.payload = new
        if not msg.ephemeral:
            self.emu.gateway.dispatch(
                "MESSAGE_UPDATE", factory.gateway_payload(msg), channel_id=msg.channel_id
            )
        return msg

    def delete(self, msg: StoredMessage) -> None:
        msg.deleted = True
        if msg.ephemeral:
            return
        data: dict[str, Any] = {"id": msg.id, "channel_id": msg.channel_id}
        if self.emu.state.is_guild_channel(msg.channel_id):
            data["guild_id"] = self.emu.state.guild_of(msg.channel_id)
        self.emu.gateway.dispatch("MESSAGE_DELETE", data, channel_id=msg.channel_id)
