"""Settings per Discord server, without Discord: resolution over the TOML defaults, the store's
compare-and-set and change log, which servers' replies may train, and the migration of a
database from before (all rows of one server) that must keep working with no operator action."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from bot.config import ChatSettings, DiscordSettings, PathSettings, ScheduleSettings, Settings
from bot.learning.retrain_schedule import RetrainingSchedule
from bot.store.migrations import LATEST_VERSION, MIGRATIONS
from bot.store.server_book import ServerSettingsBook
from bot.store.server_settings import MAX_LIST_IDS, ServerSettingsRow, resolve
from bot.store.store import LogEntry, Store, StoreError
from trainer.__main__ import main as trainer_main

A, B, C = 111, 222, 333  # three servers
ADMIN, OTHER_ADMIN = 7, 8


def settings(**discord: object) -> Settings:
    return Settings(discord=DiscordSettings(**discord), chat=ChatSettings(default_persona="marisa"))


def reply(guild_id: int | None, user_id: int | None = 10, **kw: object) -> LogEntry:
    values: dict = dict(
        guild_id=guild_id,
        channel_id=2,
        message_id=3,
        user_id=user_id,
        persona_id="marisa",
        adapter_version="v1",
        prompt="p",
        user_text="こんにちは",
        reply="よう",
    )
    values.update(kw)
    return LogEntry(**values)


@pytest.fixture
async def store(tmp_path: Path):
    s = await Store.open(tmp_path / "bot.sqlite3")
    yield s
    await s.close()


# -- resolution -----------------------------------------------------------------------------------


def test_a_server_without_settings_gets_the_operators_defaults() -> None:
    toml = settings(review_channel=5, moderator_role=6, allowed_roles=(8,), allowed_channels=(9,))
    server = resolve(toml, A, None)
    assert (server.review_channel, server.moderator_role, server.default_persona) == (5, 6, "marisa")
    assert (server.allowed_roles, server.allowed_channels) == ((8,), (9,))
    assert server.served and not server.training and server.own == frozenset()


def test_a_servers_own_settings_win_and_empty_lists_differ_from_unset() -> None:
    toml = settings(review_channel=5, allowed_roles=(8,), allowed_channels=(9,))
    row = ServerSettingsRow(A, review_channel=50, default_persona="zundamon", allowed_roles=(), training=True)
    server = resolve(toml, A, row)
    assert (server.review_channel, server.default_persona, server.training) == (50, "zundamon", True)
    assert server.allowed_roles == ()  # set to "everyone": not the operator's (8,)
    assert server.allowed_channels == (9,)  # not set: the operator's
    assert server.own == frozenset({"review_channel", "default_persona", "allowed_roles", "training"})


def test_the_allow_list_decides_who_is_served_and_who_trains_by_default() -> None:
    everyone = settings()
    assert resolve(everyone, A, None).served and not resolve(everyone, A, None).training
    listed = settings(allowed_servers=(A,))
    assert resolve(listed, A, None).served and resolve(listed, A, None).training
    assert not resolve(
        listed, A, ServerSettingsRow(A, training=False)
    ).training  # a listed server may opt out
    unlisted = resolve(listed, B, ServerSettingsRow(B, training=True))
    assert not unlisted.served and not unlisted.training  # not served: never trains, whatever it set


# -- changing settings ------------------------------------------------------------------------------


async def test_a_change_is_recorded_with_who_made_it_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    s = await Store.open(path)
    outcome = await s.change_server_setting(A, "review_channel", 500, ADMIN)
    assert outcome.changed and outcome.previous is None and outcome.row.review_channel == 500
    again = await s.change_server_setting(A, "review_channel", 500, OTHER_ADMIN)
    assert not again.changed and not again.conflict and again.last_change.changed_by == ADMIN
    await s.change_server_setting(A, "training", True, ADMIN)
    await s.change_server_setting(A, "review_channel", None, ADMIN)  # back to the default
    await s.close()
    s = await Store.open(path)
    try:
        row = await s.server_settings(A)
        assert row is not None and row.review_channel is None and row.training is True
        changes = await s.server_setting_changes(A)
        assert [(c.setting, c.old_value, c.new_value, c.changed_by) for c in changes] == [
            ("review_channel", "500", None, ADMIN),
            ("training", None, "on", ADMIN),
            ("review_channel", None, "500", ADMIN),
        ]
        assert await s.server_settings(B) is None and await s.server_setting_changes(B) == []
    finally:
        await s.close()


async def test_a_change_made_on_a_stale_view_is_refused_and_nothing_is_lost(store: Store) -> None:
    await store.change_server_setting(A, "default_persona", "zundamon", ADMIN, expected=None)
    late = await store.change_server_setting(A, "default_persona", "ojousama", OTHER_ADMIN, expected=None)
    assert late.conflict and not late.changed
    assert late.row.default_persona == "zundamon" and late.last_change.changed_by == ADMIN
    assert len(await store.server_setting_changes(A)) == 1  # the refused change left no record
    # asking for what already stands is no conflict, whatever the caller saw
    same = await store.change_server_setting(A, "default_persona", "zundamon", OTHER_ADMIN, expected=None)
    assert not same.conflict and not same.changed


async def test_two_admins_at_once_through_the_bots_book(store: Store) -> None:
    """Both read the same cached value before either writes: one change wins, the other is told."""
    book = ServerSettingsBook(lambda: settings(), store)
    await book.load()
    first, second = await asyncio.gather(
        book.change(A, "default_persona", "zundamon", ADMIN),
        book.change(A, "default_persona", "ojousama", OTHER_ADMIN),
    )
    assert (first.changed, second.changed, second.conflict) == (True, False, True)
    assert book.get(A).default_persona == "zundamon" == second.row.default_persona
    retry = await book.change(A, "default_persona", "ojousama", OTHER_ADMIN)  # now on a fresh view
    assert retry.changed and book.get(A).default_persona == "ojousama"


async def test_two_admins_adding_roles_at_once_both_keep_theirs(store: Store) -> None:
    book = ServerSettingsBook(lambda: settings(allowed_roles=(5,)), store)
    await asyncio.gather(
        book.edit_list(A, "allowed_roles", ADMIN, add=(41,)),
        book.edit_list(A, "allowed_roles", OTHER_ADMIN, add=(42,)),
    )
    assert book.get(A).allowed_roles == (5, 41, 42)  # started from the operator's list
    await book.edit_list(A, "allowed_roles", ADMIN, remove=(5,))
    assert (await store.server_settings(A)).allowed_roles == (41, 42)
    unchanged = await book.edit_list(B, "allowed_roles", ADMIN, remove=(99,))
    assert not unchanged.changed and await store.server_settings(B) is None  # still the default


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("review_channel", 0),
        ("review_channel", -3),
        ("moderator_role", "6"),
        ("default_persona", "  "),
        ("training", 1),
        ("allowed_roles", (0,)),
        ("allowed_roles", tuple(range(1, MAX_LIST_IDS + 2))),
        ("owner_ids", (1,)),
    ],
)
async def test_a_value_a_setting_cannot_hold_is_refused_and_nothing_changes(
    store: Store, key: str, value: object
) -> None:
    with pytest.raises(ValueError):
        await store.change_server_setting(A, key, value, ADMIN)  # type: ignore[arg-type]
    assert await store.server_settings(A) is None and await store.server_setting_changes(A) == []


async def test_a_list_may_not_grow_past_its_limit(store: Store) -> None:
    await store.edit_server_list(A, "allowed_channels", ADMIN, add=range(1, MAX_LIST_IDS + 1))
    with pytest.raises(ValueError, match="at most"):
        await store.edit_server_list(A, "allowed_channels", ADMIN, add=(10_000,))
    assert len((await store.server_settings(A)).allowed_channels) == MAX_LIST_IDS


async def test_a_book_without_a_database_serves_defaults_and_refuses_changes() -> None:
    book = ServerSettingsBook(lambda: settings(review_channel=5), None)
    await book.load()
    assert book.get(A).review_channel == 5
    with pytest.raises(StoreError):
        await book.change(A, "review_channel", 6, ADMIN)


async def test_the_notice_to_an_unlisted_server_is_claimed_once(tmp_path: Path) -> None:
    path = tmp_path / "n.sqlite3"
    s = await Store.open(path)
    assert await s.claim_server_notice(C) and not await s.claim_server_notice(C)
    await s.close()
    s = await Store.open(path)
    try:
        assert not await s.claim_server_notice(C)  # a restart does not send it again
    finally:
        await s.close()


# -- which servers' replies train ------------------------------------------------------------------


async def _approved(store: Store, guild_id: int | None, text: str) -> int:
    log_id = await store.log_reply(reply(guild_id, user_text=text)) if guild_id else None
    if log_id is None:
        log_id = await store.add_candidate("marisa", text, "答え", "p", "v1")
    await store.decide(log_id, ADMIN, "approved")
    return log_id


async def test_exports_take_only_servers_that_allow_training(store: Store) -> None:
    a = await _approved(store, A, "A の話")
    b = await _approved(store, B, "B の話")
    cand = await _approved(store, None, "候補")

    async def exported(listed: tuple[int, ...]) -> list[int]:
        return [r.log_id for r in await store.approved_for_export("marisa", listed_servers=listed)]

    # No list: no server trains until its admins allow it; candidates (no server) always may.
    assert await exported(()) == [cand]
    assert await store.count_held_back_by_servers("marisa") == 2
    await store.change_server_setting(A, "training", True, ADMIN)
    assert await exported(()) == [a, cand]
    assert await store.count_approved_since("marisa", None) == 2
    # A list: listed servers train by default; a server off the list is not served, so never.
    assert await exported((B,)) == [b, cand]
    await store.change_server_setting(B, "training", False, ADMIN)
    assert await exported((B,)) == [cand]
    assert await store.count_approved_since("marisa", None, listed_servers=(B,)) == 1
    assert await store.count_held_back_by_servers("marisa", listed_servers=(B,)) == 2


async def test_review_queries_per_server(store: Store) -> None:
    a = await store.log_reply(reply(A))
    b = await store.log_reply(reply(B))
    cand = await store.add_candidate("marisa", "q", "r", "p", None)
    assert set(await store.unposted_guilds()) == {A, B, None}
    assert [i.log_id for i in await store.unposted_reviews(guilds=[B])] == [b]
    assert [i.log_id for i in await store.unposted_reviews(guilds=[A, None])] == [a, cand]
    assert await store.unposted_reviews(guilds=[]) == []
    await store.decide(a, ADMIN, "approved")
    assert await store.stats([A]) == {"logged": 1, "undecided": 0, "decided": 1, "blocked": 0}
    assert (await store.stats([B, None]))["logged"] == 2 and (await store.stats())["logged"] == 3
    # Cards of B's rows posted in a channel of A (by a version without per-server settings):
    await store.mark_posted(b, 900, 901)
    await store.mark_posted(a, 900, 902)
    assert set(await store.posted_card_places()) == {(A, 900), (B, 900)}
    assert await store.unpost_cards(B, 900) == ((900, 901),)
    assert [i.log_id for i in await store.unposted_reviews(guilds=[B])] == [b]  # to be posted at home
    assert (await store.get_review(a)).review_message_id == 902  # A's own card stays


# -- migration ---------------------------------------------------------------------------------------


async def test_an_existing_database_keeps_training_with_no_operator_action(tmp_path: Path) -> None:
    """A database from before settings per server: its server's approvals still export with the
    default config (an empty allow-list), and a server seen later starts with training off."""
    path = tmp_path / "old.sqlite3"
    before = next(m.version for m in MIGRATIONS if "per Discord server" in m.description) - 1
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)")
        for migration in MIGRATIONS[:before]:
            for statement in migration.statements:
                raw.execute(statement)
            raw.execute(
                "INSERT INTO schema_version VALUES (?, '2024-01-01T00:00:00+00:00')", (migration.version,)
            )
        raw.execute(
            "INSERT INTO logs (created_at, guild_id, user_id, persona_id, prompt, user_text, reply, params,"
            " status, origin, decision, decided_by, decided_at) VALUES ('2024-01-01T00:00:00+00:00', ?, 77,"
            " 'marisa', 'p', '古い質問', 'r', '{}', 'pending', 'live', 'approved', 5, '2024-01-02T00:00:00+00:00')",
            (A,),
        )
    s = await Store.open(path)
    try:
        assert await s.schema_version() == LATEST_VERSION
        assert [r.question for r in await s.approved_for_export()] == ["古い質問"]
        row = await s.server_settings(A)
        assert row is not None and row.training is True and row.review_channel is None
        [change] = await s.server_setting_changes(A)
        assert (change.setting, change.new_value, change.changed_by) == ("training", "on", None)
        await _approved(s, B, "新しいサーバー")
        assert [r.question for r in await s.approved_for_export()] == ["古い質問"]
    finally:
        await s.close()


def test_export_reviews_command_follows_the_allow_list_and_says_what_it_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, out = tmp_path / "bot.sqlite3", tmp_path / "marisa-reviewed.jsonl"

    async def fill() -> None:
        s = await Store.open(db)
        await _approved(s, A, "A の話")
        await _approved(s, B, "B の話")
        await s.close()

    asyncio.run(fill())
    config = tmp_path / "oshaberi.toml"
    config.write_text(f'[paths]\ndatabase = "{db}"\n[discord]\nallowed_servers = [{A}]\n', encoding="utf-8")
    code = trainer_main(["--config", str(config), "export-reviews", "--persona", "marisa", "-o", str(out)])
    assert code == 0
    assert [json.loads(line)["turns"][0]["text"] for line in out.read_text("utf-8").splitlines()] == [
        "A の話"
    ]
    assert (
        "left out 1 approved replies from Discord servers that do not allow training"
        in capsys.readouterr().out
    )


async def test_scheduled_retraining_counts_only_servers_that_allow_training(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    s = await Store.open(db)
    await _approved(s, A, "A の話")
    for text in ("B の一つ目", "B の二つ目"):
        await _approved(s, B, text)
    await s.close()
    listed_a = Settings(
        paths=PathSettings(database=str(db), adapters_dir=str(tmp_path / "adapters")),
        discord=DiscordSettings(allowed_servers=(A,)),
        schedule=ScheduleSettings(min_new_approved=2, personas=("marisa",)),
    )
    [outcome] = await RetrainingSchedule(listed_a).run_once()
    assert (outcome.status, outcome.new_approved) == ("skipped", 1)  # B's two do not count
