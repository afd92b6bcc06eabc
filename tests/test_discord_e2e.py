"""The whole bot over HTTP and a gateway, against the Discord API emulator (tests/discord_emulator).

In-process with a fake model: slash commands synced and run, a reply through the persona's
webhook, the review card, a moderator editing it through the modal, a member refused. Then
``python -m bot`` as a subprocess with the real runtime on a tiny model, stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.config import ChatSettings, DiscordSettings, PathSettings, Settings
from bot.discord.api_base import point_discord_at
from bot.discord.app import OshaberiBot
from bot.discord.review_views import TEXT_INPUT_ID
from tests.discord_emulator import Call, DiscordEmulator
from tests.fake_runtime import FakeRuntime, Script

REPO = Path(__file__).resolve().parents[1]
TOKEN = "e2e-secret-token-do-not-log"
WAIT = 10.0


@pytest.fixture
async def emu() -> AsyncIterator[DiscordEmulator]:
    saved = (
        discord.http.Route.BASE,
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
        discord.asset.Asset.BASE,
    )
    async with DiscordEmulator(token=TOKEN) as emulator:
        point_discord_at(emulator.base_url)
        try:
            yield emulator
        finally:
            (
                discord.http.Route.BASE,
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
                discord.asset.Asset.BASE,
            ) = saved


async def wait_for(
    emu: DiscordEmulator, pred: Callable[[Call], bool], since: int, timeout: float = WAIT
) -> Call:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for call in list(emu.calls)[since:]:
            if pred(call):
                return call
        await asyncio.sleep(0.02)
    raise TimeoutError("the bot did not make the expected call")


async def until(cond: Callable[[], Any], timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not met")


class E2EBot(OshaberiBot):
    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause before a re-identify in tests."""


async def test_bot_against_the_emulator(emu: DiscordEmulator, tmp_path: Path) -> None:
    settings = Settings(
        paths=PathSettings(database=str(tmp_path / "e2e.sqlite3")),
        # The operator lists its server: the bot serves it, and its approved replies train.
        discord=DiscordSettings(
            review_channel=int(emu.channel_id("review")),
            review_poll_s=3600,
            allowed_servers=(int(emu.guild_id),),
        ),
        # The fake runtime answers whole replies; streaming is tested in tests/test_e2e_streaming.py.
        chat=ChatSettings(stream_replies=False),
    )
    runtime = FakeRuntime(settings)

    async def factory(_s: Settings) -> FakeRuntime:
        return runtime

    bot = E2EBot(settings, runtime_factory=factory)
    await bot.login(TOKEN)
    guild = discord.Object(int(emu.guild_id))
    bot.tree.copy_global_to(guild=guild)
    await bot.tree.sync(guild=guild)
    task = asyncio.create_task(bot.connect(reconnect=True))
    try:
        await asyncio.wait_for(bot.wait_until_ready(), WAIT)
        chat, review = emu.channel_id("chat"), emu.channel_id("review")

        # /persona zundamon, by a member
        mark = len(emu.calls)
        record = await emu.slash_command(chat, "member", "persona", {"persona": "zundamon"})
        ack = await wait_for(emu, lambda c: c.path.startswith(f"/interactions/{record.id}/"), mark)
        assert ack.status in (200, 204) and ack.json["type"] == 5  # deferred: a busy database may be slow
        said = await wait_for(
            emu,
            lambda c: c.method in ("POST", "PATCH") and c.path.startswith(f"/webhooks/{emu.application_id}/"),
            mark,
        )
        assert said.status == 200 and "ずんだもん" in said.json["content"]

        # a message in the channel is answered through the persona's webhook, pinging nobody
        runtime.chat.scripts.append(Script("ずんだ餅は最高なのだ @everyone"))
        mark = len(emu.calls)
        await emu.send_message(chat, "member", "好きな食べ物は？")
        hook = await wait_for(emu, lambda c: c.method == "POST" and c.path.startswith("/webhooks/"), mark)
        assert hook.status == 200
        assert hook.json["username"] == "ずんだもん" and hook.json["allowed_mentions"]["parse"] == []
        posted = emu.message(hook.response["id"])
        assert posted.payload.get("mention_everyone") is False

        # its review card arrives in the review channel with the three buttons
        card_call = await wait_for(
            emu, lambda c: c.method == "POST" and c.path == f"/channels/{review}/messages", mark
        )
        card_id = card_call.response["id"]
        buttons = [b["custom_id"] for row in card_call.json["components"] for b in row["components"]]
        assert buttons == ["oshaberi:review:approve:1", "oshaberi:review:reject:1", "oshaberi:review:edit:1"]
        await until(lambda: runtime.chat.submitted)

        # a member may not decide
        mark = len(emu.calls)
        click = await emu.click_button(review, "member", card_id, "oshaberi:review:approve:1")
        refusal = await wait_for(emu, lambda c: c.path.startswith(f"/interactions/{click.id}/"), mark)
        assert refusal.json["data"]["flags"] & 64 and "Only moderators" in refusal.json["data"]["content"]

        # the moderator edits: the modal opens pre-filled, the edit is recorded and shown
        mark = len(emu.calls)
        click = await emu.click_button(review, "moderator", card_id, "oshaberi:review:edit:1")
        opened = await wait_for(emu, lambda c: c.path.startswith(f"/interactions/{click.id}/"), mark)
        assert opened.json["type"] == 9
        mark = len(emu.calls)
        submit = await emu.submit_modal(
            "moderator", opened.json["data"]["custom_id"], {TEXT_INPUT_ID: "ずんだ餅が一番なのだ"}
        )
        updated = await wait_for(emu, lambda c: c.path.startswith(f"/interactions/{submit.id}/"), mark)
        assert updated.json["type"] == 6 and updated.status in (200, 204)  # acknowledged at once
        edit = await wait_for(
            emu, lambda c: c.method == "PATCH" and c.path.endswith("/messages/@original"), mark
        )
        assert edit.status == 200
        assert all(b["disabled"] for row in edit.json["components"] for b in row["components"])
        assert all(
            b["disabled"] for row in emu.message(card_id).payload["components"] for b in row["components"]
        )
        [row] = await bot.store.approved_for_export(listed_servers=settings.discord.allowed_servers)
        assert row.reply == "ずんだ餅が一番なのだ" and row.decision == "edited"
        assert emu.unhandled == []
    finally:
        await bot.close()
        await asyncio.wait_for(task, WAIT)


async def test_python_m_bot_with_the_real_runtime_and_sigterm(
    emu: DiscordEmulator, tiny_neox: Path, tmp_path: Path
) -> None:
    """The shipped entry point: token from the environment, the emulator from DISCORD_API_BASE,
    the real model worker on a tiny model; SIGTERM stops it cleanly and the log is on disk."""
    db = tmp_path / "bot.sqlite3"
    # One persona, greedy and at least a few tokens long: random weights then say the same thing
    # every run, so the test does not depend on sampling luck.
    card_dir = tmp_path / "personas" / "marisa"
    card_dir.mkdir(parents=True)
    card = (REPO / "personas" / "marisa" / "persona.toml").read_text(encoding="utf-8")
    card = card.replace("temperature = 0.7", "temperature = 0.0").replace(
        "max_new_tokens = 96", "max_new_tokens = 16"
    )
    card = card.replace('stop = ["\\n"]', "stop = []")
    (card_dir / "persona.toml").write_text(
        card.replace("[generation]", "[generation]\nmin_new_tokens = 4"), encoding="utf-8"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_API_BASE": emu.api_base,
        "OSHABERI_MODEL": str(tiny_neox),
        "OSHABERI_DEVICE": "cpu",
        "OSHABERI_DB": str(db),
        "OSHABERI_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "OSHABERI_DISCORD__REVIEW_CHANNEL": emu.channel_id("review"),
        "OSHABERI_CHAT__DEFAULT_PERSONA": "marisa",
        "OSHABERI_PATHS__PERSONAS_DIR": str(tmp_path / "personas"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("OSHABERI_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "-v",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await emu.wait_for_gateway(lambda r: r.kind == "ready", timeout=120)
        chat = emu.channel_id("general")
        mark = len(emu.calls)
        await emu.send_message(chat, "member", f"<@{emu.application_id}> こんにちは")
        reply = await wait_for(
            emu,
            lambda c: (
                c.method == "POST"
                and (c.path.startswith("/webhooks/") or c.path == f"/channels/{chat}/messages")
            ),
            mark,
            timeout=60,
        )
        assert reply.status == 200
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        calls = [(c.method, c.path, c.status) for c in emu.calls][-20:]
        pytest.fail(f"bot output:\n{(out + err).decode(errors='replace')[-4000:]}\ncalls: {calls}")
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    log_text = (out + err).decode(errors="replace")
    assert proc.returncode == 0, log_text[-3000:]
    assert TOKEN not in log_text
    with sqlite3.connect(db) as raw:
        rows = raw.execute("SELECT persona_id, user_text, reply, review_message_id FROM logs").fetchall()
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    assert [(r[0], r[1]) for r in rows] == [("marisa", "こんにちは")], log_text[-3000:]
    assert rows[0][2].strip() and rows[0][3] is not None  # a reply was generated and its card posted
    assert mode == "wal"


async def test_sync_commands_is_an_explicit_cli_step(emu: DiscordEmulator, tmp_path: Path) -> None:
    """``python -m bot sync-commands --guild ID`` registers every slash command and exits; it loads
    no model (nothing to generate) and never prints the token."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DISCORD_TOKEN": TOKEN,
        "DISCORD_API_BASE": emu.api_base,
        "OSHABERI_DB": str(tmp_path / "unused.sqlite3"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "sync-commands",
        "--guild",
        emu.guild_id,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = (out + err).decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert TOKEN not in text
    [put] = [
        c for c in emu.calls if c.method == "PUT" and c.path.endswith(f"/guilds/{emu.guild_id}/commands")
    ]
    names = sorted(cmd["name"] for cmd in put.json)
    assert names == [
        "adapter", "cast", "forget", "help", "optin", "optout", "persona", "personas", "reload", "reset",
        "settings", "status",
    ]  # fmt: skip
    adapter = next(cmd for cmd in put.json if cmd["name"] == "adapter")
    assert int(adapter["default_member_permissions"]) & discord.Permissions(manage_messages=True).value
    assert sorted(o["name"] for o in adapter["options"]) == [
        "canary-start", "canary-stop", "history", "promote", "rollback"
    ]  # fmt: skip
    persona = next(cmd for cmd in put.json if cmd["name"] == "persona")
    assert persona["options"][0]["autocomplete"] is True
    cast = next(cmd for cmd in put.json if cmd["name"] == "cast")
    assert sorted(sub["name"] for sub in cast["options"]) == ["add", "list", "remove"]
    status = next(cmd for cmd in put.json if cmd["name"] == "status")
    assert int(status["default_member_permissions"]) & discord.Permissions(manage_messages=True).value
    assert not (tmp_path / "unused.sqlite3").exists()  # sync touches no database
    assert "synced 12 commands" in text
