"""Reading conversations back: reply chains (through webhook replies too) and line classification."""

from __future__ import annotations

from types import SimpleNamespace

import discord

from bot.discord.history import classify, reply_chain
from personas.card import load_cards

MARISA = load_cards().get("marisa")


class Channel:
    def __init__(self) -> None:
        self.id = 1
        self.messages: dict[int, object] = {}

    async def fetch_message(self, message_id: int):
        if message_id not in self.messages:
            raise discord.NotFound(SimpleNamespace(status=404, reason="x"), "Unknown Message")
        return self.messages[message_id]


def msg(channel: Channel, mid: int, replies_to: int | None = None, **extra) -> SimpleNamespace:
    ref = None
    if replies_to is not None:
        ref = SimpleNamespace(
            message_id=replies_to,
            channel_id=channel.id,
            resolved=None,
            cached_message=None,
            type=discord.MessageReferenceType.reply,
        )
    m = SimpleNamespace(id=mid, channel=channel, reference=ref, **extra)
    channel.messages[mid] = m
    return m


async def test_reply_chain_follows_references_and_webhook_replies() -> None:
    ch = Channel()
    msg(ch, 10)  # the user's first message
    msg(ch, 11)  # the persona's webhook reply to it (webhooks cannot reference)
    msg(ch, 12, replies_to=11)  # the user replies to the persona
    newest = msg(ch, 13, replies_to=12)

    async def answered_by(reply_id: int) -> int | None:
        return {11: 10}.get(reply_id)

    chain = await reply_chain(newest, after=None, limit=10, answered_by=answered_by)
    assert [m.id for m in chain] == [10, 11, 12]
    assert [m.id for m in await reply_chain(newest, after=None, limit=2, answered_by=answered_by)] == [11, 12]
    assert [m.id for m in await reply_chain(newest, after=10, limit=10, answered_by=answered_by)] == [11, 12]
    assert [m.id for m in await reply_chain(newest, after=None, limit=10)] == [11, 12]


async def test_reply_chain_stops_at_deleted_messages_and_loops() -> None:
    ch = Channel()
    newest = msg(ch, 20, replies_to=19)  # 19 was deleted
    assert await reply_chain(newest, after=None, limit=10) == []
    a = msg(ch, 30, replies_to=31)
    msg(ch, 31, replies_to=30)  # a cycle cannot happen on Discord, but must not hang here
    assert [m.id for m in await reply_chain(a, after=None, limit=10)] == [30, 31]


def test_classify() -> None:
    bot_id = 999
    user = SimpleNamespace(id=5, bot=False, name="alice")

    def m(author, content, webhook_id=None):
        return SimpleNamespace(id=1, author=author, content=content, webhook_id=webhook_id)

    assert classify(m(user, "やあ"), bot_user_id=bot_id, card=MARISA, webhook_ids=set()).author_id == 5
    me = SimpleNamespace(id=bot_id, bot=True, name="oshaberi")
    line = classify(m(me, "**霧雨魔理沙**: よう"), bot_user_id=bot_id, card=MARISA, webhook_ids=set())
    assert line.is_persona and line.text == "よう"
    assert classify(m(me, "🐢 slow down"), bot_user_id=bot_id, card=MARISA, webhook_ids=set()) is None
    hook = SimpleNamespace(id=77, bot=True, name="霧雨魔理沙")
    assert classify(
        m(hook, "だぜ", webhook_id=42), bot_user_id=bot_id, card=MARISA, webhook_ids={42}
    ).is_persona
    assert classify(m(hook, "だぜ", webhook_id=43), bot_user_id=bot_id, card=MARISA, webhook_ids={42}) is None
    other = SimpleNamespace(id=78, bot=True, name="ずんだもん")
    assert (
        classify(m(other, "なのだ", webhook_id=42), bot_user_id=bot_id, card=MARISA, webhook_ids={42}) is None
    )
    other_bot = SimpleNamespace(id=79, bot=True, name="otherbot")
    assert classify(m(other_bot, "hi"), bot_user_id=bot_id, card=MARISA, webhook_ids=set()) is None
