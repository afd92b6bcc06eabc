"""/settings as Discord delivers it, with two servers: who may change what, the bad inputs (a
channel or role of another server, a deleted one, a role nobody can hold, two admins at once),
each answered privately with the settings unchanged and nothing lost; and /status and /help
showing a server its own settings only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.discord.checks import NOT_MANAGER
from tests.e2e.inprocess import EmulatedBot, Interaction, emulated_bot
from tests.e2e.two_servers import SECOND, second_server


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[EmulatedBot]:
    async with emulated_bot(tmp_path, world=second_server) as harness:
        yield harness


def b_guild(h: EmulatedBot) -> int:
    return int(h.emu.guild(SECOND))


async def in_b(h: EmulatedBot, name: str, user: str = "admin_b", **options: object) -> Interaction:
    """``user`` runs ``/settings name`` in B's chat channel."""
    return await h.command(f"settings {name}", user=user, channel="b-chat", options=options)


def private(answer: Interaction) -> str:
    assert answer.ephemeral, answer.callback
    return answer.text


async def nothing_changed(h: EmulatedBot) -> None:
    assert await h.store.server_settings(b_guild(h)) is None
    assert await h.store.server_setting_changes(b_guild(h)) == []


async def test_only_members_with_manage_server_change_settings(h: EmulatedBot) -> None:
    # a plain member, and B's moderator (Manage Messages is not Manage Server)
    for user in ("member", "mod_b"):
        assert private(await in_b(h, "training", user=user, state="on")) == NOT_MANAGER
        assert private(await in_b(h, "show", user=user)) == NOT_MANAGER
    # A's owner is nobody special in B
    assert private(await in_b(h, "review-channel", user="moderator", channel="b-review")) == NOT_MANAGER
    await nothing_changed(h)
    # an admin by role (Manage Server), not the owner, may
    assert "is now on" in private(await in_b(h, "training", user="admin2_b", state="on"))


async def test_channels_and_roles_of_another_server_are_refused(h: EmulatedBot) -> None:
    answer = await in_b(h, "review-channel", channel="review")  # A's review channel, from B
    assert "another server's" in private(answer)
    assert "another server's" in private(await in_b(h, "allowed-channels", action="add", channel="chat"))
    assert "not one of this server's" in private(await in_b(h, "moderator-role", role="moderator"))
    assert "not one of this server's" in private(
        await in_b(h, "allowed-roles", action="add", role="moderator")
    )
    await nothing_changed(h)


async def test_roles_nobody_should_hold_and_missing_arguments_are_refused(h: EmulatedBot) -> None:
    everyone = h.emu.role_id(f"{SECOND}:everyone")
    assert "@everyone cannot be the moderator role" in private(await in_b(h, "moderator-role", role=everyone))
    assert "belongs to a bot" in private(await in_b(h, "moderator-role", role=f"{SECOND}:bot"))
    assert "action: everyone" in private(await in_b(h, "allowed-roles", action="add", role=everyone))
    assert private(await in_b(h, "allowed-roles", action="add")) == "Name the role to add."
    assert private(await in_b(h, "allowed-channels", action="remove")) == "Name the channel to remove."
    assert "Unknown persona" in private(await in_b(h, "default-persona", persona="nobody"))
    await nothing_changed(h)


async def test_a_deleted_review_channel_or_role_is_flagged_and_nothing_is_lost(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.channel("b-chat"), "marisa")
    assert "is now" in private(await in_b(h, "review-channel", channel="b-review"))
    assert "is now" in private(await in_b(h, "moderator-role", role="b-moderator"))
    role = h.emu.role_id("b-moderator")
    await h.emu.delete_channel("b-review")
    await h.emu.delete_role("b-moderator")
    await h.received("guild_role_delete", lambda r: r.id == int(role))
    await h.received("guild_channel_delete", lambda c: c.id == h.channel("b-review"))
    await h.settle()
    shown = private(await in_b(h, "show"))
    assert "cards wait" in shown and "not a role of this server" in shown
    # A reply meanwhile is logged and waits for a review channel; it is posted once there is one.
    await h.say("削除後の質問", channel="b-chat")
    await h.bot.reviews.poller()
    [waiting] = await h.store.unposted_reviews(guilds=[b_guild(h)])
    assert waiting.user_text == "削除後の質問"
    assert "is now" in private(await in_b(h, "review-channel", channel="b-general"))
    await h.bot.reviews.poller()
    [card] = h.sent("b-general")
    assert (await h.store.get_review(waiting.log_id)).review_message_id == int(card.id)


async def test_two_admins_changing_one_setting_at_once(h: EmulatedBot) -> None:
    """Both commands arrive before either is answered: one change wins, the other admin is told
    what stands, and the change log holds exactly the change that was made."""
    marks = h.emu.mark()
    first = await h.emu.slash_command(
        "b-chat", "admin_b", "settings default-persona", {"persona": "zundamon"}
    )
    second = await h.emu.slash_command(
        "b-chat", "admin2_b", "settings default-persona", {"persona": "ojousama"}
    )
    for record in (first, second):
        await h.received("interaction", lambda i, r=record: i.id == int(r.id))
    await h.settle()
    answers = [private(Interaction(h.emu, r, marks)) for r in (first, second)]
    assert answers[0].startswith("✅") and "`zundamon`" in answers[0]
    assert answers[1].startswith("⚠️ Someone else changed") and "run the command again" in answers[1]
    assert h.bot.servers.get(b_guild(h)).default_persona == "zundamon"
    [change] = await h.store.server_setting_changes(b_guild(h))
    assert (change.new_value, change.changed_by) == ("zundamon", h.user("admin_b"))


async def test_allowed_roles_and_channels_apply_to_their_server_only(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.channel("b-chat"), "marisa")
    await h.store.set_channel_persona(h.chat, "marisa")
    assert "is now" in private(await in_b(h, "allowed-roles", action="add", role="b-moderator"))
    await h.say(f"<@{h.me}> B で話す", channel="b-chat")
    assert "do not have a role" in h.sent("b-chat")[0].content
    await h.say("A では話せる", channel="chat")
    assert len(h.fake_chat.submitted) == 1  # A has no such rule
    assert "is now" in private(await in_b(h, "allowed-roles", action="everyone"))
    assert "is now" in private(await in_b(h, "allowed-channels", action="add", channel="b-general"))
    await h.say(f"<@{h.me}> b-chat はもう対象外", channel="b-chat")
    await h.say(f"<@{h.me}> b-general で話す", channel="b-general")
    assert len(h.fake_chat.submitted) == 2 and h.sent("b-chat") == []
    assert len(h.sent("b-general")) == 1


async def test_status_and_help_show_a_server_its_own_settings_only(h: EmulatedBot) -> None:
    await h.store.set_channel_persona(h.chat, "marisa")
    await h.say("A の一つ目", channel="chat")
    await h.say("A の二つ目", channel="chat")
    help_b = private(await h.command("help", user="mod_b", channel="b-chat"))
    assert "no review channel" in help_b and f"<#{h.review}>" not in help_b  # A's, the TOML default
    assert "may not train" in help_b
    await in_b(h, "review-channel", channel="b-review")
    status_b = private(await h.command("status", user="mod_b", channel="b-chat"))
    assert "**Reviews**: 0 awaiting a decision" in status_b  # A's two rows are not B's
    assert f"<#{h.channel('b-review')}> (set here)" in status_b and f"<#{h.review}>" not in status_b
    status_a = private(await h.command("status", user="moderator", channel="chat"))
    assert "**Reviews**: 2 awaiting a decision" in status_a
    assert f"<#{h.review}> (the operator's default)" in status_a
    help_b = private(await h.command("help", user="mod_b", channel="b-chat"))
    assert f"reviewed in <#{h.channel('b-review')}>" in help_b


async def test_a_busy_database_changes_nothing_and_says_so(h: EmulatedBot, monkeypatch) -> None:
    async def locked(*_args: object, **_kwargs: object) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("database is locked")

    monkeypatch.setattr(h.store, "change_server_setting", locked)
    answer = private(await in_b(h, "training", state="on"))
    assert "could not be saved" in answer and "Nothing changed" in answer
    assert not h.bot.servers.get(b_guild(h)).training
