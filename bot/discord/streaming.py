"""The Discord side of a streamed reply: post, edit and delete its messages (bot/text/streaming.py
decides what and when).

Like :meth:`ReplySender.send`, a chunk goes through the channel's webhook as the persona, and
falls back to the bot with a ``**name**:`` prefix when the webhook fails; every send and edit
passes ``AllowedMentions.none()``. Discord's answers become :class:`SendError`: a 429 that
discord.py did not wait out itself carries its Retry-After, so the pacer waits it out too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

from bot.chatflow.conversation import persona_prefix
from bot.discord.sender import NO_PINGS, ReplySender, Shown
from bot.text.splitter import DISCORD_LIMIT
from bot.text.streaming import SendError, StreamedReply
from personas.card import PersonaCard

log = logging.getLogger(__name__)
DEFAULT_RETRY_AFTER_S = 1.0


@dataclass(frozen=True)
class Posted:
    """A message of a streamed reply, and the name prefix its text is shown after."""

    message: discord.Message
    prefix: str

    @property
    def id(self) -> int:
        return self.message.id


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds Discord asked us to wait, for a rate-limit error; None for any other error."""
    if isinstance(exc, discord.RateLimited):
        return float(exc.retry_after)
    if not isinstance(exc, discord.HTTPException) or exc.status != 429:
        return None
    headers = getattr(exc.response, "headers", None) or {}
    # The body's retry_after has fractions; the header is rounded up to whole seconds.
    for value in (_body_retry_after(exc.text), headers.get("Retry-After")):
        if value is None:
            continue
        try:
            return max(0.0, float(value))
        except (TypeError, ValueError):
            continue
    return DEFAULT_RETRY_AFTER_S


def _body_retry_after(text: str) -> Any:
    try:
        return json.loads(text).get("retry_after")
    except (ValueError, AttributeError):
        return None


# Refusals no retry can change: a thread archived (50083) or locked (160005), access or
# permissions taken away (50001, 50013), the channel (10003) or the webhook (10015) deleted.
PERMANENT_CODES = frozenset({50083, 160005, 50001, 50013, 10003, 10015})
UNKNOWN_MESSAGE = 10008


def send_error(exc: BaseException, doing: str) -> SendError:
    code = getattr(exc, "code", 0)
    return SendError(
        f"{doing}: {exc}",
        retry_after=retry_after_s(exc),
        gone=isinstance(exc, discord.NotFound) and code in (UNKNOWN_MESSAGE, 0),
        permanent=code in PERMANENT_CODES,
    )


async def settle(
    stream: StreamedReply[Posted], text: str, post_whole: Callable[[], Awaitable[Shown]]
) -> Shown:
    """End a streamed reply with ``text``, and make the channel show it or nothing.

    When the last round cannot be shown (its retries ran out, the webhook or a permission went,
    the thread was archived or locked), the drafts are deleted and ``text`` is posted whole
    (``post_whole``: through the webhook, else as the bot); never a draft beside a log row that
    says the reply was shown. A reply a moderator deleted mid-stream is not posted again.
    """
    sent = await stream.finish(text)
    if stream.complete:
        return Shown(sent, "full")
    unwanted = stream.interrupted or stream.withdrawn  # removed by a moderator, or its question deleted
    await stream.withdraw()
    if stream.stuck:
        return Shown([m for m, _ in stream.stuck], "partial", "".join(t for _, t in stream.stuck))
    if unwanted:
        return Shown([], "none")
    return await post_whole()


class DiscordSink:
    """Where one streamed reply is shown: ``channel``, as ``card``, answering ``reply_to``."""

    def __init__(
        self,
        sender: ReplySender,
        channel: Any,
        card: PersonaCard,
        reply_to: discord.Message | None,
        view: discord.ui.View | None = None,
        done_view: discord.ui.View | None = None,
    ) -> None:
        self.sender = sender
        self.channel = channel
        self.card = card
        self.reply_to = reply_to
        # The buttons on the first message: ``view`` while it is written (Stop), ``done_view``
        # from the last round on (Regenerate); see FinishingSink.
        self.view = view
        self.done_view = done_view
        self._done = False
        self._first: Posted | None = None
        self.prefix = persona_prefix(card)
        # Sized for the prefixed form too, so a fallback half-way needs no re-split.
        self.limit = DISCORD_LIMIT - len(self.prefix)
        self._webhook_failed = False  # once it failed, the rest of this reply goes as the bot
        self._posts = 0

    def finishing(self) -> None:
        """The next round is the last: the first message's buttons become ``done_view``."""
        self._done = True

    def _buttons(self) -> discord.ui.View | None:
        return self.done_view if self._done else self.view

    async def post(self, text: str) -> Posted:
        first = self._posts == 0
        webhook = None if self._webhook_failed else await self.sender.webhook_for(self.channel)
        if webhook is not None:
            try:
                view = self._buttons() if first else None
                message = await self.sender.send_webhook(webhook, self.channel, self.card, text, view=view)
                self._posts += 1
                posted = Posted(message, "")
                self._first = self._first or posted
                return posted
            except discord.HTTPException as exc:
                self.sender.webhook_failed(self.channel, exc)
                self._webhook_failed = True
        kwargs: dict[str, Any] = {"allowed_mentions": NO_PINGS}
        if self._posts == 0 and self.reply_to is not None:
            kwargs["reference"] = self.reply_to.to_reference(fail_if_not_exists=False)
            kwargs["mention_author"] = False
        if first and self._buttons() is not None:
            kwargs["view"] = self._buttons()
        try:
            message = await self.channel.send(self.prefix + text, **kwargs)
        except (discord.HTTPException, discord.RateLimited) as exc:
            raise send_error(exc, "posting a reply") from exc
        self._posts += 1
        posted = Posted(message, self.prefix)
        self._first = self._first or posted
        return posted

    async def edit(self, posted: Posted, text: str) -> None:
        kwargs: dict[str, Any] = {}
        if self._done and posted is self._first and self.done_view is not None:
            kwargs["view"] = self.done_view
        try:
            await posted.message.edit(content=posted.prefix + text, allowed_mentions=NO_PINGS, **kwargs)
        except (discord.HTTPException, discord.RateLimited) as exc:
            raise send_error(exc, "editing a reply") from exc

    async def delete(self, posted: Posted) -> None:
        try:
            await posted.message.delete()
        except (discord.HTTPException, discord.RateLimited) as exc:
            raise send_error(exc, "deleting a reply") from exc


async def feed_stream(pieces: AsyncIterator[str], stream: StreamedReply[Posted]) -> None:
    """Show the reply as it is generated: every text piece extends what ``stream`` shows."""
    raw = ""
    async for piece in pieces:
        raw += piece
        stream.feed(raw)


async def show_reply(
    sender: ReplySender,
    channel: Any,
    card: PersonaCard,
    text: str,
    reply_to: Any,
    stream: StreamedReply[Posted] | None,
    view: discord.ui.View | None = None,
) -> Shown:
    """Show a reply's final ``text``: the streamed messages brought to it (:func:`settle`), or
    posted whole (with ``view``, the reply's buttons, on its first message); returns what the
    channel shows (all of it, part, or nothing: Discord refused, and the row is still logged for
    review, marked as not shown)."""

    def post_whole() -> Awaitable[Shown]:
        return sender.post(channel, card, text, reply_to, view=view)

    if stream is None:
        return await post_whole()
    return await settle(stream, text, post_whole)
