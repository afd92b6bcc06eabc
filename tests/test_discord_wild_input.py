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
