"""Two Discord servers, one bot (the real app against the loopback emulator): each server's
conversations reach only its own moderators, each server's default persona and training choice
apply to it alone, a member's /forget and /optout cover both, a server not on the allow-list
gets silence and one notice, and all of it survives a restart.

Server A is the seed guild; server B comes from ``tests/e2e/two_servers.py``. The operator's
``discord.review_channel`` (the TOML default) is A's review channel, the case that used to leak.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.discord.command_tree import NOT_SERVED
from bot.discord.review_views import custom_id, review_view
from tests.discord_emulator import DiscordEmulator
from tests.e2e.inprocess import TOKEN, EmulatedBot, Interaction, emulated_bot
from tests.e2e.two_servers import SECOND, second_server
from trainer.export_reviews import export_reviews

A_CHANNELS = ("general", "chat", "review")
B_CHANNELS = ("b-general", "b-chat", "b-review")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(tmp_path, world=second_server) as harness:
        yield harness


def told_privately(answer: Interaction) -> str:
    """What the user was last shown, which must have been for their eyes only (flag 64)."""
    assert int(answer.last.get("flags") or 0) & 64, answer.last
    return answer.text


def b_guild(h: EmulatedBot) -> int:
    return int(h.emu.guild(SECOND))


def everything_in(h: EmulatedBot, channels: tuple[str, ...]) -> str:
    """Every message body in ``channels`` (text, embeds, components), for what must not be there."""
    return json.dumps([m.payload for c in channels for m in h.present(c)], ensure_ascii=False)


async def set_b_review_channel(h: EmulatedBot) -> None:
    answer = await h.command(
        "settings review-channel", user="admin_b", channel="b-chat", options={"channel": "b-review"}
    )
    assert answer.ephemeral and "is now" in answer.text, answer.text


async def talk_in_both(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.chat, "marisa")
    await h.store.set_channel_persona(h.channel("b-chat"), "marisa")
    await h.say("Aサーバーの秘密", channel="chat")
    await h.say("Bサーバーの秘密", channel="b-chat")


async def test_each_servers_replies_reach_only_its_own_review_channel(h: EmulatedBot) -> None:
    await talk_in_both(h)
    [a_card] = h.sent("review")
    assert "Aサーバーの秘密" in json.dumps(a_card.payload, ensure_ascii=False)
    # B's reply is logged, but B has no review channel yet: the operator's (A's) is not B's.
    b_rows = [i for i in await h.store.unposted_reviews() if i.guild_id == b_guild(h)]
    assert [i.user_text for i in b_rows] == ["Bサーバーの秘密"]
    await h.bot.reviews.poller()
    assert h.sent("review") == [] and h.sent("b-review") == []
    assert "Bサーバーの秘密" not in everything_in(h, A_CHANNELS)

    await set_b_review_channel(h)
    await h.bot.reviews.poller()  # the waiting card goes to B's own channel now
    [b_card] = h.sent("b-review")
    assert "Bサーバーの秘密" in json.dumps(b_card.payload, ensure_ascii=False)
    await h.say("Bサーバーの二つ目", channel="b-chat")
    assert len(h.sent("b-review")) == 1 and h.sent("review") == []
    for secret in ("Bサーバーの秘密", "Bサーバーの二つ目"):
        assert secret not in everything_in(h, A_CHANNELS)
    assert "Aサーバーの秘密" not in everything_in(h, B_CHANNELS)


async def test_a_moderator_of_one_server_cannot_decide_on_anothers_rows(h: EmulatedBot) -> None:
    await set_b_review_channel(h)
    await talk_in_both(h)
    [b_card] = h.sent("b-review")
    b_row = await h.store.get_review(2)
    assert b_row is not None and b_row.guild_id == b_guild(h) and b_row.review_message_id == int(b_card.id)

    # A's moderator is a plain member of B: B's card refuses them there.
    refused = await h.click(int(b_card.id), custom_id("approve", 2), user="moderator", channel="b-review")
    assert "Only moderators" in told_privately(refused)

    # A card of B's row inside A (as an older version posted them, or a forged one): A's moderator
    # is a moderator there, and is still refused: the row is not A's. Nothing is recorded.
    legacy = await h.bot.get_channel(h.review).send("old card", view=review_view(2))
    for action in ("approve", "reject", "edit"):
        answer = await h.click(legacy.id, custom_id(action, 2), user="moderator")
        assert "another server" in told_privately(answer), action
    # A forged Edit form for B's row, submitted in A, is refused the same way.
    mark = h.emu.mark()
    record = await h.emu.submit_modal(
        "moderator",
        "oshaberi:review:edit-submit:2",
        {"oshaberi:review:edited-text": "書き換え"},
        channel_id=h.emu.channel_id("review"),
    )
    await h.received("interaction", lambda i: i.id == int(record.id))
    await h.settle()
    assert "another server" in told_privately(Interaction(h.emu, record, mark))
    assert (await h.store.get_review(2)).decision is None

    # B's own moderator decides it, in B.
    done = await h.click(int(b_card.id), custom_id("approve", 2), user="mod_b", channel="b-review")
    assert done.callback["type"] == 6
    item = await h.store.get_review(2)
    assert item.decision == "approved" and item.decided_by == h.user("mod_b")


async def test_cards_an_older_version_posted_in_another_server_go_home(h: EmulatedBot) -> None:
    await talk_in_both(h)
    h.sent("review")
    legacy = await h.bot.get_channel(h.review).send("old card", view=review_view(2))
    await h.store.mark_posted(2, h.review, legacy.id)  # what the single-channel version did
    await set_b_review_channel(h)
    await h.bot.reviews.reconcile()
    assert all(m.id != str(legacy.id) for m in h.present("review"))  # gone from A
    await h.bot.reviews.poller()
    [home] = h.sent("b-review")
    assert (await h.store.get_review(2)).review_message_id == int(home.id)
    assert (await h.store.get_review(1)).review_channel_id == h.review  # A's own card stays


async def test_each_server_has_its_own_default_persona(h: EmulatedBot) -> None:
    answer = await h.command("settings default-persona", user="admin_b", channel="b-chat", persona="zundamon")
    assert "ずんだもん" not in answer.text and "`zundamon`" in answer.text  # ids shown, never pinged
    me = f"<@{h.me}>"
    await h.say(f"{me} こんにちは", channel="chat")
    await h.say(f"{me} こんにちは", channel="b-chat")
    assert [persona for persona, _ in h.fake_chat.submitted] == ["marisa", "zundamon"]
    help_b = await h.command("help", user="member", channel="b-chat")
    assert "ずんだもん" in help_b.text and "霧雨魔理沙" not in help_b.text

    def defaults(answer: Interaction) -> list[str]:
        fields = answer.last["embeds"][0]["fields"]
        return [f["name"] for f in fields if "default" in f["name"]]

    assert ["`zundamon`" in n for n in defaults(await h.command("personas", channel="b-chat"))] == [True]
    assert ["`marisa`" in n for n in defaults(await h.command("personas", channel="chat"))] == [True]


async def test_a_server_that_disallows_training_gives_no_rows_to_the_export(
    h: EmulatedBot, tmp_path: Path
) -> None:
    await set_b_review_channel(h)
    on = await h.command("settings training", user="moderator", channel="chat", state="on")
    assert "is now on" in on.text
    shown = await h.command("settings show", user="admin_b", channel="b-chat")
    assert "**Training**: off (the operator's default for servers the operator does not list)" in shown.text
    off = await h.command("settings training", user="admin_b", channel="b-chat", state="off")
    assert "is now off" in off.text  # pinned: a later change of the default does not turn it on
    await talk_in_both(h)
    [a_card], [b_card] = h.sent("review"), h.sent("b-review")
    await h.click(int(a_card.id), custom_id("approve", 1), user="moderator")
    await h.click(int(b_card.id), custom_id("approve", 2), user="mod_b", channel="b-review")

    async def export() -> tuple[list[str], int]:
        out = tmp_path / "marisa-reviewed.jsonl"
        listed = h.bot.settings.discord.allowed_servers
        result = await export_reviews(h.bot.settings.paths.database, "marisa", out, listed_servers=listed)
        lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        return [d["turns"][0]["text"] for d in lines], result.held_back

    assert await export() == (["Aサーバーの秘密"], 1)
    await h.command("settings training", user="admin_b", channel="b-chat", state="on")
    assert await export() == (["Aサーバーの秘密", "Bサーバーの秘密"], 0)


async def test_forget_and_optout_cover_every_server(h: EmulatedBot) -> None:
    await set_b_review_channel(h)
    await talk_in_both(h)
    [a_card], [b_card] = h.sent("review"), h.sent("b-review")
    answer = await h.command("forget", user="member", channel="b-chat")
    assert "Deleted 2" in answer.text and "every server" in answer.text
    assert await h.store.get_review(1) is None and await h.store.get_review(2) is None
    assert a_card.id not in {m.id for m in h.present("review")}
    assert b_card.id not in {m.id for m in h.present("b-review")}

    optout = await h.command("optout", user="member", channel="b-chat")
    assert "every server" in optout.text
    await h.say("オプトアウト後", channel="chat")  # in A: answered, not logged
    assert h.sent("review") == [] and (await h.store.stats())["logged"] == 0


async def test_a_server_not_on_the_allow_list_gets_silence_and_one_notice(tmp_path: Path) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:
        second_server(emu)
        only_a = {"allowed_servers": (int(emu.guild_id),)}
        async with emulated_bot(tmp_path, emu=emu, discord_settings=only_a) as h:
            # B was joined before the bot started, with nobody in the audit log: its system channel.
            [notice] = h.sent("b-general")
            assert "allowed_servers" in notice.content and emu.guild(SECOND) in notice.content
            await h.store.set_channel_persona(h.channel("b-chat"), "marisa")
            await h.say(f"<@{h.me}> 聞こえる？", channel="b-chat")
            assert h.sent("b-chat") == [] and h.fake_chat.submitted == []
            assert await h.store.stats() == {"logged": 0, "undecided": 0, "decided": 0, "blocked": 0}
            refused = await h.command("personas", user="member", channel="b-chat")
            assert refused.ephemeral and refused.text == NOT_SERVED
            forgot = await h.command("forget", user="member", channel="b-chat")  # privacy works anywhere
            assert "Deleted 0" in forgot.text
            # A third server added while running: whoever added it is told in a DM.
            emu.state.add_guild("third", None, "Third", owner="member2", bot_member=False)
            emu.state.add_member(emu.user_id("member2"), guild="third")
            await emu.add_bot_to_guild("third", added_by="member2")
            await h.received("guild_join", lambda g: str(g.id) == emu.guild("third"))
            await h.settle()
            dm = emu.dm_channel_id("member2")
            [told] = [m for m in emu.messages(dm) if m.source == "bot"]
            assert emu.guild("third") in told.content and told.allowed_mentions == {"parse": []}
        async with emulated_bot(tmp_path, emu=emu, discord_settings=only_a) as again:
            assert again.sent("b-general") == [notice] and len(emu.messages(dm)) == 1  # once only


async def test_an_unlisted_server_is_left_when_the_operator_says_so(tmp_path: Path) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:
        second_server(emu)
        settings: dict[str, Any] = {"allowed_servers": (int(emu.guild_id),), "leave_unlisted_servers": True}
        async with emulated_bot(tmp_path, emu=emu, discord_settings=settings) as h:
            await h.received("guild_remove", lambda g: str(g.id) == emu.guild(SECOND))
            await h.settle()
            assert "left" in h.sent("b-general")[0].content
            assert emu.guild(SECOND) not in emu.state.bot_guilds()
            assert [g.id for g in h.bot.guilds] == [int(emu.guild_id)]


async def test_settings_survive_a_restart(tmp_path: Path) -> None:
    async with DiscordEmulator(token=TOKEN) as emu:
        second_server(emu)
        async with emulated_bot(tmp_path, emu=emu) as first:
            await set_b_review_channel(first)
            await first.command(
                "settings default-persona", user="admin_b", channel="b-chat", persona="zundamon"
            )
            await first.command(
                "settings allowed-channels",
                user="admin_b",
                channel="b-chat",
                options={"action": "add", "channel": "b-chat"},
            )
        async with emulated_bot(tmp_path, emu=emu) as h:
            shown = await h.command("settings show", user="admin_b", channel="b-chat")
            assert f"<#{h.channel('b-review')}> (set here)" in shown.text
            assert (
                "`zundamon` (set here)" in shown.text and f"<#{h.channel('b-chat')}> (set here)" in shown.text
            )
            assert "by <@" in shown.text  # the recorded changes, with who made them
            await h.say(f"<@{h.me}> 再起動後", channel="b-chat")
            await h.say(f"<@{h.me}> ここは許可外", channel="b-general")
            assert [p for p, _ in h.fake_chat.submitted] == ["zundamon"]
            [card] = h.sent("b-review")
            assert "再起動後" in json.dumps(card.payload, ensure_ascii=False) and h.sent("review") == []
