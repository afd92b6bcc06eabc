"""The running bot follows pointer moves made by other processes: a moved persona is reloaded
once, a failed reload is not retried every poll, and a reload the bot made itself is not repeated."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from bot.learning.pointer_watch import PointerWatch
from bot.model.adapters import clear_canary, set_current, write_canary
from tests.test_discord_adapter_commands import V1, V2, fake_version


def adapters(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    for v in (V1, V2):
        fake_version(root, v)
    set_current(root, "marisa", V1)
    return root


async def test_a_move_reloads_that_persona_once(tmp_path: Path) -> None:
    root = adapters(tmp_path)
    reloaded: list[str] = []

    async def reload(pid: str) -> list[str]:
        reloaded.append(pid)
        return [f"{pid}: ok"]

    watch = PointerWatch(root, ["marisa", "zundamon"], reload, interval_s=0.05)
    assert await watch.check() == []
    set_current(root, "marisa", V2)
    assert await watch.check() == ["marisa"] and await watch.check() == []
    write_canary(root, "marisa", V1, 0.2)
    clear_canary(root, "marisa")
    assert await watch.check() == []  # back where it was: nothing to do
    write_canary(root, "marisa", V1, 0.2)
    set_current(root, "marisa", V2)  # rewritten with the same version
    assert await watch.check() == ["marisa"]
    # a reload the bot made itself (/adapter, /reload) is marked, not repeated by the watch
    set_current(root, "marisa", V1)
    watch.mark("marisa")
    assert await watch.check() == []
    assert reloaded == ["marisa", "marisa"]

    watch.start()
    set_current(root, "marisa", V2)
    for _ in range(100):
        if len(reloaded) == 3:
            break
        await asyncio.sleep(0.02)
    await watch.stop()
    assert reloaded == ["marisa"] * 3


async def test_a_failed_reload_is_logged_once_and_not_retried(tmp_path: Path, caplog) -> None:
    root = adapters(tmp_path)
    calls = 0

    async def reload(pid: str) -> list[str]:
        nonlocal calls
        calls += 1
        raise RuntimeError("adapter_model.safetensors: bad shape")

    watch = PointerWatch(root, ["marisa"], reload, interval_s=0.05)
    set_current(root, "marisa", V2)
    with caplog.at_level(logging.ERROR):
        assert await watch.check() == ["marisa"]
        assert await watch.check() == []
    assert calls == 1 and "the reload failed: adapter_model.safetensors: bad shape" in caplog.text
