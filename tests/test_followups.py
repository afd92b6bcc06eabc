"""Personas answering each other (bot/discord/followups.py) against a scripted channel: the
bound is what the channel shows, not what the process remembers."""

from __future__ import annotations

from itertools import count
from types import SimpleNamespace
from typing import Any

import discord

from bot.chatflow.cast import EffectiveCast
from bot.discord.followups import answer_each_other
from bot.discord.reply_job import Answered, ReplyJob
from personas.card import load_cards

CARDS = load_cards().cards
HOOK = 77
MEMBER = 5
ids = count(1000)


def line(text: str, persona: str | None = None) -> Any:
    """A channel message: a persona's (through the bot's webhook) or a member's."""
    name = CARDS[persona].display_name if persona else "taro"
    return SimpleNamespace(
        id=next(ids),
        type=discord.MessageType.default,
        webhook_id=HOOK if persona else None,
        author=SimpleNamespace(id=HOOK if persona else MEMBER, name=name, bot=bool(persona)),
        content=text,
    )


class Channel:
    def __init__(self, messages: list[Any], fail: bool = False) -> None:
        self.id = 1
        self.messages = messages
        self.fail = fail

    async def history(self, *, limit: int, after: Any, oldest_first: bool):
        if self.fail:
            raise discord.HTTPException(SimpleNamespace(status=500, reason="down"), "down")
        for m in self.messages:
            if m.id > after.id:
                yield m


class Casting:
    def __init__(self, cast: tuple[str, ...]) -> None:
        self.cast = cast

    async def cast_for(self, channel: Any) -> EffectiveCast:
        return EffectiveCast(self.cast, 1)

    def cards(self):
        return dict(CARDS)


class Chat:
    """Answers by posting the next scripted line into the channel, as the real cog would."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.bot = SimpleNamespace(
            user=SimpleNamespace(id=1),
            sender=SimpleNamespace(known_webhook_ids=lambda: {HOOK}),
            accepting=True,
        )
        self.jobs: list[ReplyJob] = []

    async def answer(self, job: ReplyJob) -> Answered | None:
        self.jobs.append(job)
        posted = line(f"{job.persona_id}の返事", job.persona_id)
        posted.channel = self.channel
        self.channel.messages.append(posted)
        return Answered(job, CARDS[job.persona_id], posted.content, (posted,), None)


def first_answer(channel: Channel, root: Any, persona: str = "marisa") -> Answered:
    reply = line("最初の返事だぜ", persona)
    reply.channel = channel
    channel.messages += [root, reply] if root not in channel.messages else [reply]
    root.channel = channel
    job = ReplyJob(root, persona, asker_id=MEMBER, root_id=root.id, channel_has_persona=True)
    return Answered(job, CARDS[persona], reply.content, (reply,), None)


async def test_the_chain_stops_after_n_turns_counted_in_the_channel() -> None:
    channel = Channel([])
    chat = Chat(channel)
    first = first_answer(channel, line("みんな、どう思う？"))
    assert await answer_each_other(chat, Casting(("marisa", "zundamon")), first, 3) == 3
    assert [(j.persona_id, j.turn) for j in chat.jobs] == [("zundamon", 1), ("marisa", 2), ("zundamon", 3)]
    assert all(j.asker_id == MEMBER and j.root_id == first.job.root_id for j in chat.jobs)


async def test_turns_already_shown_count_even_if_this_process_did_not_write_them() -> None:
    """What a restarted (or a second) process sees in the channel bounds it, not its memory."""
    root = line("みんな、どう思う？")
    channel = Channel([root, line("前の返事", "marisa"), line("その次の返事", "zundamon")])
    chat = Chat(channel)
    first = first_answer(channel, root)  # the 3rd persona turn since the member's message
    assert await answer_each_other(chat, Casting(("marisa", "zundamon")), first, 2) == 0
    assert chat.jobs == []


async def test_a_member_speaking_ends_the_chain() -> None:
    root = line("みんな、どう思う？")
    channel = Channel([root])
    chat = Chat(channel)
    first = first_answer(channel, root)
    channel.messages.append(line("ちょっと待って"))
    assert await answer_each_other(chat, Casting(("marisa", "zundamon")), first, 5) == 0


async def test_a_stopped_reply_ends_the_chain() -> None:
    channel = Channel([])
    first = first_answer(channel, line("みんな、どう思う？"))
    stopped = Answered(first.job, first.card, first.text, first.messages, None, stopped=True)
    assert await answer_each_other(Chat(channel), Casting(("marisa", "zundamon")), stopped, 5) == 0


async def test_no_chain_without_a_second_member_or_an_unreadable_channel() -> None:
    channel = Channel([])
    first = first_answer(channel, line("ねえ"))
    assert await answer_each_other(Chat(channel), Casting(("marisa",)), first, 5) == 0
    assert await answer_each_other(Chat(channel), Casting(("marisa", "zundamon")), first, 0) == 0
    broken = Channel([], fail=True)
    first = first_answer(broken, line("ねえ"))
    broken.fail = True
    assert await answer_each_other(Chat(broken), Casting(("marisa", "zundamon")), first, 5) == 0
