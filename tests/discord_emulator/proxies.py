"""A proxy bot like PluralKit or Tupperbox, inside the emulator: it reposts a member's message
through its own webhook under the member's chosen name and then deletes the original, in
PluralKit's documented order (or the other way round, to test a reordered delivery).

The repost is what Discord shows such a message as: a webhook message (author: the webhook,
``bot: true``) carrying ``webhook_id`` and the proxy's ``application_id``, without the
original's reply reference or mentions list beyond what its content holds.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .state import StoredMessage

if TYPE_CHECKING:
    from .server import DiscordEmulator

PLURALKIT_ID = "466378653216014359"
TUPPERBOX_ID = "431544605209788416"


class ProxyBot:
    """Another application in the guild that proxies members' messages."""

    def __init__(
        self, emu: DiscordEmulator, application_id: str = PLURALKIT_ID, name: str = "PluralKit"
    ) -> None:
        self.emu = emu
        self.application_id = application_id
        state = emu.state
        if application_id not in state.users:
            state.add_user(name.lower(), application_id, name, bot=True)
            state.add_member(application_id)
        self._hooks: dict[str, dict[str, Any]] = {}

    def webhook(self, channel_id: str) -> dict[str, Any]:
        """The proxy's own webhook in a channel (created on first use, owned by the proxy)."""
        if channel_id not in self._hooks:
            state = self.emu.state
            wid = state.ids.next()
            state.webhooks[wid] = {
                "id": wid,
                "type": 1,
                "token": state.new_token(),
                "channel_id": channel_id,
                "guild_id": state.guild_id,
                "name": "proxy",
                "avatar": None,
                "application_id": self.application_id,
                "user": state.user_payload(self.application_id),
            }
            self._hooks[channel_id] = state.webhooks[wid]
        return self._hooks[channel_id]

    async def proxy(
        self,
        channel: str | int,
        original_id: str | int,
        text: str | None = None,
        *,
        member_name: str = "アリス",
        delete: bool = True,
        delete_first: bool = False,
        delay_s: float = 0.0,
    ) -> StoredMessage:
        """Repost ``original_id`` (its content, or ``text``: proxy tags removed) as ``member_name``,
        then delete the original after ``delay_s`` (``delete_first``: before the repost)."""
        emu = self.emu
        emu._mark_trigger()
        cid = emu.state.resolve_channel(channel)
        original = emu.message(original_id)
        if delete_first:
            emu.actions.delete(original)
            await asyncio.sleep(delay_s)
        hook = self.webhook(cid)
        author = {
            "id": hook["id"],
            "username": member_name,
            "avatar": None,
            "discriminator": "0000",
            "bot": True,
            "global_name": None,
        }
        body = {"content": original.payload.get("content", "") if text is None else text}
        repost = emu.actions.create_from_body(
            cid,
            body,
            [],
            author=author,
            source="webhook",
            webhook_id=hook["id"],
            application_id=self.application_id,
            username=member_name,
        )
        if delete and not delete_first:
            await asyncio.sleep(delay_s)
            emu.actions.delete(original)
        emu.state.save()
        return repost
