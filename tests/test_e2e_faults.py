"""End to end under faults, one bot process for the module: the gateway drops, Discord's REST
answers 429 and 500, the SQLite file is locked by another process, the model raises on a batch.

None of this uses hooks in the bot: the gateway and REST faults come from the emulator, the
lock from this test holding the bot's database, the model failure from
tests/e2e/faultinject/sitecustomize.py on the bot's PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
import pytest_asyncio

from tests.discord_emulator import DiscordEmulator
from tests.e2e.harness import FAULT_MARKER, SLOW_MARKER
from tests.e2e.stack import Stack, running_stack
from tests.e2e.world import run_command, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tiny_neox: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(
        tmp_path_factory.mktemp("e2e-faults"), tiny_neox, members=8, channels=2, fault_injection=True
    ) as s:
        for channel in s.world.channels:
            _, text = await run_command(s.emu, channel, "moderator", "persona", {"persona": "marisa"})
            assert "now answers" in text
            # a first reply creates the channel's webhook, so its id is known to the fault rules
            warm = await s.say(channel, "user01", "よろしくね")
            assert (await s.answer(warm)).kind == "reply"
        yield s
        s.bot.assert_clean_log(allowed_traceback=FAULT_MARKER)


def webhook_id(emu: DiscordEmulator, channel_key: str) -> str:
    cid = emu.channel_id(channel_key)
    return next(h["id"] for h in emu.state.webhooks.values() if h["channel_id"] == cid)


def logged(db: Path, message_ids: list[str]) -> dict[str, tuple[int | None, int | None]]:
    """message id → (reply message id, review card id) for the logged replies among ``message_ids``."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute("SELECT message_id, reply_message_id, review_message_id FROM logs").fetchall()
    wanted = set(message_ids)
    return {str(m): (r, c) for m, r, c in rows if str(m) in wanted}


async def test_gateway_drop_is_resumed_and_missed_messages_answered(stack: Stack) -> None:
    emu = stack.emu
    since = len(emu.gateway_log)
    assert await emu.drop_connection() == 1
    during = await stack.say("load-1", "user02", "切断中に送ったメッセージ")  # buffered, replayed on RESUME
    resumed = await emu.wait_for_gateway(lambda r: r.kind == "resume", timeout=60, since=since)
    assert resumed.data["replayed"] >= 1
    after = await stack.say("load-2", "user03", "再接続のあとで")
    assert (await stack.answer(during)).kind == "reply"
    assert (await stack.answer(after)).kind == "reply"
    assert not emu.gateway_log.find(lambda r: r.kind == "identify", since)  # resumed, not a new session


async def test_rest_429_is_waited_out_and_the_reply_arrives_once(stack: Stack) -> None:
    emu = stack.emu
    hook, review = webhook_id(emu, "load-1"), stack.world.channel_id("review")
    mark = emu.mark()
    reply_fault = emu.fail_next("POST", rf"^/webhooks/{hook}/[^/]+$", 429, retry_after=1.5)
    card_fault = emu.fail_next("POST", rf"^/channels/{review}/messages$", 429, retry_after=1.0)
    sent = await stack.say("load-1", "user04", "混んでるみたいだね")
    answer = await stack.answer(sent, timeout=60)
    assert answer.kind == "reply" and emu.message(answer.answer_id).source == "webhook"
    posts = [
        c for c in emu.calls.items[mark:] if c.method == "POST" and c.path.startswith(f"/webhooks/{hook}/")
    ]
    assert [c.status for c in posts] == [429, 200]
    assert posts[1].at - posts[0].at >= 1.4  # it waited retry_after before trying again
    assert reply_fault.hits == 1

    def card_posted() -> tuple[int | None, int | None] | None:
        row = logged(stack.bot.db_path, [sent.message_id]).get(sent.message_id)
        return row if row and row[1] else None

    await wait_until(card_posted, 30, what="the review card, after its 429")
    cards = [
        c for c in emu.calls.items[mark:] if c.method == "POST" and c.path == f"/channels/{review}/messages"
    ]
    assert [c.status for c in cards] == [429, 200] and card_fault.hits == 1
    await stack.settle(1.0)
    assert len(stack.book.answers[sent.message_id]) == 1  # no duplicate after the retry


async def test_rest_500_is_logged_and_the_bot_goes_on(stack: Stack) -> None:
    """discord.py retries a 5xx five times (1+3+5+7+9 s); then the bot logs it and posts the reply
    as itself, while other channels are answered as usual meanwhile."""
    emu = stack.emu
    hook = webhook_id(emu, "load-1")
    fault = emu.fail_next("POST", rf"^/webhooks/{hook}/[^/]+$", 500, count=5)
    hit = await stack.say("load-1", "user05", "サーバーが不調みたい")
    other = await stack.say("load-2", "user06", "こっちは大丈夫？")
    elsewhere = await stack.answer(other, timeout=30)
    assert elsewhere.kind == "reply"
    assert stack.book.final(hit.message_id) is None  # still retrying while the other channel is served
    answer = await stack.answer(hit, timeout=90)
    assert fault.hits == 5
    fallback = emu.message(answer.answer_id)
    assert answer.kind == "reply" and fallback.source == "bot"
    assert fallback.content.startswith("**霧雨魔理沙**: ")
    assert str(fallback.payload["message_reference"]["message_id"]) == hit.message_id
    channel = stack.world.channel_id("load-1")
    assert f"webhook send failed in channel {channel}" in stack.bot.log_text()
    rows = await wait_until(
        lambda: (r := logged(stack.bot.db_path, [hit.message_id, other.message_id])) and len(r) == 2 and r,
        30,
        what="both replies logged",
    )
    assert rows[hit.message_id][0] == int(fallback.id)  # the log points at what was really posted
    # the webhook works again for the next reply
    again = await stack.say("load-1", "user05", "直った？")
    answer = await stack.answer(again, timeout=30)
    assert emu.message(answer.answer_id).source == "webhook"


async def test_locked_database_loses_nothing(stack: Stack) -> None:
    """Another process holds the SQLite file exclusively for 2 s while messages flow: every reply
    is still delivered, logged and carded once the lock goes."""
    held = sqlite3.connect(stack.bot.db_path, timeout=10, isolation_level=None)
    mark = stack.emu.mark()
    try:
        held.execute("BEGIN EXCLUSIVE")
        locked_at = time.monotonic()
        sent = []
        for i, (channel, user) in enumerate(
            [("load-1", "user01"), ("load-2", "user02"), ("load-1", "user03"), ("load-2", "user04")]
        ):
            sent.append(await stack.say(channel, user, f"ロック中のメッセージ {i}"))
            await asyncio.sleep(0.2)
        await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - locked_at)))
        # Replies do not wait for the database (only reads come before them), their logs do.
        hooks = tuple(f"/webhooks/{webhook_id(stack.emu, c)}/" for c in ("load-1", "load-2"))
        posted = [c for c in stack.emu.calls.items[mark:] if c.method == "POST" and c.path.startswith(hooks)]
        assert posted, "no reply was posted while the database was locked"
        assert logged(stack.bot.db_path, [s.message_id for s in sent]) == {}
    finally:
        held.execute("COMMIT")
        held.close()
    answers = [await stack.answer(s, timeout=60) for s in sent]
    assert [a.kind for a in answers] == ["reply"] * len(sent)
    ids = [s.message_id for s in sent]

    def all_logged_and_carded() -> dict[str, tuple[int | None, int | None]] | None:
        rows = logged(stack.bot.db_path, ids)
        return rows if len(rows) == len(ids) and all(card for _, card in rows.values()) else None

    rows = await wait_until(all_logged_and_carded, 60, what="every reply logged and carded")
    assert {str(reply) for reply, _ in rows.values()} == {a.answer_id for a in answers}


async def test_model_failure_fails_only_its_batch(stack: Stack) -> None:
    """The model raises on one step: every row in that step is told, and the next messages are answered.

    With continuous batching the three later messages join the slow one's running batch, so
    the failing step holds all four.
    """
    emu = stack.emu
    general = stack.world.channel_id("general")
    at_bot = f"<@{emu.application_id}> "
    # Hold the worker with a slow request, so the next three queue up and then join its batch.
    mark = emu.mark()
    slow = await stack.say("general", "member", at_bot + f"{SLOW_MARKER} ゆっくり考えて")
    await emu.wait_for_call(lambda c: c.path == f"/channels/{general}/typing", 30, since=mark)
    await asyncio.sleep(0.5)
    broken = await stack.say("general", "member2", at_bot + f"{FAULT_MARKER} これで壊れる")
    mates = [
        await stack.say("load-1", "user07", "同じバッチの人"),
        await stack.say("load-2", "user08", "同じバッチの人その2"),
    ]
    failed = [await stack.answer(s, timeout=60) for s in [slow, broken, *mates]]
    assert [a.kind for a in failed] == ["error"] * 4
    assert all(a.text.startswith("Sorry, no reply this time:") for a in failed)
    assert all(emu.message(a.answer_id).payload["message_reference"] for a in failed)

    later = [
        await stack.say("load-1", "user07", "もう一度いい？"),
        await stack.say("general", "member2", at_bot + "もう一度いい？"),
    ]
    assert [(await stack.answer(s, timeout=60)).kind for s in later] == ["reply", "reply"]
    _, status = await run_command(emu, "general", "moderator", "status")
    assert "4 requests failed" in status
    log = stack.bot.check_log(allowed_traceback=FAULT_MARKER)
    assert not log.tracebacks
    assert f"RuntimeError: injected model failure ({FAULT_MARKER})" in stack.bot.log_text()
