"""The whole stack for one scenario: emulator, world, bot process, answer book.

``running_stack`` is an async context manager: it starts the emulator on loopback, seeds the
world, writes the config, syncs the commands, starts ``python -m bot`` and yields; on exit it
stops the bot with SIGTERM (killing it only if it hangs) and then the emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tests.discord_emulator import DiscordEmulator
from tests.e2e.answers import Answer, AnswerBook, Sent
from tests.e2e.harness import TOKEN, BotConfig, BotProcess
from tests.e2e.world import World, seed_world, wait_until


@dataclass
class Stack:
    emu: DiscordEmulator
    world: World
    bot: BotProcess
    book: AnswerBook

    async def say(self, channel: str, user: str, content: str = "", **kwargs: Any) -> Sent:
        """``user`` posts ``content`` in ``channel`` (a MESSAGE_CREATE reaches the bot)."""
        at = time.monotonic()
        payload = await self.emu.send_message(channel, user, content, **kwargs)
        return self.book.record_sent(payload, user, at)

    async def answer(self, sent: Sent, timeout: float = 60.0) -> Answer:
        """The answer the bot gave to ``sent`` (waiting for it up to ``timeout`` seconds)."""

        def ready() -> Answer | None:
            self.book.refresh()
            if sent.message_id in self.book.unrecognised:  # fail now, not at the timeout
                raise AssertionError(
                    f"the bot answered with a notice tests/e2e/answers.py does not know: "
                    f"{self.book.unrecognised[sent.message_id]!r}"
                )
            return self.book.final(sent.message_id)

        try:
            return await wait_until(
                ready, timeout, interval=0.1, what=f"an answer to message {sent.message_id}"
            )
        except TimeoutError:
            raise AssertionError(
                f"no answer to message {sent.message_id} within {timeout:.0f}s; bot log:\n{self.bot.log_tail()}"
            ) from None

    async def settle(self, seconds: float = 1.0) -> None:
        """Give the bot time for anything it would still send (to catch duplicates)."""
        await asyncio.sleep(seconds)
        self.book.refresh()


@contextlib.asynccontextmanager
async def running_stack(
    workdir: Path,
    model_dir: Path,
    *,
    members: int = 0,
    channels: int = 0,
    fault_injection: bool = False,
    slow_s: float = 3.0,
    **config: Any,
) -> AsyncIterator[Stack]:
    """Emulator + ``python -m bot`` with a config built from ``config`` (BotConfig fields)."""
    async with DiscordEmulator(token=TOKEN) as emu:
        world = seed_world(emu, members=members, channels=channels)
        base = BotConfig(
            review_channel=int(emu.channel_id("review")),
            moderator_role=int(emu.role_id("moderator")),
            allowed_channels=tuple(world.allowed_channels()),
            # The operator lists its server: served, and its approved replies train by default.
            allowed_servers=(int(emu.guild_id),),
        )
        bot = BotProcess(
            emu, workdir, model_dir, replace(base, **config), fault_injection=fault_injection, slow_s=slow_s
        )
        try:
            await bot.sync_commands()
            await bot.start()
            yield Stack(emu, world, bot, AnswerBook(emu, bot.db_path))
        finally:
            with contextlib.suppress(Exception):
                await bot.stop()
            await bot.kill()
