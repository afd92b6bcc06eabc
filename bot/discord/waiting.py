"""What a user sees while the reply is being written: "typing…", and the queue position
notice when the queue is long."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import discord

from bot.chatflow.conversation import queue_notice
from bot.discord.sender import NO_PINGS, notify

log = logging.getLogger(__name__)
TYPING_EVERY_S = 8.0  # Discord shows typing for ~10 s per trigger


class TypingIndicator:
    """Shows 'typing…' until the block ends; unlike ``channel.typing()`` a failure is not fatal."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.channel.typing()  # awaiting (not entering) triggers it once
            except discord.HTTPException as exc:
                log.debug("typing indicator failed in %s: %s", getattr(self.channel, "id", "?"), exc)
            await asyncio.sleep(TYPING_EVERY_S)

    async def __aenter__(self) -> TypingIndicator:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stop showing 'typing…' (a streamed reply's first words are up)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class QueueNotice:
    """The 'you are number N' message: posted when the queue is long, updated, removed at the end."""

    def __init__(self, channel: Any, reply_to: discord.Message, threshold: int) -> None:
        self.channel = channel
        self.reply_to = reply_to
        self.threshold = threshold
        self.message: discord.Message | None = None

    async def update(self, position: int) -> None:
        text = queue_notice(position, self.threshold)
        if text is None:
            if self.message is not None and position == 0:
                await self._edit("✍️ Your reply is being written now.")
            return
        if self.message is None:
            self.message = await notify(self.channel, text, self.reply_to)
        else:
            await self._edit(text)

    async def _edit(self, text: str) -> None:
        if self.message is None:
            return
        with contextlib.suppress(discord.HTTPException):
            await self.message.edit(content=text, allowed_mentions=NO_PINGS)

    async def remove(self) -> None:
        if self.message is not None:
            with contextlib.suppress(discord.HTTPException):
                await self.message.delete()
            self.message = None
