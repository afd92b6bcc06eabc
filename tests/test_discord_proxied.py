"""Proxy bots (PluralKit, Tupperbox) through the real bot and the loopback emulator: a proxied
message is answered once, by the persona, and logged once under the member who wrote it; opt-out,
/forget and rate limits follow that member; history and reply chains read the repost as theirs."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from bot.chatflow.proxy_pairing import ProxyPairing
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator.proxies import PLURALKIT_ID, TUPPERBOX_ID, ProxyBot
from tests.e2e.inprocess import EmulatedBot, emulated_bot
from tests.fake_runtime import Script


def with_proxies(emu: DiscordEmulator) -> None:
    ProxyBot(emu, PLURALKIT_ID, "PluralKit")
    ProxyBot(emu, TUPPERBOX_ID, "Tupperbox")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(tmp_path, world=with_proxies) as harness:
        harness.bot.get_cog("Chat").position_poll_s = 0.01
        await harness.store.set_channel_persona(harness.chat, "marisa")
        yield harness


def replies(h: EmulatedBot, channel: str = "chat") -> list[str]:
    """What the bot posted in ``channel`` since the last look (the proxy's reposts left out)."""
    return [m.content for m in h.sent(channel) if m.source == "bot"]


def rows(h: EmulatedBot) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(h.bot.settings.paths.database)) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM logs ORDER BY id").fetchall()


def proxied_rows(h: EmulatedBot) -> list[tuple[int, int]]:
    with closing(sqlite3.connect(h.bot.settings.paths.database)) as db:
        return db.execute("SELECT message_id, user_id FROM proxied_messages").fetchall()


async def proxy(
    h: EmulatedBot, original: int, text: str | None = None, *, app: str = PLURALKIT_ID, **kwargs
) -> int:
    """The proxy reposts ``original`` and deletes it; returns once the bot handled both."""
    repost = await ProxyBot(h.emu, app).proxy(
        "chat" if "channel" not in kwargs else kwargs.pop("channel"), original, text, **kwargs
    )
    await h.received("message", lambda m: m.id == int(repost.id))
    if kwargs.get("delete", True):
        await h.received("raw_message_delete", lambda e: e.message_id == original)
    await h.settle()
    return int(repost.id)


# -- answered once, logged once, under the member -------------------------------------------------


async def test_a_proxied_message_is_answered_once_and_logged_under_its_member(h: EmulatedBot) -> None:
    original = await h.say("[やあ、元気？]")
    repost = await proxy(h, original, "やあ、元気？")
    assert replies(h) == ["**霧雨魔理沙**: おう、元気だぜ！"]  # one reply, still up
    [row] = rows(h)
    assert (row["message_id"], row["user_id"]) == (repost, h.alice)  # the message that stays, its member
    assert row["review_message_id"] is not None and len(h.sent("review")) == 1
    assert proxied_rows(h) == [(repost, h.alice)] and len(h.fake_chat.submitted) == 1


async def test_a_proxied_message_still_being_answered_is_handed_over_not_withdrawn(h: EmulatedBot) -> None:
    gate = asyncio.Event()
    h.fake_chat.scripts.append(Script(gate=gate))
    payload = await h.emu.send_message("chat", "member", "k:今日は何する？")
    original = int(payload["id"])
    await h.received("message", lambda m: m.id == original)
    repost = await ProxyBot(h.emu).proxy("chat", original, "今日は何する？")
    await h.received("raw_message_delete", lambda e: e.message_id == original)
    await asyncio.sleep(0.05)
    assert not h.fake_chat.pending[0].cancelled  # the deletion did not withdraw it
    gate.set()
    await h.settle()
    assert replies(h) == ["**霧雨魔理沙**: おう、元気だぜ！"]
    [row] = rows(h)
    assert (row["message_id"], row["user_id"]) == (int(repost.id), h.alice)


async def test_a_deletion_that_arrives_before_the_repost_waits_for_it(h: EmulatedBot) -> None:
    first = await h.say("[いつもの順]")
    await proxy(h, first, "いつもの順")  # the bot now knows a proxy works in this server
    original = await h.say("[遅れて届く]")
    repost = await proxy(h, original, "遅れて届く", delete_first=True, delay_s=0.3)
    assert [(r["message_id"], r["user_id"]) for r in rows(h)][-1] == (repost, h.alice)
    assert len(replies(h)) == 2


async def test_tupperbox_counts_too_and_an_unknown_proxy_does_not(h: EmulatedBot) -> None:
    first = await h.say("tul!やっほー")
    tupper_repost = await proxy(h, first, "やっほー", app=TUPPERBOX_ID)
    assert [r["message_id"] for r in rows(h)] == [tupper_repost]
    other = await h.say("ほかのボット経由")
    await proxy(h, other, app="123456789012345678")  # not a configured proxy: a plain deletion
    assert [r["message_id"] for r in rows(h)] == [tupper_repost]  # the other row was withdrawn


async def test_a_repost_whose_original_was_never_seen_is_not_answered(h: EmulatedBot) -> None:
    h.fake_chat.submitted.clear()
    await h.store.set_channel_persona(h.chat, None)
    unseen = await h.say("ペルソナのいない時の発言")  # seen, but long ago as far as pairing goes
    chat = h.bot.get_cog("Chat")
    chat.proxied.pairing = ProxyPairing()  # as after a restart
    await h.store.set_channel_persona(h.chat, "marisa")
    await proxy(h, unseen, "ペルソナのいない時の発言")
    assert replies(h) == [] and rows(h) == [] and h.fake_chat.submitted == []


async def test_without_proxy_bots_configured_the_repost_is_ignored_and_the_deletion_withdraws(
    h: EmulatedBot,
) -> None:
    h.set_discord(proxy_bots=())
    original = await h.say("[設定なし]")
    assert len(rows(h)) == 1
    await proxy(h, original, "設定なし")
    assert rows(h) == []  # as before this feature: the deletion withdrew it


# -- rate limits, opt-out and /forget follow the member ------------------------------------------


async def test_a_proxied_message_costs_its_member_one_message_of_the_rate_limit(h: EmulatedBot) -> None:
    h.set_chat(rate_limit_burst=2, rate_limit_per_minute=0.001)
    h.bot.get_cog("Chat").flow.limiter.burst = 2
    for i in range(2):
        original = await h.say(f"[{i}回目]")
        await proxy(h, original, f"{i}回目")
    assert replies(h) == ["**霧雨魔理沙**: おう、元気だぜ！"] * 2  # no 🐢: reposts are free
    assert {r["user_id"] for r in rows(h)} == {h.alice}


async def test_history_reads_the_repost_as_the_members_and_opt_out_follows_them(h: EmulatedBot) -> None:
    original = await h.say("[魔法の森に行ったよ]")
    await proxy(h, original, "魔法の森に行ったよ")
    await h.say("へえ、どうだった？", user="member2")
    _, turns = h.fake_chat.submitted[-1]
    texts = [t.text for t in turns]
    assert texts.count("魔法の森に行ったよ") == 1 and "[魔法の森に行ったよ]" not in texts
    bob_row = rows(h)[-1]
    with closing(sqlite3.connect(h.bot.settings.paths.database)) as db:
        people = {
            u
            for (u,) in db.execute("SELECT user_id FROM log_participants WHERE log_id = ?", (bob_row["id"],))
        }
    assert people == {h.alice, h.bob}
    # alice opts out: a reply whose prompt holds her proxied words is no longer logged
    await h.command("optout", user="member")
    before = len(rows(h))
    await h.say("もう一回教えて", user="member2")
    assert replies(h) and len(rows(h)) == before


async def test_forget_removes_the_members_proxied_rows_and_history_leaves_the_line_out(
    h: EmulatedBot,
) -> None:
    original = await h.say("[忘れてほしい話]")
    await proxy(h, original, "忘れてほしい話")
    await h.command("forget", user="member")
    assert rows(h) == [] and proxied_rows(h) == []
    await h.say("さっきの話って？", user="member2")
    _, turns = h.fake_chat.submitted[-1]
    assert "忘れてほしい話" not in " ".join(t.text for t in turns)  # its author is unknown now


async def test_deleting_the_repost_later_withdraws_the_row(h: EmulatedBot) -> None:
    original = await h.say("[やっぱり消す]")
    repost = await proxy(h, original, "やっぱり消す")
    assert len(rows(h)) == 1
    await h.delete(repost)  # the member deletes the proxied message (PluralKit's ❌)
    assert rows(h) == [] and proxied_rows(h) == [] and h.sent("review") == []


# -- reply chains and "addressed" outside a persona channel -----------------------------------------


async def test_a_reply_chain_through_a_repost_reads_it_as_the_members(h: EmulatedBot) -> None:
    first = await h.say(f"[<@{h.me}> 魔法を教えて]", channel="general")
    await proxy(h, first, f"<@{h.me}> 魔法を教えて", channel="general")
    [bot_reply] = replies(h, "general")
    [row] = rows(h)
    assert row["user_id"] == h.alice
    repost_id = row["message_id"]
    await h.say(f"<@{h.me}> 私も知りたい", channel="general", user="member2", message_reference=repost_id)
    _, turns = h.fake_chat.submitted[-1]
    assert [t.text for t in turns] == ["魔法を教えて", "私も知りたい"] and bot_reply is not None
