"""The one line for each start-up failure (bot/discord/connect_errors.py), without Discord."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import discord
import pytest
from aiohttp.client_reqrep import ConnectionKey

from bot.discord.connect_errors import (
    CONNECT_ERRORS,
    EXIT_FIX_SETTINGS,
    EXIT_TRY_AGAIN,
    GatewayStartupError,
    describe_connect_error,
)

TOKEN = "MTIzNDU2Nzg5.connect-errors.secret"
KEY = ConnectionKey("discord.com", 443, True, True, None, None, None)


def http_error(cls: type[discord.HTTPException], status: int, text: str) -> discord.HTTPException:
    response = SimpleNamespace(status=status, reason="Reason")
    return cls(response, {"message": text, "code": 0})  # type: ignore[arg-type]


def gateway_failure(cause: BaseException) -> GatewayStartupError:
    try:
        raise GatewayStartupError("failed before READY") from cause
    except GatewayStartupError as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "phrase", "code"),
    [
        (
            aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known")),
            "does not resolve",
            1,
        ),
        (aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused")), "refused", 1),
        (aiohttp.ClientConnectorError(KEY, OSError(101, "Network is unreachable")), "network is down", 1),
        (TimeoutError(), "no answer in time", 1),
        (discord.LoginFailure("Improper token has been passed."), "Reset Token", 2),
        (discord.PrivilegedIntentsRequired(None), "MESSAGE CONTENT INTENT", 2),
        (http_error(discord.Forbidden, 403, "Missing Access"), "applications.commands", 2),
        (http_error(discord.DiscordServerError, 502, "Bad Gateway"), "discordstatus.com", 1),
        (gateway_failure(discord.gateway.ReconnectWebSocket(None)), "lost during start-up", 1),
    ],
)
def test_each_failure_is_one_line_with_a_remedy(exc: BaseException, phrase: str, code: int) -> None:
    assert isinstance(exc, (*CONNECT_ERRORS, GatewayStartupError))
    failure = describe_connect_error(exc, api_host="discord.com", token=TOKEN)
    assert phrase in failure.line and "\n" not in failure.line
    assert failure.exit_code == {1: EXIT_TRY_AGAIN, 2: EXIT_FIX_SETTINGS}[code]


def test_the_token_and_line_breaks_never_reach_the_line() -> None:
    exc = http_error(discord.HTTPException, 400, f"bad request\nfor {TOKEN}\nsee logs")
    line = describe_connect_error(exc, api_host="discord.com", token=TOKEN).line
    assert TOKEN not in line and "\n" not in line and "bad request" in line


def test_local_file_errors_are_not_taken_for_network_failures() -> None:
    # start-up (database folder, model) runs inside login(): its OSErrors must not read "cannot reach Discord"
    assert not isinstance(PermissionError(13, "Permission denied"), CONNECT_ERRORS)
    assert not isinstance(FileNotFoundError(2, "No such file"), CONNECT_ERRORS)
