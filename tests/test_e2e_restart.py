"""End to end: the bot is restarted in the middle of a conversation (SIGTERM, as ``docker stop``
sends, then ``python -m bot`` again on the same database). The reply being generated and a
message arriving during the shutdown are told to retry; after the restart the channel's persona
still answers and the review card posted by the first process still takes a decision.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from tests.e2e.harness import SLOW_MARKER
from tests.e2e.stack import running_stack
from tests.e2e.world import click, run_command, wait_until


def review_cards(emu) -> list:
    return [m for m in emu.messages("review") if m.payload.get("embeds")]


async def test_restart_keeps_persona_and_pending_review_card(tiny_neox: Path, tmp_path: Path) -> None:
    async with running_stack(
        tmp_path, tiny_neox, fault_injection=True, shutdown_grace_s=1.0, slow_s=4.0
    ) as stack:
        emu, bot = stack.emu, stack.bot
        general, review = stack.world.channel_id("general"), stack.world.channel_id("review")

        # zundamon (not the default persona) answers in #persona-chat; its card is left undecided
        _, text = await run_command(emu, "chat", "member", "persona", {"persona": "zundamon"})
        assert "ずんだもん" in text
        first = await stack.say("chat", "member", "ずんだ餅は好き？")
        answer = await stack.answer(first)
        assert answer.kind == "reply" and emu.message(answer.answer_id).username == "ずんだもん"
        [card] = await wait_until(lambda: review_cards(emu), 30, what="the first review card")
        log_id = card.payload["embeds"][0]["footer"]["text"].split("#")[1].split(" ")[0]

        # a reply is being generated (slowly) when SIGTERM arrives; another message comes in
        # while the bot shuts down: both users are told to send again, nobody is left in silence
        mark = emu.mark()
        slow = await stack.say("general", "member2", f"<@{emu.application_id}> {SLOW_MARKER} 長い話をして")
        await emu.wait_for_call(lambda c: c.path == f"/channels/{general}/typing", 30, since=mark)
        stopping = asyncio.create_task(bot.stop())
        await asyncio.sleep(0.3)
        late = await stack.say("chat", "member", "まだいる？")
        assert await asyncio.wait_for(stopping, 90) == 0
        assert (await stack.answer(slow, timeout=5)).kind == "shutdown"
        assert (await stack.answer(late, timeout=5)).kind == "shutdown"

        # the same database, a new process
        await bot.start()
        again = await stack.say("chat", "member", "ただいま")
        answer = await stack.answer(again)
        assert answer.kind == "reply" and emu.message(answer.answer_id).username == "ずんだもん"

        # the card posted before the restart still works
        _, calls = await click(emu, review, "moderator", card.id, f"oshaberi:review:approve:{log_id}")
        assert calls[0].json["type"] == 6
        buttons = [b for row in emu.message(card.id).payload["components"] for b in row["components"]]
        assert all(b["disabled"] for b in buttons)
        with closing(sqlite3.connect(bot.db_path)) as db:
            decision = db.execute(
                "SELECT decision, decided_by FROM logs WHERE id = ?", (int(log_id),)
            ).fetchone()
            rows = db.execute("SELECT COUNT(*) FROM logs").fetchone()[0]
        assert decision == ("approved", int(emu.user_id("moderator")))

        # every logged reply has exactly one card: the restart did not post any twice
        await wait_until(lambda: len(review_cards(emu)) >= rows, 30, what="a card for every logged reply")
        await stack.settle(3.0)  # a poll round (review_poll_s = 2) after the restart
        footers = [m.payload["embeds"][0]["footer"]["text"] for m in review_cards(emu)]
        assert len(footers) == len(set(footers)) == rows == 2
        bot.assert_clean_log()
        assert bot.check_log().loop_lag is not None  # the first run logged its loop lag at shutdown
