"""The store against a real SQLite file: migrations, state, decisions, privacy, locking."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.store.migrations import LATEST_VERSION, MIGRATIONS
from bot.store.store import (
    ExportRow,
    LogEntry,
    ReviewItem,
    ReviewNotFoundError,
    Store,
    StoreBusyError,
    StoreError,
    normalize_iso,
    within,
)

# The Discord servers of the rows below (1, and 101 in the field-by-field tests) are on the
# operator's list, so their approved replies may train: the privacy rules are what is tested here
# (tests/test_server_settings.py tests which servers train).
LISTED = (1, 101)


def entry(user_id: int | None = 10, **overrides) -> LogEntry:
    values = dict(
        guild_id=1,
        channel_id=2,
        message_id=3,
        user_id=user_id,
        persona_id="marisa",
        adapter_version="v1",
        prompt="ユーザー: こんにちは\n魔理沙: ",
        user_text="こんにちは",
        reply="よう、元気か？だぜ",
        params={"temperature": 0.7},
        latency_ms=120,
    )
    values.update(overrides)
    return LogEntry(**values)


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "db" / "bot.sqlite3")
    yield s
    await s.close()


async def test_open_creates_wal_database_at_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "bot.sqlite3"
    s = await Store.open(path)
    assert await s.schema_version() == LATEST_VERSION
    await s.close()
    await s.close()  # closing twice is harmless
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [m.version for m in MIGRATIONS]


async def test_migrates_an_old_database_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as raw:  # what a version-1 release left on disk
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)")
        for statement in MIGRATIONS[0].statements:
            raw.execute(statement)
        raw.execute("INSERT INTO schema_version VALUES (1, '2024-01-01T00:00:00+00:00')")
        raw.execute(
            "INSERT INTO logs (created_at, user_id, persona_id, prompt, user_text, reply, params, status, origin,"
            " decision, decided_by, decided_at) VALUES ('2024-01-01T00:00:00+00:00', 77, 'marisa', 'p', 'q', 'r',"
            " '{}', 'pending', 'live', 'approved', 5, '2024-01-02T00:00:00+00:00')"
        )
        raw.execute("INSERT INTO channel_state VALUES (9, 'zundamon', NULL, '2024-01-01')")
    s = await Store.open(path)
    try:
        assert await s.schema_version() == LATEST_VERSION
        assert await s.channel_persona(9) == "zundamon"
        rows = await s.approved_for_export(listed_servers=LISTED)
        assert [(r.question, r.reply) for r in rows] == [("q", "r")]
        # The migration back-filled the requester as a participant, so forget reaches old rows.
        assert await s.forget_user(77) == 1
        assert await s.approved_for_export(listed_servers=LISTED) == []
    finally:
        await s.close()


async def test_refuses_a_database_from_a_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    s = await Store.open(path)
    await s.close()
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO schema_version VALUES (?, 'x')", (LATEST_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        await Store.open(path)


async def test_channel_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    s = await Store.open(path)
    assert await s.channel_persona(5) is None
    assert await s.channel_reset_marker(5) is None
    await s.set_channel_persona(5, "marisa")
    await s.reset_channel(5, 12345)
    await s.set_channel_persona(5, "zundamon")  # the marker is kept when the persona changes
    await s.close()
    s = await Store.open(path)
    assert await s.channel_persona(5) == "zundamon"
    assert await s.channel_reset_marker(5) == 12345
    await s.set_channel_persona(5, None)
    assert await s.channel_persona(5) is None
    await s.close()


async def test_log_reply_round_trips_every_field(store: Store) -> None:
    log_id = await store.log_reply(
        entry(status="blocked", blocked_words=("ばか",), reply_message_id=99, participants=(10, 11))
    )
    assert log_id is not None
    item = await store.get_review(log_id)
    assert item is not None
    assert (item.guild_id, item.channel_id, item.message_id, item.user_id) == (1, 2, 3, 10)
    assert item.persona_id == "marisa" and item.adapter_version == "v1"
    assert item.params == {"temperature": 0.7} and item.latency_ms == 120
    assert item.status == "blocked" and item.blocked_words == ("ばか",)
    assert item.reply_message_id == 99 and item.origin == "live"
    await store.set_reply_message(log_id, 100)
    assert (await store.get_review(log_id)).reply_message_id == 100


async def test_log_reply_rejects_unknown_status(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.log_reply(entry(status="posted"))
    with pytest.raises(ValueError):
        await store.log_reply(entry(origin="web"))


async def test_decide_records_once_and_reports_the_winner(store: Store) -> None:
    log_id = await store.log_reply(entry())
    first = await store.decide(log_id, 501, "approved")
    assert not first.already_decided and first.decision == "approved" and first.moderator_id == 501
    second = await store.decide(log_id, 502, "rejected")
    assert second.already_decided and second.decision == "approved" and second.moderator_id == 501


async def test_decide_validates_input(store: Store) -> None:
    log_id = await store.log_reply(entry())
    with pytest.raises(ValueError):
        await store.decide(log_id, 1, "maybe")
    with pytest.raises(ValueError):
        await store.decide(log_id, 1, "edited", "   ")
    with pytest.raises(ReviewNotFoundError):
        await store.decide(999_999, 1, "approved")
    # a failed attempt leaves the row undecided
    assert (await store.get_review(log_id)).decision is None


async def test_double_click_race_one_store(store: Store) -> None:
    log_id = await store.log_reply(entry())
    outcomes = await asyncio.gather(*(store.decide(log_id, 600 + i, "approved") for i in range(10)))
    winners = [o for o in outcomes if not o.already_decided]
    assert len(winners) == 1
    assert {o.moderator_id for o in outcomes} == {winners[0].moderator_id}


async def test_double_click_race_two_processes(tmp_path: Path) -> None:
    """Two connections (as two bot processes would have) decide the same row at the same moment."""
    path = tmp_path / "race.sqlite3"
    a = await Store.open(path)
    b = await Store.open(path)
    try:
        log_id = await a.log_reply(entry())
        outcomes = await asyncio.gather(
            a.decide(log_id, 1, "approved"), b.decide(log_id, 2, "edited", "直したんだぜ")
        )
        assert sorted(o.already_decided for o in outcomes) == [False, True]
        assert outcomes[0].moderator_id == outcomes[1].moderator_id
        assert outcomes[0].decision == outcomes[1].decision
    finally:
        await a.close()
        await b.close()


async def test_export_uses_edited_text_and_skips_rejected(store: Store) -> None:
    a = await store.log_reply(entry(reply="元の返事"))
    b = await store.log_reply(entry(reply="だめな返事"))
    c = await store.log_reply(entry(reply="未決定"))
    d = await store.log_reply(entry(persona_id="zundamon", reply="なのだ"))
    await store.decide(a, 1, "edited", "直した返事だぜ")
    await store.decide(b, 1, "rejected")
    await store.decide(d, 1, "approved")
    rows = await store.approved_for_export("marisa", listed_servers=LISTED)
    assert [(r.log_id, r.reply, r.original_reply, r.decision) for r in rows] == [
        (a, "直した返事だぜ", "元の返事", "edited")
    ]
    assert {r.log_id for r in await store.approved_for_export(listed_servers=LISTED)} == {a, d}
    assert c not in {r.log_id for r in await store.approved_for_export(listed_servers=LISTED)}


async def test_count_approved_since(store: Store) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    for _ in range(3):
        await store.decide(await store.log_reply(entry()), 1, "approved")
    await store.decide(await store.log_reply(entry()), 1, "rejected")
    assert await store.count_approved_since("marisa", None, listed_servers=LISTED) == 3
    since = before.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await store.count_approved_since("marisa", since, listed_servers=LISTED) == 3
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await store.count_approved_since("marisa", later, listed_servers=LISTED) == 0
    assert await store.count_approved_since("zundamon", None, listed_servers=LISTED) == 0


def test_normalize_iso_accepts_z_offsets_and_naive() -> None:
    assert normalize_iso("2024-05-01T09:00:00+09:00") == normalize_iso("2024-05-01T00:00:00Z")
    assert normalize_iso("2024-05-01T00:00:00") == normalize_iso("2024-05-01T00:00:00+00:00")


async def test_opted_out_user_is_never_logged_and_never_exported(store: Store) -> None:
    kept = await store.log_reply(entry(user_id=10))
    await store.decide(kept, 1, "approved")
    await store.set_opt_out(10, True)
    assert await store.is_opted_out(10)
    assert await store.log_reply(entry(user_id=10)) is None
    # someone else's reply whose context holds the opted-out user's words is not kept either
    assert await store.log_reply(entry(user_id=20, participants=(10, 20))) is None
    # the earlier row is held back while opted out
    assert await store.approved_for_export(listed_servers=LISTED) == []
    assert await store.opted_out_among([10, 20, 30]) == {10}
    await store.set_opt_out(10, False)
    assert not await store.is_opted_out(10)
    assert [r.log_id for r in await store.approved_for_export(listed_servers=LISTED)] == [kept]


async def test_forget_deletes_rows_cards_and_context_rows(store: Store) -> None:
    own = await store.log_reply(entry(user_id=10))
    ctx = await store.log_reply(entry(user_id=20, participants=(10, 20)))
    other = await store.log_reply(entry(user_id=20))
    await store.mark_posted(own, 700, 701)
    for log_id in (own, ctx, other):
        await store.decide(log_id, 1, "approved")
    result = await store.forget_user_detailed(10)
    assert result.deleted == 2
    assert result.review_cards == ((700, 701),)
    assert await store.get_review(own) is None and await store.get_review(ctx) is None
    assert [r.log_id for r in await store.approved_for_export(listed_servers=LISTED)] == [other]
    assert await store.forget_user(10) == 0


async def test_a_deleted_message_takes_its_rows_with_it(store: Store) -> None:
    withdrawn = await store.log_reply(entry(message_id=555))
    kept = await store.log_reply(entry(message_id=556))
    await store.mark_posted(withdrawn, 700, 702)
    await store.decide(withdrawn, 1, "approved")
    await store.decide(kept, 1, "approved")
    result = await store.forget_message(555)
    assert result.deleted == 1 and result.review_cards == ((700, 702),)
    assert [r.log_id for r in await store.approved_for_export(listed_servers=LISTED)] == [kept]
    assert (await store.forget_message(999)).deleted == 0  # a message nobody logged


async def test_forget_wins_over_a_reply_logged_late(store: Store) -> None:
    """A reply still generating when the user ran /forget must not be kept afterwards."""
    asked = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.01)
    await store.forget_user(10)
    assert await store.log_reply(entry(user_id=10, requested_at=asked)) is None
    # a message written after the forget is new data and is logged normally
    await asyncio.sleep(0.01)
    later = await store.log_reply(entry(user_id=10, requested_at=datetime.now(UTC).isoformat()))
    assert later is not None


async def test_forget_tombstone_blocks_export_of_a_row_that_slipped_in(tmp_path: Path) -> None:
    path = tmp_path / "slip.sqlite3"
    s = await Store.open(path)
    asked = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    log_id = await s.log_reply(entry(user_id=10, requested_at=asked))
    await s.decide(log_id, 1, "approved")
    await s.close()
    with sqlite3.connect(path) as raw:  # a tombstone newer than the request, row still present
        raw.execute("INSERT INTO forgotten_users VALUES (10, ?)", (datetime.now(UTC).isoformat(),))
    s = await Store.open(path)
    try:
        assert await s.approved_for_export(listed_servers=LISTED) == []
        assert await s.count_approved_since(None, None, listed_servers=LISTED) == 0
    finally:
        await s.close()


async def test_candidates_are_queued_for_review_once(store: Store) -> None:
    cand = await store.add_candidate("zundamon", "質問", "答えなのだ", "prompt", "v2", {"temperature": 0.5})
    live = await store.log_reply(entry())
    items = await store.unposted_reviews()
    assert [i.log_id for i in items] == [cand, live]
    assert items[0].origin == "generated" and items[0].user_id is None
    assert await store.claim_review(cand)
    assert not await store.claim_review(cand)  # a second poster cannot take it
    assert [i.log_id for i in await store.unposted_reviews()] == [live]
    await store.mark_posted(cand, 50, 51)
    assert not await store.claim_review(cand)
    assert (await store.get_review(cand)).review_message_id == 51
    # a failed post gives the claim back
    assert await store.claim_review(live)
    await store.release_review(live)
    assert [i.log_id for i in await store.unposted_reviews()] == [live]


async def test_claims_of_a_dead_run_are_released_at_startup(tmp_path: Path) -> None:
    path = tmp_path / "claims.sqlite3"
    s = await Store.open(path)
    log_id = await s.log_reply(entry())
    assert await s.claim_review(log_id)
    await s.close()
    s = await Store.open(path)
    try:
        assert await s.unposted_reviews() == []
        assert await s.release_all_claims() == 1
        assert [i.log_id for i in await s.unposted_reviews()] == [log_id]
    finally:
        await s.close()


async def test_decided_items_are_not_posted(store: Store) -> None:
    log_id = await store.log_reply(entry())
    await store.decide(log_id, 1, "rejected")
    assert await store.unposted_reviews() == []


async def test_write_waits_out_a_locked_database(tmp_path: Path) -> None:
    """Another process holds the write lock for a while: the reply is still logged, not lost."""
    path = tmp_path / "locked.sqlite3"
    s = await Store.open(path, busy_timeout_ms=20, base_delay_s=0.02, max_attempts=12)
    locked = threading.Event()

    def hold_lock() -> None:
        raw = sqlite3.connect(path, isolation_level=None)
        raw.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(0.6)
        raw.execute("COMMIT")
        raw.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        await asyncio.to_thread(locked.wait)
        log_id = await s.log_reply(entry())
        assert log_id is not None
        assert (await s.get_review(log_id)).reply == entry().reply
    finally:
        holder.join()
        await s.close()


async def test_gives_up_on_a_lock_that_never_ends(tmp_path: Path) -> None:
    path = tmp_path / "stuck.sqlite3"
    s = await Store.open(path, busy_timeout_ms=10, base_delay_s=0.01, max_attempts=3)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            await s.log_reply(entry())
    finally:
        raw.execute("ROLLBACK")
        raw.close()
        await s.close()
    s = await Store.open(path)
    try:
        assert await s.unposted_reviews() == []  # the failed write left nothing half-done
    finally:
        await s.close()


async def test_reads_are_answered_while_a_write_waits_for_another_process(tmp_path: Path) -> None:
    """Another process holds the write lock and our log write waits for it: reads (what /status,
    /personas and a message's persona lookup need) are answered meanwhile, not queued behind it.

    The lock is released only after the reads return, so reads that queued would never finish:
    the wait_for turns that into a failure instead of a hang.
    """
    path = tmp_path / "held.sqlite3"
    s = await Store.open(path, busy_timeout_ms=60_000)
    held = sqlite3.connect(path, isolation_level=None)
    try:
        await s.set_channel_persona(7, "marisa")
        held.execute("BEGIN IMMEDIATE")
        write = asyncio.create_task(s.log_reply(entry(reply="ロック待ちの返事")))
        await asyncio.sleep(0.3)
        assert not write.done()  # waiting for the other process's lock
        reads = asyncio.gather(s.channel_persona(7), s.stats(), s.channel_reset_marker(7), s.is_opted_out(10))
        persona, stats, marker, opted_out = await asyncio.wait_for(reads, 20)
        assert (persona, stats["logged"], marker, opted_out) == ("marisa", 0, None, False)
        assert not write.done()
        held.execute("COMMIT")
        log_id = await asyncio.wait_for(write, 20)  # kept, and done once the lock is free
        assert (await s.get_review(log_id)).reply == "ロック待ちの返事"  # the reader sees the commit
        assert (await s.stats())["logged"] == 1
    finally:
        if held.in_transaction:
            held.execute("ROLLBACK")
        held.close()
        await s.close()


async def test_within_gives_up_on_a_slow_read_and_the_store_goes_on(store: Store) -> None:
    await store.set_channel_persona(3, "zundamon")
    with pytest.raises(StoreBusyError, match="did not answer within 0.0 s"):
        await within(store.stats(), 0)
    with pytest.raises(StoreBusyError):
        await within(asyncio.sleep(5), 0.05)
    assert await within(store.channel_persona(3)) == "zundamon"  # the abandoned read broke nothing
    assert issubclass(StoreBusyError, StoreError)


async def test_in_memory_store_reads_its_own_writes() -> None:
    """':memory:' is private to one connection, so there reads share the write connection."""
    s = await Store.open(":memory:")
    try:
        await s.set_channel_persona(1, "marisa")
        log_id = await s.log_reply(entry())
        assert await s.channel_persona(1) == "marisa"
        assert (await s.get_review(log_id)).reply == entry().reply
    finally:
        await s.close()


async def test_stats(store: Store) -> None:
    a = await store.log_reply(entry())
    await store.log_reply(entry(status="blocked"))
    await store.decide(a, 1, "approved")
    assert await store.stats() == {"logged": 2, "undecided": 1, "decided": 1, "blocked": 1}


async def test_message_answered_by_links_a_reply_to_its_question(store: Store) -> None:
    await store.log_reply(entry(message_id=500, reply_message_id=501))
    assert await store.message_answered_by(501) == 500
    assert await store.message_answered_by(999) is None


# -- rows are read by column name ---------------------------------------------------------------
# Every field gets a value no other field of its type has, so a value read into the wrong field
# (two columns swapped in a SELECT, a migration adding a column in the middle) fails an assert.


def _distinct_entry() -> LogEntry:
    return LogEntry(
        guild_id=101,
        channel_id=102,
        message_id=103,
        user_id=104,
        persona_id="marisa",
        adapter_version="v7",
        prompt="prompt-text",
        user_text="question-text",
        reply="reply-text",
        params={"temperature": 0.5},
        latency_ms=106,
        status="blocked",
        origin="live",
        reply_message_id=107,
        blocked_words=("word",),
    )


async def _logged_decided_posted(store: Store) -> int:
    log_id = await store.log_reply(_distinct_entry())
    assert log_id is not None
    [unposted] = await store.unposted_reviews()
    assert unposted == await store.get_review(log_id)
    await store.mark_posted(log_id, 108, 109)
    await store.decide(log_id, 105, "edited", "edited-text")
    return log_id


def _assert_distinct_fields(item: ReviewItem, log_id: int) -> None:
    assert (item.log_id, item.guild_id, item.channel_id, item.message_id, item.user_id) == (
        log_id,
        101,
        102,
        103,
        104,
    )
    assert (item.decided_by, item.latency_ms, item.reply_message_id) == (105, 106, 107)
    assert (item.review_channel_id, item.review_message_id) == (108, 109)
    assert (item.persona_id, item.adapter_version) == ("marisa", "v7")
    assert (item.prompt, item.user_text, item.reply, item.edited_text) == (
        "prompt-text",
        "question-text",
        "reply-text",
        "edited-text",
    )
    assert (item.status, item.origin, item.decision) == ("blocked", "live", "edited")
    assert item.params == {"temperature": 0.5} and item.blocked_words == ("word",)
    assert item.created_at < item.decided_at  # both timestamps, in the order they happened


def _assert_distinct_export(row: ExportRow, item: ReviewItem) -> None:
    assert row == ExportRow(
        log_id=item.log_id,
        persona_id="marisa",
        question="question-text",
        reply="edited-text",
        original_reply="reply-text",
        decision="edited",
        prompt="prompt-text",
        origin="live",
        adapter_version="v7",
        decided_at=item.decided_at,
        params={"temperature": 0.5},
        status="blocked",
    )


async def test_every_logged_field_reads_back_into_its_own_field(store: Store) -> None:
    log_id = await _logged_decided_posted(store)
    item = await store.get_review(log_id)
    assert item is not None
    _assert_distinct_fields(item, log_id)
    [row] = await store.approved_for_export(listed_servers=LISTED)
    _assert_distinct_export(row, item)


async def test_rows_are_read_by_name_whatever_the_column_order_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    s = await Store.open(path)
    log_id = await _logged_decided_posted(s)
    await s.close()
    # Rebuild ``logs`` with its columns in reverse order, as a table rebuilt by a later migration
    # (or one that adds a column in the middle) may have them.
    with sqlite3.connect(path) as raw:
        columns = [r[1] for r in raw.execute("PRAGMA table_info(logs)")]
        reversed_list = ", ".join(reversed(columns))
        raw.execute(f"CREATE TABLE logs_reordered AS SELECT {reversed_list} FROM logs")
        raw.execute("DROP TABLE logs")
        raw.execute("ALTER TABLE logs_reordered RENAME TO logs")
        assert [r[1] for r in raw.execute("PRAGMA table_info(logs)")] == columns[::-1]
    s = await Store.open(path)
    try:
        item = await s.get_review(log_id)
        assert item is not None
        _assert_distinct_fields(item, log_id)
        [row] = await s.approved_for_export(listed_servers=LISTED)
        _assert_distinct_export(row, item)
        assert await s.stats() == {"logged": 1, "undecided": 0, "decided": 1, "blocked": 1}
    finally:
        await s.close()


@pytest.mark.parametrize("cut", ["while BEGIN waits for the lock", "inside the transaction"])
async def test_a_write_cancelled_midway_leaves_the_connection_usable(tmp_path: Path, cut: str) -> None:
    """A caller cancelled at any point of a write (the review poller at shutdown, a reply's task)
    must not leave the write connection inside a transaction: aiosqlite's thread runs a sent
    BEGIN whether or not anybody still awaits it, and every later write would then fail with
    "cannot start a transaction within a transaction"."""
    path = tmp_path / "cancel.sqlite3"
    s = await Store.open(path, busy_timeout_ms=60_000)
    held = sqlite3.connect(path, isolation_level=None)
    try:
        if cut == "while BEGIN waits for the lock":
            held.execute("BEGIN IMMEDIATE")
            write = asyncio.create_task(s.log_reply(entry(reply="取り消された書き込み")))
            await asyncio.sleep(0.3)
            assert not write.done()
            write.cancel()
            held.execute("COMMIT")
        else:
            started = asyncio.Event()

            async def body() -> None:
                started.set()
                await asyncio.sleep(5)

            write = asyncio.create_task(s._write(body))
            await asyncio.wait_for(started.wait(), 5)
            write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        log_id = await asyncio.wait_for(s.log_reply(entry(reply="次の書き込み")), 20)
        assert (await s.get_review(log_id)).reply == "次の書き込み"
    finally:
        if held.in_transaction:
            held.execute("ROLLBACK")
        held.close()
        await s.close()
