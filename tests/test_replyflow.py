"""Discord-free reply steps: waiting with position updates, filtering, log entries, the spool."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.chatflow.conversation import ChatMessage, build_conversation
from bot.chatflow.ratelimit import RateLimiter
from bot.chatflow.replyflow import Incoming, LogSpool, ReplyFlow
from bot.store.store import LogEntry, Store
from bot.text.wordfilter import WordFilter
from personas.card import load_cards
from tests.fake_runtime import FakePending, Script

MARISA = load_cards().get("marisa")


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "flow.sqlite3")
    yield s
    await s.close()


def flow(store: Store) -> ReplyFlow:
    return ReplyFlow(RateLimiter(6, 3), WordFilter.from_lines(["死ね"]), LogSpool(store))


async def test_wait_reports_each_position_change(store: Store) -> None:
    gate = asyncio.Event()
    pending = FakePending(MARISA, "p", Script("できたぜ", positions=[5, 5, 3, 0], gate=gate))
    seen: list[int] = []

    async def on_position(pos: int) -> None:
        seen.append(pos)
        if pos == 0:
            gate.set()

    assert await flow(store).wait(pending, on_position, poll_s=0.01) == "できたぜ"
    assert seen == [5, 3, 0]


async def test_a_failing_notice_does_not_lose_the_reply(store: Store) -> None:
    async def broken(_pos: int) -> None:
        raise RuntimeError("discord down")

    pending = FakePending(MARISA, "p", Script("届いたぜ"))
    assert await flow(store).wait(pending, broken, poll_s=0.01) == "届いたぜ"


async def test_an_abandoned_wait_cancels_the_request(store: Store) -> None:
    pending = FakePending(MARISA, "p", Script("x", gate=asyncio.Event()))

    async def noop(_pos: int) -> None:
        return None

    task = asyncio.create_task(flow(store).wait(pending, noop, poll_s=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pending.cancelled


def test_filter_defuses_and_blocks(store: Store) -> None:
    f = flow(store).filter("@everyone 死ね")
    assert f.is_blocked and f.blocked == ("死ね",) and "@\u200beveryone" in f.text
    assert not flow(store).filter("やあ").is_blocked


async def test_entry_carries_everything_the_log_needs(store: Store) -> None:
    pending = FakePending(MARISA, "the prompt", Script("よう"))
    await pending.text()
    conv = build_conversation(MARISA, [ChatMessage(1, 7, "前"), ChatMessage(2, 8, "今")], 10)
    asked = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    entry = ReplyFlow.entry(Incoming(1, 2, 3, 8, asked), conv, pending, flow(store).filter("よう"), 1500, 99)
    assert entry.user_text == "今" and entry.prompt == "the prompt" and entry.reply == "よう"
    assert entry.participants == (7, 8) and entry.requested_at == asked.isoformat()
    assert entry.adapter_version == "v20250101-000000" and entry.params["batch_size"] == 2
    assert entry.params["temperature"] == MARISA.generation.temperature
    assert entry.latency_ms == 1500 and entry.reply_message_id == 99 and entry.status == "pending"


async def test_spool_keeps_order_and_loses_nothing(store: Store, monkeypatch) -> None:
    spool = LogSpool(store)
    real = store.log_reply
    down = {"on": True}

    async def flaky(entry: LogEntry):
        if down["on"]:
            raise sqlite3.OperationalError("database is locked")
        return await real(entry)

    monkeypatch.setattr(store, "log_reply", flaky)

    def e(n: int) -> LogEntry:
        return LogEntry(1, 2, n, 10, "marisa", None, "p", f"q{n}", f"r{n}")

    assert await spool.write(e(1)) is None
    assert await spool.write(e(2)) is None
    assert len(spool) == 2
    down["on"] = False
    log_id = await spool.write(e(3))  # flushes the older ones first
    assert log_id == 3 and len(spool) == 0
    assert [(await store.get_review(i)).user_text for i in (1, 2, 3)] == ["q1", "q2", "q3"]


async def test_spool_is_bounded(store: Store, monkeypatch) -> None:
    async def locked(entry: LogEntry):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(store, "log_reply", locked)
    spool = LogSpool(store, max_entries=3)
    for n in range(5):
        await spool.write(LogEntry(1, 2, n, 10, "marisa", None, "p", "q", "r"))
    assert len(spool) == 3


async def test_a_deleted_message_is_withdrawn_from_the_spool(tmp_path: Path) -> None:
    """Another process holds the lock, so two logs wait in the spool; one question is deleted
    meanwhile. Once the database is free only the other is written: a deletion that found no
    row (its entry was not written yet) must not be undone by the late write."""
    path = tmp_path / "withdraw.sqlite3"
    store = await Store.open(path, busy_timeout_ms=10, base_delay_s=0.01, max_attempts=2)
    held = sqlite3.connect(path, isolation_level=None)
    try:
        spool = LogSpool(store)
        held.execute("BEGIN IMMEDIATE")
        for message_id in (41, 42, 41):
            assert await spool.write(LogEntry(1, 2, message_id, 10, "marisa", None, "p", "q", "r")) is None
        assert len(spool) == 3
        assert spool.withdraw(41) == 2 and spool.withdraw(99) == 0
        held.execute("COMMIT")
        written = await spool.flush()
        assert len(written) == 1 and len(spool) == 0
        assert (await store.get_review(written[0])).message_id == 42
        assert (await store.forget_message(41)).deleted == 0  # nothing of 41 was ever written
    finally:
        if held.in_transaction:
            held.execute("ROLLBACK")
        held.close()
        await store.close()


async def test_a_deletion_the_database_refuses_is_kept_and_done_later(tmp_path: Path) -> None:
    """A member deletes an answered message while another process holds the lock: the deletion
    is kept (like a log entry) and done by the next flush, which names the card to take down."""
    path = tmp_path / "forget-later.sqlite3"
    store = await Store.open(path, busy_timeout_ms=10, base_delay_s=0.01, max_attempts=2)
    held = sqlite3.connect(path, isolation_level=None)
    try:
        spool = LogSpool(store)
        kept = await spool.write(LogEntry(1, 2, 50, 10, "marisa", None, "p", "残る質問", "r"))
        gone = await spool.write(LogEntry(1, 2, 51, 11, "marisa", None, "p", "消される質問", "r"))
        await store.mark_posted(gone, 900, 901)
        held.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError):
            await store.forget_message(51)
        spool.forget_later(51)
        spool.forget_later(51)  # Discord may report a deletion twice
        assert len(spool) == 1
        assert await spool.flush() == [] and len(spool) == 1  # still locked: still kept
        held.execute("COMMIT")
        assert await spool.flush() == [] and len(spool) == 0
        assert await store.get_review(gone) is None and await store.get_review(kept) is not None
        assert spool.take_cards() == [(900, 901)] and spool.take_cards() == []
    finally:
        if held.in_transaction:
            held.execute("ROLLBACK")
        held.close()
        await store.close()
