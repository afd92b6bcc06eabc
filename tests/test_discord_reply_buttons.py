"""⏹ Stop and 🔁 Regenerate under persona replies, end to end: the real bot against the loopback
Discord emulator (fake runtime). Who may press, what stays, what is logged, presses at once, a
press after the reply finished, and buttons that outlive a restart."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.discord.reply_controls import BUTTON_TEMPLATE, ReplyButton, custom_id
from tests.discord_emulator import DiscordEmulator, StoredMessage
from tests.e2e.inprocess import TOKEN, EmulatedBot, Interaction, emulated_bot
from tests.e2e.world import wait_until
from tests.fake_runtime import Script

WEBHOOKS = {"use_webhooks": True}
STREAMING = {"stream_replies": True, "stream_edit_interval_s": 0.05, "rate_limit_per_minute": 0}


def buttons(message: StoredMessage) -> list[str]:
    return [c["custom_id"] for row in message.payload.get("components") or [] for c in row["components"]]


def persona_messages(h: EmulatedBot, channel: str = "chat") -> list[StoredMessage]:
    return [m for m in h.present(channel) if m.source == "webhook"]


def told(answer: Interaction) -> list[str]:
    """What the presser alone was shown: the ephemeral answers to their press."""
    bodies = [answer.callback.get("data") or {}] + [
        c.json for c in answer.calls if c.method == "POST" and isinstance(c.json, dict)
    ]
    return [str(b.get("content")) for b in bodies if int(b.get("flags") or 0) & 64]


async def logs(h: EmulatedBot):
    rows = await h.store._fetchall("SELECT id FROM logs ORDER BY id")
    return [await h.store.get_review(int(r["id"])) for r in rows]


@pytest.fixture
async def streamed(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(tmp_path, discord_settings=WEBHOOKS, chat_settings=STREAMING) as h:
        await h.store.set_channel_persona(h.chat, "marisa")
        yield h


@pytest.fixture
async def whole(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(
        tmp_path, discord_settings=WEBHOOKS, chat_settings={"rate_limit_per_minute": 0}
    ) as h:
        await h.store.set_channel_persona(h.chat, "marisa")
        yield h


async def held_reply(h: EmulatedBot, shown: str, rest: str) -> tuple[int, StoredMessage, asyncio.Event]:
    """A member asks; the reply streams ``shown`` and is then held. Returns (question id, the
    reply's message, the gate that lets the ``rest`` come)."""
    gate = asyncio.Event()
    h.fake_chat.scripts.append(Script(shown + rest, gate=gate, shown_before_gate=len(shown)))
    payload = await h.emu.send_message("chat", "member", "長い話をして")
    reply = await wait_until(
        lambda: next((m for m in persona_messages(h) if m.content == shown), None), 5, what="the first words"
    )
    return int(payload["id"]), reply, gate


# -- Stop ------------------------------------------------------------------------------------------


async def test_stop_keeps_what_was_shown_and_logs_it_once(streamed: EmulatedBot) -> None:
    h = streamed
    asked, reply, _gate = await held_reply(h, "ここまで話したぜ。", "そしてこの先はもっと長くなるんだぜ。")
    stop = custom_id("stop", h.alice, asked)
    assert buttons(reply) == [stop]  # Stop while it is written

    # a member who did not ask is refused privately, and the reply goes on
    other = await h.click(int(reply.id), stop, user="member2", channel="chat", settle=False)
    assert other.ephemeral and "Only the member who asked" in other.text
    assert not h.fake_chat.pending[0].cancelled

    pressed = await h.click(int(reply.id), stop, user="member", channel="chat")
    assert pressed.callback["type"] == 6  # acknowledged; the reply itself shows the result
    shown = h.emu.message(reply.id)
    assert shown.content == "ここまで話したぜ。" and not shown.deleted
    assert buttons(shown) == [custom_id("regen", h.alice, asked)]  # now it may be regenerated
    [row] = await logs(h)
    assert row.reply == "ここまで話したぜ。" and row.stopped_by == h.alice and row.decision is None
    assert row.params["finish_reason"] == "stopped" and row.reply_message_id == int(reply.id)
    assert row.review_message_id is not None  # reviewed like any reply
    assert len(persona_messages(h)) == 1

    # a stopped reply may be regenerated: the new one streams in, and the stopped one gives way
    h.fake_chat.scripts.append(Script("今度は最後まで話すぜ。"))
    await h.click(int(reply.id), custom_id("regen", h.alice, asked), user="member", channel="chat")
    [new] = persona_messages(h)
    assert new.content == "今度は最後まで話すぜ。" and buttons(new) == [custom_id("regen", h.alice, asked)]
    stopped, again = await logs(h)
    assert stopped.regenerated_by == h.alice and again.replaces == stopped.log_id and again.stopped_by is None


async def test_a_moderator_may_stop_and_a_second_press_is_told_who_stopped(streamed: EmulatedBot) -> None:
    h = streamed
    asked, reply, _gate = await held_reply(h, "モデレーターが止める。", "続き")
    stop = custom_id("stop", h.alice, asked)
    first = await h.emu.click_button("chat", "moderator", reply.id, stop)
    second = await h.emu.click_button("chat", "member", reply.id, stop)
    for record in (first, second):
        await h.received("interaction", lambda i, r=record: i.id == int(r.id))
    await h.settle()
    [row] = await logs(h)
    assert row.stopped_by == h.mod and row.reply == "モデレーターが止める。"
    texts = [
        str(b.get("content")) for c in h.calls() if isinstance(b := c.json, dict) and b.get("flags") == 64
    ]
    assert len(texts) == 1 and ("Already stopped by" in texts[0] or "already finished" in texts[0])


async def test_stop_on_a_reply_that_already_finished_says_so_and_changes_nothing(
    streamed: EmulatedBot,
) -> None:
    h = streamed
    asked, reply, gate = await held_reply(h, "すぐ終わるぜ。", "おしまいだぜ。")
    late = h.prepare_click(int(reply.id), custom_id("stop", h.alice, asked), user="member")
    gate.set()
    await h.settle()  # the reply finished while the press was on its way
    answer = await late.send()
    assert ["already finished" in t for t in told(answer)] == [True]
    [row] = await logs(h)
    assert row.reply == "すぐ終わるぜ。おしまいだぜ。" and row.stopped_by is None
    assert buttons(h.emu.message(reply.id)) == [custom_id("regen", h.alice, asked)]


# -- Regenerate ------------------------------------------------------------------------------------


async def regenerable(h: EmulatedBot, first: str = "最初の返事だぜ。") -> tuple[int, StoredMessage]:
    h.fake_chat.scripts.append(Script(first))
    asked = await h.say("何か面白い話をして")
    [reply] = persona_messages(h)
    assert buttons(reply) == [custom_id("regen", h.alice, asked)]
    return asked, reply


async def test_regenerate_writes_a_new_reply_to_the_same_turn(whole: EmulatedBot) -> None:
    h = whole
    asked, old = await regenerable(h)
    regen = custom_id("regen", h.alice, asked)
    refused = await h.click(int(old.id), regen, user="member2", channel="chat")
    assert refused.ephemeral and "Only the member who asked" in refused.text
    assert len(h.fake_chat.submitted) == 1

    h.fake_chat.scripts.append(Script("二度目の返事だぜ。"))
    await h.click(int(old.id), regen, user="member", channel="chat")
    [new] = persona_messages(h)
    assert new.content == "二度目の返事だぜ。" and h.emu.message(old.id).deleted
    assert buttons(new) == [regen]  # the new reply can be regenerated in turn
    assert h.fake_chat.submitted[1] == h.fake_chat.submitted[0]  # the same turn, the same history
    first, second = await logs(h)
    assert (first.regenerated_by, first.decision, first.reply) == (h.alice, None, "最初の返事だぜ。")
    assert (second.replaces, second.message_id, second.user_id) == (first.log_id, asked, h.alice)
    assert second.review_message_id is not None and second.review_message_id != first.review_message_id
    # the old card says what happened; it is no rejection
    card = h.emu.message(first.review_message_id).payload["embeds"][0]
    assert any(f["name"] == "🔁 Regenerated away" for f in card["fields"])
    assert "rejected" not in str(card)


async def test_regenerate_pressed_twice_at_once_writes_one_reply(whole: EmulatedBot) -> None:
    h = whole
    asked, old = await regenerable(h)
    regen = custom_id("regen", h.alice, asked)
    h.fake_chat.scripts.extend([Script("一つ目の作り直し"), Script("二つ目の作り直し")])
    presses = [
        await h.emu.click_button("chat", "member", old.id, regen),
        await h.emu.click_button("chat", "moderator", old.id, regen),
    ]
    for record in presses:
        await h.received("interaction", lambda i, r=record: i.id == int(r.id))
    await h.settle()
    assert [m.content for m in persona_messages(h)] == ["一つ目の作り直し"]
    assert len(await logs(h)) == 2 and len(h.fake_chat.submitted) == 2
    told = [
        str(b.get("content")) for c in h.calls() if isinstance(b := c.json, dict) and b.get("flags") == 64
    ]
    assert len(told) == 1 and ("already asked for" in told[0] or "moved on" in told[0])


async def test_only_the_newest_reply_can_be_regenerated(whole: EmulatedBot) -> None:
    h = whole
    asked, old = await regenerable(h)
    await h.say("次の話題に行こう")
    moved = await h.click(int(old.id), custom_id("regen", h.alice, asked), user="member", channel="chat")
    assert ["moved on" in t for t in told(moved)] == [True]
    assert not h.emu.message(old.id).deleted and len(await logs(h)) == 2


async def test_a_regeneration_that_fails_leaves_the_old_reply_and_the_button(whole: EmulatedBot) -> None:
    h = whole
    asked, old = await regenerable(h)
    regen = custom_id("regen", h.alice, asked)
    h.fake_chat.full = True
    await h.click(int(old.id), regen, user="member", channel="chat")
    assert not h.emu.message(old.id).deleted
    assert any("busy" in m.content for m in h.present("chat") if m.source == "bot")
    h.fake_chat.full = False
    h.fake_chat.scripts.append(Script("今度はうまくいったぜ。"))
    await h.click(int(old.id), regen, user="member", channel="chat")  # the press was given back
    assert [m.content for m in persona_messages(h)] == ["今度はうまくいったぜ。"]


async def test_regenerate_works_after_a_restart(tmp_path: Path) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:
        async with emulated_bot(tmp_path, emu=emu, discord_settings=WEBHOOKS) as first:
            await first.store.set_channel_persona(first.chat, "marisa")
            asked, old = await regenerable(first, "再起動前の返事だぜ。")
        async with emulated_bot(tmp_path, emu=emu, discord_settings=WEBHOOKS) as second:
            second.fake_chat.scripts.append(Script("再起動後の返事だぜ。"))
            await second.click(
                int(old.id), custom_id("regen", second.alice, asked), user="member", channel="chat"
            )
            assert [m.content for m in persona_messages(second)] == ["再起動後の返事だぜ。"]
            before, after = await logs(second)
            assert before.regenerated_by == second.alice and after.replaces == before.log_id


async def test_stop_after_a_restart_says_the_reply_is_over_and_offers_regenerate(tmp_path: Path) -> None:
    """A reply cut off by a crash still shows Stop; pressing it after the restart explains."""
    async with DiscordEmulator(token=TOKEN) as emu:
        async with emulated_bot(tmp_path, emu=emu, discord_settings=WEBHOOKS) as first:
            await first.store.set_channel_persona(first.chat, "marisa")
            asked, reply = await regenerable(first)
            emu.actions.edit_from_body(  # as it looked while it was written
                reply, {"components": [{"type": 1, "components": [stop_button(first.alice, asked)]}]}, []
            )
        async with emulated_bot(tmp_path, emu=emu, discord_settings=WEBHOOKS) as second:
            answer = await second.click(
                int(reply.id), custom_id("stop", second.alice, asked), user="member", channel="chat"
            )
            assert ["already finished" in t for t in told(answer)] == [True]
            assert buttons(emu.message(reply.id)) == [custom_id("regen", second.alice, asked)]


def stop_button(asker: int, asked: int) -> dict:
    return {"type": 2, "style": 2, "label": "Stop", "custom_id": custom_id("stop", asker, asked)}


async def test_buttons_on_prefixed_replies_without_webhooks(tmp_path: Path) -> None:
    async with emulated_bot(tmp_path) as h:  # no webhooks: "**霧雨魔理沙**: …" as the bot
        await h.store.set_channel_persona(h.chat, "marisa")
        h.fake_chat.scripts.extend([Script("前の返事だぜ。"), Script("後の返事だぜ。")])
        asked = await h.say("話して")
        [reply] = h.sent()
        await h.click(int(reply.id), custom_id("regen", h.alice, asked), user="member", channel="chat")
        [new] = h.sent()
        assert new.content == "**霧雨魔理沙**: 後の返事だぜ。" and h.emu.message(reply.id).deleted


async def test_the_custom_id_is_parsed_and_nothing_else_matches() -> None:
    match = re.fullmatch(BUTTON_TEMPLATE, "oshaberi:reply:regen:123:9007199254740993")
    item = await ReplyButton.from_custom_id(None, None, match)
    assert (item.action, item.asker_id, item.answered_id) == ("regen", 123, 9007199254740993)
    assert re.fullmatch(BUTTON_TEMPLATE, "oshaberi:reply:delete:1:2") is None
    assert re.fullmatch(BUTTON_TEMPLATE, "oshaberi:reply:stop:1:2; DROP") is None
    assert len(custom_id("regen", 2**64 - 1, 2**64 - 1)) <= 100  # Discord's limit


async def test_without_a_cast_only_an_answer_to_the_reply_moves_the_conversation_on(tmp_path: Path) -> None:
    async with emulated_bot(
        tmp_path, discord_settings=WEBHOOKS, chat_settings={"rate_limit_per_minute": 0}
    ) as h:
        h.fake_chat.scripts.extend(
            [Script("呼んだか？"), Script("やっぱり呼んだな。"), Script("もう一度だぜ")]
        )
        asked = await h.say(f"<@{h.me}> ねえ", channel="general")
        [reply] = [m for m in h.present("general") if m.source == "webhook"]
        regen = custom_id("regen", h.alice, asked)
        await h.say("関係ない雑談", channel="general", user="member2")  # not said to the bot
        await h.click(int(reply.id), regen, user="member", channel="general")
        [new] = [m for m in h.present("general") if m.source == "webhook"]
        assert new.content == "やっぱり呼んだな。" and h.emu.message(reply.id).deleted
        # once someone answers the reply, it stays as it is
        await h.say("それで？", channel="general", user="member2", message_reference=new.id)
        moved = await h.click(int(new.id), regen, user="member", channel="general")
        assert ["moved on" in t for t in told(moved)] == [True]
