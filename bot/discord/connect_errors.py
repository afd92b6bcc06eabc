"""One line for each way connecting to Discord fails at start-up, instead of a traceback.

``python -m bot`` and ``python -m bot sync-commands`` print what :func:`describe_connect_error`
returns and exit non-zero: an operator who mistyped the token, forgot an intent switch or has
no network reads what failed and what to do. Once the bot has been ready, a dropped gateway
is discord.py's business (it resumes); only failures before the first READY end up here.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import discord.gateway
from discord.errors import ConnectionClosed

from bot.config import redact

# Exit codes: the operator must change something (token, portal switch, guild) / try again later.
EXIT_FIX_SETTINGS = 2
EXIT_TRY_AGAIN = 1

# The exceptions connecting may raise that this module can put into one line. Not OSError as a
# whole: a PermissionError from the database folder (start-up runs inside login) is no network
# failure. aiohttp wraps socket errors (DNS, refused, unreachable) in ClientConnectorError.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    discord.LoginFailure,
    discord.PrivilegedIntentsRequired,
    discord.HTTPException,
    discord.GatewayNotFound,
    ConnectionClosed,
    aiohttp.ClientError,
    ConnectionError,
    asyncio.TimeoutError,
)

# https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-close-event-codes
_CLOSE_CODES = {
    4004: "Discord refused the token (DISCORD_TOKEN); copy it again from the developer portal (Bot → Reset Token)",
    4010: "invalid shard: the bot runs unsharded; check for a second copy of the bot with other settings",
    4011: "this bot is in too many servers to run unsharded",
    4013: "Discord rejected the gateway intents the bot asked for",
}


class GatewayStartupError(Exception):
    """The gateway connection failed before the first READY; ``__cause__`` is what discord.py raised."""


@dataclass(frozen=True)
class ConnectFailure:
    """What to print (without the ``error:`` prefix) and the exit code."""

    line: str
    exit_code: int


def describe_connect_error(exc: BaseException, *, api_host: str, token: str | None = None) -> ConnectFailure:
    """One line (no newline, never the token) for a failure while logging in, connecting or syncing.

    ``exc`` is one of ``CONNECT_ERRORS`` or a :class:`GatewayStartupError`; ``api_host`` names
    where the bot tried to go (``discord.com`` or the ``DISCORD_API_BASE`` host) for messages
    about the network. Never raises; an exception it does not know still gets one line.
    """
    failure = _describe(exc, api_host)
    line = " ".join(redact(failure.line, token).split())  # one line, whatever the exception text held
    return ConnectFailure(line, failure.exit_code)


def _describe(exc: BaseException, host: str) -> ConnectFailure:
    if isinstance(exc, GatewayStartupError) and exc.__cause__ is not None:
        cause = exc.__cause__
        if isinstance(cause, ConnectionClosed) and cause.code in _CLOSE_CODES:
            return ConnectFailure(_CLOSE_CODES[cause.code], EXIT_FIX_SETTINGS)
        if isinstance(cause, ConnectionClosed) and cause.code == 4014:
            return _describe(discord.PrivilegedIntentsRequired(None), host)
        what = _network_reason(cause)
        return ConnectFailure(
            f"the connection to Discord's gateway was lost during start-up ({what}); "
            "check the network and start the bot again",
            EXIT_TRY_AGAIN,
        )
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        return ConnectFailure(
            "Discord refused the Message Content intent: in the developer portal open your application → "
            "Bot → Privileged Gateway Intents, turn on MESSAGE CONTENT INTENT, save, and start the bot again",
            EXIT_FIX_SETTINGS,
        )
    if isinstance(exc, discord.LoginFailure):
        return ConnectFailure(
            "Discord refused the token (DISCORD_TOKEN, 401 Unauthorized); copy it again from the developer "
            "portal (your application → Bot → Reset Token)",
            EXIT_FIX_SETTINGS,
        )
    if isinstance(exc, discord.Forbidden):
        return ConnectFailure(
            f"Discord refused the request (403: {exc.text or 'Missing Access'}); invite the bot to that server "
            "with the 'bot' and 'applications.commands' scopes, or check the server id",
            EXIT_FIX_SETTINGS,
        )
    if isinstance(exc, discord.NotFound):
        return ConnectFailure(
            f"Discord does not know what was asked for (404: {exc.text or 'Not Found'}); check the server id",
            EXIT_FIX_SETTINGS,
        )
    if isinstance(exc, discord.DiscordServerError):
        return ConnectFailure(
            f"Discord answered {exc.status} (a problem on Discord's side); try again in a few minutes "
            "(https://discordstatus.com)",
            EXIT_TRY_AGAIN,
        )
    if isinstance(exc, discord.HTTPException):
        return ConnectFailure(
            f"Discord answered {exc.status}: {exc.text or exc.response.reason}", EXIT_TRY_AGAIN
        )
    if isinstance(exc, discord.GatewayNotFound):
        return ConnectFailure(
            "Discord did not say where its gateway is (an outage); try again in a few minutes", EXIT_TRY_AGAIN
        )
    if isinstance(exc, ConnectionClosed):
        return ConnectFailure(
            f"Discord closed the gateway connection (code {exc.code}: {exc.reason or 'no reason given'}); "
            "start the bot again",
            EXIT_TRY_AGAIN,
        )
    return ConnectFailure(
        f"cannot reach Discord at {host} ({_network_reason(exc)}); check the network connection "
        "(and DISCORD_API_BASE if set), then start the bot again",
        EXIT_TRY_AGAIN,
    )


def _network_reason(exc: BaseException) -> str:
    """A few words for a network-level failure: DNS, refused, unreachable, timeout, closed."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the name {exc.host} does not resolve: no network or no DNS"
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "no answer in time"
    if isinstance(exc, discord.gateway.ReconnectWebSocket):
        return "the connection kept closing before Discord said READY"
    if isinstance(exc, ConnectionClosed):
        return f"closed with code {exc.code}" + (f": {exc.reason}" if exc.reason else "")
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error.errno
        if err == errno.ECONNREFUSED:
            return f"connection to {exc.host}:{exc.port} refused"
        if err in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "no route to the host: the network is down"
        return exc.os_error.strerror or type(exc.os_error).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class StartupShardLog(logging.Filter):
    """Before the first READY, a traceback logged by ``discord.shard`` is a start-up failure.

    ``AutoShardedClient.launch_shard`` logs a first connection that failed (gateway unreachable,
    handshake refused, timeout) with its traceback and retries it every 5 s for ever;
    ``Shard._handle_disconnect`` logs a lost connection with its traceback after dispatching
    ``disconnect``. Start-up ends with one ``error:`` line for either, so the record is dropped
    (``-v`` still logs the whole chain with that line) and its exception ends
    ``OshaberiClient.connect``.
    """

    def __init__(self, client: Any) -> None:  # an OshaberiClient (bot/discord/app.py)
        super().__init__("discord.shard")
        self.client = client

    def filter(self, record: logging.LogRecord) -> bool:
        client = self.client
        if client._was_ready or client._closing is not None or not record.exc_info:
            return True
        failure = record.exc_info[1]
        if failure is None:
            return True
        client._startup_failure(failure)
        return False


def ignore_outcome(task: asyncio.Future[Any]) -> None:
    """Done callback: fetch a task's exception so asyncio does not log it (its outcome is moot)."""
    if not task.cancelled():
        task.exception()
