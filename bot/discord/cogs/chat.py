"""Answering messages: who is answered, with what history, and how the reply reaches the channel.

Every request ends in something the user can see (a reply, a notice, or a reaction), never in
silence: a full queue, a rate limit, an error and a shutdown all say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands, tasks

from bot.chatflow.conversation import Conversation
from bot.chatflow.ratelimit import describe_wait
from bot.chatflow.replyflow import Incoming, ReplyFlow, Stopwatch
from bot.discord.bot_protocol import BotServices
from bot.discord.checks import channel_allowed, member_allowed
from bot.discord.history import (
    is_conversation,
    is_reply_to_bot,
    mentions_bot,
    read_conversation,
)
from bot.discord.sender import notify
from bot.discord.streaming import DiscordSink, Posted, feed_stream
from bot.discord.waiting import QueueNotice, TypingIndicator
from bot.serving.generation import GenerationError, QueueFullError, RequestCancelledError, WorkerStoppedError
from bot.store.store import Store, StoreError
from bot.text.streaming import StreamedReply
from personas.card import PersonaCard, UnknownPersonaError
from personas.render import InputError, clean_text

if TYPE_CHECKING:
    from bot.chatflow.service import PendingReply
    from bot.discord.review_queue import ReviewQueue
    from bot.runtime import Runtime

log = logging.getLogger(__name__)
SHUTDOWN_NOTICE = "The bot is restarting, so this message was not answered. Please send it again in a minute."
ONLY_TEXT = (
    "Only text can be answered: attachments and stickers are not read. Please write what you want to say."
)


class Chat(commands.Cog):
    """Answers messages. ``store`` and ``flow`` are None only for a bot that just syncs commands;
    ``runtime`` is None until the model is loaded; ``reviews`` posts and deletes review cards."""

    position_poll_s = 2.0  # how often a waiting request's queue position is looked at

    def __init__(
        self,
        bot: BotServices,
        store: Store | None,
        flow: ReplyFlow | None,
        runtime: Runtime | None,
        reviews: ReviewQueue | None,
    ) -> None:
        self.bot = bot
        self.store = store
        self.flow = flow
        self.runtime = runtime
        self.reviews = reviews
        # Log entries the database could not take yet are retried on the review poll's interval.
        self.spool_flusher = tasks.loop(seconds=max(1.0, bot.settings.discord.review_poll_s))(
            self.flush_spool
        )
        self.spool_flusher.before_loop(bot.wait_until_ready)
        # Replies being generated, for a graceful shutdown; keyed by id() (PendingReply is unhashable).
        self._pending: dict[int, PendingReply] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # The same replies by the id of the message they answer, and the messages deleted meanwhile.
        self._answering: dict[int, PendingReply] = {}
        self._withdrawn: set[int] = set()
        # Streamed replies whose final edit is on its way, by the id of the message they answer.
        self._finishing: dict[int, StreamedReply[Posted]] = {}

    # -- which messages are answered -----------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot or message.webhook_id is not None:
            return  # other bots, webhooks, and the bot itself (its persona webhook included)
        if self.bot.user is not None and message.author.id == self.bot.user.id:
            return
        if not is_conversation(message):
            return  # a thread created, a pin, a join …: made by Discord, not said by the member
        if message.guild is None or self.flow is None or self.store is None:
            return  # direct messages are not a place the server's moderators can review
        settings = self.bot.settings.discord
        if not channel_allowed(settings, message.channel):
            return
        persona_id = await self.store.channel_persona(message.channel.id)
        addressed = await self._addressed(message)
        if persona_id is None and not addressed:
            return
        if not member_allowed(settings, message.author):
            if addressed:
                await notify(
                    message.channel, "Sorry, you do not have a role that may talk to the bot here.", message
                )
            return
        if not self.bot.accepting:
            await notify(message.channel, SHUTDOWN_NOTICE, message)
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self.answer(
                message,
                persona_id or self.bot.settings.chat.default_persona,
                channel_has_persona=persona_id is not None,
            )
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _addressed(self, message: discord.Message) -> bool:
        """Mentioned (as the user, in either form, or as the role Discord made for the bot), or a
        reply to one of the bot's messages (its persona webhook's included)."""
        me = self.bot.user
        if me is not None and mentions_bot(message, me.id):
            return True
        ref = message.reference
        resolved = ref.resolved if ref is not None else None
        if isinstance(resolved, discord.Message) and resolved.webhook_id is not None:
            await self.bot.sender.webhook_for(message.channel)  # learn our webhook's id after a restart
        return is_reply_to_bot(
            message, bot_user_id=me.id if me else None, webhook_ids=self.bot.sender.known_webhook_ids()
        )

    # -- answering -----------------------------------------------------------------------------

    async def answer(self, message: discord.Message, persona_id: str, *, channel_has_persona: bool) -> None:
        """Rate limit → history → queue → wait (typing, position) → filter → send → log → review."""
        bot, flow, store = self.bot, self.flow, self.store
        assert flow is not None and store is not None
        channel = message.channel
        clock = Stopwatch()

        decision = flow.rate(message.author.id)
        if not decision.allowed:
            if decision.first_refusal:
                await notify(
                    channel,
                    f"🐢 You are sending messages faster than the bot can answer. "
                    f"Please wait {describe_wait(decision.retry_after_s)} and try again.",
                    message,
                )
            else:
                with contextlib.suppress(discord.HTTPException):
                    await message.add_reaction("🐢")
            return

        runtime = self.runtime
        if runtime is None:
            await notify(channel, "The bot is still starting up. Please try again shortly.", message)
            return
        try:
            card = runtime.cards.get(persona_id)
        except UnknownPersonaError:
            await notify(
                channel,
                f"The persona `{persona_id}` is not available any more. Choose one with /persona.",
                message,
            )
            return

        try:
            conversation = await self._conversation(message, card, channel_has_persona)
            if (message.attachments or message.stickers) and not clean_text(
                conversation.turns[-1].text
            ).strip():
                raise InputError(ONLY_TEXT)  # "empty" would be wrong: the user did post something
            pending = runtime.chat.submit(persona_id, conversation.turns, f"channel:{channel.id}")
        except InputError as exc:
            await notify(channel, str(exc), message)
            return
        except QueueFullError as exc:
            await notify(channel, f"🚦 {exc}", message)
            return
        except (GenerationError, UnknownPersonaError) as exc:
            await notify(channel, f"Sorry, that could not be answered: {exc}", message)
            return

        notice = QueueNotice(channel, message, bot.settings.chat.queue_notice_position)
        stream = None
        if bot.settings.chat.stream_replies:
            stream = self._streamed_reply(channel, card, message, pending)
        self._pending[id(pending)] = pending
        self._answering[message.id] = pending
        try:
            text = await self._await_text(message, pending, notice, stream)
        finally:
            self._pending.pop(id(pending), None)
            self._answering.pop(message.id, None)
            self._withdrawn.discard(message.id)
        await notice.remove()
        if text is None:
            return

        filtered = flow.filter(text)
        sent: list[Any] = []
        if not filtered.text.strip():
            if stream is not None:
                await stream.withdraw()
            await notify(
                channel,
                f"{card.display_name} had nothing to say to that. Try saying it another way.",
                message,
            )
            return
        if filtered.is_blocked:
            if stream is not None:
                await stream.withdraw()  # nothing blocked was shown, but the partial must go too
            await notify(
                channel, f"{card.display_name}'s reply was held back for a moderator to check.", message
            )
        elif stream is not None:
            # The final edit may wait out the edit interval; a deletion meanwhile still withdraws.
            self._finishing[message.id] = stream
            try:
                sent = await stream.finish(filtered.text)
            finally:
                self._finishing.pop(message.id, None)
            if message.id in self._withdrawn:
                self._withdrawn.discard(message.id)
                log.info("message %s was deleted while its reply was shown; nothing logged", message.id)
                return
            if not sent:
                log.warning("could not post the streamed reply to message %s", message.id)
        else:
            try:
                sent = await bot.sender.send(channel, card, filtered.text, message)
            except discord.HTTPException as exc:
                # Discord is down or refuses: the reply is still logged, so it is not lost for review.
                log.warning("could not post the reply to message %s: %s", message.id, exc)

        incoming = Incoming(
            guild_id=message.guild.id if message.guild else None,
            channel_id=channel.id,
            message_id=message.id,
            user_id=message.author.id,
            created_at=message.created_at,
        )
        entry = flow.entry(incoming, conversation, pending, filtered, clock.ms, sent[0].id if sent else None)
        log_id = await flow.record(entry)
        if log_id is not None and self.reviews is not None:
            await self.reviews.post_new(log_id)

    async def _await_text(
        self,
        message: discord.Message,
        pending: PendingReply,
        notice: QueueNotice,
        stream: StreamedReply[Posted] | None,
    ) -> str | None:
        """The reply's cleaned text, shown as it grows when ``stream`` is given; None when the
        user was told why there is none (or the question was withdrawn), partial messages gone."""
        bot, flow = self.bot, self.flow
        assert flow is not None
        channel = message.channel
        feeder: asyncio.Task[None] | None = None
        try:
            async with TypingIndicator(channel) as typing:
                if stream is None:
                    return await flow.wait(pending, notice.update, self.position_poll_s)

                async def shown() -> None:  # the reply is visible: no more typing or queue notice
                    await typing.stop()
                    await notice.remove()

                stream.on_first_post = shown
                stream.start()
                feeder = asyncio.create_task(feed_stream(pending.pieces(), stream))
                return await flow.wait(pending, notice.update, self.position_poll_s)
        except (RequestCancelledError, WorkerStoppedError) as exc:
            await _withdraw_stream(stream, notice)
            if message.id in self._withdrawn:
                log.info("message %s was deleted while its reply was written; nothing posted", message.id)
                return None
            await notify(channel, SHUTDOWN_NOTICE if not bot.accepting else f"Sorry: {exc}", message)
        except GenerationError as exc:
            await _withdraw_stream(stream, notice)
            await notify(channel, f"Sorry, no reply this time: {exc}", message)
        except Exception:
            log.exception("generation failed for message %s", message.id)
            await _withdraw_stream(stream, notice)
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

    def _streamed_reply(
        self, channel: Any, card: PersonaCard, message: discord.Message, pending: PendingReply
    ) -> StreamedReply[Posted]:
        assert self.flow is not None
        return StreamedReply(
            DiscordSink(self.bot.sender, channel, card, message),
            self.flow.words,
            pending.draft,
            self.bot.settings.chat.stream_edit_interval_s,
        )

    # -- a question withdrawn while it is answered -------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._withdraw(payload.message_id)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            await self._withdraw(message_id)

    async def _withdraw(self, message_id: int) -> None:
        """A message was deleted: if it is being answered, stop, and post and log nothing; if it
        was answered already, delete its log row and review card.

        Either way the words its author took back never reach the review queue or training data,
        and a reply posted afterwards would answer nothing anyone can see.
        """
        pending = self._answering.get(message_id)
        if pending is not None:
            self._withdrawn.add(message_id)
            pending.cancel()
            return
        stream = self._finishing.get(message_id)
        if stream is not None:
            self._withdrawn.add(message_id)
            await stream.withdraw()
            return
        store = self.store
        if store is None:
            return
        if self.flow is not None:
            self.flow.spool.withdraw(message_id)  # logged only in memory so far: never written
        try:
            result = await store.forget_message(message_id)
        except (sqlite3.OperationalError, StoreError) as exc:
            # Kept like a log entry: the rows go once the database takes writes again.
            log.warning("database unavailable (%s); deleting the log of message %s later", exc, message_id)
            if self.flow is not None:
                self.flow.spool.forget_later(message_id)
            return
        except Exception:
            log.exception("could not remove the log of deleted message %s", message_id)
            return
        if self.reviews is not None and result.review_cards:
            await self.reviews.delete_cards(result.review_cards)

    async def _conversation(
        self, message: discord.Message, card: PersonaCard, channel_has_persona: bool
    ) -> Conversation:
        assert self.store is not None
        return await read_conversation(
            message,
            card,
            self.store,
            channel_has_persona=channel_has_persona,
            limit=max(0, self.bot.settings.chat.history_messages),
            bot_user_id=self.bot.user.id if self.bot.user else None,
            webhook_ids=self.bot.sender.known_webhook_ids(),
        )

    # -- the log spool -------------------------------------------------------------------------

    async def cog_load(self) -> None:
        if self.flow is not None and not self.bot.sync_only:
            self.spool_flusher.start()

    async def cog_unload(self) -> None:
        self.spool_flusher.cancel()

    async def flush_spool(self) -> None:
        """Write the log entries (and deletions) the database refused earlier; the review cards of
        rows deleted late go too. Never raises: what still fails waits for the next round."""
        if self.flow is None or not len(self.flow.spool):
            return
        try:
            await self.flow.spool.flush()
            late = self.flow.spool.take_cards()  # review cards of rows deleted late
            if self.reviews is not None:
                await self.reviews.delete_cards(late)
        except Exception:
            log.exception("writing spooled logs failed; trying again next round")

    # -- shutdown ------------------------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Let replies in progress finish for ``grace_s``; cancel the rest (they tell their users)."""
        tasks = {t for t in self._tasks if not t.done()}
        if tasks:
            log.info("waiting up to %.0fs for %d replies in progress", grace_s, len(tasks))
            _, still = await asyncio.wait(tasks, timeout=grace_s)
            if still:
                for pending in list(self._pending.values()):
                    pending.cancel()
                await asyncio.wait(still, timeout=10)


async def _withdraw_stream(stream: StreamedReply[Posted] | None, notice: QueueNotice) -> None:
    await notice.remove()
    if stream is not None:
        await stream.withdraw()
