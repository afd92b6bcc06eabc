"""Messages from the wild through the real bot and the loopback emulator (fake runtime): text
SQLite cannot hold, forwards, polls, voice messages, stickers, embeds and activity invites, in
every place a message is read (input, history, reply chains, "is this addressed to the bot")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.store.text_binding import REPLACEMENT
from tests.e2e.inprocess import EmulatedBot, emulated_bot


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(tmp_path) as harness:
        harness.bot.get_cog("Chat").position_poll_s = 0.01
        await harness.store.set_channel_persona(harness.chat, "marisa")
        yield harness


async def logs(h: EmulatedBot):
    items = []
    for n in range(1, 50):
        item = await h.store.get_review(n)
        if item is not None:
            items.append(item)
    return items


# -- text SQLite cannot hold ----------------------------------------------------------------------


async def test_a_lone_surrogate_is_answered_logged_and_carded(h: EmulatedBot) -> None:
    message = await h.say("こんにちは\ud83d")
    [reply] = h.sent()
    assert reply.content == "**霧雨魔理沙**: おう、元気だぜ！"
    [item] = await logs(h)
    assert item.message_id == message and item.reply_message_id == int(reply.id)
    assert item.user_text == "こんにちは" + REPLACEMENT  # kept as written, the broken half marked
    assert item.prompt.endswith("ユーザー: こんにちは\n魔理沙: ")  # the prompt was cleaned as before
    assert item.review_message_id is not None  # the moderators see it
    [card] = h.sent("review")
    assert "こんにちは" in str(card.payload["embeds"][0])


# -- forwards: someone else's words, never input, history, chain or "addressed" -------------------


def typing_calls(h: EmulatedBot, since: int) -> list:
    return [c for c in h.calls(since) if c.path.endswith("/typing")]


async def test_a_forward_is_never_answered_typed_at_or_logged(h: EmulatedBot) -> None:
    original = await h.say("転送元のメッセージだぜ", channel="general")  # not a persona channel: unanswered
    mark = h.emu.mark()
    await h.say("", forward_of=original)
    assert h.sent() == [] and typing_calls(h, mark) == [] and h.fake_chat.submitted == []
    assert await logs(h) == []


async def test_a_forward_never_becomes_history_or_part_of_a_reply_chain(h: EmulatedBot) -> None:
    original = await h.say("秘密の転送テキスト", channel="general")
    forward = await h.say("", forward_of=original)
    await h.say("こんにちは")
    _, turns = h.fake_chat.submitted[-1]
    assert "秘密の転送テキスト" not in " ".join(t.text for t in turns)
    # outside a persona channel: a reply to the forward that mentions the bot is answered alone
    elsewhere = await h.say("別の秘密", channel="general")
    forward_elsewhere = await h.say("", channel="general", forward_of=elsewhere)
    await h.say(f"<@{h.me}> これどう思う？", channel="general", message_reference=forward_elsewhere)
    _, turns = h.fake_chat.submitted[-1]
    assert [t.text for t in turns] == ["これどう思う？"] and forward != forward_elsewhere


async def test_a_forward_of_the_bots_reply_does_not_address_the_bot(h: EmulatedBot) -> None:
    await h.say(f"<@{h.me}> やあ", channel="general")
    [reply] = h.sent("general")
    asked = len(h.fake_chat.submitted)
    await h.say("", channel="general", forward_of=reply.id)  # shared, not answered to
    assert h.sent("general") == [] and len(h.fake_chat.submitted) == asked
    mentioning = await h.say(f"<@{h.me}> 転送の中身", channel="general")  # an original mentioning the bot …
    assert len(h.sent("general")) == 1
    await h.say("", channel="general", forward_of=mentioning)  # … forwarded: still not addressed
    assert h.sent("general") == [] and len(h.fake_chat.submitted) == asked + 1


# -- polls: the question and answers are the member's words ---------------------------------------


async def test_a_poll_is_answered_with_its_question_and_answers(h: EmulatedBot) -> None:
    await h.say("", poll={"question": "今日の夕飯は？", "answers": ["カレー", "ラーメン"]})
    [reply] = h.sent()
    assert reply.content == "**霧雨魔理沙**: おう、元気だぜ！"
    _, turns = h.fake_chat.submitted[-1]
    assert turns[-1].text == "（投票）今日の夕飯は？（カレー／ラーメン）"
    [item] = await logs(h)
    assert item.user_text == "（投票）今日の夕飯は？（カレー／ラーメン）"


async def test_a_poll_in_history_reads_as_its_question(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.chat, None)
    await h.say("", poll={"question": "週末どこ行く？", "answers": ["海", "山"]}, user="member2")
    await h.store.set_channel_persona(h.chat, "marisa")
    await h.say("どっちがいいと思う？")
    _, turns = h.fake_chat.submitted[-1]
    assert [t.text for t in turns] == ["（投票）週末どこ行く？（海／山）", "どっちがいいと思う？"]


# -- nothing a persona can read: named, never "empty" ----------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"voice_message": True}, "voice messages are not read"),
        ({"sticker_names": ["wave"]}, "attachments and stickers are not read"),
        ({"embeds": [{"title": "リンク", "description": "説明"}]}, "embeds are not read"),
        ({"activity": True}, "activity invites are not read"),
        ({"voice_message": True, "sticker_names": ["wave"]}, "voice messages, and attachments and stickers"),
    ],
)
async def test_a_message_with_nothing_readable_says_what_is_not_read(h: EmulatedBot, kwargs, named) -> None:
    await h.say("", **kwargs)
    [notice] = h.sent()
    assert notice.content.startswith("Only text can be answered: ") and named in notice.content
    assert "empty" not in notice.content and h.fake_chat.submitted == [] and await logs(h) == []


async def test_text_with_a_sticker_is_answered_and_invisible_only_text_is_empty(h: EmulatedBot) -> None:
    await h.say("見て見て", sticker_names=["wave"])
    [reply] = h.sent()
    assert reply.content.startswith("**霧雨魔理沙**: ")
    await h.say("\u200b\u200d")  # the member sent nothing at all: "empty" is right
    [notice] = h.sent()
    assert "That message is empty" in notice.content
