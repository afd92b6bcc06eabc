"""Slash commands as Discord delivers them: the real bot against the loopback emulator
(INTERACTION_CREATE over the gateway, answers through the interaction endpoints), on the fake runtime."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.serving.generation import AdapterError
from tests.e2e.inprocess import EmulatedBot, emulated_bot
from tests.fake_runtime import Script


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(tmp_path) as harness:
        yield harness


def _ephemeral(body: dict) -> bool:
    return bool(int(body.get("flags") or 0) & 64)


# -- /persona, /personas, /reset -----------------------------------------------------------------------


async def test_persona_sets_the_channel_persona_and_starts_afresh(h: EmulatedBot) -> None:
    answer = await h.command("persona", persona="zundamon")
    assert answer.callback["type"] == 5 and not answer.ephemeral  # public, answered at once
    assert "ずんだもん" in answer.text and not _ephemeral(answer.last)
    assert answer.last["allowed_mentions"]["parse"] == []
    assert await h.store.channel_persona(h.chat) == "zundamon"
    marker = await h.store.channel_reset_marker(h.chat)
    assert marker is not None
    await h.say("こんにちは")
    persona, _ = h.fake_chat.submitted[-1]
    assert persona == "zundamon"


async def test_a_busy_database_is_reported_not_hidden(h: EmulatedBot, monkeypatch) -> None:
    async def locked(*_args):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(h.store, "set_channel_persona", locked)
    answer = await h.command("persona", persona="marisa")
    assert "could not be saved" in answer.text


async def test_persona_off_stops_answering(h: EmulatedBot) -> None:
    await h.command("persona", persona="marisa")
    await h.command("persona", persona="OFF")
    assert await h.store.channel_persona(h.chat) is None
    await h.say("聞こえる？")
    assert h.fake_chat.submitted == []


@pytest.mark.parametrize("value", ["nobody", "../../etc/passwd", "marisa; DROP TABLE logs", "", "@everyone"])
async def test_persona_values_are_validated_server_side(h: EmulatedBot, value: str) -> None:
    answer = await h.command("persona", persona=value)
    assert answer.ephemeral and "There is no persona" in answer.text
    assert "@everyone" not in answer.text or "\u200b" in answer.text or "`" in answer.text
    assert await h.store.channel_persona(h.chat) is None


async def test_persona_autocomplete_filters_by_id_and_name(h: EmulatedBot) -> None:
    choices = await h.autocomplete("persona", "persona", "ずんだ")
    assert [c["value"] for c in choices] == ["zundamon"]
    everything = await h.autocomplete("persona", "persona", "")
    assert everything[0]["value"] == "off"
    assert {c["value"] for c in everything} >= {"marisa", "zundamon", "ojousama", "nucc"}
    assert len(everything) <= 25


async def test_persona_refused_outside_allowed_channels_and_roles(h: EmulatedBot) -> None:
    h.set_discord(allowed_channels=(h.other,))
    answer = await h.command("persona", persona="marisa")
    assert "does not talk in this channel" in answer.text
    h.set_discord(allowed_channels=(), allowed_roles=(99,))
    answer = await h.command("persona", persona="marisa")
    assert "role" in answer.text
    assert await h.store.channel_persona(h.chat) is None


async def test_personas_lists_descriptions_and_marks_the_active_one(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.chat, "ojousama")
    answer = await h.command("personas")
    assert answer.ephemeral
    fields = {f["name"]: f["value"] for f in answer.last["embeds"][0]["fields"]}
    active = [name for name in fields if "active here" in name]
    assert len(active) == 1 and "`ojousama`" in active[0]
    marisa = next(name for name in fields if "`marisa`" in name)
    assert "default" in marisa and "魔法" in fields[marisa]


async def test_reset_forgets_the_conversation_so_far(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.chat, "marisa")
    await h.say("覚えててね、私の名前は花子")
    answer = await h.command("reset")
    assert "forgotten" in answer.text
    h.fake_chat.scripts.append(Script("誰だっけ？"))
    await h.say("私の名前は？")
    _, turns = h.fake_chat.submitted[-1]
    assert [t.text for t in turns] == ["私の名前は？"]


# -- moderator commands --------------------------------------------------------------------------------


async def test_status_shows_queue_batches_speed_adapters_and_memory(h: EmulatedBot) -> None:
    answer = await h.command("status", user="moderator")
    assert answer.ephemeral
    text = answer.text
    for expected in (
        "3/64 waiting",
        "2 generating",
        "42.5 tokens/s",
        "`marisa`: v2",
        "cuda:0",
        "5,120 MiB",
        "max 4",
    ):
        assert expected in text, expected


async def test_status_is_refused_to_non_moderators(h: EmulatedBot) -> None:
    answer = await h.command("status", user="member")
    assert answer.ephemeral and "Only moderators" in answer.text


async def test_moderator_role_is_enough(h: EmulatedBot) -> None:
    everyone = int(h.emu.guild_id)  # every member has it; stands in for a configured moderator role
    h.set_discord(moderator_role=everyone)
    answer = await h.command("status", user="member")
    assert "Only moderators" not in answer.text


async def test_reload_reports_the_new_adapters(h: EmulatedBot) -> None:
    answer = await h.command("reload", user="moderator", persona="marisa")
    assert h.runtime.reloaded == ["marisa"]
    assert answer.callback["type"] == 5 and answer.ephemeral  # thinking, ephemeral
    assert "marisa: adapter v3" in answer.text


async def test_failed_reload_keeps_the_old_adapter_and_says_why(h: EmulatedBot) -> None:
    h.runtime.reload_error = AdapterError("adapter_config.json is missing in adapters/marisa/v9")
    answer = await h.command("reload", user="moderator", persona="marisa")
    assert "keeps serving with the previous one" in answer.text
    assert "adapter_config.json is missing" in answer.text


async def test_reload_refuses_unknown_personas_and_non_moderators(h: EmulatedBot) -> None:
    answer = await h.command("reload", user="moderator", persona="ghost")
    assert "Unknown persona" in answer.text
    answer = await h.command("reload", user="member")
    assert "Only moderators" in answer.text
    assert h.runtime.reloaded == []


# -- privacy commands ----------------------------------------------------------------------------------


async def test_optout_and_optin(h: EmulatedBot) -> None:
    answer = await h.command("optout")
    assert await h.store.is_opted_out(h.alice)
    assert answer.ephemeral and "opted out" in answer.text
    await h.store.set_channel_persona(h.chat, "marisa")
    await h.say("これはログされない")
    assert h.sent("review") == []
    await h.command("optin")
    assert not await h.store.is_opted_out(h.alice)
    await h.say("これはログされる")
    # alice's earlier message is in this reply's context, but she is opted in again
    assert len(h.sent("review")) == 1


async def test_forget_deletes_logs_and_review_cards(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.chat, "marisa")
    await h.say("覚えておいて")
    [card] = h.sent("review")
    item = await h.store.get_review(1)
    assert item is not None and item.review_message_id == int(card.id)
    await h.store.decide(item.log_id, h.mod, "approved")
    assert [r.log_id for r in await h.exported()] == [item.log_id]
    answer = await h.command("forget")
    assert "Deleted 1" in answer.text
    assert await h.store.get_review(item.log_id) is None
    assert await h.exported() == []
    assert all(m.id != card.id for m in h.present("review"))


async def test_a_busy_database_on_forget_is_told_to_the_user(h: EmulatedBot, monkeypatch) -> None:
    async def locked(*_args):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(h.store, "forget_user_detailed", locked)
    answer = await h.command("forget")
    assert "could not be saved" in answer.text


async def test_deleting_an_answered_message_withdraws_its_log_and_card(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.chat, "marisa")
    question = await h.say("やっぱり消す質問")
    await h.say("残す質問")
    cards = h.sent("review")
    assert len(cards) == 2
    first = await h.store.get_review(1)
    assert first is not None and first.review_message_id == int(cards[0].id)
    await h.store.decide(1, h.mod, "approved")  # even an approved reply goes
    assert [r.question for r in await h.exported()] == ["やっぱり消す質問"]
    await h.delete(question)  # the member deletes it on Discord: MESSAGE_DELETE reaches the bot
    assert await h.store.get_review(1) is None
    assert await h.store.get_review(2) is not None
    assert [r.question for r in await h.exported()] == []
    remaining = {m.id for m in h.present("review")}
    assert cards[0].id not in remaining and cards[1].id in remaining
