"""What a cog, a check or the review queue needs of the bot, as a protocol.

Cogs are built by ``bot/discord/app.py`` and handed the bot; typing them against this protocol
instead of :class:`~bot.discord.app.OshaberiBot` keeps the imports one way (app → cogs → this),
as in Red-DiscordBot, where cogs receive a ``Red`` they only use through its public surface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import discord
from discord import app_commands

from bot.config import Settings
from bot.discord.sender import ReplySender
from bot.ops.looplag import LoopLagMonitor
from bot.store.store import Store

if TYPE_CHECKING:
    from bot.runtime import Runtime


class BotServices(Protocol):
    """The bot's public surface for its cogs: settings, the store, the runtime and sending."""

    settings: Settings
    store: Store | None  # None until setup_hook opened it (or for a sync-only bot)
    runtime: Runtime | None  # None until the model is loaded
    sender: ReplySender
    loop_lag: LoopLagMonitor
    accepting: bool  # False once shutdown began: no new messages are taken
    sync_only: bool

    @property
    def user(self) -> discord.ClientUser | None: ...

    @property
    def tree(self) -> app_commands.CommandTree[Any]: ...

    def get_channel(self, id: int, /) -> Any: ...

    def get_guild(self, id: int, /) -> discord.Guild | None: ...

    async def fetch_channel(self, channel_id: int, /) -> Any: ...

    async def wait_until_ready(self) -> None: ...


def services(interaction: discord.Interaction[Any]) -> BotServices:
    """The bot behind an interaction (``interaction.client`` is always our bot)."""
    client: Any = interaction.client
    return client
