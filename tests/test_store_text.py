"""Text SQLite cannot hold as UTF-8 (lone surrogates) is written, never lost: every column and
every statement of the store, and the log spool that used to lose the row."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from bot.chatflow.ratelimit import RateLimiter
from bot.chatflow.replyflow import LogSpool, ReplyFlow
from bot.store.store import LogEntry, Store
from bot.store.text_binding import REPLACEMENT, storable, storable_params
from bot.text.wordfilter import WordFilter

LONE_HIGH = "こんにちは\ud83d"  # the case: half of an emoji at the end
LONE_LOW = "\ude00だぜ"  # the other half, alone at the start
SPLIT_PAIR = "笑\ud83d\ude00"  # both halves as two code points: one character, 😀


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


def entry(**overrides) -> LogEntry:
    values = dict(
        guild_id=1,
        channel_id=2,
        message_id=3,
        user_id=10,
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


def raw_row(path: Path, log_id: int) -> sqlite3.Row:
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT * FROM logs WHERE id = ?", (log_id,)).fetchone()


def test_storable_keeps_valid_text_joins_pairs_and_marks_lone_halves() -> None:
    assert storable("こんにちは😀") == "こんにちは😀"
    assert storable(LONE_HIGH) == "こんにちは" + REPLACEMENT
    assert storable(LONE_LOW) == REPLACEMENT + "だぜ"
    assert storable(SPLIT_PAIR) == "笑😀"
    assert storable("a\ud800b\udfffc") == f"a{REPLACEMENT}b{REPLACEMENT}c"
    assert storable(12) == 12 and storable(None) is None and storable(b"\xff") == b"\xff"
    assert storable_params({"t": LONE_HIGH}) == {"t": "こんにちは" + REPLACEMENT}
    assert storable_params(None) is None
    for value in (LONE_HIGH, LONE_LOW, SPLIT_PAIR):
        storable(value).encode("utf-8")  # never raises


async def test_every_text_column_of_a_log_row_takes_a_lone_surrogate(store: Store, tmp_path: Path) -> None:
    log_id = await store.log_reply(
        entry(
            user_text=LONE_HIGH,
            prompt=f"ユーザー: {LONE_HIGH}\n魔理沙: ",
            reply=SPLIT_PAIR,
            params={"temperature": 0.7, "note": LONE_LOW},  # json.dumps(ensure_ascii=False) keeps it
            blocked_words=(LONE_LOW,),
        )
    )
    assert log_id is not None
    row = raw_row(tmp_path / "bot.sqlite3", log_id)
    assert row["user_text"] == "こんにちは" + REPLACEMENT  # the rest of the raw text is kept as written
    assert row["prompt"] == f"ユーザー: こんにちは{REPLACEMENT}\n魔理沙: "
    assert row["reply"] == "笑😀"
    assert json.loads(row["params"])["note"] == REPLACEMENT + "だぜ"
    assert json.loads(row["blocked_words"]) == [REPLACEMENT + "だぜ"]
    item = await store.get_review(log_id)
    assert item is not None and item.user_text == "こんにちは" + REPLACEMENT


async def test_a_moderators_edit_and_a_trainer_candidate_take_one_too(store: Store) -> None:
    log_id = await store.log_reply(entry())
    assert log_id is not None
    outcome = await store.decide(log_id, 99, "edited", f"直した{LONE_HIGH}")
    assert outcome.edited_text == f"直したこんにちは{REPLACEMENT}" and not outcome.already_decided
    cand = await store.add_candidate("marisa", LONE_HIGH, SPLIT_PAIR, f"ユーザー: {LONE_HIGH}", None)
    item = await store.get_review(cand)
    assert item is not None and item.user_text == "こんにちは" + REPLACEMENT and item.reply == "笑😀"


async def test_a_lookup_with_a_lone_surrogate_reads_instead_of_raising(store: Store) -> None:
    await store.set_channel_persona(5, "marisa")
    # A parameter of a read goes through the same binding (the read connection is wrapped too).
    rows = await store._fetchall("SELECT ? AS echoed", (LONE_HIGH,))
    assert rows[0]["echoed"] == "こんにちは" + REPLACEMENT
    assert await store.channel_persona(5) == "marisa"


async def test_the_log_spool_writes_the_row_it_used_to_lose(store: Store) -> None:
    flow = ReplyFlow(RateLimiter(60.0, 5), WordFilter([]), LogSpool(store))
    log_id = await flow.record(entry(user_text=LONE_HIGH, message_id=77))
    assert log_id is not None and len(flow.spool) == 0
    assert (await store.get_review(log_id)).message_id == 77  # type: ignore[union-attr]


async def test_a_spooled_entry_with_a_lone_surrogate_is_flushed(store: Store, monkeypatch) -> None:
    spool = LogSpool(store)
    real = store.log_reply
    calls = {"n": 0}

    async def locked_once(e: LogEntry) -> int | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise sqlite3.OperationalError("database is locked")
        return await real(e)

    monkeypatch.setattr(store, "log_reply", locked_once)
    assert await spool.write(entry(user_text=LONE_HIGH)) is None and len(spool) == 1
    [log_id] = await spool.flush()
    assert (await store.get_review(log_id)).user_text == "こんにちは" + REPLACEMENT  # type: ignore[union-attr]
