"""A Discord API emulator on loopback, for running an unmodified discord.py bot in tests.

See ``server.DiscordEmulator`` for the hooks and ``patch.point_discord_at`` for
pointing discord.py at it.
"""

from .patch import ENV_VAR, point_discord_at, point_discord_at_from_env
from .recorder import Call, GatewayRecord
from .server import DiscordEmulator
from .state import InteractionRecord, StoredMessage

__all__ = [
    "ENV_VAR",
    "Call",
    "DiscordEmulator",
    "GatewayRecord",
    "InteractionRecord",
    "StoredMessage",
    "point_discord_at",
    "point_discord_at_from_env",
]
