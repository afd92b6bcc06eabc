"""Review cards: buttons and the Edit modal as Discord delivers them (the real bot against the
loopback emulator), permission checks, the double-click race, restarts, and posting items other
processes queued."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest

from bot.discord.review_views import (
    BUTTON_TEMPLATE,
    EditModal,
    ReviewButton,
    card_ids_in,
    custom_id,
    review_embed,
    review_view,
    submitted_text,
)
from bot.store.store import LogEntry, Store
from tests.discord_emulator import Call, DiscordEmulator
from tests.e2e.inprocess import TOKEN, EmulatedBot, Interaction, emulated_bot

TEXT_INPUT = "oshaberi:review:edited-text"


def second_moderator(emu: DiscordEmulator) -> None:
    """A second member with the moderator role, for two moderators clicking at once."""
    emu.state.add_user("moderator2", None, "jiro_mod", global_name="次郎")
    emu.state.add_member(emu.state.user_keys["moderator2"], roles=["moderator"])


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(tmp_path, world=second_moderator) as harness:
        yield harness


async def logged_reply(h: EmulatedBot, reply: str = "元気だぜ") -> int:
    log_id = await h.store.log_reply(
        LogEntry(
            guild_id=int(h.emu.guild_id),
            channel_id=h.chat,
            message_id=1,
            user_id=h.alice,
            persona_id="marisa",
            adapter_version="v1",
            prompt="ユーザー: やあ\n魔理沙: ",
            user_text="やあ",
            reply=reply,
            params={"temperature": 0.7},
            latency_ms=900,
        )
    )
    assert log_id is not None
    return log_id


async def card_of(h: EmulatedBot, log_id: int) -> int:
    """Post ``log_id``'s review card the way the bot does after a reply; returns its message id."""
    await h.bot.reviews.post_new(log_id)
    [card] = h.sent("review")
    return int(card.id)


def card_updates(answer: Interaction) -> list[Call]:
    """Edits of the card after a deferred acknowledgement (PATCH .../messages/@original)."""
    return [c for c in answer.calls if c.method == "PATCH" and c.path.endswith("/messages/@original")]


def card_update(answer: Interaction) -> dict:
    updates = card_updates(answer)
    assert updates, "the card was not updated"
    return updates[-1].json


def buttons_of(update: dict) -> list[dict]:
    return [c for row in update["components"] for c in row["components"]]


def test_card_buttons_carry_the_log_id() -> None:
    view = review_view(42)
    ids = [item.item.custom_id for item in view.children]
    assert ids == ["oshaberi:review:approve:42", "oshaberi:review:reject:42", "oshaberi:review:edit:42"]
    assert all(item.item.disabled is False for item in view.children)
    assert all(item.item.disabled for item in review_view(42, decided=True).children)


async def test_approve_records_once_and_disables_the_card(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    answer = await h.click(await card_of(h, log_id), custom_id("approve", log_id), user="moderator")
    item = await h.store.get_review(log_id)
    assert item.decision == "approved" and item.decided_by == h.mod
    update = card_update(answer)
    assert all(b["disabled"] for b in buttons_of(update))
    fields = {f["name"]: f["value"] for f in update["embeds"][0]["fields"]}
    assert f"<@{h.mod}>" in fields["Decision"] and "approved" in fields["Decision"]
    assert update["allowed_mentions"]["parse"] == []
    assert [r.log_id for r in await h.exported()] == [log_id]


async def test_reject(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    await h.click(await card_of(h, log_id), custom_id("reject", log_id), user="moderator")
    assert (await h.store.get_review(log_id)).decision == "rejected"
    assert await h.exported() == []


async def test_non_moderators_get_an_ephemeral_refusal(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    card = await card_of(h, log_id)
    for action in ("approve", "reject", "edit"):
        answer = await h.click(card, custom_id(action, log_id), user="member")
        assert answer.ephemeral and "Only moderators" in answer.callback["data"]["content"]
    assert (await h.store.get_review(log_id)).decision is None


async def test_forged_modal_submit_from_a_non_moderator_is_refused(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    # No modal was opened for the member: the emulator forges the submit in the review channel.
    mark = h.emu.mark()
    record = await h.emu.submit_modal(
        "member", f"oshaberi:review:edit-submit:{log_id}", {TEXT_INPUT: "乗っ取り"}, channel_id="review"
    )
    await h.received("interaction", lambda i: i.id == int(record.id))
    await h.settle()
    assert "Only moderators" in Interaction(h.emu, record, mark).text
    assert (await h.store.get_review(log_id)).decision is None


async def test_edit_opens_a_prefilled_modal_and_the_edit_is_the_approved_reply(h: EmulatedBot) -> None:
    log_id = await logged_reply(h, "元の返事だぜ")
    card = await card_of(h, log_id)
    opened = await h.click(card, custom_id("edit", log_id), user="moderator")
    modal = opened.callback
    assert modal["type"] == 9  # MODAL
    inputs = [c for row in modal["data"]["components"] for c in row.get("components", [row.get("component")])]
    assert inputs[0]["value"] == "元の返事だぜ"
    answer = await h.submit_modal(
        modal["data"]["custom_id"], {TEXT_INPUT: "直した返事だぜ"}, user="moderator"
    )
    item = await h.store.get_review(log_id)
    assert item.decision == "edited" and item.edited_text == "直した返事だぜ"
    [row] = await h.exported()
    assert row.reply == "直した返事だぜ" and row.original_reply == "元の返事だぜ"
    assert all(b["disabled"] for b in buttons_of(card_update(answer)))


async def test_empty_edit_is_not_recorded(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    opened = await h.click(await card_of(h, log_id), custom_id("edit", log_id), user="moderator")
    answer = await h.submit_modal(opened.callback["data"]["custom_id"], {TEXT_INPUT: "   "}, user="moderator")
    assert "empty" in answer.text
    assert (await h.store.get_review(log_id)).decision is None


async def test_double_click_race_produces_one_decision(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    card = await card_of(h, log_id)
    mark = h.emu.mark()
    # Both are on the gateway before the bot handles either, as two moderators clicking at once.
    first = await h.emu.click_button("review", "moderator", card, custom_id("approve", log_id))
    second = await h.emu.click_button("review", "moderator2", card, custom_id("reject", log_id))
    for record in (first, second):
        await h.received("interaction", lambda i, r=record: i.id == int(r.id))
    await h.settle()
    item = await h.store.get_review(log_id)
    assert item.decision in ("approved", "rejected")
    winner = h.mod if item.decision == "approved" else h.user("moderator2")
    assert item.decided_by == winner
    # both cards now show the one decision; the loser is told privately who decided
    answers = [Interaction(h.emu, r, mark) for r in (first, second)]
    assert [a.callback["type"] for a in answers] == [6, 6]  # both acknowledged at once
    updates = [u for a in answers for u in card_updates(a)]
    assert len(updates) == 2
    for update in updates:
        fields = {f["name"]: f["value"] for f in update.json["embeds"][0]["fields"]}
        assert f"<@{winner}>" in fields["Decision"] and item.decision in fields["Decision"]
    told = [
        c.json
        for a in answers
        for c in a.calls
        if c.method == "POST" and "Already decided" in str((c.json or {}).get("content"))
    ]
    assert len(told) == 1
    assert int(told[0].get("flags") or 0) & 64 and f"<@{winner}>" in told[0]["content"]


async def test_edit_after_a_decision_is_refused(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    card = await card_of(h, log_id)
    await h.store.decide(log_id, h.bob, "rejected")
    answer = await h.click(card, custom_id("edit", log_id), user="moderator")
    text = answer.callback["data"]["content"]
    assert answer.ephemeral and "Already decided" in text and "rejected" in text


async def test_buttons_and_modal_work_after_a_restart(tmp_path: Path) -> None:
    """A card posted by one bot process is decided through a fresh process on the same database."""
    async with DiscordEmulator(token=TOKEN) as emu:
        async with emulated_bot(tmp_path, emu=emu) as first:
            await first.store.set_channel_persona(first.chat, "marisa")
            await first.say("再起動前")
            log_id = 1
            card = (await first.store.get_review(log_id)).review_message_id
            assert card is not None
        async with emulated_bot(tmp_path, emu=emu) as second:
            opened = await second.click(card, custom_id("edit", log_id), user="moderator")
            await second.submit_modal(
                opened.callback["data"]["custom_id"], {TEXT_INPUT: "再起動後に直した"}, user="moderator"
            )
            item = await second.store.get_review(log_id)
            assert item.decision == "edited" and item.edited_text == "再起動後に直した"


async def test_dynamic_item_parses_its_custom_id() -> None:
    match = re.fullmatch(BUTTON_TEMPLATE, "oshaberi:review:reject:9007199254740993")
    item = await ReviewButton.from_custom_id(None, None, match)
    assert (item.action, item.log_id) == ("reject", 9007199254740993)
    assert re.fullmatch(BUTTON_TEMPLATE, "oshaberi:review:delete:1") is None
    assert re.fullmatch(BUTTON_TEMPLATE, "oshaberi:review:approve:1; DROP") is None


async def test_deleted_item_says_so(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    card = await card_of(h, log_id)
    await h.store.forget_user(h.alice)
    answer = await h.click(card, custom_id("approve", log_id), user="moderator")
    update = card_update(answer)
    assert "no longer exists" in update["content"]
    assert update.get("components") == []
    # the card is an empty notice now: a click on another copy of its buttons still says so
    other = await h.bot.get_channel(h.review).send("copy", view=review_view(log_id))
    answer = await h.click(other.id, custom_id("edit", log_id), user="moderator")
    assert "no longer exists" in answer.callback["data"]["content"]


# -- posting cards -------------------------------------------------------------------------------------


async def test_poller_posts_trainer_candidates_once(h: EmulatedBot) -> None:
    cand = await h.store.add_candidate("zundamon", "ずんだ餅って何？", "枝豆の餅なのだ", "prompt", "v2", {})
    review = h.bot.reviews
    await review.poller()
    [card] = h.sent("review")
    embed = card.payload["embeds"][0]
    assert "ずんだもん" in embed["title"] and "枝豆の餅なのだ" in embed["description"]
    assert (await h.store.get_review(cand)).review_message_id == int(card.id)
    await review.poller()
    assert h.sent("review") == []


async def test_a_failed_post_is_retried(h: EmulatedBot, monkeypatch) -> None:
    await h.store.add_candidate("marisa", "q", "a", "p", None, {})
    original = discord.TextChannel.send
    failures = {"left": 1}

    async def flaky(self, *args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise discord.HTTPException(type("R", (), {"status": 500, "reason": "x"})(), "boom")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(discord.TextChannel, "send", flaky)
    review = h.bot.reviews
    await review.poller()
    assert h.sent("review") == []
    await review.poller()
    assert len(h.sent("review")) == 1


async def test_restart_reconciles_cards_posted_but_not_recorded(tmp_path: Path) -> None:
    """The last run posted a card and died before recording it: the card is adopted, not reposted."""
    async with DiscordEmulator(token=TOKEN) as emu:
        async with emulated_bot(tmp_path, emu=emu) as last_run:
            log_id = await last_run.store.add_candidate("marisa", "q", "a", "p", None, {})
            assert await last_run.store.claim_review(log_id)  # the dead run's claim
            channel = last_run.bot.get_channel(last_run.review)
            stored = await channel.send("card from the last run", view=review_view(log_id))
        async with emulated_bot(tmp_path, emu=emu) as h:
            # the poll at start-up (done when emulated_bot yields) reconciled before posting anything
            await h.bot.reviews.poller()
            assert [m.id for m in h.sent("review")] == [str(stored.id)]  # not posted again
            assert (await h.store.get_review(log_id)).review_message_id == stored.id


async def test_card_ids_in_reads_buttons(h: EmulatedBot) -> None:
    sent = await h.bot.get_channel(h.review).send("card", view=review_view(77))
    message = await h.bot.get_channel(h.review).fetch_message(sent.id)  # as Discord sends it back
    assert card_ids_in(message) == {77}


def test_submitted_text_finds_nested_inputs() -> None:
    label_layout = {"components": [{"type": 18, "component": {"custom_id": "t", "value": "v"}}]}
    assert submitted_text(label_layout, "t") == "v"
    assert submitted_text({"components": []}, "t") is None


async def test_modal_is_not_kept_by_discord_py() -> None:
    modal = EditModal(5, "x" * 5000)
    modal.stop()
    assert modal.is_finished()
    assert len(modal.text.default) == 4000


async def test_cards_bound_their_texts(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "cards.sqlite3")
    try:
        log_id = await store.log_reply(
            LogEntry(1, 2, 3, 4, "marisa", "v1", "p", "やあ", "長い" * 3000, params={"temperature": 0.7})
        )
        item = await store.get_review(log_id)
    finally:
        await store.close()
    embed = review_embed(item)
    assert len(embed) <= 6000
    assert all(len(f.value) <= 1024 for f in embed.fields)


async def test_concurrent_live_post_and_poller_post_once(h: EmulatedBot) -> None:
    log_id = await logged_reply(h)
    review = h.bot.reviews
    await asyncio.gather(review.post_new(log_id), review.poller(), review.post_new(log_id))
    assert len(h.sent("review")) == 1
