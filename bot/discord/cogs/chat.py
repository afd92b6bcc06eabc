"""Answering messages: who is answered, with what history, and how the reply reaches the channel.

Every request ends in something the user can see (a reply, a notice, or a reaction), never in
silence: a full queue, a rate limit, an error and a shutdown all say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.chatflow.conversation import Conversation
from bot.chatflow.inflight import RepliesInFlight, ReplyInFlight
from bot.chatflow.ratelimit import describe_wait
from bot.chatflow.replyflow import Incoming, ReplyFlow, Stopwatch
from bot.chatflow.said import only_text_notice
from bot.discord.bot_protocol import BotServices
from bot.discord.cast_lookup import CastLookup
from bot.discord.checks import channel_allowed, member_allowed
from bot.discord.followups import answer_each_other
from bot.discord.history import (
    is_conversation,
    is_reply_to_bot,
    mentions_bot,
    persona_line,
    read_conversation,
)
from bot.discord.message_parts import said
from bot.discord.proxied import ProxiedMessages
from bot.discord.reply_controls import controls_view, delete_replaced
from bot.discord.reply_job import Answered, ReplyJob
from bot.discord.reply_log import ReplyLog
from bot.discord.reply_wait import SHUTDOWN_NOTICE, await_text, streamed_reply
from bot.discord.sender import ReplySender, Shown, notify
from bot.discord.streaming import Posted, show_reply
from bot.discord.waiting import QueueNotice
from bot.serving.generation import GenerationError, QueueFullError
from bot.store.store import Store
from bot.text.edit_budget import EditBudgets
from bot.text.streaming import StreamedReply
from personas.card import PersonaCard, UnknownPersonaError
from personas.render import InputError, clean_text

if TYPE_CHECKING:
    from bot.chatflow.service import PendingReply
    from bot.discord.review_queue import ReviewQueue
    from bot.runtime import Runtime

log = logging.getLogger(__name__)
ONLY_TEXT = only_text_notice(("attachments and stickers",))


class Chat(commands.Cog):
    """Answers messages. ``store`` and ``flow`` are None only for a bot that just syncs commands;
    ``runtime`` is None until the model is loaded; ``reviews`` posts and deletes review cards;
    ``casting`` says which persona of a channel's cast answers (None without a store)."""

    position_poll_s = 2.0  # how often a waiting request's queue position is looked at

    def __init__(
        self,
        bot: BotServices,
        store: Store | None,
        flow: ReplyFlow | None,
        runtime: Runtime | None,
        reviews: ReviewQueue | None,
        casting: CastLookup | None = None,
    ) -> None:
        self.bot = bot
        self.store = store
        self.flow = flow
        self.runtime = runtime
        self.reviews = reviews
        self.casting = casting
        self.reply_log = ReplyLog(bot, store, flow, reviews)  # deletions and the log spool
        # Replies being generated, for a graceful shutdown; keyed by id() (PendingReply is unhashable).
        self._pending: dict[int, PendingReply] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # The same replies by the id of the message they answer (Stop, a deletion and /cast remove
        # find them here), and the messages deleted meanwhile.
        self.replies = RepliesInFlight()
        self._withdrawn: set[int] = set()
        # Streamed replies whose final edit is on its way, by the id of the message they answer.
        self._finishing: dict[int, StreamedReply[Posted]] = {}
        # Proxy bots' reposts (PluralKit, Tupperbox) and the member messages they replace.
        self.proxied = ProxiedMessages(bot, store, flow)
        self.edit_budgets = EditBudgets()  # streamed replies' posts and edits, per webhook

    # -- which messages are answered -----------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if self.proxied.is_repost(message):
            # Paired before any await: the original's deletion, which comes next, must find it.
            found = self.proxied.pair(message)
            if found is not None:
                await self.proxied.record(found)
            return  # never answered itself: its original was answered (or refused) once
        if message.author.bot or message.webhook_id is not None:
            return  # other bots, webhooks, and the bot itself (its persona webhook included)
        if self.bot.user is not None and message.author.id == self.bot.user.id:
            return
        if not is_conversation(message):
            return  # a thread created, a pin, a join …: made by Discord, not said by the member
        if message.guild is None or self.flow is None or self.store is None or self.casting is None:
            return  # direct messages are not a place the server's moderators can review
        server = self.bot.servers.get(message.guild.id)  # its own settings, the TOML's where unset
        if not server.served:
            return  # not on discord.allowed_servers: no reply, nothing logged
        self.proxied.remember(message)  # a proxy bot may repost it in a moment
        if not channel_allowed(server, message.channel):
            return
        casting = self.casting
        cast = await casting.cast_for(message.channel)  # a thread's own, else its parent's
        addressed = await self._addressed(message)
        if not cast.persona_ids and not addressed:
            return
        if not member_allowed(server, message.author):
            if addressed:
                await notify(
                    message.channel, "Sorry, you do not have a role that may talk to the bot here.", message
                )
            return
        if not self.bot.accepting:
            await notify(message.channel, SHUTDOWN_NOTICE, message)
            return
        who = casting.addressee(message, cast, server.default_persona)
        if who is not None and who.card is None:
            await notify(message.channel, who.ambiguity_notice(), message)
            return
        persona_id = who.card.id if who is not None and who.card is not None else None
        job = ReplyJob.for_member(
            message,
            persona_id or cast.lead or server.default_persona,
            channel_has_persona=bool(cast.persona_ids),
            cast_channel_id=cast.set_in,
        )
        async with self._tracked():
            first = await self.answer(job)
            if first is not None:
                await answer_each_other(self, casting, first, self.bot.settings.chat.cast_followups)

    @contextlib.asynccontextmanager
    async def _tracked(self) -> Any:
        """Count the current task as a reply in progress (a shutdown waits for it, then cancels it)."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            yield
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def regenerate(self, job: ReplyJob) -> Answered | None:
        """Write ``job`` again (a member pressed Regenerate); the reply buttons' handler calls this."""
        if not self.bot.accepting:
            await notify(job.message.channel, SHUTDOWN_NOTICE, job.message)
            return None
        async with self._tracked():
            return await self.answer(job)

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

    async def answer(self, job: ReplyJob) -> Answered | None:
        """Rate limit → history → queue → wait (typing, position) → filter → send → log → review.

        Returns what was written (posted, held back, or stopped part-way), or None when nothing
        was: the member was told why, or the question was withdrawn.
        """
        bot, flow, store = self.bot, self.flow, self.store
        assert flow is not None and store is not None
        message, persona_id = job.message, job.persona_id
        channel = message.channel
        clock = Stopwatch()

        decision = flow.rate(job.asker_id)
        if not decision.allowed:
            if job.is_followup:
                return None  # personas answering each other spend the member's allowance quietly
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
            return None

        runtime = self.runtime
        if runtime is None:
            await notify(channel, "The bot is still starting up. Please try again shortly.", message)
            return None
        try:
            card = runtime.cards.get(persona_id)
        except UnknownPersonaError:
            await notify(
                channel,
                f"The persona `{persona_id}` is not available any more. Choose one with /persona.",
                message,
            )
            return None

        try:
            conversation = await self._conversation(message, card, job)
            unreadable = said(message).unreadable
            if unreadable and not clean_text(conversation.turns[-1].text).strip():
                # "Empty" would be wrong: the member did send something, just nothing readable.
                raise InputError(only_text_notice(unreadable))
            pending = runtime.chat.submit(persona_id, conversation.turns, f"channel:{channel.id}")
        except InputError as exc:
            await notify(channel, str(exc), message)
            return None
        except QueueFullError as exc:
            await notify(channel, f"🚦 {exc}", message)
            return None
        except (GenerationError, UnknownPersonaError) as exc:
            await notify(channel, f"Sorry, {card.display_name} could not answer that: {exc}", message)
            return None

        notice = QueueNotice(channel, message, bot.settings.chat.queue_notice_position)
        stream = None
        if bot.settings.chat.stream_replies:
            budget = self.edit_budgets.for_key(ReplySender.webhook_home(channel).id)  # one per webhook
            stream = streamed_reply(bot, flow, channel, card, message, pending, job, budget)
        self._pending[id(pending)] = pending
        writing = ReplyInFlight(
            message.id, channel.id, persona_id, job.asker_id, pending, cast_channel_id=job.cast_channel_id
        )
        self.replies.begin(writing)
        try:
            text = await await_text(
                bot, flow, message, pending, notice, stream, writing, self._withdrawn, self.position_poll_s
            )
        finally:
            self._pending.pop(id(pending), None)
            self.replies.end(message.id)
            self._withdrawn.discard(message.id)
        await notice.remove()
        if text is None:
            return None

        filtered = flow.filter(text)
        shown = Shown([], "full")  # what the channel shows of the reply, for the log row
        if not filtered.text.strip():
            if stream is not None:
                await stream.withdraw()
            outcome = "stopped before it said anything" if writing.stopped_by else "had nothing to say to that"
            await notify(
                channel,
                f"{card.display_name} {outcome}. Try saying it another way.",
                message,
            )
            return None
        if filtered.is_blocked:
            if stream is not None:
                await stream.withdraw()  # nothing blocked was shown, but the partial must go too
            await notify(
                channel, f"{card.display_name}'s reply was held back for a moderator to check.", message
            )
        else:
            # The final edit may wait out the edit interval; a deletion meanwhile still withdraws.
            if stream is not None:
                self._finishing[message.id] = stream
            try:
                buttons = controls_view(job.asker_id, message.id, writing=False)
                reply_to = self.proxied.reply_target(message)
                shown = await show_reply(bot.sender, channel, card, filtered.text, reply_to, stream, buttons)
            finally:
                self._finishing.pop(message.id, None)
            if message.id in self._withdrawn:
                self._withdrawn.discard(message.id)
                log.info("message %s was deleted while its reply was shown; nothing logged", message.id)
                return None
        sent = shown.messages
        posted = [getattr(m, "message", m) for m in sent]
        if posted and job.replaced:
            await delete_replaced(job.replaced)  # the regenerated-away reply gives way to this one

        logged_as = self.proxied.logged_id(job.root_id)  # the repost, if a proxy replaced the message
        incoming = Incoming(
            guild_id=message.guild.id if message.guild else None,
            channel_id=channel.id,
            message_id=logged_as,
            user_id=job.asker_id,
            created_at=discord.utils.snowflake_time(job.root_id),
        )
        entry = flow.entry(
            incoming,
            conversation,
            pending,
            filtered,
            clock.ms,
            sent[0].id if sent else None,
            shown.state,
            shown.text,
        )
        if writing.stopped_by is not None:
            entry = dataclasses.replace(
                entry, params={**entry.params, "finish_reason": "stopped"}, stopped_by=writing.stopped_by
            )
        entry = dataclasses.replace(entry, turn=job.turn, replaces=job.replaces)
        log_id = await flow.record(entry)
        if self.proxied.logged_id(job.root_id) != logged_as:  # replaced while the row was written
            await self.proxied.move_log(logged_as, self.proxied.logged_id(job.root_id))
        if log_id is not None and self.reviews is not None:
            await self.reviews.post_new(log_id)
        text = "" if filtered.is_blocked else filtered.text
        return Answered(job, card, text, tuple(posted), log_id, stopped=writing.stopped_by is not None)

    # -- a question withdrawn while it is answered -------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._withdraw(payload.message_id, payload.guild_id)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        for message_id in payload.message_ids:
            await self._withdraw(message_id, payload.guild_id)

    async def _withdraw(self, message_id: int, guild_id: int | None = None) -> None:
        """A message was deleted: if it is being answered, stop, and post and log nothing; if it
        was answered already, delete its log row and review card.

        Either way the words its author took back never reach the review queue or training data,
        and a reply posted afterwards would answer nothing anyone can see. A proxy bot deleting
        the original it reposted takes nothing back: the answer is handed over to the repost.
        """
        found = await self.proxied.replacement(message_id, guild_id)
        if found is not None:
            if self.replies.get(message_id) is None and message_id not in self._finishing:
                await self.proxied.move_log(message_id, found.repost_id)  # answered and logged already
            return
        writing = self.replies.get(message_id)
        if writing is not None:
            self._withdrawn.add(message_id)
            writing.pending.cancel()
            return
        stream = self._finishing.get(message_id)
        if stream is not None:
            self._withdrawn.add(message_id)
            await stream.withdraw()
            return
        await self.reply_log.forget(message_id)  # answered already: its log row and card go

    async def _conversation(self, message: discord.Message, card: PersonaCard, job: ReplyJob) -> Conversation:
        """The turns ``card`` answers; other personas' lines are another speaker's, and when
        ``message`` is one (personas answering each other) it is the turn being answered."""
        assert self.store is not None and self.runtime is not None
        others = [c for c in self.runtime.cards.cards.values() if c.id != card.id]
        bot_user_id = self.bot.user.id if self.bot.user else None
        webhook_ids = self.bot.sender.known_webhook_ids()
        spoken = persona_line(message, others, bot_user_id=bot_user_id, webhook_ids=webhook_ids)
        return await read_conversation(
            message,
            card,
            self.store,
            channel_has_persona=job.channel_has_persona,
            limit=max(0, self.bot.settings.chat.history_messages),
            bot_user_id=bot_user_id,
            webhook_ids=webhook_ids,
            others=others,
            speaker=spoken[0] if spoken else None,
            proxy_bots=self.proxied.proxy_bots,
            reposted=self.proxied.reposted(),
        )

    # -- the log spool -------------------------------------------------------------------------

    async def cog_load(self) -> None:
        if self.flow is not None and not self.bot.sync_only:
            self.reply_log.flusher.start()

    async def cog_unload(self) -> None:
        self.reply_log.flusher.cancel()

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
