"""End to end: rolling a persona back, from Discord and from the trainer CLI, while
``python -m bot`` (unmodified, on a tiny model) serves. After each move the next reply is
served, logged and carded with the version moved to; nothing restarts."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
import pytest_asyncio

from bot.model.adapters import set_current
from bot.model.rollout import promote
from tests.e2e.stack import Stack, running_stack
from tests.e2e.world import run_command, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")
OLD, NEW = "v20260101-000000", "v20260201-000000"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(
    tiny_neox: Path, random_adapters: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e-rollback")
    adapters = workdir / "adapters"  # the harness points OSHABERI_ADAPTERS_DIR here
    shutil.copytree(random_adapters["gpt-neox"]["marisa"], adapters / "marisa" / OLD)
    shutil.copytree(random_adapters["gpt-neox"]["zundamon"], adapters / "marisa" / NEW)
    set_current(adapters, "marisa", OLD)
    promote(adapters, "marisa", NEW, by="cli:setup")  # the history: NEW replaced OLD
    async with running_stack(workdir, tiny_neox, adapter_poll_s=0.5) as s:
        _, text = await run_command(s.emu, "chat", "member", "persona", {"persona": "marisa"})
        assert "now answers" in text
        yield s
        s.bot.assert_clean_log()


async def reply_version(stack: Stack, text: str) -> tuple[str, str]:
    """Ask in #chat; the adapter version of the answer's log row, and of its review card."""
    sent = await stack.say("chat", "member", text)
    answer = await stack.answer(sent, timeout=60)
    assert answer.kind == "reply"
    with closing(sqlite3.connect(stack.bot.db_path)) as db:
        log_id, logged = db.execute(
            "SELECT id, adapter_version FROM logs WHERE message_id = ?", (int(sent.message_id),)
        ).fetchone()

    def card_fields():
        for m in stack.emu.messages("review"):
            for embed in m.payload.get("embeds") or []:
                if f"#{log_id} " in (embed.get("footer") or {}).get("text", "") + " ":
                    return {f["name"]: f["value"] for f in embed.get("fields", [])}
        return None

    fields = await wait_until(card_fields, 30, what=f"the review card of log {log_id}")
    return logged, fields["Adapter"]


async def test_rollback_from_discord_then_from_the_cli(stack: Stack) -> None:
    assert await reply_version(stack, "魔法って難しい？") == (NEW, NEW)

    # a member may not; a moderator rolls back from Discord
    _, text = await run_command(stack.emu, "chat", "member", "adapter rollback", {"persona": "marisa"})
    assert "Only moderators" in text
    _, text = await run_command(stack.emu, "chat", "moderator", "adapter rollback", {"persona": "marisa"})
    assert f"CURRENT {NEW} → {OLD}" in text and "next replies use it" in text
    assert await reply_version(stack, "今日は何してた？") == (OLD, OLD)
    with closing(sqlite3.connect(stack.bot.db_path)) as db:
        rows = db.execute("SELECT action, outcome, to_version FROM adapter_actions").fetchall()
    assert rows == [("rollback", "moved", OLD)]

    # the operator moves it back from the CLI, in another process: the bot notices within a poll
    env = {**os.environ, "OSHABERI_CONFIG": str(stack.bot.config_path), "OSHABERI_ADAPTERS_DIR": str(stack.bot.workdir / "adapters")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trainer", "rollback", "--persona", "marisa", "--to", NEW,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert f"CURRENT {OLD} → {NEW}" in out.decode()
    await wait_until(
        lambda: "adapter pointers of marisa moved: reloaded" in stack.bot.log_tail(20000), 20, what="the reload"
    )
    assert await reply_version(stack, "おはよう") == (NEW, NEW)
