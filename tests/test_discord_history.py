"""Reading conversations back: reply chains (through webhook replies too), line classification,
and system messages (decided by type) kept out of all of it."""

from __future__ import annotations

from types import SimpleNamespace

import discord

from bot.discord.history import CONVERSATION_TYPES, classify, is_conversation, is_reply_to_bot, reply_chain
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
    kind = discord.MessageType.reply if replies_to is not None else discord.MessageType.default
    m = SimpleNamespace(id=mid, channel=channel, reference=ref, **{"type": kind, **extra})
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
        return SimpleNamespace(
            id=1, author=author, content=content, webhook_id=webhook_id, type=discord.MessageType.default
        )

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


SYSTEM_TYPES = [t for t in discord.MessageType if t not in CONVERSATION_TYPES]


def test_only_default_and_reply_messages_are_conversation() -> None:
    """Decided from the type: every type Discord makes (thread created 18, pins 6, joins 7, boosts
    8-11, thread starter 21, poll result 46 …) and the app command messages (20, 23) are out."""
    assert {t.value for t in CONVERSATION_TYPES} == {0, 19}
    for value in (6, 7, 8, 18, 20, 21, 23, 24, 46):
        assert discord.MessageType(value) in SYSTEM_TYPES
    for kind in discord.MessageType:
        assert is_conversation(SimpleNamespace(type=kind)) == (kind in CONVERSATION_TYPES)


def test_classify_leaves_out_every_system_message() -> None:
    member = SimpleNamespace(id=5, bot=False, name="alice")
    me = SimpleNamespace(id=999, bot=True, name="oshaberi")
    for kind in SYSTEM_TYPES:
        for author in (member, me):
            line = SimpleNamespace(
                id=1, author=author, content="**霧雨魔理沙**: 週末の予定について", webhook_id=None, type=kind
            )
            assert classify(line, bot_user_id=999, card=MARISA, webhook_ids=set()) is None, kind


async def test_reply_chain_ends_at_a_system_message() -> None:
    """A wave at a join, or a reply to a pin notice: the system message is not a line, and the
    message its own reference names (the pinned one) was not replied to."""
    ch = Channel()
    msg(ch, 40)  # a member's message, later pinned
    msg(ch, 41, replies_to=40, type=discord.MessageType.pins_add)  # "X pinned a message"
    newest = msg(ch, 42, replies_to=41)
    assert await reply_chain(newest, after=None, limit=10) == []
    msg(ch, 50)
    msg(ch, 51, replies_to=50)
    msg(ch, 52, type=discord.MessageType.thread_created)
    mixed = msg(ch, 53, replies_to=51)
    assert [m.id for m in await reply_chain(mixed, after=None, limit=10)] == [50, 51]


def test_a_reply_to_the_bots_system_message_is_not_a_reply_to_the_bot() -> None:
    ch = Channel()
    me = SimpleNamespace(id=999, bot=True, name="oshaberi")
    joined = msg(ch, 60, type=discord.MessageType.new_member, author=me, webhook_id=None)
    wave = msg(ch, 61, replies_to=60)
    wave.reference.cached_message = joined
    assert not is_reply_to_bot(wave, bot_user_id=999, webhook_ids=())
    said = msg(ch, 62, author=me, webhook_id=None)
    answer = msg(ch, 63, replies_to=62)
    answer.reference.cached_message = said
    assert is_reply_to_bot(answer, bot_user_id=999, webhook_ids=())
