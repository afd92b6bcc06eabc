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

from bot.discord.review_views import TEXT_INPUT_ID
from tests.discord_emulator import Call, DiscordEmulator, InteractionRecord
from tests.e2e.harness import FAULT_MARKER, SLOW_MARKER
from tests.e2e.stack import Stack, running_stack
from tests.e2e.world import click, interaction_text, run_command, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tiny_neox: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(
        tmp_path_factory.mktemp("e2e-faults"), tiny_neox, members=10, channels=2, fault_injection=True
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


def carded(db: Path, message_ids: list[str]) -> dict[str, tuple[int, int]] | None:
    """message id → (log id, review card id), once every one of ``message_ids`` has its card."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute("SELECT message_id, id, review_message_id FROM logs").fetchall()
    found = {str(m): (i, c) for m, i, c in rows if str(m) in set(message_ids) and c}
    return found if len(found) == len(message_ids) else None


def acknowledgement(emu: DiscordEmulator, record: InteractionRecord) -> Call | None:
    calls = emu.calls.find(lambda c: c.path.startswith(f"/interactions/{record.id}/"))
    return calls[0] if calls else None


def answer_text(emu: DiscordEmulator, record: InteractionRecord) -> str | None:
    """What the member was finally shown: the immediate reply, or the follow-up after a deferral."""
    hook = f"/webhooks/{emu.application_id}/{record.token}"
    ack = acknowledgement(emu, record)
    if ack is not None and isinstance(ack.json, dict) and ack.json.get("type") in (4, 9):
        return interaction_text(ack) or str(ack.json.get("data"))
    later = emu.calls.find(lambda c: c.method in ("POST", "PATCH") and c.path.startswith(hook))
    return (interaction_text(later[0]) or str(later[0].json)) if later else None


async def test_every_interaction_is_acknowledged_while_another_process_holds_the_write_lock(
    stack: Stack,
) -> None:
    """The issue's case and its siblings: another process holds SQLite's write lock for ~9 s, a
    reply's log write is waiting for it, and then members use every command, the review buttons
    and the edit form. (The privacy commands are run by members who have not spoken in that
    channel: an opt-out of someone in the waiting reply's history would rightly refuse its log.) Each is acknowledged within Discord's 3 s (the emulator answers a late
    one 10062, as Discord does); reads are answered meanwhile; every write is done once the lock
    goes, and its member is told the outcome."""
    emu, db = stack.emu, stack.bot.db_path
    questions = [await stack.say("load-2", f"user0{i}", f"カードにする質問 {i}") for i in (1, 2, 3)]
    for q in questions:
        assert (await stack.answer(q, timeout=60)).kind == "reply"
    cards = await wait_until(
        lambda: carded(db, [q.message_id for q in questions]), 60, what="three review cards"
    )
    (approve_id, approve_card), (reject_id, reject_card), (edit_id, edit_card) = (
        cards[q.message_id] for q in questions
    )
    held = sqlite3.connect(db, timeout=10, isolation_level=None)
    try:
        held.execute("BEGIN IMMEDIATE")
        locked_at = time.monotonic()
        mark = emu.mark()
        hook = f"/webhooks/{webhook_id(emu, 'load-1')}/"
        waiting = await stack.say("load-1", "user05", "ロック中に答えてもらう質問")
        # Its reply is posted (replies do not wait for the database); its log write now waits.
        await emu.wait_for_call(lambda c: c.method == "POST" and c.path.startswith(hook), 30, since=mark)
        await asyncio.sleep(0.5)
        mark = emu.mark()
        records = {
            "status": await emu.slash_command("load-1", "moderator", "status"),
            "personas": await emu.slash_command("load-1", "user06", "personas"),
            "persona": await emu.slash_command("load-2", "moderator", "persona", {"persona": "marisa"}),
            "reset": await emu.slash_command("load-2", "user06", "reset"),
            "optout": await emu.slash_command("load-1", "user09", "optout"),
            "optin": await emu.slash_command("load-1", "user10", "optin"),
            "forget": await emu.slash_command("load-1", "user10", "forget"),
            "reload": await emu.slash_command("load-1", "moderator", "reload"),
            "approve": await emu.click_button(
                "review", "moderator", str(approve_card), f"oshaberi:review:approve:{approve_id}"
            ),
            "reject": await emu.click_button(
                "review", "moderator", str(reject_card), f"oshaberi:review:reject:{reject_id}"
            ),
            "edit": await emu.click_button(
                "review", "moderator", str(edit_card), f"oshaberi:review:edit:{edit_id}"
            ),
        }
        for name, record in records.items():
            ack = await emu.wait_for_call(
                lambda c, r=record: c.path.startswith(f"/interactions/{r.id}/"), 10, since=mark
            )
            assert ack.status < 300, f"{name} was not acknowledged in time: {ack.status} {ack.response}"
        assert records["edit"].responses[0]["type"] == 9  # the edit form opened
        records["edit-submit"] = await emu.submit_modal(
            "moderator", f"oshaberi:review:edit-submit:{edit_id}", {TEXT_INPUT_ID: "ロック中に直したぜ"}
        )
        ack = await emu.wait_for_call(
            lambda c: c.path.startswith(f"/interactions/{records['edit-submit'].id}/"), 10, since=mark
        )
        assert ack.status < 300, f"the edit form's submit was not acknowledged in time: {ack.response}"
        # Reads did not queue behind the waiting write: their answers are already there.
        assert "**Queue**" in (answer_text(emu, records["status"]) or "")
        assert answer_text(emu, records["personas"]) is not None
        assert logged(db, [waiting.message_id]) == {}  # the lock really is still held
        assert time.monotonic() - locked_at < 9.0
        await asyncio.sleep(max(0.0, 9.0 - (time.monotonic() - locked_at)))
    finally:
        if held.in_transaction:
            held.execute("COMMIT")
        held.close()

    def told(name: str) -> str | None:
        return answer_text(emu, records[name])

    for name, expected in {
        "persona": "now answers every message",
        "reset": "is forgotten",
        "optout": "You are opted out",
        "optin": "You are opted in",
        "forget": "Deleted",
        "reload": "Reloaded",
    }.items():
        text = await wait_until(lambda n=name: told(n), 60, what=f"the answer to /{name}")
        assert expected in text, f"/{name} answered {text!r}"
    # The waiting log write was kept and done, and every decision recorded once.
    await wait_until(lambda: logged(db, [waiting.message_id]), 60, what="the waiting reply's log row")

    def decisions() -> dict[int, tuple[str, str | None]] | None:
        with closing(sqlite3.connect(db, timeout=10)) as conn:
            rows = conn.execute(
                "SELECT id, decision, edited_text FROM logs WHERE id IN (?, ?, ?)",
                (approve_id, reject_id, edit_id),
            ).fetchall()
        found = {i: (d, e) for i, d, e in rows if d}
        return found if len(found) == 3 else None

    assert await wait_until(decisions, 60, what="the three decisions") == {
        approve_id: ("approved", None),
        reject_id: ("rejected", None),
        edit_id: ("edited", "ロック中に直したぜ"),
    }
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        prefs = dict(conn.execute("SELECT user_id, opted_out FROM user_prefs").fetchall())
    assert prefs[int(emu.user_id("user09"))] == 1 and prefs[int(emu.user_id("user10"))] == 0
    assert "10062" not in stack.bot.log_text()


async def test_reads_that_do_not_come_back_get_busy_try_again_in_time(stack: Stack) -> None:
    """Reads stall (tests/e2e/faultinject: a stalled disk, a WAL recovery): what must read before
    its first response (/status, /personas, the Edit button) answers within 3 s with what it can
    and a clear "busy, try again"; a message sent meanwhile is answered once reads come back."""
    emu = stack.emu
    cards = await wait_until(lambda: carded_undecided(stack.bot.db_path), 60, what="an undecided card")
    log_id, card_id = cards
    stall = stack.bot.stall_reads_file
    stall.touch()
    try:
        mark = emu.mark()
        status = await emu.slash_command("load-1", "moderator", "status")
        personas = await emu.slash_command("load-1", "user06", "personas")
        edit = await emu.click_button("review", "moderator", str(card_id), f"oshaberi:review:edit:{log_id}")
        meanwhile = await stack.say("load-1", "user06", "読めないあいだの質問")
        for record in (status, personas, edit):
            ack = await emu.wait_for_call(
                lambda c, r=record: c.path.startswith(f"/interactions/{r.id}/"), 10, since=mark
            )
            assert ack.status < 300 and ack.json["type"] == 4, ack.response  # answered, in time
        status_text = answer_text(emu, status) or ""
        assert "**Queue**" in status_text and "database is busy" in status_text and "try again" in status_text
        footer = personas.responses[0]["data"]["embeds"][0]["footer"]["text"]
        assert "database is busy" in footer and "try again" in footer
        assert "marisa" in str(personas.responses[0]["data"]["embeds"][0]["fields"])  # the list still shown
        edit_text = answer_text(emu, edit) or ""
        assert "database is busy" in edit_text and "try again" in edit_text
        assert stack.book.final(meanwhile.message_id) is None
    finally:
        stall.unlink(missing_ok=True)
    assert (await stack.answer(meanwhile, timeout=60)).kind == "reply"
    _, text = await run_command(emu, "load-1", "moderator", "status")
    assert "awaiting a decision" in text and "busy" not in text
    record, _ = await click(emu, "review", "moderator", str(card_id), f"oshaberi:review:edit:{log_id}")
    assert record.responses[0]["type"] == 9  # the form opens once the database answers again


def carded_undecided(db: Path) -> tuple[int, int] | None:
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        row = conn.execute(
            "SELECT id, review_message_id FROM logs WHERE decision IS NULL AND review_message_id IS NOT NULL "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else None


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
