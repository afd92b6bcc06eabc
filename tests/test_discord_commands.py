"""Slash commands as Discord delivers them: real Interaction objects from gateway payloads,
routed by discord.py's command tree, answered through a recorded interaction endpoint."""

from __future__ import annotations

import discord
import pytest

from bot.generation import AdapterError
from tests.discord_harness import MOD_PERMS, USER_PERMS, Harness, Script, close_harness, make_harness


@pytest.fixture
async def h(tmp_path, monkeypatch):
    harness = await make_harness(tmp_path, monkeypatch)
    yield harness
    await close_harness(harness)


# -- /persona, /personas, /reset -----------------------------------------------------------------------


async def test_persona_sets_the_channel_persona_and_starts_afresh(h: Harness) -> None:
    await h.command("persona", persona="zundamon")
    [ack] = h.http.responses()
    assert ack.payload["type"] == 5 and not ack.ephemeral  # public, answered at once
    said = h.http.calls[-1]
    assert "ずんだもん" in said.content and not said.ephemeral
    assert said.data["allowed_mentions"]["parse"] == []
    assert await h.store.channel_persona(h.chat.id) == "zundamon"
    marker = await h.store.channel_reset_marker(h.chat.id)
    assert marker is not None
    await h.say("こんにちは")
    persona, _ = h.fake_chat.submitted[-1]
    assert persona == "zundamon"


async def test_a_busy_database_is_reported_not_hidden(h: Harness, monkeypatch) -> None:
    import sqlite3

    async def locked(*_args):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(h.store, "set_channel_persona", locked)
    await h.command("persona", persona="marisa")
    assert "could not be saved" in h.http.calls[-1].content


async def test_persona_off_stops_answering(h: Harness) -> None:
    await h.command("persona", persona="marisa")
    await h.command("persona", persona="OFF")
    assert await h.store.channel_persona(h.chat.id) is None
    await h.say("聞こえる？")
    assert h.fake_chat.submitted == []


@pytest.mark.parametrize("value", ["nobody", "../../etc/passwd", "marisa; DROP TABLE logs", "", "@everyone"])
async def test_persona_values_are_validated_server_side(h: Harness, value: str) -> None:
    await h.command("persona", persona=value)
    [response] = h.http.responses()
    assert response.ephemeral and "There is no persona" in response.content
    assert "@everyone" not in response.content or "\u200b" in response.content or "`" in response.content
    assert await h.store.channel_persona(h.chat.id) is None


async def test_persona_autocomplete_filters_by_id_and_name(h: Harness) -> None:
    choices = await h.autocomplete("persona", "persona", "ずんだ")
    assert [c["value"] for c in choices] == ["zundamon"]
    everything = await h.autocomplete("persona", "persona", "")
    assert everything[0]["value"] == "off"
    assert {c["value"] for c in everything} >= {"marisa", "zundamon", "ojousama", "nucc"}
    assert len(everything) <= 25


async def test_persona_refused_outside_allowed_channels_and_roles(h: Harness) -> None:
    h.set_discord(allowed_channels=(h.other.id,))
    await h.command("persona", persona="marisa")
    assert "does not talk in this channel" in h.http.responses()[-1].content
    h.set_discord(allowed_channels=(), allowed_roles=(99,))
    await h.command("persona", persona="marisa")
    assert "role" in h.http.responses()[-1].content
    assert await h.store.channel_persona(h.chat.id) is None


async def test_personas_lists_descriptions_and_marks_the_active_one(h: Harness) -> None:
    await h.store.set_channel_persona(h.chat.id, "ojousama")
    await h.command("personas")
    [response] = h.http.responses()
    assert response.ephemeral
    fields = {f["name"]: f["value"] for f in response.data["embeds"][0]["fields"]}
    active = [name for name in fields if "active here" in name]
    assert len(active) == 1 and "`ojousama`" in active[0]
    marisa = next(name for name in fields if "`marisa`" in name)
    assert "default" in marisa and "魔法" in fields[marisa]


async def test_reset_forgets_the_conversation_so_far(h: Harness) -> None:
    await h.store.set_channel_persona(h.chat.id, "marisa")
    await h.say("覚えててね、私の名前は花子")
    await h.command("reset")
    assert "forgotten" in h.http.calls[-1].content
    h.fake_chat.scripts.append(Script("誰だっけ？"))
    await h.say("私の名前は？")
    _, turns = h.fake_chat.submitted[-1]
    assert [t.text for t in turns] == ["私の名前は？"]


# -- moderator commands --------------------------------------------------------------------------------


async def test_status_shows_queue_batches_speed_adapters_and_memory(h: Harness) -> None:
    await h.command("status", member=h.mod, permissions=MOD_PERMS)
    [response] = h.http.responses()
    assert response.ephemeral
    text = response.content
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


async def test_status_is_refused_to_non_moderators(h: Harness) -> None:
    await h.command("status", member=h.alice, permissions=USER_PERMS)
    [response] = h.http.responses()
    assert response.ephemeral and "Only moderators" in response.content


async def test_moderator_role_is_enough(h: Harness) -> None:
    role = h.guild.default_role  # every member has it; stands in for a configured moderator role
    h.set_discord(moderator_role=role.id)
    await h.command("status", member=h.alice, permissions=USER_PERMS)
    assert "Only moderators" not in h.http.responses()[-1].content


async def test_reload_reports_the_new_adapters(h: Harness) -> None:
    await h.command("reload", member=h.mod, permissions=MOD_PERMS, persona="marisa")
    assert h.runtime.reloaded == ["marisa"]
    [deferred] = h.http.responses()
    assert deferred.payload["type"] == 5 and deferred.ephemeral  # thinking, ephemeral
    assert "marisa: adapter v3" in h.http.calls[-1].content


async def test_failed_reload_keeps_the_old_adapter_and_says_why(h: Harness) -> None:
    h.runtime.reload_error = AdapterError("adapter_config.json is missing in adapters/marisa/v9")
    await h.command("reload", member=h.mod, permissions=MOD_PERMS, persona="marisa")
    text = h.http.calls[-1].content
    assert "keeps serving with the previous one" in text and "adapter_config.json is missing" in text


async def test_reload_refuses_unknown_personas_and_non_moderators(h: Harness) -> None:
    await h.command("reload", member=h.mod, permissions=MOD_PERMS, persona="ghost")
    assert "Unknown persona" in h.http.responses()[-1].content
    await h.command("reload", member=h.alice, permissions=USER_PERMS)
    assert "Only moderators" in h.http.responses()[-1].content
    assert h.runtime.reloaded == []


# -- privacy commands ----------------------------------------------------------------------------------


async def test_optout_and_optin(h: Harness) -> None:
    await h.command("optout")
    assert await h.store.is_opted_out(h.alice.id)
    assert h.http.responses()[-1].ephemeral and "opted out" in h.http.calls[-1].content
    await h.store.set_channel_persona(h.chat.id, "marisa")
    await h.say("これはログされない")
    assert h.sent(h.review) == []
    await h.command("optin")
    assert not await h.store.is_opted_out(h.alice.id)
    await h.say("これはログされる", member=h.alice)
    # alice's earlier message is in this reply's context, but she is opted in again
    assert len(h.sent(h.review)) == 1


async def test_forget_deletes_logs_and_review_cards(h: Harness) -> None:
    await h.store.set_channel_persona(h.chat.id, "marisa")
    await h.say("覚えておいて")
    [card] = h.sent(h.review)
    [item] = [await h.store.get_review(1)]
    assert item is not None and item.review_message_id == card.id
    await h.store.decide(item.log_id, h.mod.id, "approved")
    await h.command("forget")
    text = h.http.calls[-1].content
    assert "Deleted 1" in text
    assert await h.store.get_review(item.log_id) is None
    assert await h.store.approved_for_export() == []
    from discord.ext.test import backend as dpy_backend

    assert all(m["id"] != card.id for m in dpy_backend._cur_config.messages.get(h.review.id, []))


async def test_a_busy_database_on_forget_is_told_to_the_user(h: Harness, monkeypatch) -> None:
    import sqlite3

    async def locked(*_args):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(h.store, "forget_user_detailed", locked)
    await h.command("forget")
    assert "could not be saved" in h.http.calls[-1].content


async def test_deleting_an_answered_message_withdraws_its_log_and_card(h: Harness) -> None:
    await h.store.set_channel_persona(h.chat.id, "marisa")
    question = await h.say("やっぱり消す質問")
    await h.say("残す質問")
    cards = h.sent(h.review)
    assert len(cards) == 2
    first = await h.store.get_review(1)
    assert first is not None and first.review_message_id == cards[0].id
    await h.store.decide(1, h.mod.id, "approved")  # even an approved reply goes
    chat = h.bot.get_cog("Chat")
    await chat.on_raw_message_delete(
        discord.RawMessageDeleteEvent(
            {"id": str(question.id), "channel_id": str(h.chat.id), "guild_id": str(h.guild.id)}
        )
    )
    assert await h.store.get_review(1) is None
    assert await h.store.get_review(2) is not None
    assert [r.user_text for r in await h.store.approved_for_export()] == []
    from discord.ext.test import backend as dpy_backend

    remaining = {m["id"] for m in dpy_backend._cur_config.messages.get(h.review.id, [])}
    assert cards[0].id not in remaining and cards[1].id in remaining
