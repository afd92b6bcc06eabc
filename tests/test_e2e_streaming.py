"""End to end, streamed replies: ``python -m bot`` against the Discord API emulator posts a reply
as soon as its first words exist and edits that message as it grows.

What arrives when comes from tests/e2e/faultinject/sitecustomize.py: a message containing
``E2E-SCRIPTED-REPLY`` is answered with pieces the test chose, at the pace it chose (a blocked
word split across pieces, a reply past 2,000 characters, a failure half-way). One message per
test is also answered by the real tiny model. Every assertion is on what the emulator recorded:
the REST calls (each POST and PATCH with its body and time) and the messages as they stand.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
import pytest_asyncio

from bot.text.splitter import split_message
from bot.text.wordfilter import WordFilter
from tests.discord_emulator import Call, DiscordEmulator
from tests.e2e.harness import FAULT_MARKER, SCRIPT_MARKER
from tests.e2e.stack import Stack, running_stack
from tests.e2e.world import run_command, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")
INTERVAL_S = 0.5
SHIPPED_WORDS = WordFilter.from_file()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tiny_neox: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(
        tmp_path_factory.mktemp("e2e-streaming"),
        tiny_neox,
        fault_injection=True,
        stream_edit_interval_s=INTERVAL_S,
    ) as s:
        _, text = await run_command(s.emu, "chat", "moderator", "persona", {"persona": "marisa"})
        assert "now answers" in text
        warm = await s.say("chat", "member", "よろしくね")  # creates the channel's webhook
        assert (await s.answer(warm)).kind == "reply"
        yield s
        s.bot.assert_clean_log(allowed_traceback=FAULT_MARKER)


def webhook_id(emu: DiscordEmulator) -> str:
    cid = emu.channel_id("chat")
    return next(h["id"] for h in emu.state.webhooks.values() if h["channel_id"] == cid)


def hook_calls(emu: DiscordEmulator, since: int, method: str | None = None) -> list[Call]:
    """Calls on the persona webhook since ``since``: POST (new message), PATCH (edit), DELETE."""
    prefix = f"/webhooks/{webhook_id(emu)}/"
    return [
        c
        for c in emu.calls.items[since:]
        if c.path.startswith(prefix) and (method is None or c.method == method)
    ]


def content(call: Call) -> str:
    return str((call.json or {}).get("content") or "")


def log_row(db: Path, message_id: str) -> dict | None:
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            "SELECT reply, status, reply_message_id FROM logs WHERE message_id = ?", (int(message_id),)
        ).fetchone()
    return dict(row) if row else None


async def logged(stack: Stack, message_id: str) -> dict:
    return await wait_until(lambda: log_row(stack.bot.db_path, message_id), 30, what="the log row")


async def test_a_streamed_reply_is_one_message_edited_a_bounded_number_of_times(stack: Stack) -> None:
    emu = stack.emu
    pieces = [f"{i}番目の言葉、" for i in range(40)]  # 40 pieces over about 2 s
    stack.bot.script_reply(pieces, gap_s=0.05)
    mark = emu.mark()
    sent = await stack.say("chat", "member", f"{SCRIPT_MARKER} ゆっくり話して")
    answer = await stack.answer(sent, timeout=60)
    row = await logged(stack, sent.message_id)

    posts, edits = hook_calls(emu, mark, "POST"), hook_calls(emu, mark, "PATCH")
    assert len(posts) == 1 and str(posts[0].response["id"]) == answer.answer_id
    assert all(c.path.endswith(f"/messages/{answer.answer_id}") for c in edits)
    # posted early (the first words, not the whole reply), then edited as it grew
    assert len(content(posts[0])) < len(row["reply"])
    assert edits[-1].at - posts[0].at >= 1.0
    generation_s = 40 * 0.05
    assert 2 <= len(edits) <= generation_s / INTERVAL_S + 3
    gaps = [b.at - a.at for a, b in zip([posts[0], *edits], edits, strict=False)]
    assert min(gaps) >= INTERVAL_S * 0.9  # never more than one edit per interval
    texts = [content(c) for c in [posts[0], *edits]]
    assert all(row["reply"].startswith(t) for t in texts)  # each state a start of the reply
    # the final text is the log row's, and the review card's
    reply = emu.message(answer.answer_id)
    assert reply.content == row["reply"] == "".join(pieces) and row["reply_message_id"] == int(reply.id)
    assert reply.allowed_mentions == {"parse": []}
    assert all((c.json or {}).get("allowed_mentions") == {"parse": []} for c in edits)
    cards = await wait_until(
        lambda: [
            m
            for m in emu.messages("review")
            if m.payload.get("embeds") and m.payload["embeds"][0].get("description") == row["reply"]
        ],
        30,
        what="the review card of the final text",
    )
    assert len(cards) == 1
    # typing showed until the first words were up
    typing = emu.calls.find(lambda c: c.path == f"/channels/{emu.channel_id('chat')}/typing", mark)
    assert typing and typing[0].at <= posts[0].at


async def test_the_tiny_models_streamed_reply_ends_as_its_log_row(stack: Stack) -> None:
    emu = stack.emu
    mark = emu.mark()
    sent = await stack.say("chat", "member2", "魔法の話を聞かせて")
    answer = await stack.answer(sent, timeout=60)
    row = await logged(stack, sent.message_id)
    assert emu.message(answer.answer_id).content == row["reply"]
    assert len(hook_calls(emu, mark, "POST")) == 1


async def test_429_on_an_edit_is_waited_out(stack: Stack) -> None:
    """discord.py waits out a 429 itself and retries; when it gives up after five, the bot's
    own pacing waits Retry-After before the next edit. Either way the reply ends complete."""
    emu = stack.emu
    hook = webhook_id(emu)
    pieces = [f"{i}つ目。" for i in range(50)]  # about 5 s
    stack.bot.script_reply(pieces, gap_s=0.1)
    mark = emu.mark()
    fault = emu.fail_next("PATCH", rf"^/webhooks/{hook}/[^/]+/messages/\d+$", 429, retry_after=0.3, count=5)
    sent = await stack.say("chat", "member", f"{SCRIPT_MARKER} 混んでるね")
    answer = await stack.answer(sent, timeout=60)
    row = await logged(stack, sent.message_id)
    assert fault.hits == 5
    edits = hook_calls(emu, mark, "PATCH")
    statuses = [c.status for c in edits]
    assert statuses[:5] == [429] * 5 and statuses[5:] and all(s == 200 for s in statuses[5:])
    refused = edits[:5]
    assert all(b.at - a.at >= 0.3 * 0.9 for a, b in itertools.pairwise(refused))
    # discord.py gave up after the fifth; the next edit came no sooner than its Retry-After
    retry_after = 1.0  # the emulator's Retry-After header: 0.3 s rounded up to whole seconds
    assert edits[5].at - refused[-1].at >= retry_after * 0.9
    assert len(hook_calls(emu, mark, "POST")) == 1  # no duplicate message after the 429s
    assert emu.message(answer.answer_id).content == row["reply"] == "".join(pieces)


async def test_a_blocked_word_never_appears_in_any_recorded_edit(stack: Stack) -> None:
    emu = stack.emu
    pieces = ["今日は", "いい天気", "だね。", "でも", "死", "ね", "なんて", "言わないよ"]
    stack.bot.script_reply(pieces, gap_s=0.3)
    mark = emu.mark()
    sent = await stack.say("chat", "member", f"{SCRIPT_MARKER} 天気はどう？")
    answer = await stack.answer(sent, timeout=60)
    assert answer.kind == "refused" and "held back for a moderator" in answer.text
    row = await logged(stack, sent.message_id)
    assert row["status"] == "blocked" and "死ね" in row["reply"]
    shown = [content(c) for c in hook_calls(emu, mark) if c.method in ("POST", "PATCH")]
    assert shown, "the clean start of the reply should have been shown"
    for text in shown:
        assert SHIPPED_WORDS.check(text) == [] and not text.endswith("死"), text
    # the partial reply is gone, and its log row points at nothing posted
    posted = [str(c.response["id"]) for c in hook_calls(emu, mark, "POST")]
    assert all(emu.message(mid).deleted for mid in posted)
    assert row["reply_message_id"] is None


async def test_a_reply_past_2000_characters_continues_in_a_new_message(stack: Stack) -> None:
    emu = stack.emu
    pieces = [f"これは長い返事の{i:03d}番目の文で、まだまだ続きます。" for i in range(100)]
    assert len("".join(pieces)) == 2600
    stack.bot.script_reply(pieces, gap_s=0.02)
    mark = emu.mark()
    sent = await stack.say("chat", "member", f"{SCRIPT_MARKER} 長い話をして")
    await stack.answer(sent, timeout=60)
    row = await logged(stack, sent.message_id)
    posts = hook_calls(emu, mark, "POST")
    messages = [emu.message(c.response["id"]) for c in posts]
    assert len(messages) == 2 and not any(m.deleted for m in messages)
    assert [m.content for m in messages] == split_message(row["reply"], 2000 - len("**霧雨魔理沙**: "))
    assert all(len(content(c)) <= 2000 for c in hook_calls(emu, mark) if c.method in ("POST", "PATCH"))
    assert row["reply"] == "".join(pieces) and row["reply_message_id"] == int(messages[0].id)


async def test_deleting_the_question_mid_stream_withdraws_the_reply(stack: Stack) -> None:
    emu = stack.emu
    stack.bot.script_reply([f"{i}、" for i in range(60)], gap_s=0.1)  # about 6 s
    mark = emu.mark()
    sent = await stack.say("chat", "member", f"{SCRIPT_MARKER} やっぱりやめる")
    first = await emu.wait_for_call(
        lambda c: c.method == "POST" and c.path.startswith(f"/webhooks/{webhook_id(emu)}/"), 30, since=mark
    )
    await emu.delete_message("chat", sent.message_id)
    partial = str(first.response["id"])
    await wait_until(lambda: emu.message(partial).deleted, 30, what="the partial reply deleted")
    await stack.settle(1.5)
    assert stack.book.final(sent.message_id) is None  # no notice, no reply
    assert len(hook_calls(emu, mark, "POST")) == 1
    assert log_row(stack.bot.db_path, sent.message_id) is None


async def test_a_failure_mid_stream_leaves_a_clear_notice_not_a_truncated_reply(stack: Stack) -> None:
    emu = stack.emu
    stack.bot.script_reply([f"{i}番、" for i in range(30)], gap_s=0.1, fail_after=15)
    mark = emu.mark()
    sent = await stack.say("chat", "member", f"{SCRIPT_MARKER} 途中で壊れる")
    answer = await stack.answer(sent, timeout=60)
    assert answer.kind == "error" and answer.text.startswith("Sorry, no reply this time:")
    posted = [str(c.response["id"]) for c in hook_calls(emu, mark, "POST")]
    assert posted, "the first words should have been shown before the failure"
    await wait_until(lambda: all(emu.message(m).deleted for m in posted), 10, what="partial deleted")
    assert log_row(stack.bot.db_path, sent.message_id) is None


async def test_the_plain_reply_fallback_streams_too(stack: Stack) -> None:
    """The webhook refuses (403): the reply is posted as the bot, replying to the question, and
    that message is edited as it grows."""
    emu = stack.emu
    chat = emu.channel_id("chat")
    pieces = [f"{i}本目の道、" for i in range(30)]
    stack.bot.script_reply(pieces, gap_s=0.06)
    mark = emu.mark()
    emu.fail_next("POST", rf"^/webhooks/{webhook_id(emu)}/[^/]+$", 403)
    sent = await stack.say("chat", "member", f"{SCRIPT_MARKER} 別の道で")
    answer = await stack.answer(sent, timeout=60)
    row = await logged(stack, sent.message_id)
    reply = emu.message(answer.answer_id)
    assert reply.source == "bot" and reply.content == "**霧雨魔理沙**: " + row["reply"]
    assert str(reply.payload["message_reference"]["message_id"]) == sent.message_id
    edits = [
        c for c in emu.calls.items[mark:] if c.method == "PATCH" and c.path.startswith(f"/channels/{chat}/")
    ]
    assert edits and all(c.path.endswith(f"/messages/{reply.id}") for c in edits)
    assert all(content(c).startswith("**霧雨魔理沙**: ") for c in edits)
    assert all((c.json or {}).get("allowed_mentions") == {"parse": []} for c in edits)
    assert row["reply_message_id"] == int(reply.id)
    again = await stack.say("chat", "member", "次は？")  # the webhook is used again afterwards
    assert emu.message((await stack.answer(again, timeout=60)).answer_id).source == "webhook"


async def test_streaming_off_posts_the_whole_reply_once(
    tiny_neox: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    async with running_stack(
        tmp_path_factory.mktemp("e2e-no-stream"), tiny_neox, fault_injection=True, stream_replies=False
    ) as s:
        emu = s.emu
        _, text = await run_command(emu, "chat", "moderator", "persona", {"persona": "marisa"})
        assert "now answers" in text
        pieces = [f"{i}番目、" for i in range(20)]
        s.bot.script_reply(pieces, gap_s=0.05)
        mark = emu.mark()
        sent = await s.say("chat", "member", f"{SCRIPT_MARKER} まとめて話して")
        answer = await s.answer(sent, timeout=60)
        row = await logged(s, sent.message_id)
        assert hook_calls(emu, mark, "PATCH") == []
        posts = hook_calls(emu, mark, "POST")
        assert len(posts) == 1 and content(posts[0]) == row["reply"] == "".join(pieces)
        assert emu.message(answer.answer_id).content == row["reply"]
        s.bot.assert_clean_log()
