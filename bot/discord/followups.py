"""Personas answering each other (``chat.cast_followups``; off by default): after a cast member
answers a member, the next one may answer that line, and so on, at most N times.

The bound is read from the channel, not from memory: before each turn the messages since the
member's message are read back and the persona turns in them counted
(:func:`bot.chatflow.cast.persona_turns_since`). A member speaking in between ends the chain,
and nothing starts one but a member's message in this process (the bot never answers its own
webhook's or its own messages), so no chain can loop, a restart included.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import discord

from bot.chatflow.cast import next_speaker, persona_turns_since
from bot.discord.bot_protocol import BotServices
from bot.discord.cast_lookup import CastLookup
from bot.discord.history import is_conversation, persona_line
from bot.discord.reply_job import Answered, ReplyJob

log = logging.getLogger(__name__)
LINES_READ = 100  # messages read back after the member's message (split replies take several)


class Answerer(Protocol):
    """What a chain needs of the chat cog: the bot, and writing one reply."""

    bot: BotServices

    async def answer(self, job: ReplyJob) -> Answered | None: ...


async def answer_each_other(chat: Answerer, casting: CastLookup, first: Answered, limit: int) -> int:
    """Let cast members answer ``first`` and each other, at most ``limit`` times; returns how
    many answered. Stops at the first turn that is not posted (held back, failed, withdrawn)."""
    answered = 0
    last = first
    # A reply a member stopped, held back or not posted ends the chain; so does a shutdown.
    while limit > 0 and last.messages and not last.stopped and chat.bot.accepting:
        job = last.job
        channel = job.message.channel
        cast = await casting.cast_for(channel)  # re-read: a persona removed meanwhile is left out
        cards = casting.cards()
        members = [cards[p] for p in cast.persona_ids if p in cards]
        if len(members) < 2:
            return answered
        speakers = await _speakers_since(chat, casting, channel, job.root_id)
        done = persona_turns_since(speakers) if speakers is not None else None
        if done is None:
            return answered  # a member spoke (or the channel cannot be read): the chain is over
        nxt = next_speaker(members, last.card.id, last.text, done, limit)
        if nxt is None:
            return answered
        follow = ReplyJob(
            last.messages[-1],
            nxt.id,
            asker_id=job.asker_id,
            root_id=job.root_id,
            channel_has_persona=True,
            turn=done,
            cast_channel_id=cast.set_in,
        )
        result = await chat.answer(follow)
        if result is None:
            return answered
        answered += 1
        last = result
    return answered


async def _speakers_since(
    chat: Answerer, casting: CastLookup, channel: Any, root_id: int
) -> list[str | None] | None:
    """The persona id of each line after ``root_id``, oldest first; None for a member's line.
    The bot's notices and other bots are skipped. None when the channel cannot be read."""
    cards = list(casting.cards().values())
    bot_user_id = chat.bot.user.id if chat.bot.user else None
    webhook_ids = chat.bot.sender.known_webhook_ids()
    speakers: list[str | None] = []
    try:
        async for message in channel.history(
            limit=LINES_READ, after=discord.Object(root_id), oldest_first=True
        ):
            if not is_conversation(message):
                continue
            said = persona_line(message, cards, bot_user_id=bot_user_id, webhook_ids=webhook_ids)
            if said is not None:
                speakers.append(said[0].id)
            elif not (message.author.bot or message.webhook_id is not None):
                speakers.append(None)
    except discord.HTTPException as exc:
        log.warning("cannot read channel %s to count persona turns: %s", getattr(channel, "id", "?"), exc)
        return None
    return speakers
