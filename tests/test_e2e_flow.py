"""End to end, the main path: ``python -m bot`` (unmodified, on a tiny model) against the Discord
API emulator. ``/persona marisa`` arrives as an INTERACTION_CREATE; a user's message is answered
through the channel's webhook under the persona's name; a review card appears; a moderator's
Approve click is recorded; ``python -m trainer export-reviews`` then contains the dialogue.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.e2e.stack import Stack, running_stack
from tests.e2e.world import click, run_command, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tiny_neox: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path_factory.mktemp("e2e-flow"), tiny_neox) as s:
        yield s


def card_buttons(payload: dict) -> list[dict]:
    return [b for row in payload.get("components") or [] for b in row["components"]]


async def test_persona_reply_review_approve_export(stack: Stack, tmp_path: Path) -> None:
    emu, chat, review = stack.emu, stack.world.channel_id("chat"), stack.world.channel_id("review")

    # /persona marisa reaches the bot as an INTERACTION_CREATE over the gateway
    since = len(emu.gateway_log)
    record, text = await run_command(emu, "chat", "member", "persona", {"persona": "marisa"})
    assert "霧雨魔理沙" in text and "now answers every message" in text
    dispatched = emu.gateway_log.find(lambda r: r.kind == "send" and r.event == "INTERACTION_CREATE", since)
    assert [r.data["id"] for r in dispatched] == [record.id]
    assert emu.interaction(record.id).response_type == 5  # deferred first: a busy database may be slow

    # a member's message gets a reply through the webhook, as the persona, pinging nobody
    sent = await stack.say("chat", "member", "魔法って難しい？")
    answer = await stack.answer(sent, timeout=60)
    assert answer.kind == "reply"
    reply = emu.message(answer.answer_id)
    assert reply.source == "webhook" and reply.username == "霧雨魔理沙"
    assert reply.channel_id == chat and reply.content.strip()
    assert reply.allowed_mentions == {"parse": []}

    # its review card appears in the review channel with the three buttons for its log id
    cards = await wait_until(
        lambda: [m for m in emu.messages("review") if m.payload.get("embeds")], 30, what="a review card"
    )
    assert len(cards) == 1
    card = cards[0]
    log_id = card.payload["embeds"][0]["footer"]["text"].split("#")[1].split(" ")[0]
    assert [b["custom_id"] for b in card_buttons(card.payload)] == [
        f"oshaberi:review:{action}:{log_id}" for action in ("approve", "reject", "edit")
    ]
    assert card.payload["embeds"][0]["description"] == reply.content
    assert any(f["value"] == "魔法って難しい？" for f in card.payload["embeds"][0]["fields"])

    # a plain member may not decide; the moderator's Approve is recorded and shown on the card
    _, calls = await click(emu, review, "member", card.id, f"oshaberi:review:approve:{log_id}")
    assert calls[0].json["data"]["flags"] & 64 and "Only moderators" in calls[0].json["data"]["content"]
    _, calls = await click(emu, review, "moderator", card.id, f"oshaberi:review:approve:{log_id}")
    assert calls[0].json["type"] == 6  # deferred update at once, then the card is edited
    assert all(b["disabled"] for b in card_buttons(emu.message(card.id).payload))
    decision = next(f for f in emu.message(card.id).payload["embeds"][0]["fields"] if f["name"] == "Decision")
    assert "**approved**" in decision["value"] and emu.user_id("moderator") in decision["value"]

    # the trainer's export (another process, same database) contains the approved dialogue
    out = tmp_path / "marisa-reviewed.jsonl"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "trainer",
        "export-reviews",
        "--persona",
        "marisa",
        "-o",
        str(out),
        cwd=stack.bot.workdir,
        env=stack.bot.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, output.decode(errors="replace")
    [line] = out.read_text(encoding="utf-8").splitlines()
    dialogue = json.loads(line)
    assert dialogue["id"] == f"review:{log_id}" and dialogue["decision"] == "approved"
    assert [t["text"] for t in dialogue["turns"]] == ["魔法って難しい？", reply.content]
    stack.bot.assert_clean_log()


async def test_status_shows_queue_and_loop_lag_to_moderators(stack: Stack) -> None:
    _, text = await run_command(stack.emu, "chat", "member", "status")
    assert text == "Only moderators can use this command."
    _, text = await run_command(stack.emu, "chat", "moderator", "status")
    assert "**Queue**: 0/32 waiting" in text
    assert "**Event loop**: lag p50" in text
    assert "**Reviews**:" in text


async def test_other_channels_and_direct_messages_are_ignored(stack: Stack) -> None:
    """Outside allowed channels, and in DMs, the bot says nothing, even when mentioned."""
    emu = stack.emu
    mark = emu.mark()
    mention = f"<@{emu.application_id}> 聞こえる？"
    await stack.say("offlimits", "member", mention)
    await stack.say(emu.dm_channel_id("member"), "member", mention)
    control = await stack.say("general", "member2", mention)  # the same, in an allowed channel
    assert (await stack.answer(control, timeout=60)).kind == "reply"
    await stack.settle(1.0)
    posted = [c for c in emu.calls.items[mark:] if c.method == "POST" and "/messages" in c.path]
    where = {c.path.split("/")[2] for c in posted if c.path.startswith("/channels/")}
    assert stack.world.channel_id("offlimits") not in where
    assert emu.dm_channel_id("member") not in where
