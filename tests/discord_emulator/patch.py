"""Point discord.py at a Discord API emulator instead of discord.com.

Deliberately free of test-only imports (only ``discord`` and ``yarl``, which
discord.py itself needs) so the bot's entry point can import it, or copy the
function, and call it when ``DISCORD_API_BASE`` is set::

    from tests.discord_emulator.patch import point_discord_at_from_env
    point_discord_at_from_env()          # no-op unless DISCORD_API_BASE is set

What has to change, from reading discord.py 2.7:

* ``discord.http.Route.BASE``: every REST call, webhooks and interaction
  callbacks included, is built from it when the ``Route`` is created.
* ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``: ``Client.connect``
  does not ask ``GET /gateway/bot`` for the URL; it opens this constant
  (and falls back to it after an INVALID_SESSION). Only ``AutoShardedClient``
  asks the REST endpoint.
* ``discord.asset.Asset.BASE``: avatar/icon URLs, so ``Asset.read()`` hits the
  emulator's placeholder CDN rather than cdn.discordapp.com.

Attachment URLs need nothing: the emulator hands out its own URLs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

ENV_VAR = "DISCORD_API_BASE"
_API_SUFFIX = re.compile(r"/api(/v\d+)?/?$")


def point_discord_at(base_url: str, *, gateway_url: str | None = None) -> Callable[[], None]:
    """Send discord.py's REST, gateway and CDN traffic to ``base_url`` (e.g. ``http://127.0.0.1:8765``).

    ``base_url`` may also end in ``/api`` or ``/api/v10``. The gateway defaults
    to ``ws://<same host:port>/gateway``. Returns a function that restores the
    previous values (tests call it on teardown; a bot never needs to).
    """
    import discord.asset
    import discord.gateway
    import discord.http
    import yarl

    root = _API_SUFFIX.sub("", base_url.rstrip("/"))
    if not root.startswith(("http://", "https://")):
        raise ValueError(f"{ENV_VAR} must be an http(s) URL, got {base_url!r}")
    ws_root = "ws" + root[len("http") :]
    previous = (
        discord.http.Route.BASE,
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
        discord.asset.Asset.BASE,
    )
    discord.http.Route.BASE = f"{root}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url or f"{ws_root}/gateway")
    discord.asset.Asset.BASE = f"{root}/cdn"

    def restore() -> None:
        (
            discord.http.Route.BASE,
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
            discord.asset.Asset.BASE,
        ) = previous

    return restore


def point_discord_at_from_env(environ: dict[str, str] | None = None) -> bool:
    """Call :func:`point_discord_at` with ``$DISCORD_API_BASE`` if it is set; return whether it was."""
    env = os.environ if environ is None else environ
    base = env.get(ENV_VAR, "").strip()
    if not base:
        return False
    point_discord_at(base)
    return True
