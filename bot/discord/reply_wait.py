"""Waiting for a reply's text: the typing indicator, the queue-position notice, the streamed
message, and what each way of failing tells the member.

The chat cog calls ``await_text`` once per reply it queued; whatever happens, the member sees the
reply, a notice that says why there is none, or (when they deleted their question) nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container
from typing import TYPE_CHECKING, Any

import discord

from bot.chatflow.inflight import ReplyInFlight
from bot.chatflow.replyflow import ReplyFlow
from bot.discord.bot_protocol import BotServices
from bot.discord.reply_controls import controls_view
from bot.discord.reply_job import ReplyJob
from bot.discord.sender import notify
from bot.discord.streaming import DiscordSink, Posted, feed_stream
from bot.discord.waiting import QueueNotice, TypingIndicator
from bot.serving.generation import GenerationError, RequestCancelledError, WorkerStoppedError
from bot.text.edit_budget import EditBudget
from bot.text.streaming import StreamedReply
from personas.card import PersonaCard

if TYPE_CHECKING:
    from bot.chatflow.service import PendingReply

log = logging.getLogger(__name__)
SHUTDOWN_NOTICE = "The bot is restarting, so this message was not answered. Please send it again in a minute."


def streamed_reply(
    bot: BotServices,
    flow: ReplyFlow,
    channel: Any,
    card: PersonaCard,
    message: discord.Message,
    pending: PendingReply,
    job: ReplyJob,
    budget: EditBudget,
) -> StreamedReply[Posted]:
    """The message a reply is streamed into: posted with a Stop button, finished with Regenerate,
    its edits paced by the channel's ``chat.stream_edit_interval_s`` and ``budget`` (one per
    webhook, shared by every reply streamed through it)."""
    stop = controls_view(job.asker_id, message.id, writing=True)
    regenerate = controls_view(job.asker_id, message.id, writing=False)
    return StreamedReply(
        DiscordSink(bot.sender, channel, card, message, view=stop, done_view=regenerate),
        flow.words,
        pending.draft,
        bot.settings.chat.stream_edit_interval_s,
        budget=budget,
    )


async def await_text(
    bot: BotServices,
    flow: ReplyFlow,
    message: discord.Message,
    pending: PendingReply,
    notice: QueueNotice,
    stream: StreamedReply[Posted] | None,
    writing: ReplyInFlight,
    withdrawn: Container[int],
    poll_s: float,
) -> str | None:
    """The reply's cleaned text, shown as it grows when ``stream`` is given; None when the
    user was told why there is none (or the question was withdrawn: its id is in ``withdrawn``),
    partial messages gone. After Stop, the text shown by then. The queue position is looked at
    every ``poll_s`` seconds. Raises only what cancels the calling task (a shutdown)."""
    channel = message.channel
    feeder: asyncio.Task[None] | None = None
    try:
        async with TypingIndicator(channel) as typing:
            if stream is None:
                return await flow.wait(pending, notice.update, poll_s)

            async def shown() -> None:  # the reply is visible: no more typing or queue notice
                await typing.stop()
                await notice.remove()

            stream.on_first_post = shown
            stream.start()
            feeder = asyncio.create_task(feed_stream(pending.pieces(), stream))
            return await flow.wait(pending, notice.update, poll_s)
    except (RequestCancelledError, WorkerStoppedError) as exc:
        if writing.stopped_by is not None and message.id not in withdrawn and bot.accepting:
            # A member pressed Stop: what was shown is the reply.
            return await stream.stop_here() if stream is not None else None
        await withdraw_stream(stream, notice)
        if message.id in withdrawn:
            log.info("message %s was deleted while its reply was written; nothing posted", message.id)
            return None
        await notify(channel, SHUTDOWN_NOTICE if not bot.accepting else f"Sorry: {exc}", message)
    except GenerationError as exc:
        await withdraw_stream(stream, notice)
        await notify(channel, f"Sorry, no reply this time: {exc}", message)
    except Exception:
        log.exception("generation failed for message %s", message.id)
        await withdraw_stream(stream, notice)
        await notify(channel, "Sorry, something went wrong while writing the reply.", message)
    except BaseException:
        if stream is not None:
            stream.cancel()  # this task is going away (shutdown): so does its editor
        raise
    finally:
        if feeder is not None:
            # Generation has ended one way or another, so the pieces run out at once.
            await asyncio.wait({feeder}, timeout=5)
            feeder.cancel()
    return None


async def withdraw_stream(stream: StreamedReply[Posted] | None, notice: QueueNotice) -> None:
    """Take back the queue notice and whatever part of the reply was shown."""
    await notice.remove()
    if stream is not None:
        await stream.withdraw()
