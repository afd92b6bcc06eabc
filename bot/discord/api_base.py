"""Where the Discord API is: discord.com, or the loopback emulator named by DISCORD_API_BASE."""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)


def point_discord_at(base_url: str) -> None:
    """Send discord.py's REST, gateway and CDN traffic to ``base_url`` (the Discord emulator).

    ``base_url`` is ``http://host:port``, optionally ending in ``/api`` or ``/api/v10``. Three
    places need it (discord.py 2.7): ``Route.BASE`` (every REST call, webhooks and interaction
    callbacks included), ``DiscordWebSocket.DEFAULT_GATEWAY`` (a plain client never asks
    ``/gateway/bot``) and ``Asset.BASE`` (avatars). Mirrors tests/discord_emulator/patch.py,
    which the bot cannot import.
    """
    import discord.asset
    import discord.gateway
    import discord.http
    import yarl

    root = re.sub(r"/api(/v\d+)?/?$", "", base_url.strip().rstrip("/"))
    if not root.startswith(("http://", "https://")):
        raise ValueError(f"DISCORD_API_BASE must be an http(s) URL, got {base_url!r}")
    discord.http.Route.BASE = f"{root}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL("ws" + root[len("http") :] + "/gateway")
    discord.asset.Asset.BASE = f"{root}/cdn"
    log.warning("Discord API base set to %s", root)


def apply_api_base_from_env(environ: dict[str, str] | None = None) -> str | None:
    base = (os.environ if environ is None else environ).get("DISCORD_API_BASE", "").strip()
    if base:
        point_discord_at(base)
        return base
    return None
