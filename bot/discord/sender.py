"""Posting a persona's reply: through a webhook as the persona, else as the bot with a name prefix.

Every send passes ``AllowedMentions.none()`` and defused text, so a reply can never ping. Long
replies are split at sentence boundaries. A failing webhook (deleted, permission revoked) falls
back to the prefixed form instead of losing the reply.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import discord

from bot.chatflow.conversation import persona_prefix
from bot.text.mentions import defuse_mentions
from bot.text.splitter import DISCORD_LIMIT, split_message
from personas.card import PersonaCard

log = logging.getLogger(__name__)
NO_PINGS = discord.AllowedMentions.none()
WEBHOOK_NAME = "oshaberi"
# After a channel refused us a webhook, try again only after this long (permissions may change).
NO_WEBHOOK_RETRY_S = 600.0


@dataclass(frozen=True)
class Shown:
    """What the channel shows of a reply once it ended, so the log row can say the same.

    ``state``: "full" (``messages`` show the final text), "partial" (``messages`` show ``text``,
    an earlier draft that could not be replaced or removed: a thread archived mid-stream) or
    "none" (nothing: Discord refused, or a moderator removed the reply while it was written).
    """

    messages: list[Any]
    state: str
    text: str = ""


class ReplySender:
    def __init__(self, client: discord.Client, use_webhooks: bool = True) -> None:
        self.client = client
        self.use_webhooks = use_webhooks
        self._webhooks: dict[int, discord.Webhook] = {}
        self._refused: dict[int, float] = {}

    # -- webhooks ------------------------------------------------------------------------------

    @staticmethod
    def webhook_home(channel: Any) -> Any:
        """Threads post through their parent channel's webhook."""
        return channel.parent if isinstance(channel, discord.Thread) else channel

    def known_webhook_ids(self) -> set[int]:
        return {w.id for w in self._webhooks.values()}

    async def webhook_for(self, channel: Any) -> discord.Webhook | None:
        """The bot's webhook for this channel (created on first use), or None where not possible."""
        if not self.use_webhooks or getattr(channel, "guild", None) is None:
            return None
        home = self.webhook_home(channel)
        if home is None or not hasattr(home, "webhooks"):
            return None
        if home.id in self._webhooks:
            return self._webhooks[home.id]
        refused_at = self._refused.get(home.id)
        if refused_at is not None and time.monotonic() - refused_at < NO_WEBHOOK_RETRY_S:
            return None
        me = home.guild.me
        if me is None or not home.permissions_for(me).manage_webhooks:
            self._refused[home.id] = time.monotonic()
            return None
        try:
            existing = await home.webhooks()
            mine = next(
                (
                    w
                    for w in existing
                    if w.token
                    and w.user is not None
                    and self.client.user
                    and w.user.id == self.client.user.id
                ),
                None,
            )
            webhook = mine or await home.create_webhook(name=WEBHOOK_NAME, reason="oshaberi persona replies")
        except discord.HTTPException as exc:
            log.warning("no webhook in channel %s (%s); replying as the bot", home.id, exc)
            self._refused[home.id] = time.monotonic()
            return None
        self._webhooks[home.id] = webhook
        return webhook

    # -- sending -------------------------------------------------------------------------------

    async def send(
        self,
        channel: Any,
        card: PersonaCard,
        text: str,
        reply_to: discord.Message | None = None,
        view: discord.ui.View | None = None,
    ) -> list[discord.Message]:
        """Post ``text`` as ``card``; returns the messages sent. Raises HTTPException if both ways fail.

        Chunks are cut to fit the prefixed form too, so when a webhook fails half-way the rest of
        the reply continues as the bot without repeating what was already posted. ``view`` (the
        reply's buttons) goes on the first message, as a streamed reply has it.
        """
        prefix = persona_prefix(card)
        chunks = split_message(defuse_mentions(text), DISCORD_LIMIT - len(prefix))
        sent: list[discord.Message] = []
        webhook = await self.webhook_for(channel)
        if webhook is not None:
            try:
                for i, chunk in enumerate(chunks):
                    first = view if i == 0 else None
                    sent.append(await self.send_webhook(webhook, channel, card, chunk, view=first))
                return sent
            except discord.HTTPException as exc:
                self.webhook_failed(channel, exc)
        try:
            for i, chunk in enumerate(chunks[len(sent) :], len(sent)):
                kwargs: dict[str, Any] = {"allowed_mentions": NO_PINGS}
                if view is not None and i == 0:
                    kwargs["view"] = view
                if not sent and reply_to is not None:
                    kwargs["reference"] = reply_to.to_reference(fail_if_not_exists=False)
                    kwargs["mention_author"] = False
                sent.append(await channel.send(prefix + chunk, **kwargs))
        except discord.HTTPException:
            # Half a reply must not stay up beside a log row that says nothing was shown.
            for message in sent:
                with contextlib.suppress(discord.HTTPException):
                    await message.delete()
            raise
        return sent

    async def post(
        self,
        channel: Any,
        card: PersonaCard,
        text: str,
        reply_to: discord.Message | None = None,
        view: discord.ui.View | None = None,
    ) -> Shown:
        """:meth:`send`, reporting what the channel shows instead of raising: all of it or nothing."""
        try:
            return Shown(await self.send(channel, card, text, reply_to, view=view), "full")
        except discord.HTTPException as exc:
            log.warning("could not post a reply in channel %s: %s", getattr(channel, "id", "?"), exc)
            return Shown([], "none")

    def webhook_failed(self, channel: Any, exc: discord.HTTPException) -> None:
        """Log a failed webhook send; a deleted webhook is forgotten (the next reply makes one)."""
        if isinstance(exc, discord.NotFound):
            self._webhooks.pop(self.webhook_home(channel).id, None)
            log.warning("webhook for channel %s is gone; replying as the bot", channel.id)
        else:
            log.warning("webhook send failed in channel %s (%s); replying as the bot", channel.id, exc)

    async def send_webhook(
        self,
        webhook: discord.Webhook,
        channel: Any,
        card: PersonaCard,
        chunk: str,
        view: discord.ui.View | None = None,
    ) -> discord.Message:
        """Post one chunk (at most 2,000 characters, defused) through ``webhook`` as ``card``,
        with ``view`` (buttons: the bot's own webhook may carry them) if given."""
        kwargs: dict[str, Any] = {
            "username": card.display_name[:80],
            "allowed_mentions": NO_PINGS,
            "wait": True,
        }
        if view is not None:
            kwargs["view"] = view
        if card.avatar_url:
            kwargs["avatar_url"] = card.avatar_url
        if isinstance(channel, discord.Thread):
            kwargs["thread"] = channel
        return await webhook.send(chunk, **kwargs)


async def notify(channel: Any, text: str, reply_to: discord.Message | None = None) -> discord.Message | None:
    """A short system notice (busy, too fast, error); a failure to send is logged, never raised."""
    kwargs: dict[str, Any] = {"allowed_mentions": NO_PINGS}
    if reply_to is not None:
        kwargs["reference"] = reply_to.to_reference(fail_if_not_exists=False)
        kwargs["mention_author"] = False
    try:
        return await channel.send(defuse_mentions(text)[:DISCORD_LIMIT], **kwargs)
    except discord.HTTPException as exc:
        log.warning("could not send a notice to channel %s: %s", getattr(channel, "id", "?"), exc)
        return None
