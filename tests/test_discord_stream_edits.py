"""Streamed replies through the real bot and the loopback emulator (fake runtime, webhooks on)
when Discord refuses their last round: a thread archived mid-stream (50083), a 429 storm, a
webhook whose messages cannot be edited, a reply a moderator deleted, several replies sharing one
webhook. What the channel shows and what the log row holds never disagree."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.discord_emulator import Call
from tests.e2e.inprocess import EmulatedBot, emulated_bot
from tests.fake_runtime import Script

PIECES = ["今日は", "とても", "いい天気", "だぜ！", "散歩", "しよう", "ぜ。"]
FINAL = "".join(PIECES)
WEBHOOK_MESSAGE = r"^/webhooks/\d+/[^/]+/messages/\d+"
ARCHIVED = {"status": 400, "code": 50083, "message": "Thread is archived"}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(
        tmp_path,
        discord_settings={"use_webhooks": True},
        chat_settings={"stream_replies": True, "stream_edit_interval_s": 0.1},
    ) as harness:
        harness.bot.get_cog("Chat").position_poll_s = 0.01
        await harness.store.set_channel_persona(harness.chat, "marisa")
        yield harness


def persona_messages(h: EmulatedBot) -> list[str]:
    """What the channel shows from the persona now (its webhook's messages still there)."""
    return [m.content for m in h.present("chat") if m.source == "webhook"]


async def row(h: EmulatedBot, n: int = 1):
    await h.settle()
    item = await h.store.get_review(n)
    assert item is not None, "no log row"
    return item


async def start_streaming(h: EmulatedBot, pieces=PIECES, gap_s: float = 0.15, user: str = "member") -> int:
    """A member asks; returns once the first streamed post is up (the reply still being written)."""
    h.fake_chat.scripts.append(Script(pieces=list(pieces), piece_gap_s=gap_s))
    mark = h.emu.mark()
    payload = await h.emu.send_message("chat", user, "散歩しない？")
    await h.emu.wait_for_call(
        lambda c: c.method == "POST" and c.path.startswith("/webhooks/") and c.status == 200, since=mark
    )
    return int(payload["id"])


async def test_a_reply_that_streams_normally_is_shown_and_logged_alike(h: EmulatedBot) -> None:
    await start_streaming(h)
    item = await row(h)
    assert persona_messages(h) == [FINAL] and item.reply == FINAL
    assert "shown" not in item.params and item.reply_message_id == int(h.present("chat")[-1].id)


async def test_edits_refused_for_good_are_replaced_by_the_whole_reply(h: EmulatedBot) -> None:
    """The webhook's messages cannot be edited any more (50083 on every edit): the draft is
    deleted and the final text posted whole, so the channel shows exactly the logged reply."""
    await start_streaming(h)
    h.emu.fail_next("PATCH", WEBHOOK_MESSAGE, count=99, **ARCHIVED)
    item = await row(h)
    assert persona_messages(h) == [FINAL] and item.reply == FINAL and "shown" not in item.params
    shown = [m for m in h.present("chat") if m.source == "webhook"]
    assert item.reply_message_id == int(shown[0].id)


async def test_a_thread_archived_mid_stream_leaves_a_draft_and_the_row_says_so(h: EmulatedBot) -> None:
    """Edits, deletes and posts all refused (an archived thread): the draft stays, and the row
    and its review card say that members see only that draft."""
    await start_streaming(h)
    for method, path in (
        ("PATCH", WEBHOOK_MESSAGE),
        ("DELETE", WEBHOOK_MESSAGE),
        ("POST", r"^/webhooks/\d+/[^/]+$"),
    ):
        h.emu.fail_next(method, path, count=99, **ARCHIVED)
    h.emu.fail_next("POST", r"^/channels/\d+/messages$", count=99, **ARCHIVED)
    item = await row(h)
    [draft] = persona_messages(h)
    assert draft != FINAL and FINAL.startswith(draft)
    assert item.params["shown"] == "partial" and item.params["shown_text"] == draft
    assert item.reply == FINAL and item.reply_message_id == int(h.present("chat")[-1].id)
    h.emu.clear_faults()
    await h.bot.reviews.poller()
    [card] = h.sent("review")
    fields = {f["name"]: f["value"] for f in card.payload["embeds"][0]["fields"]}
    assert draft in fields["⚠ Shown in part"]


async def test_a_429_storm_on_the_final_edit_is_waited_out(h: EmulatedBot) -> None:
    await start_streaming(h)
    h.emu.fail_next("PATCH", WEBHOOK_MESSAGE, 429, retry_after=0.05, count=12)
    item = await row(h)
    assert persona_messages(h) == [FINAL] and item.reply == FINAL and "shown" not in item.params
    assert [c for c in h.calls() if c.injected and c.status == 429]


async def test_a_reply_a_moderator_deleted_mid_stream_is_logged_as_not_shown(h: EmulatedBot) -> None:
    await start_streaming(h, gap_s=0.2)
    [posted] = [m for m in h.present("chat") if m.source == "webhook"]
    await h.emu.delete_message("chat", posted.id)
    item = await row(h)
    assert persona_messages(h) == []  # not posted again
    assert item.params["shown"] == "none" and item.reply_message_id is None
    await h.bot.reviews.poller()
    [card] = h.sent("review")
    assert any(f["name"] == "⚠ Not shown" for f in card.payload["embeds"][0]["fields"])


async def test_a_whole_reply_discord_refuses_is_logged_as_not_shown_and_leaves_no_half(
    h: EmulatedBot,
) -> None:
    h.set_chat(stream_replies=False)
    h.fake_chat.scripts.append(Script(reply="一つ目の文。" * 400))  # two messages' worth
    h.emu.fail_next(
        "POST", r"^/webhooks/\d+/[^/]+$", count=99, status=403, code=50013, message="Missing Permissions"
    )
    # the bot's own fallback gets the first chunk out, then is refused
    h.emu.fail_next("POST", r"^/channels/\d+/messages$", count=5, status=403, code=50013, skip=1)
    await h.say("長い話して")
    item = await row(h)
    assert [m for m in h.present("chat") if m.source == "bot" and "一つ目" in m.content] == []  # no half left
    assert item.params["shown"] == "none" and item.reply_message_id is None


async def test_replies_sharing_one_webhook_stay_within_its_limit_and_all_finish(h: EmulatedBot) -> None:
    warm = await start_streaming(h, pieces=["よう"], gap_s=0.0)  # makes the channel's webhook
    await h.settle()
    assert warm
    mark = h.emu.mark()
    pieces = [f"{i}番目、" for i in range(20)]
    for user in ("member", "member2", "moderator"):
        h.fake_chat.scripts.append(Script(pieces=pieces, piece_gap_s=0.05))
        await h.emu.send_message("chat", user, "みんなで話そう")
    await h.settle(timeout=30)
    final = "".join(pieces)
    assert persona_messages(h).count(final) == 3
    items = [await h.store.get_review(n) for n in (2, 3, 4)]
    assert all(i is not None and i.reply == final and "shown" not in i.params for i in items)
    hook: list[Call] = [
        c for c in h.calls(mark) if c.path.startswith("/webhooks/") and c.method in ("POST", "PATCH")
    ]
    times = sorted(c.at for c in hook)
    for i in range(len(times) - 4):
        assert times[i + 4] - times[i] >= 2.0 * 0.9, "more than 4 webhook requests in 2 s"
