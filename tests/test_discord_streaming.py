"""Discord's errors as the streamed-reply pacer sees them (bot/discord/streaming.py)."""

from __future__ import annotations

from types import SimpleNamespace

import discord
import pytest

from bot.discord.streaming import retry_after_s, send_error


def http_error(
    status: int, headers: dict[str, str] | None = None, body: object = ""
) -> discord.HTTPException:
    response = SimpleNamespace(status=status, reason="x", headers=headers or {})
    cls = {404: discord.NotFound, 403: discord.Forbidden}.get(status, discord.HTTPException)
    return cls(response, body)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (discord.RateLimited(7.5), 7.5),
        (http_error(429, {"Retry-After": "2"}), 2.0),  # what discord.py raises after five 429s
        (http_error(429, {}, {"message": "You are being rate limited.", "code": 0}), 1.0),
        (http_error(429, {"Retry-After": "soon"}), 1.0),
        (http_error(500), None),
        (http_error(404), None),
        (ValueError("x"), None),
    ],
)
def test_retry_after_is_read_from_a_rate_limit_error(exc: BaseException, expected: float | None) -> None:
    assert retry_after_s(exc) == expected


def test_a_deleted_message_is_gone_and_other_errors_are_not() -> None:
    assert send_error(http_error(404), "editing").gone
    assert not send_error(http_error(403), "editing").gone
    error = send_error(http_error(429, {"Retry-After": "3"}), "editing")
    assert error.retry_after == 3.0 and not error.gone and "editing" in str(error)
