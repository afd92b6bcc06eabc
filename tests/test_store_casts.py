"""The store's casts, reply presses and member labels against a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bot.store.casts import MAX_CAST, CastFullError
from bot.store.migrations import MIGRATIONS
from bot.store.reply_presses import REGENERATE
from bot.store.store import LogEntry, Store


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
        user_id=4,
        persona_id="marisa",
        adapter_version=None,
        prompt="p",
        user_text="q",
        reply="r",
    )
    values.update(overrides)
    return LogEntry(**values)


async def test_a_cast_keeps_its_order_and_its_lead_is_the_channels_persona(store: Store) -> None:
    assert await store.channel_cast(10) is None  # never set
    first = await store.add_to_cast(10, "marisa")
    assert (first.before, first.after, first.changed) == ((), ("marisa",), True)
    await store.add_to_cast(10, "zundamon")
    again = await store.add_to_cast(10, "zundamon")
    assert not again.changed and again.after == ("marisa", "zundamon")
    assert await store.channel_cast(10) == ("marisa", "zundamon")
    assert await store.channel_persona(10) == "marisa"  # the lead, for code that asks for one persona
    removed = await store.remove_from_cast(10, "marisa")
    assert removed.after == ("zundamon",)
    assert await store.channel_persona(10) == "zundamon"  # the next one leads
    assert not (await store.remove_from_cast(10, "ojousama")).changed


async def test_persona_sets_the_whole_cast_and_off_is_a_cast_of_its_own(store: Store) -> None:
    await store.set_cast(10, ["marisa", "zundamon", "marisa"])
    assert await store.channel_cast(10) == ("marisa", "zundamon")  # duplicates dropped
    await store.set_channel_persona(10, "ojousama")
    assert await store.channel_cast(10) == ("ojousama",)
    await store.set_channel_persona(10, None)
    assert await store.channel_cast(10) == ()  # set to nobody: a thread does not inherit then
    assert await store.channel_persona(10) is None
    # /reset makes a row without setting a cast: still "never set"
    await store.reset_channel(11, 5)
    assert await store.channel_cast(11) is None


async def test_adding_in_a_thread_starts_from_the_inherited_cast(store: Store) -> None:
    change = await store.add_to_cast(20, "ojousama", inherited=("marisa", "zundamon"))
    assert change.before == ("marisa", "zundamon") and change.after == ("marisa", "zundamon", "ojousama")
    assert await store.channel_cast(20) == ("marisa", "zundamon", "ojousama")
    # removing from an inherited cast also gives the thread a cast of its own
    change = await store.remove_from_cast(21, "marisa", inherited=("marisa", "zundamon"))
    assert await store.channel_cast(21) == ("zundamon",)
    # adding one already inherited still sets it here (the thread keeps it if the parent changes)
    assert not (await store.add_to_cast(22, "marisa", inherited=("marisa",))).changed
    assert await store.channel_cast(22) == ("marisa",)


async def test_a_cast_has_a_size_limit_and_concurrent_adds_all_land(store: Store) -> None:
    ids = [f"p{i}" for i in range(MAX_CAST)]
    await asyncio.gather(*(store.add_to_cast(30, pid) for pid in ids))
    assert sorted(await store.channel_cast(30)) == sorted(ids)
    with pytest.raises(CastFullError, match=str(MAX_CAST)):
        await store.add_to_cast(30, "one-more")
    with pytest.raises(CastFullError):
        await store.set_cast(31, [f"q{i}" for i in range(MAX_CAST + 1)])


async def test_a_press_is_recorded_once_whoever_presses(store: Store) -> None:
    outcomes = await asyncio.gather(
        store.record_press(REGENERATE, 500, 1), store.record_press(REGENERATE, 500, 2)
    )
    assert sorted(o.won for o in outcomes) == [False, True]
    winner = next(o for o in outcomes if o.won).user_id
    assert all(o.user_id == winner for o in outcomes)  # the loser learns who pressed first
    again = await store.record_press(REGENERATE, 500, winner)
    assert not again.won  # the same member pressing twice counts once too
    await store.release_press(REGENERATE, 500)
    assert (await store.record_press(REGENERATE, 500, 3)).won  # released: it may be pressed again


async def test_member_labels_are_their_own_columns_never_a_decision(store: Store) -> None:
    old = await store.log_reply(entry(reply_message_id=900))
    new = await store.log_reply(entry(reply_message_id=901, replaces=old, turn=2, stopped_by=4))
    assert (await store.review_for_messages([899, 900])).log_id == old
    assert await store.review_for_messages([]) is None
    assert await store.mark_regenerated(old, 4)
    assert not await store.mark_regenerated(old, 5)  # labelled once
    item = await store.get_review(old)
    assert item.regenerated_by == 4 and item.regenerated_at and item.decision is None
    fresh = await store.get_review(new)
    assert (fresh.replaces, fresh.turn, fresh.stopped_by) == (old, 2, 4)
    # a moderator may still decide on the replaced reply; the label stays beside the decision
    await store.decide(old, 99, "approved")
    item = await store.get_review(old)
    assert item.decision == "approved" and item.regenerated_by == 4
    # the raw row shows the label (what the learning loop's export reads)
    rows = await store._fetchall("SELECT decision, regenerated_by FROM logs ORDER BY id")
    assert [tuple(r) for r in rows] == [("approved", 4), (None, None)]


async def test_forget_removes_a_members_presses(store: Store) -> None:
    await store.record_press(REGENERATE, 700, 42)
    await store.forget_user(42)
    assert (await store.record_press(REGENERATE, 700, 43)).won


async def test_migration_turns_each_channels_persona_into_a_cast(tmp_path: Path) -> None:
    path = tmp_path / "v3.sqlite3"
    cast_version = next(m.version for m in MIGRATIONS if "cast" in m.description)
    before = [m for m in MIGRATIONS if m.version < cast_version]
    with sqlite3.connect(path) as raw:  # what the release before casts left on disk
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)")
        for migration in before:
            for statement in migration.statements:
                raw.execute(statement)
            raw.execute("INSERT INTO schema_version VALUES (?, 'x')", (migration.version,))
        raw.execute("INSERT INTO channel_state VALUES (9, 'zundamon', NULL, '2024-01-01')")
        raw.execute("INSERT INTO channel_state VALUES (8, NULL, 123, '2024-01-01')")  # only /reset
        raw.execute(
            "INSERT INTO logs (created_at, persona_id, prompt, user_text, reply, params, status, origin)"
            " VALUES ('2024-01-01', 'marisa', 'p', 'q', 'r', '{}', 'pending', 'live')"
        )
    s = await Store.open(path)
    try:
        assert await s.channel_cast(9) == ("zundamon",)
        assert await s.channel_cast(8) is None  # never set: a thread of it would inherit
        assert await s.channel_reset_marker(8) == 123
        item = await s.get_review(1)
        assert (item.turn, item.stopped_by, item.regenerated_by, item.replaces) == (0, None, None, None)
    finally:
        await s.close()
