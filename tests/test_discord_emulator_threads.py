"""Threads and forum posts in the Discord API emulator, seen by a plain discord.py bot: the events
arrive in Discord's order, discord.py caches them with their parents, webhooks post into them,
and what Discord refuses is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator

import discord
import pytest

from tests.discord_emulator import DiscordEmulator, point_discord_at
from tests.discord_emulator.errors import ApiError
from tests.test_discord_emulator import TOKEN, EmuBot, start_bot, stop_bot, wait_until

CHANNEL_FORUM = 15


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator(token=TOKEN) as emulator:
        restore = point_discord_at(emulator.base_url)
        try:
            yield emulator
        finally:
            restore()


@pytest.fixture
async def bot(emu: DiscordEmulator) -> AsyncIterator[EmuBot]:
    b, task = await start_bot(emu)
    try:
        yield b
    finally:
        await stop_bot(b, task)


def forum_of(emu: DiscordEmulator) -> int:
    if "forum" not in emu.state.channel_keys:
        emu.state.add_channel("forum", None, "questions", position=5, channel_type=CHANNEL_FORUM)
    return int(emu.channel_id("forum"))


async def test_a_thread_from_a_message_is_announced_before_its_messages(
    emu: DiscordEmulator, bot: EmuBot
) -> None:
    chat = int(emu.channel_id("chat"))
    started = await emu.send_message("chat", "member", "この話はスレッドで")
    thread = await emu.create_thread("chat", "member", "続きの話", message_id=started["id"], key="t")
    assert thread["id"] == started["id"]  # Discord gives the thread its message's id
    said = await emu.send_message("t", "member2", "スレッドの中から")
    await wait_until(lambda: any(m.id == int(said["id"]) for m in bot.seen_messages))
    cached = bot.get_channel(int(thread["id"]))
    assert isinstance(cached, discord.Thread) and cached.parent_id == chat and cached.name == "続きの話"
    message = next(m for m in bot.seen_messages if m.id == int(said["id"]))
    assert message.channel is cached  # not a PartialMessageable: THREAD_CREATE came first
    # the thread's history is its own, opening with the starter message that points at the parent's
    history = [m async for m in cached.history(oldest_first=True)]
    assert [m.type for m in history] == [
        discord.MessageType.thread_starter_message,
        discord.MessageType.default,
    ]
    assert history[0].reference.message_id == int(started["id"])
    assert all(m.channel.id == chat for m in [m async for m in bot.get_channel(chat).history()])
    with pytest.raises(ApiError, match="already"):  # one thread per message
        await emu.create_thread("chat", "member", "二つ目", message_id=started["id"])


async def test_a_thread_on_its_own_leaves_a_thread_created_message(emu: DiscordEmulator, bot: EmuBot) -> None:
    thread = await emu.create_thread("chat", "member", "雑談スレ")
    created = [m for m in emu.messages("chat") if m.payload["type"] == 18]
    assert [m.content for m in created] == ["雑談スレ"]
    assert created[0].payload["message_reference"]["channel_id"] == thread["id"]
    await wait_until(lambda: bot.get_channel(int(thread["id"])) is not None)
    # the guild's channel list holds no threads; the active-threads list does
    channels = await bot.get_guild(int(emu.guild_id)).fetch_channels()
    assert int(thread["id"]) not in {c.id for c in channels}
    active = await bot.get_guild(int(emu.guild_id)).active_threads()
    assert [t.id for t in active] == [int(thread["id"])]


async def test_a_forum_post_is_a_thread_whose_first_message_shares_its_id(emu: DiscordEmulator) -> None:
    forum = forum_of(emu)
    bot, task = await start_bot(emu)
    try:
        assert isinstance(bot.get_channel(forum), discord.ForumChannel)
        first = await emu.create_forum_post("forum", "member", "ずんだ餅の作り方", "教えて！", key="post")
        await wait_until(lambda: any(m.id == int(first["id"]) for m in bot.seen_messages))
        post = bot.get_channel(int(first["id"]))
        assert (
            isinstance(post, discord.Thread) and post.parent_id == forum and post.name == "ずんだ餅の作り方"
        )
        message = next(m for m in bot.seen_messages if m.id == int(first["id"]))
        assert message.channel is post and message.content == "教えて！"
        with pytest.raises(ApiError, match="Cannot execute action"):
            await emu.create_thread("forum", "member", "普通のスレッド")  # a forum only has posts
        # the bot opens a post over REST the same way
        made = await bot.get_channel(forum).create_thread(name="お知らせ", content="はじめまして")
        assert made.thread.parent_id == forum and made.message.id == made.thread.id
    finally:
        await stop_bot(bot, task)
    # after a restart the active posts come with GUILD_CREATE
    again, task = await start_bot(emu)
    try:
        assert isinstance(again.get_channel(int(first["id"])), discord.Thread)
    finally:
        await stop_bot(again, task)


async def test_webhooks_post_into_threads_of_their_own_channel_only(
    emu: DiscordEmulator, bot: EmuBot
) -> None:
    chat = bot.get_channel(int(emu.channel_id("chat")))
    hook = await chat.create_webhook(name="personas")
    thread = await emu.create_thread("chat", "member", "スレッド")
    await wait_until(lambda: bot.get_channel(int(thread["id"])) is not None)
    sent = await hook.send(
        "スレッドへ", username="ずんだもん", thread=discord.Object(int(thread["id"])), wait=True
    )
    assert emu.message(sent.id).channel_id == thread["id"]
    other = await emu.create_thread("general", "member", "よそのスレッド")
    with pytest.raises(discord.NotFound):
        await hook.send("よそへ", username="ずんだもん", thread=discord.Object(int(other["id"])), wait=True)
    forum = bot.get_channel(forum_of(emu)) or await bot.fetch_channel(forum_of(emu))
    forum_hook = await forum.create_webhook(name="personas")
    with pytest.raises(discord.HTTPException) as refused:
        await forum_hook.send("スレッドなし", username="ずんだもん", wait=True)
    assert refused.value.code == 220001
