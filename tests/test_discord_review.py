"""Review cards: buttons and the Edit modal as Discord delivers them, permission checks, the
double-click race, restarts, and posting items other processes queued."""

from __future__ import annotations

import asyncio

import discord
import pytest

from bot.discord.review_views import (
    EditModal,
    ReviewButton,
    card_ids_in,
    custom_id,
    review_view,
    submitted_text,
)
from bot.store import LogEntry
from tests.discord_harness import (
    MOD_PERMS,
    USER_PERMS,
    Harness,
    card_message,
    close_harness,
    make_harness,
    settle,
)


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await make_harness(tmp_path, monkeypatch)
    yield harness
    await close_harness(harness)


async def logged_reply(h: Harness, reply: str = "元気だぜ") -> int:
    log_id = await h.store.log_reply(
        LogEntry(
            guild_id=h.guild.id,
            channel_id=h.chat.id,
            message_id=1,
            user_id=h.alice.id,
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


def card_updates(h: Harness):
    """Edits of the card after a deferred acknowledgement (PATCH .../messages/@original)."""
    return [c for c in h.http.calls if c.method == "PATCH" and c.path.endswith("/messages/@original")]


def card_update(h: Harness):
    updates = card_updates(h)
    return updates[-1] if updates else None


def buttons_of(update) -> list[dict]:
    return [c for row in update.data["components"] for c in row["components"]]


async def test_card_buttons_carry_the_log_id() -> None:
    view = review_view(42)
    ids = [item.item.custom_id for item in view.children]
    assert ids == ["oshaberi:review:approve:42", "oshaberi:review:reject:42", "oshaberi:review:edit:42"]
    assert all(item.item.disabled is False for item in view.children)
    assert all(item.item.disabled for item in review_view(42, decided=True).children)


async def test_approve_records_once_and_disables_the_card(h: Harness) -> None:
    log_id = await logged_reply(h)
    await h.click(card_message(h, log_id), custom_id("approve", log_id), member=h.mod, permissions=MOD_PERMS)
    item = await h.store.get_review(log_id)
    assert item.decision == "approved" and item.decided_by == h.mod.id
    update = card_update(h)
    assert update is not None
    assert all(b["disabled"] for b in buttons_of(update))
    fields = {f["name"]: f["value"] for f in update.data["embeds"][0]["fields"]}
    assert f"<@{h.mod.id}>" in fields["Decision"] and "approved" in fields["Decision"]
    assert update.data["allowed_mentions"]["parse"] == []
    assert [r.log_id for r in await h.store.approved_for_export()] == [log_id]


async def test_reject(h: Harness) -> None:
    log_id = await logged_reply(h)
    await h.click(card_message(h, log_id), custom_id("reject", log_id), member=h.mod, permissions=MOD_PERMS)
    assert (await h.store.get_review(log_id)).decision == "rejected"
    assert await h.store.approved_for_export() == []


async def test_non_moderators_get_an_ephemeral_refusal(h: Harness) -> None:
    log_id = await logged_reply(h)
    for action in ("approve", "reject", "edit"):
        await h.click(
            card_message(h, log_id), custom_id(action, log_id), member=h.alice, permissions=USER_PERMS
        )
        last = h.http.responses()[-1]
        assert last.ephemeral and "Only moderators" in last.content
    assert (await h.store.get_review(log_id)).decision is None


async def test_forged_modal_submit_from_a_non_moderator_is_refused(h: Harness) -> None:
    log_id = await logged_reply(h)
    await h.submit_modal(
        card_message(h, log_id),
        f"oshaberi:review:edit-submit:{log_id}",
        "乗っ取り",
        member=h.alice,
        permissions=USER_PERMS,
    )
    assert "Only moderators" in h.http.responses()[-1].content
    assert (await h.store.get_review(log_id)).decision is None


async def test_edit_opens_a_prefilled_modal_and_the_edit_is_the_approved_reply(h: Harness) -> None:
    log_id = await logged_reply(h, "元の返事だぜ")
    card = card_message(h, log_id)
    await h.click(card, custom_id("edit", log_id), member=h.mod, permissions=MOD_PERMS)
    modal = h.http.responses()[-1]
    assert modal.payload["type"] == 9  # MODAL
    inputs = [c for row in modal.data["components"] for c in row["components"]]
    assert inputs[0]["value"] == "元の返事だぜ"
    await h.submit_modal(card, modal.data["custom_id"], "直した返事だぜ", member=h.mod, permissions=MOD_PERMS)
    item = await h.store.get_review(log_id)
    assert item.decision == "edited" and item.edited_text == "直した返事だぜ"
    [row] = await h.store.approved_for_export()
    assert row.reply == "直した返事だぜ" and row.original_reply == "元の返事だぜ"
    assert all(b["disabled"] for b in buttons_of(card_update(h)))


async def test_empty_edit_is_not_recorded(h: Harness) -> None:
    log_id = await logged_reply(h)
    await h.submit_modal(
        card_message(h, log_id),
        f"oshaberi:review:edit-submit:{log_id}",
        "   ",
        member=h.mod,
        permissions=MOD_PERMS,
    )
    assert "empty" in h.http.responses()[-1].content
    assert (await h.store.get_review(log_id)).decision is None


async def test_double_click_race_produces_one_decision(h: Harness) -> None:
    log_id = await logged_reply(h)
    card = card_message(h, log_id)
    first = await h.click(
        card, custom_id("approve", log_id), member=h.mod, permissions=MOD_PERMS, dispatch=False
    )
    second = await h.click(
        card, custom_id("reject", log_id), member=h.bob, permissions=MOD_PERMS, dispatch=False
    )
    # Both arrive before either is handled, as two moderators clicking at the same moment.
    h.bot._connection.parse_interaction_create(first)
    h.bot._connection.parse_interaction_create(second)
    await settle()
    item = await h.store.get_review(log_id)
    assert item.decision in ("approved", "rejected")
    winner = h.mod.id if item.decision == "approved" else h.bob.id
    assert item.decided_by == winner
    # both cards now show the one decision; the loser is told privately who decided
    assert [c.payload["type"] for c in h.http.responses()] == [6, 6]  # both acknowledged at once
    updates = card_updates(h)
    assert len(updates) == 2
    for update in updates:
        fields = {f["name"]: f["value"] for f in update.data["embeds"][0]["fields"]}
        assert f"<@{winner}>" in fields["Decision"] and item.decision in fields["Decision"]
    [told] = [c for c in h.http.calls if "Already decided" in c.content]
    assert told.ephemeral and f"<@{winner}>" in told.content


async def test_edit_after_a_decision_is_refused(h: Harness) -> None:
    log_id = await logged_reply(h)
    await h.store.decide(log_id, h.bob.id, "rejected")
    await h.click(card_message(h, log_id), custom_id("edit", log_id), member=h.mod, permissions=MOD_PERMS)
    last = h.http.responses()[-1]
    assert last.ephemeral and "Already decided" in last.content and "rejected" in last.content


async def test_buttons_and_modal_work_after_a_restart(tmp_path, monkeypatch) -> None:
    """A card posted by one bot process is decided through a fresh process on the same database."""
    first = await make_harness(tmp_path, monkeypatch)
    await first.store.set_channel_persona(first.chat.id, "marisa")
    await first.say("再起動前")
    log_id = 1
    assert (await first.store.get_review(log_id)).review_message_id is not None
    await close_harness(first)

    second = await make_harness(tmp_path, monkeypatch)
    try:
        card = card_message(second, log_id)
        await second.submit_modal(
            card,
            f"oshaberi:review:edit-submit:{log_id}",
            "再起動後に直した",
            member=second.mod,
            permissions=MOD_PERMS,
        )
        item = await second.store.get_review(log_id)
        assert item.decision == "edited" and item.edited_text == "再起動後に直した"
    finally:
        await close_harness(second)


async def test_dynamic_item_parses_its_custom_id(h: Harness) -> None:
    import re

    from bot.discord.review_views import BUTTON_TEMPLATE

    match = re.fullmatch(BUTTON_TEMPLATE, "oshaberi:review:reject:9007199254740993")
    item = await ReviewButton.from_custom_id(None, None, match)
    assert (item.action, item.log_id) == ("reject", 9007199254740993)
    assert re.fullmatch(BUTTON_TEMPLATE, "oshaberi:review:delete:1") is None
    assert re.fullmatch(BUTTON_TEMPLATE, "oshaberi:review:approve:1; DROP") is None


async def test_deleted_item_says_so(h: Harness) -> None:
    log_id = await logged_reply(h)
    await h.store.forget_user(h.alice.id)
    await h.click(card_message(h, log_id), custom_id("approve", log_id), member=h.mod, permissions=MOD_PERMS)
    assert "no longer exists" in card_update(h).content
    assert card_update(h).data.get("components") == []
    await h.click(card_message(h, log_id), custom_id("edit", log_id), member=h.mod, permissions=MOD_PERMS)
    assert "no longer exists" in h.http.responses()[-1].content


# -- posting cards -------------------------------------------------------------------------------------


async def test_poller_posts_trainer_candidates_once(h: Harness) -> None:
    cand = await h.store.add_candidate("zundamon", "ずんだ餅って何？", "枝豆の餅なのだ", "prompt", "v2", {})
    review = h.bot.reviews
    await review.poller()
    [card] = h.sent(h.review)
    assert "ずんだもん" in card.embeds[0].title and "枝豆の餅なのだ" in card.embeds[0].description
    assert (await h.store.get_review(cand)).review_message_id == card.id
    await review.poller()
    assert h.sent(h.review) == []


async def test_a_failed_post_is_retried(h: Harness, monkeypatch) -> None:
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
    assert h.sent(h.review) == []
    await review.poller()
    assert len(h.sent(h.review)) == 1


async def test_restart_reconciles_cards_posted_but_not_recorded(h: Harness) -> None:
    """The last run posted a card and died before recording it: the card is adopted, not reposted."""
    log_id = await h.store.add_candidate("marisa", "q", "a", "p", None, {})
    assert await h.store.claim_review(log_id)  # the dead run's claim
    await h.review.send("card from the last run", view=review_view(log_id))
    h.sent(h.review)
    # dpytest drops components from sent messages; give the stored message its buttons back
    from discord.ext.test import backend as dpy_backend

    stored = dpy_backend._cur_config.messages[h.review.id][-1]
    stored["components"] = review_view(log_id).to_components()
    review = h.bot.reviews
    await review.poller()
    assert h.sent(h.review) == []  # not posted again
    assert (await h.store.get_review(log_id)).review_message_id == int(stored["id"])


async def test_card_ids_in_reads_buttons(h: Harness) -> None:
    data = card_message(h, 77)
    message = discord.Message(state=h.bot._connection, channel=h.review, data=data)
    assert card_ids_in(message) == {77}


def test_submitted_text_finds_nested_inputs() -> None:
    label_layout = {"components": [{"type": 18, "component": {"custom_id": "t", "value": "v"}}]}
    assert submitted_text(label_layout, "t") == "v"
    assert submitted_text({"components": []}, "t") is None


async def test_modal_is_not_kept_by_discord_py(h: Harness) -> None:
    modal = EditModal(5, "x" * 5000)
    modal.stop()
    assert modal.is_finished()
    assert len(modal.text.default) == 4000


async def test_cards_bound_their_texts(h: Harness) -> None:
    from bot.discord.review_views import review_embed

    log_id = await logged_reply(h, "長い" * 3000)
    item = await h.store.get_review(log_id)
    embed = review_embed(item)
    assert len(embed) <= 6000
    assert all(len(f.value) <= 1024 for f in embed.fields)


async def test_concurrent_live_post_and_poller_post_once(h: Harness) -> None:
    log_id = await logged_reply(h)
    review = h.bot.reviews
    await asyncio.gather(review.post_new(log_id), review.poller(), review.post_new(log_id))
    assert len(h.sent(h.review)) == 1
