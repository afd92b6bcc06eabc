"""End to end: /help tells each member how to talk to the bot where they are, and /personas shows
which adapter version each persona serves. Both answers are ephemeral and ping nobody."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.model.adapters import set_current
from tests.e2e.stack import Stack, running_stack
from tests.e2e.world import OFFLIMITS, run_command

pytestmark = pytest.mark.asyncio(loop_scope="module")
EPHEMERAL = 64
MEMBER_COMMANDS = ("/help", "/persona", "/personas", "/cast", "/reset", "/forget", "/optout", "/optin")
MODERATOR_COMMANDS = ("/status", "/reload")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    tiny_neox: Path, random_adapters: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e-help")
    adapters = workdir / "adapters"  # the harness points OSHABERI_ADAPTERS_DIR here
    shutil.copytree(random_adapters["gpt-neox"]["marisa"], adapters / "marisa" / "v20260101-000000")
    set_current(adapters, "marisa", "v20260101-000000")
    async with running_stack(workdir, tiny_neox) as s:
        _, text = await run_command(s.emu, "chat", "moderator", "persona", {"persona": "zundamon"})
        assert "now answers" in text
        yield s
        s.bot.assert_clean_log()


async def answer(stack: Stack, channel: str, user: str, name: str) -> tuple[str, dict[str, Any]]:
    """The text (content and embeds) the user was shown, and the interaction callback's data."""
    record, text = await run_command(stack.emu, channel, user, name)
    [call] = stack.emu.calls.find(lambda c: c.path.startswith(f"/interactions/{record.id}/"))
    data = call.json["data"]
    for embed in data.get("embeds") or []:
        text += "\n" + "\n".join(f"{f['name']}: {f['value']}" for f in embed.get("fields", []))
        text += "\n" + (embed.get("footer") or {}).get("text", "")
    return text, data


def assert_private_and_silent(data: dict[str, Any]) -> None:
    assert data["flags"] & EPHEMERAL, "the answer must be ephemeral"
    mentions = data.get("allowed_mentions")
    assert mentions is not None and mentions.get("parse") == [] and not mentions.get("users")


async def test_help_in_a_persona_channel_names_the_persona_and_member_commands(stack: Stack) -> None:
    text, data = await answer(stack, "chat", "member", "help")
    assert_private_and_silent(data)
    assert "ずんだもん" in text and "`zundamon`" in text and "answers every message in this channel" in text
    for command in MEMBER_COMMANDS:
        assert f"`{command}`" in text, command
    for command in MODERATOR_COMMANDS:
        assert f"`{command}`" not in text, f"{command} shown to a member"
    assert "For moderators" not in text


async def test_help_elsewhere_says_mention_or_reply(stack: Stack) -> None:
    text, data = await answer(stack, "general", "member", "help")
    assert_private_and_silent(data)
    bot_id = stack.emu.application_id
    assert f"mention <@{bot_id}> or reply to one of its messages" in text and "魔理沙" in text


async def test_help_for_a_moderator_adds_their_commands(stack: Stack) -> None:
    text, data = await answer(stack, "general", "moderator", "help")
    assert_private_and_silent(data)
    assert "For moderators" in text
    for command in (*MEMBER_COMMANDS, *MODERATOR_COMMANDS):
        assert f"`{command}`" in text, command
    assert f"<#{stack.emu.channel_id('review')}>" in text


async def test_help_in_a_channel_the_bot_does_not_serve(stack: Stack) -> None:
    text, data = await answer(stack, OFFLIMITS, "member", "help")
    assert_private_and_silent(data)
    assert "does not talk in this channel" in text and f"<#{stack.emu.channel_id('chat')}>" in text


async def test_personas_shows_each_adapter_version(stack: Stack) -> None:
    text, data = await answer(stack, "chat", "member", "personas")
    assert data["flags"] & EPHEMERAL
    lines = text.splitlines()
    marisa = next(i for i, line in enumerate(lines) if "`marisa`" in line)
    zundamon = next(i for i, line in enumerate(lines) if "`zundamon`" in line)
    assert "Adapter: v20260101-000000" in "\n".join(lines[marisa : marisa + 3])
    assert "Adapter: prompt-only" in "\n".join(lines[zundamon : zundamon + 3])


async def test_status_shows_each_adapter_version(stack: Stack) -> None:
    _, text = await run_command(stack.emu, "chat", "moderator", "status")
    assert "`marisa` v20260101-000000" in text and "`zundamon` prompt-only" in text
