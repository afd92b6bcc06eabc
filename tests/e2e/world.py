"""The emulator as the end-to-end runs use it: a world with more members and channels than the
seed, and what people do there (talk, run slash commands), with every wait bounded.

The emulator runs in the caller's event loop (``DiscordEmulator`` is an aiohttp server on
127.0.0.1), so the bot subprocess reaches it over loopback while the test reads its records
directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.discord_emulator import Call, DiscordEmulator, InteractionRecord

OFFLIMITS = "offlimits"  # a channel left out of discord.allowed_channels


@dataclass
class World:
    """Who and where: seed users plus ``members`` (keys), seed channels plus ``channels`` (keys)."""

    emu: DiscordEmulator
    members: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)

    def channel_id(self, key: str) -> str:
        return self.emu.channel_id(key)

    def user_id(self, key: str) -> str:
        return self.emu.user_id(key)

    def allowed_channels(self) -> list[int]:
        """Every text channel the bot may talk in: the seed ones but review, and the added ones."""
        keys = ["general", "chat", *self.channels]
        return [int(self.emu.channel_id(k)) for k in keys]


def seed_world(emu: DiscordEmulator, *, members: int = 0, channels: int = 0) -> World:
    """Add ``members`` simulated users and ``channels`` text channels (``load-1``…), plus the
    off-limits channel. Call before the bot connects: GUILD_CREATE carries the channels."""
    state = emu.state
    world = World(emu)
    for i in range(1, members + 1):
        key = f"user{i:02d}"
        if key not in state.user_keys:
            state.add_user(key, None, f"simuser{i:02d}", global_name=f"利用者{i:02d}")
            state.add_member(state.user_keys[key])
        world.members.append(key)
    position = len(state.channel_keys)
    for i in range(1, channels + 1):
        key = f"load-{i}"
        if key not in state.channel_keys:
            state.add_channel(key, None, key, position=position + i, topic="load run")
        world.channels.append(key)
    if OFFLIMITS not in state.channel_keys:
        state.add_channel(OFFLIMITS, None, OFFLIMITS, position=99, topic="the bot may not talk here")
    state.save()
    return world


async def wait_until(
    cond: Callable[[], Any], timeout: float, *, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``cond`` until it returns something truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f}s: {what or 'condition'}")
        await asyncio.sleep(interval)


def _interaction_answer(emu: DiscordEmulator, record: InteractionRecord) -> Callable[[Call], bool]:
    """The call that shows the user a command's outcome: an immediate reply (callback type 4),
    or after a deferral the follow-up or the edit of the original response."""
    hook = f"/webhooks/{emu.application_id}/{record.token}"

    def match(call: Call) -> bool:
        if call.path.startswith(f"/interactions/{record.id}/"):
            return isinstance(call.json, dict) and call.json.get("type") == 4
        return call.method in ("POST", "PATCH") and call.path.startswith(hook)

    return match


def interaction_text(call: Call) -> str:
    body = call.json or {}
    data = body.get("data", body) if body.get("type") == 4 else body
    return str(data.get("content") or "")


async def run_command(
    emu: DiscordEmulator,
    channel: str,
    user: str,
    name: str,
    options: dict[str, Any] | None = None,
    *,
    timeout: float = 20.0,
) -> tuple[InteractionRecord, str]:
    """Run ``/name`` as ``user``; returns the interaction and the text the user was shown.

    Fails if the bot acknowledged late (the emulator then answers 10062, as Discord does).
    """
    mark = emu.mark()
    record = await emu.slash_command(channel, user, name, options)
    call = await emu.wait_for_call(_interaction_answer(emu, record), timeout, since=mark)
    ack = emu.calls.find(lambda c: c.path.startswith(f"/interactions/{record.id}/"), since=mark)
    assert ack and all(c.status < 300 for c in ack), f"/{name} was not acknowledged in time: {ack}"
    assert call.status < 300, f"/{name}: {call.status} {call.response}"
    return record, interaction_text(call)


async def click(
    emu: DiscordEmulator, channel: str, user: str, message_id: str, custom_id: str, *, timeout: float = 20.0
) -> tuple[InteractionRecord, list[Call]]:
    """Click a button; returns the interaction and the calls answering it (ack, then any edit)."""
    mark = emu.mark()
    record = await emu.click_button(channel, user, message_id, custom_id)
    hook = f"/webhooks/{emu.application_id}/{record.token}"
    ack = await emu.wait_for_call(
        lambda c: c.path.startswith(f"/interactions/{record.id}/"), timeout, since=mark
    )
    assert ack.status < 300, f"click on {custom_id} answered {ack.status}: {ack.response}"
    if isinstance(ack.json, dict) and ack.json.get("type") == 6:  # deferred update: the edit follows
        await emu.wait_for_call(
            lambda c: c.method == "PATCH" and c.path.startswith(hook), timeout, since=mark
        )
    calls = emu.calls.find(
        lambda c: c.path.startswith(f"/interactions/{record.id}/") or c.path.startswith(hook), since=mark
    )
    return record, calls
