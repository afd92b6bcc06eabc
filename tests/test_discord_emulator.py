"""The Discord API emulator, exercised by a plain discord.py bot running in the test's event loop.

Each test starts a fresh emulator and a small ``commands.Bot`` pointed at it
with ``point_discord_at``, drives it through the emulator's hooks and asserts
on what the bot actually sent (recorded REST calls, gateway traffic) and on
what discord.py saw (its cache, its handlers' arguments).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.discord_emulator import Call, DiscordEmulator, point_discord_at, point_discord_at_from_env

REPO = Path(__file__).resolve().parents[1]
TOKEN = "emulator-test-token"
WAIT = 5.0


class ReasonModal(discord.ui.Modal, title="Reject reason"):
    reason: discord.ui.TextInput[ReasonModal] = discord.ui.TextInput(label="Reason", custom_id="reason")
    # A Label-wrapped select: submitted as a type-18 component rather than an action row.
    severity: discord.ui.Label[ReasonModal] = discord.ui.Label(
        text="Severity",
        component=discord.ui.Select(
            custom_id="severity",
            options=[discord.SelectOption(label="low"), discord.SelectOption(label="high")],
        ),
    )

    def __init__(self, bot: EmuBot) -> None:
        super().__init__(custom_id="review:reason", timeout=None)
        self.bot = bot

    async def on_submit(self, interaction: discord.Interaction) -> None:
        select = self.severity.component
        assert isinstance(select, discord.ui.Select)
        self.bot.events.append(("modal", (self.reason.value, select.values)))
        await interaction.response.send_message(f"rejected: {self.reason.value}")


class ReviewView(discord.ui.View):
    """Persistent (timeout=None, fixed custom_ids): must work on messages from before a restart."""

    def __init__(self, bot: EmuBot) -> None:
        super().__init__(timeout=None)
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        member = interaction.user
        if isinstance(member, discord.Member) and any(r.name == "Moderator" for r in member.roles):
            return True
        await interaction.response.send_message("moderators only", ephemeral=True)
        return False

    @discord.ui.button(label="Approve", style=discord.ButtonStyle.success, custom_id="review:approve")
    async def approve(self, interaction: discord.Interaction, button: discord.ui.Button[ReviewView]) -> None:
        self.bot.events.append(("approve", interaction.user.id))
        await interaction.response.edit_message(content="approved", view=None)

    @discord.ui.button(label="Later", custom_id="review:later")
    async def later(self, interaction: discord.Interaction, button: discord.ui.Button[ReviewView]) -> None:
        await interaction.response.defer()  # type 6: acknowledge now, edit the message afterwards
        await interaction.edit_original_response(content="please review (snoozed)")

    @discord.ui.button(label="Reject", style=discord.ButtonStyle.danger, custom_id="review:reject")
    async def reject(self, interaction: discord.Interaction, button: discord.ui.Button[ReviewView]) -> None:
        await interaction.response.send_modal(ReasonModal(self.bot))


class EmuBot(commands.Bot):
    def __init__(self, guild_id: int, *, message_content: bool = True) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        intents.members = True
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
        self.guild_id = guild_id
        self.events: list[tuple[str, Any]] = []
        self.seen_messages: list[discord.Message] = []
        self.resumed = asyncio.Event()
        self.ack_delay = 0.0
        guild = discord.Object(guild_id)

        @self.tree.command(name="ask", description="Ask a persona", guild=guild)
        @app_commands.describe(question="What to ask")
        async def ask(interaction: discord.Interaction, question: str, persona: str | None = None) -> None:
            await asyncio.sleep(self.ack_delay)
            await interaction.response.send_message(f"{persona or 'zundamon'}: {question}")

        @self.tree.command(name="slow", description="Deferred answer", guild=guild)
        async def slow(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.edit_original_response(content="done thinking")
            await interaction.followup.send("and a follow-up", ephemeral=True)

    async def setup_hook(self) -> None:
        self.add_view(ReviewView(self))
        await self.tree.sync(guild=discord.Object(self.guild_id))

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every non-initial IDENTIFY; skip it to keep tests fast."""

    async def on_resumed(self) -> None:
        self.resumed.set()

    async def on_message(self, message: discord.Message) -> None:
        self.seen_messages.append(message)
        if message.author.bot:
            return
        if message.content.startswith("echo "):
            await message.reply(message.content[5:], allowed_mentions=discord.AllowedMentions.none())


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    async with DiscordEmulator(token=TOKEN) as emulator:
        restore = point_discord_at(emulator.base_url)
        try:
            yield emulator
        finally:
            restore()


async def start_bot(emu: DiscordEmulator, **kwargs: Any) -> tuple[EmuBot, asyncio.Task[None]]:
    bot = EmuBot(int(emu.guild_id), **kwargs)
    await bot.login(TOKEN)
    task = asyncio.create_task(bot.connect(reconnect=True))
    await asyncio.wait_for(bot.wait_until_ready(), WAIT)
    return bot, task


async def stop_bot(bot: EmuBot, task: asyncio.Task[None]) -> None:
    await bot.close()
    await asyncio.wait_for(task, WAIT)


@pytest.fixture
async def bot(emu: DiscordEmulator) -> AsyncIterator[EmuBot]:
    b, task = await start_bot(emu)
    try:
        yield b
    finally:
        await stop_bot(b, task)


def posted_to(channel_id: str) -> Callable[[Call], bool]:
    return lambda c: c.method == "POST" and c.path == f"/channels/{channel_id}/messages"


def callback_for(interaction_id: str) -> Callable[[Call], bool]:
    return lambda c: c.method == "POST" and c.path.startswith(f"/interactions/{interaction_id}/")


async def wait_until(cond: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- connect
async def test_bot_connects_and_sees_the_seeded_guild(emu: DiscordEmulator, bot: EmuBot) -> None:
    guild = bot.get_guild(int(emu.guild_id))
    assert guild is not None and guild.name == "Oshaberi Test Server"
    assert bot.user is not None and bot.user.id == int(emu.application_id)
    assert {c.name for c in guild.text_channels} >= {"general", "persona-chat", "mod-review"}
    moderator = guild.get_member(int(emu.user_id("moderator")))
    member = guild.get_member(int(emu.user_id("member")))
    assert moderator is not None and member is not None
    assert "Moderator" in [r.name for r in moderator.roles]
    assert "Moderator" not in [r.name for r in member.roles]
    assert guild.me.guild_permissions.manage_webhooks

    # discord.py logs in over REST, then identifies on a zlib-stream gateway.
    paths = [(c.method, c.path) for c in emu.calls]
    assert ("GET", "/users/@me") in paths
    assert ("GET", "/oauth2/applications/@me") in paths
    connect = emu.gateway_log.find(lambda r: r.kind == "connect")[0]
    assert connect.data["query"]["compress"] == "zlib-stream"
    assert connect.data["query"]["v"] == "10"
    identify = emu.gateway_log.find(lambda r: r.kind == "identify")[0]
    assert identify.data["intents"] & (1 << 15)  # MESSAGE_CONTENT
    sent = [r.event for r in emu.gateway_log if r.kind == "send" and r.op == 0]
    assert sent[:2] == ["READY", "GUILD_CREATE"]
    assert any(r.kind == "recv" and r.op == 1 for r in emu.gateway_log)  # heartbeat
    assert any(r.kind == "send" and r.op == 11 for r in emu.gateway_log)  # ack
    assert emu.unhandled == []


async def test_wrong_token_is_rejected(emu: DiscordEmulator) -> None:
    client = discord.Client(intents=discord.Intents.default())
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()
    assert emu.calls[-1].status == 401


# --------------------------------------------------------------------------- messages
async def test_message_create_and_reply_records_allowed_mentions(emu: DiscordEmulator, bot: EmuBot) -> None:
    general = emu.channel_id("general")
    sent = await emu.send_message(general, "member", f"echo hi @everyone <@{emu.user_id('moderator')}>")
    call = await emu.wait_for_call(posted_to(general), timeout=WAIT)

    assert call.status == 200
    assert call.json["content"] == f"hi @everyone <@{emu.user_id('moderator')}>"
    assert call.json["allowed_mentions"] == {"parse": []}
    assert str(call.json["message_reference"]["message_id"]) == sent["id"]
    reply = emu.message(call.response["id"])
    assert reply.allowed_mentions == {"parse": []}
    # allowed_mentions=none: nobody is pinged, not even the replied-to author.
    assert reply.payload["mentions"] == [] and reply.payload["mention_everyone"] is False
    assert reply.payload["type"] == 19

    # The user's message reached on_message with content and a Member author.
    incoming = next(m for m in bot.seen_messages if m.id == int(sent["id"]))
    assert isinstance(incoming.author, discord.Member)
    assert incoming.mention_everyone and [u.id for u in incoming.mentions] == [int(emu.user_id("moderator"))]
    # Discord echoes the bot's own message back over the gateway.
    await wait_until(lambda: any(m.id == int(reply.id) for m in bot.seen_messages))


async def test_edit_delete_and_history(emu: DiscordEmulator, bot: EmuBot) -> None:
    chat = emu.channel_id("chat")
    first = await emu.send_message(chat, "member", "one")
    await emu.send_message(chat, "member", "two")
    third = await emu.send_message(chat, "member2", "three")

    edited: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
    deleted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_edit(before: discord.Message, after: discord.Message) -> None:
        if not edited.done():
            edited.set_result((before.content, after.content))

    async def on_delete(message: discord.Message) -> None:
        if not deleted.done():
            deleted.set_result(message.id)

    bot.add_listener(on_edit, "on_message_edit")
    bot.add_listener(on_delete, "on_message_delete")
    await wait_until(lambda: any(m.id == int(third["id"]) for m in bot.seen_messages))
    await emu.edit_message(chat, first["id"], "one (edited)")
    assert await asyncio.wait_for(edited, WAIT) == ("one", "one (edited)")
    await emu.delete_message(chat, third["id"])
    assert await asyncio.wait_for(deleted, WAIT) == int(third["id"])

    channel = bot.get_channel(int(chat))
    assert isinstance(channel, discord.TextChannel)
    newest = [m.content async for m in channel.history(limit=5)]
    assert newest == ["two", "one (edited)"]
    after = [m.content async for m in channel.history(after=discord.Object(int(first["id"])), limit=5)]
    assert after == ["two"]
    fetched = await channel.fetch_message(int(first["id"]))
    assert fetched.edited_at is not None


async def test_bot_send_validation_matches_discord(emu: DiscordEmulator, bot: EmuBot) -> None:
    channel = bot.get_channel(int(emu.channel_id("general")))
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("あ" * 2001)
    assert too_long.value.status == 400 and too_long.value.code == 50035
    with pytest.raises(discord.NotFound):
        await channel.fetch_message(12345)
    file_msg = await channel.send("log", file=discord.File(__file__, filename="log.txt"))
    assert file_msg.attachments[0].filename == "log.txt"
    assert await file_msg.attachments[0].read() == Path(__file__).read_bytes()
    pinged = await channel.send(f"@everyone <@{emu.user_id('member')}>")
    stored = emu.message(pinged.id).payload
    assert stored["mention_everyone"] is True  # no allowed_mentions: Discord pings everything
    edited = await pinged.edit(content="quiet", allowed_mentions=discord.AllowedMentions.none())
    assert edited.content == "quiet" and emu.message(pinged.id).payload["mention_everyone"] is False


async def test_without_message_content_intent_content_is_blank(emu: DiscordEmulator) -> None:
    bot, task = await start_bot(emu, message_content=False)
    try:
        general = emu.channel_id("general")
        plain = await emu.send_message(general, "member", "secret")
        mention = await emu.send_message(general, "member", f"<@{emu.application_id}> hello")
        await wait_until(lambda: {int(plain["id"]), int(mention["id"])} <= {m.id for m in bot.seen_messages})
        by_id = {m.id: m.content for m in bot.seen_messages}
        assert by_id[int(plain["id"])] == ""
        assert by_id[int(mention["id"])] == f"<@{emu.application_id}> hello"
    finally:
        await stop_bot(bot, task)


# --------------------------------------------------------------------- app commands
async def test_slash_command_roundtrip(emu: DiscordEmulator, bot: EmuBot) -> None:
    sync = emu.calls.find(lambda c: c.method == "PUT")[0]
    assert sync.path == f"/applications/{emu.application_id}/guilds/{emu.guild_id}/commands"
    assert {c["name"] for c in sync.json} == {"ask", "slow"}
    ask_id = next(c["id"] for c in emu.state.commands[emu.guild_id] if c["name"] == "ask")

    general = emu.channel_id("general")
    record = await emu.slash_command(general, "member", "ask", {"question": "元気？", "persona": "marisa"})
    assert record.data["id"] == ask_id
    call = await emu.wait_for_call(callback_for(record.id), timeout=WAIT)
    assert call.status == 200 and call.query == {"with_response": "1"}
    assert call.json["type"] == 4 and call.json["data"]["content"] == "marisa: 元気？"
    assert emu.interaction(record.id).response_type == 4
    message = emu.message(emu.interaction(record.id).original_message_id or "")
    assert message.payload["interaction_metadata"]["user"]["id"] == emu.user_id("member")

    with pytest.raises(ValueError):
        await emu.slash_command(general, "member", "ask", {})  # required option missing
    with pytest.raises(LookupError):
        await emu.slash_command(general, "member", "nope")


async def test_deferred_response_edit_original_and_ephemeral_followup(
    emu: DiscordEmulator, bot: EmuBot
) -> None:
    record = await emu.slash_command(emu.channel_id("chat"), "member", "slow")
    follow = await emu.wait_for_call(
        lambda c: c.method == "POST" and c.path == f"/webhooks/{emu.application_id}/{record.token}",
        timeout=WAIT,
    )
    assert [r["type"] for r in emu.interaction(record.id).responses] == [5]
    patch = emu.calls.find(lambda c: c.method == "PATCH" and c.path.endswith("/messages/@original"))[0]
    assert patch.json["content"] == "done thinking"
    original = emu.message(emu.interaction(record.id).original_message_id or "")
    assert original.content == "done thinking" and not original.payload["flags"] & (1 << 7)
    assert follow.json["flags"] == 64 and emu.message(follow.response["id"]).ephemeral
    assert [m.content for m in emu.messages("chat")] == ["done thinking"]  # ephemeral stays private


async def test_late_interaction_response_gets_unknown_interaction(emu: DiscordEmulator, bot: EmuBot) -> None:
    emu.interaction_ack_timeout = 0.2
    bot.ack_delay = 0.4
    errors: list[BaseException] = []
    bot.tree.on_error = lambda interaction, error: errors.append(error)  # type: ignore[assignment,method-assign,misc]
    record = await emu.slash_command(emu.channel_id("general"), "member", "ask", {"question": "late?"})
    call = await emu.wait_for_call(callback_for(record.id), timeout=WAIT)
    assert call.status == 404 and call.response["code"] == 10062
    await wait_until(lambda: bool(errors))
    assert isinstance(errors[0].__cause__ or errors[0], discord.NotFound)


# ------------------------------------------------------------- components and modals
async def post_review_message(emu: DiscordEmulator, bot: EmuBot) -> discord.Message:
    channel = bot.get_channel(int(emu.channel_id("review")))
    assert isinstance(channel, discord.TextChannel)
    return await channel.send("please review", view=ReviewView(bot))


async def test_persistent_view_button_and_modal(emu: DiscordEmulator, bot: EmuBot) -> None:
    review = emu.channel_id("review")
    msg = await post_review_message(emu, bot)

    denied = await emu.click_button(review, "member", msg.id, "review:approve")
    call = await emu.wait_for_call(callback_for(denied.id), timeout=WAIT)
    assert call.json["data"]["content"] == "moderators only" and call.json["data"]["flags"] == 64
    assert emu.message(msg.id).content == "please review"

    snoozed = await emu.click_button(review, "moderator", msg.id, "review:later")
    edit = await emu.wait_for_call(lambda c: c.method == "PATCH" and snoozed.token in c.path, timeout=WAIT)
    assert emu.interaction(snoozed.id).response_type == 6 and edit.path.endswith("/messages/@original")
    assert edit.status == 200 and emu.message(msg.id).content == "please review (snoozed)"

    opened = await emu.click_button(review, "moderator", msg.id, "review:reject")
    call = await emu.wait_for_call(callback_for(opened.id), timeout=WAIT)
    assert call.json["type"] == 9 and call.json["data"]["custom_id"] == "review:reason"

    submitted = await emu.submit_modal(
        "moderator", "review:reason", {"reason": "スパム", "severity": ["high"]}
    )
    assert [c["type"] for c in submitted.data["components"]] == [1, 18]
    call = await emu.wait_for_call(callback_for(submitted.id), timeout=WAIT)
    assert call.json["type"] == 4 and call.json["data"]["content"] == "rejected: スパム"
    assert ("modal", ("スパム", ["high"])) in bot.events

    approved = await emu.click_button(review, "moderator", msg.id, "review:approve")
    call = await emu.wait_for_call(callback_for(approved.id), timeout=WAIT)
    assert call.json["type"] == 7
    assert emu.message(msg.id).content == "approved" and emu.message(msg.id).payload["components"] == []
    with pytest.raises(LookupError):  # the buttons are gone now
        await emu.click_button(review, "moderator", msg.id, "review:approve")


async def test_reactions_members_roles_and_dms(emu: DiscordEmulator, bot: EmuBot) -> None:
    guild = bot.get_guild(int(emu.guild_id))
    assert guild is not None
    member = await guild.fetch_member(int(emu.user_id("member")))
    assert member.display_name == "太郎"
    moderator_role = guild.get_role(int(emu.role_id("moderator")))
    assert moderator_role is not None and {r.name for r in await guild.fetch_roles()} >= {"Moderator"}
    await member.add_roles(moderator_role)
    assert emu.role_id("moderator") in emu.state.members[emu.user_id("member")]["roles"]

    sent = await emu.send_message("general", "member", "react to me")
    channel = bot.get_channel(int(emu.channel_id("general")))
    assert isinstance(channel, discord.TextChannel)
    await channel.get_partial_message(int(sent["id"])).add_reaction("👍")
    assert emu.message(sent["id"]).payload["reactions"] == [
        {"emoji": {"id": None, "name": "👍"}, "count": 1, "me": True}
    ]
    reacted: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
        if payload.user_id != bot.user.id and not reacted.done():  # type: ignore[union-attr]
            reacted.set_result(str(payload.emoji))

    bot.add_listener(on_raw_reaction_add)
    await emu.add_reaction("general", sent["id"], "moderator", "🚩")
    assert await asyncio.wait_for(reacted, WAIT) == "🚩"

    dm = await member.create_dm()
    assert str(dm.id) == emu.dm_channel_id("member")
    await dm.send("こんにちは")
    assert [m.content for m in emu.messages(dm.id)] == ["こんにちは"]
    incoming = await emu.send_message(dm.id, "member", "echo dm reply")
    call = await emu.wait_for_call(posted_to(str(dm.id)), timeout=WAIT)
    assert str(call.json["message_reference"]["message_id"]) == incoming["id"]
    assert emu.unhandled == []


# ------------------------------------------------------------------------- webhooks
async def test_webhook_execute_records_persona_identity(emu: DiscordEmulator, bot: EmuBot) -> None:
    channel = bot.get_channel(int(emu.channel_id("chat")))
    assert isinstance(channel, discord.TextChannel)
    hook = await channel.create_webhook(name="oshaberi-personas")
    assert [w.id for w in await channel.webhooks()] == [hook.id]
    sent = await hook.send(
        "なのだ！", username="ずんだもん", avatar_url="https://example.invalid/zunda.png", wait=True
    )
    call = emu.calls.find(lambda c: c.method == "POST" and c.path == f"/webhooks/{hook.id}/{hook.token}")[0]
    assert call.query["wait"] == "1" or call.query["wait"] == "true"
    assert call.json["username"] == "ずんだもん"
    stored = emu.message(sent.id)
    assert stored.username == "ずんだもん" and stored.avatar_url == "https://example.invalid/zunda.png"
    assert sent.author.name == "ずんだもん" and sent.webhook_id == hook.id
    edited = await hook.edit_message(sent.id, content="なのだ…")
    assert edited.content == "なのだ…" and emu.message(sent.id).content == "なのだ…"
    with pytest.raises(discord.HTTPException) as bad:
        await hook.send("x", username="Discord bot")
    assert bad.value.code == 50035


# ----------------------------------------------------------------------- resilience
async def test_resume_after_dropped_connection_replays_missed_events(
    emu: DiscordEmulator, bot: EmuBot
) -> None:
    session = await emu.wait_until_connected()
    general = emu.channel_id("general")
    assert await emu.drop_connection() == 1
    missed = await emu.send_message(general, "member", "echo while you were away")
    await asyncio.wait_for(bot.resumed.wait(), WAIT)
    resume = emu.gateway_log.find(lambda r: r.kind == "resume")[0]
    assert resume.session_id == session and resume.data["replayed"] >= 1
    assert emu.gateway_log.find(lambda r: r.kind == "connect")[-1].data["path"] == "/gateway/resume"
    assert len(emu.gateway_log.find(lambda r: r.kind == "identify")) == 1
    call = await emu.wait_for_call(posted_to(general), timeout=WAIT)
    assert str(call.json["message_reference"]["message_id"]) == missed["id"]

    later = await emu.send_message(general, "member", "echo after resume")
    call = await emu.wait_for_call(posted_to(general), timeout=WAIT)
    assert str(call.json["message_reference"]["message_id"]) == later["id"]


async def test_reconnect_opcode_and_invalid_session(emu: DiscordEmulator, bot: EmuBot) -> None:
    first = await emu.wait_until_connected()
    bot.resumed.clear()
    await emu.send_reconnect()
    await asyncio.wait_for(bot.resumed.wait(), WAIT)
    assert emu.gateway_log.find(lambda r: r.kind == "resume")[-1].session_id == first

    since = len(emu.gateway_log)
    await emu.invalidate_session(resumable=False)
    ready = await emu.wait_for_gateway(lambda r: r.kind == "ready", since=since, timeout=WAIT)
    assert ready.session_id != first
    general = emu.channel_id("general")
    msg = await emu.send_message(general, "member", "echo new session")
    call = await emu.wait_for_call(posted_to(general), timeout=WAIT)
    assert str(call.json["message_reference"]["message_id"]) == msg["id"]


async def test_rate_limit_429_is_waited_out(emu: DiscordEmulator, bot: EmuBot) -> None:
    general = emu.channel_id("general")
    fault = emu.fail_next("POST", rf"^/channels/{general}/messages$", 429, retry_after=0.25, count=2)
    await emu.send_message(general, "member", "echo limited")
    ok = await emu.wait_for_call(lambda c: posted_to(general)(c) and c.status == 200, timeout=WAIT)
    limited = emu.calls.find(lambda c: posted_to(general)(c) and c.status == 429)
    assert fault.hits == 2 and fault.remaining == 0 and len(limited) == 2 and limited[0].injected
    assert limited[0].response["retry_after"] == 0.25 and limited[0].response["global"] is False
    assert limited[1].at - limited[0].at >= 0.2 and ok.at - limited[1].at >= 0.2
    assert ok.json["content"] == "limited"


async def test_server_error_500_is_retried(emu: DiscordEmulator, bot: EmuBot) -> None:
    general = emu.channel_id("general")
    emu.fail_next("POST", r"/messages$", 500)
    await emu.send_message(general, "member", "echo flaky")
    ok = await emu.wait_for_call(lambda c: posted_to(general)(c) and c.status == 200, timeout=WAIT)
    failed = emu.calls.find(lambda c: posted_to(general)(c) and c.status == 500)
    assert len(failed) == 1 and failed[0].response == {"message": "500: Internal Server Error", "code": 0}
    assert ok.json["content"] == "flaky"


async def test_429_headers_on_the_wire(emu: DiscordEmulator) -> None:
    emu.fail_next("GET", r"^/users/@me$", 429, retry_after=2.5, scope="global")
    async with aiohttp.ClientSession() as session:
        resp = await session.get(f"{emu.api_base}/users/@me", headers={"Authorization": f"Bot {TOKEN}"})
        body = await resp.json()
        assert resp.status == 429 and body["retry_after"] == 2.5 and body["global"] is True
        assert resp.headers["Retry-After"] == "3" and resp.headers["X-RateLimit-Scope"] == "global"
        assert resp.headers["X-RateLimit-Global"] == "true" and resp.headers["Via"]
        resp = await session.get(f"{emu.api_base}/users/@me", headers={"Authorization": f"Bot {TOKEN}"})
        assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"]


# --------------------------------------------------------------- restarts and state
async def test_bot_restart_against_running_emulator(emu: DiscordEmulator) -> None:
    bot, task = await start_bot(emu)
    msg = await post_review_message(emu, bot)
    await stop_bot(bot, task)
    assert not emu.gateway.live_connections()

    bot, task = await start_bot(emu)
    try:
        assert len(emu.gateway_log.find(lambda r: r.kind == "identify")) == 2
        # The persistent view answers a button on a message posted before the restart.
        clicked = await emu.click_button(emu.channel_id("review"), "moderator", msg.id, "review:approve")
        call = await emu.wait_for_call(callback_for(clicked.id), timeout=WAIT)
        assert call.json["type"] == 7
        assert emu.message(msg.id).content == "approved"
    finally:
        await stop_bot(bot, task)


async def test_state_file_survives_an_emulator_restart(tmp_path: Path) -> None:
    state_file = tmp_path / "emu.json"
    async with DiscordEmulator(state_file=state_file) as first:
        sent = await first.send_message("general", "moderator", "persisted")
        general, mid = first.channel_id("general"), sent["id"]
    assert json.loads(state_file.read_text())["messages"][0]["payload"]["content"] == "persisted"
    async with DiscordEmulator(state_file=state_file) as second:
        assert second.channel_id("general") == general
        assert second.message(mid).content == "persisted"
        newer = await second.send_message("general", "member", "newer")
        assert int(newer["id"]) > int(mid)


# ------------------------------------------------------------------ standalone and env
def test_point_discord_at_from_env_and_restore() -> None:
    original = discord.http.Route.BASE
    assert point_discord_at_from_env({}) is False
    restore = point_discord_at("http://127.0.0.1:9/api/v10")
    try:
        assert discord.http.Route.BASE == "http://127.0.0.1:9/api/v10"
        assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == "ws://127.0.0.1:9/gateway"
    finally:
        restore()
    assert original == discord.http.Route.BASE


SUBPROCESS_BOT = """
import asyncio, os, discord
from tests.discord_emulator.patch import point_discord_at_from_env

assert point_discord_at_from_env()
intents = discord.Intents.default()
intents.message_content = True
client = discord.Client(intents=intents)

@client.event
async def on_message(message):
    if not message.author.bot:
        await message.channel.send(f"pid {os.getpid()}: {message.content}")

client.run(os.environ["BOT_TOKEN"], log_handler=None)
"""


async def test_bot_subprocess_via_env_survives_restart(emu: DiscordEmulator, tmp_path: Path) -> None:
    """The common case: the emulator keeps running in the test while the bot process restarts."""
    script = tmp_path / "bot.py"
    script.write_text(SUBPROCESS_BOT)
    env = {**os.environ, "DISCORD_API_BASE": emu.api_base, "BOT_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    general = emu.channel_id("general")
    for attempt in range(2):
        since = len(emu.gateway_log)
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), env=env, cwd=tmp_path)
        try:
            await emu.wait_for_gateway(lambda r: r.kind == "ready", since=since, timeout=20)
            await emu.send_message(general, "member", f"hello {attempt}")
            call = await emu.wait_for_call(posted_to(general), timeout=WAIT)
            assert call.json["content"] == f"pid {proc.pid}: hello {attempt}"
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)
    assert len(emu.gateway_log.find(lambda r: r.kind == "identify")) == 2


async def test_standalone_process_with_http_hooks(tmp_path: Path) -> None:
    state_file = tmp_path / "standalone.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.discord_emulator",
        "--port",
        "0",
        "--state-file",
        str(state_file),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        base = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert base.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            world = await (await session.get(f"{base}/_emulator/world")).json()
            resp = await session.post(
                f"{base}/_emulator/hooks/send_message",
                json={"channel_id": "general", "author": "member", "content": "from outside"},
            )
            sent = (await resp.json())["result"]
            got = await session.get(
                f"{base}/api/v10/channels/{world['channels']['general']}/messages/{sent['id']}",
                headers={"Authorization": "Bot anything"},
            )
            assert (await got.json())["content"] == "from outside"
            calls = await (await session.get(f"{base}/_emulator/calls")).json()
            assert calls[-1]["path"] == f"/channels/{world['channels']['general']}/messages/{sent['id']}"
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0
    assert json.loads(state_file.read_text())["messages"][0]["payload"]["content"] == "from outside"
