"""What a member said in a message (bot/chatflow/said.py) and where that rule applies in the
Discord layer (bot/discord/message_parts.py, bot/discord/history.py): forwards, polls, voice
messages, stickers, attachments, embeds, activity invites and components."""

from __future__ import annotations

from types import SimpleNamespace

import discord
import pytest

from bot.chatflow.said import MessageParts, Said, only_text_notice, poll_text, what_was_said
from bot.discord.history import classify, is_conversation, is_reply_to_bot, reply_chain
from bot.discord.message_parts import is_forward, parts_of, said
from personas.card import load_cards

MARISA = load_cards().get("marisa")
MEMBER = SimpleNamespace(id=5, bot=False, name="alice")
BOT_ID = 999


def message(mid: int = 1, content: str = "", *, ref_type=None, ref_to: int | None = None, **extra):
    ref = None
    if ref_type is not None:
        ref = SimpleNamespace(
            message_id=ref_to, channel_id=1, resolved=None, cached_message=None, type=ref_type
        )
    values = dict(
        id=mid,
        content=content,
        author=MEMBER,
        webhook_id=None,
        type=discord.MessageType.reply
        if ref_type == discord.MessageReferenceType.reply
        else discord.MessageType.default,
        reference=ref,
        message_snapshots=[],
        poll=None,
        flags=SimpleNamespace(voice=False),
        attachments=[],
        stickers=[],
        embeds=[],
        activity=None,
        components=[],
        channel=SimpleNamespace(id=1),
    )
    values.update(extra)
    return SimpleNamespace(**values)


def forward(mid: int = 2, of: int = 1, **extra):
    return message(
        mid,
        "",
        ref_type=discord.MessageReferenceType.forward,
        ref_to=of,
        message_snapshots=[object()],
        **extra,
    )


def poll(question: str, *answers: str):
    return SimpleNamespace(question=question, answers=[SimpleNamespace(text=a) for a in answers])


# -- the rule ------------------------------------------------------------------------------------


def test_plain_text_is_what_was_said() -> None:
    assert what_was_said(MessageParts("やあ")) == Said("やあ")
    assert what_was_said(MessageParts("")) == Said("")  # truly nothing: the chat service says "empty"


def test_a_forward_is_not_conversation_whatever_it_carries() -> None:
    assert what_was_said(MessageParts(forwarded=True)) == Said(None)
    assert what_was_said(MessageParts("コメント", forwarded=True, attachments=2)) == Said(None)


def test_a_poll_reads_as_its_question_and_answers() -> None:
    assert poll_text(" 夕飯は？ ", ("カレー", " ", "ラーメン")) == "（投票）夕飯は？（カレー／ラーメン）"
    assert (
        what_was_said(MessageParts(poll_question="どっち？", poll_answers=("A", "B"))).text
        == "（投票）どっち？（A／B）"
    )
    with_text = what_was_said(MessageParts("みんな答えて", poll_question="どっち？", poll_answers=("A",)))
    assert with_text.text == "みんな答えて\n（投票）どっち？（A）"


@pytest.mark.parametrize(
    ("parts", "unreadable"),
    [
        (MessageParts(voice=True, attachments=1), ("voice messages",)),
        (MessageParts(attachments=1), ("attachments and stickers",)),
        (MessageParts(stickers=1), ("attachments and stickers",)),
        (MessageParts(embeds=1), ("embeds",)),
        (MessageParts(activity=True), ("activity invites",)),
        (MessageParts(components=1), ("buttons and menus",)),
        (MessageParts(voice=True, attachments=1, stickers=1), ("voice messages", "attachments and stickers")),
    ],
)
def test_parts_without_text_are_named(parts: MessageParts, unreadable: tuple[str, ...]) -> None:
    assert what_was_said(parts) == Said("", unreadable)
    notice = only_text_notice(unreadable)
    assert notice.startswith("Only text can be answered: ") and "empty" not in notice


def test_the_notice_for_attachments_and_stickers_is_the_one_members_know() -> None:
    assert only_text_notice(("attachments and stickers",)) == (
        "Only text can be answered: attachments and stickers are not read. Please write what you want to say."
    )


# -- reading a discord message ------------------------------------------------------------------


def test_parts_of_reads_every_kind() -> None:
    assert is_forward(forward()) and not is_forward(message(content="x"))
    # a forward is recognised by its snapshot too, or by its reference type alone
    assert is_forward(message(message_snapshots=[object()]))
    assert is_forward(message(ref_type=discord.MessageReferenceType.forward, ref_to=1))
    parts = parts_of(
        message(
            content="見て",
            poll=poll("どっち？", "A", "B"),
            flags=SimpleNamespace(voice=True),
            attachments=[1],
            stickers=[1, 2],
            embeds=[1],
            activity=object(),
            components=[1],
        )
    )
    assert parts == MessageParts("見て", False, "どっち？", ("A", "B"), True, 1, 2, 1, True, 1)
    assert said(message(content="やあ")) == Said("やあ")


def test_a_forward_is_not_conversation_anywhere() -> None:
    assert not is_conversation(forward())
    assert classify(forward(), bot_user_id=BOT_ID, card=MARISA, webhook_ids=set()) is None


def test_history_reads_a_poll_as_the_members_words() -> None:
    line = classify(
        message(poll=poll("週末は？", "海", "山")), bot_user_id=BOT_ID, card=MARISA, webhook_ids=set()
    )
    assert line is not None and line.author_id == 5 and line.text == "（投票）週末は？（海／山）"
    sticker = classify(message(stickers=[1]), bot_user_id=BOT_ID, card=MARISA, webhook_ids=set())
    assert sticker is not None and sticker.text == ""  # nothing to read: dropped as an empty line


def test_a_forward_of_the_bots_message_does_not_address_the_bot() -> None:
    bots = message(10, "よう", author=SimpleNamespace(id=BOT_ID, bot=True, name="oshaberi"))
    shared = forward(11, of=10)
    shared.reference.cached_message = bots  # discord.py finds the original in its cache
    assert not is_reply_to_bot(shared, bot_user_id=BOT_ID, webhook_ids=[])
    reply = message(12, "ありがと", ref_type=discord.MessageReferenceType.reply, ref_to=10)
    reply.reference.cached_message = bots
    assert is_reply_to_bot(reply, bot_user_id=BOT_ID, webhook_ids=[])


async def test_a_reply_chain_ends_at_a_forward() -> None:
    shared = forward(20, of=1)
    newest = message(21, "これ何？", ref_type=discord.MessageReferenceType.reply, ref_to=20)

    async def fetch_message(message_id: int):
        assert message_id == 20
        return shared

    newest.channel.fetch_message = fetch_message
    assert await reply_chain(newest, after=None, limit=10) == []
    plain = message(20, "ふつうの発言")
    newest.channel.fetch_message = lambda _id: _found(plain)
    assert [m.id for m in await reply_chain(newest, after=None, limit=10)] == [20]


async def _found(m):
    return m
