"""Discord-shaped API errors.

Handlers raise :class:`ApiError` instead of building responses by hand so every
failure carries the JSON body discord.py parses (``code`` and ``message``, and
``errors`` for form validation), which is what a bot's error handling sees in
production.
"""

from __future__ import annotations

from typing import Any

# JSON error codes from the Discord API reference, named so handlers read well.
UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MEMBER = 10007
UNKNOWN_MESSAGE = 10008
UNKNOWN_ROLE = 10011
UNKNOWN_USER = 10013
UNKNOWN_WEBHOOK = 10015
UNKNOWN_INTERACTION = 10062
UNKNOWN_APPLICATION_COMMAND = 10063
CANNOT_EDIT_OTHERS_MESSAGE = 50005
EMPTY_MESSAGE = 50006
INVALID_FORM_BODY = 50035
INTERACTION_ALREADY_ACKNOWLEDGED = 40060


class ApiError(Exception):
    """An error response: HTTP status plus Discord's JSON error body."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def not_found(code: int, what: str) -> ApiError:
    return ApiError(404, code, f"Unknown {what}")


def form_error(field: str, error_code: str, message: str) -> ApiError:
    """A 50035 Invalid Form Body error for one field, nested the way Discord nests it."""
    return ApiError(
        400,
        INVALID_FORM_BODY,
        "Invalid Form Body",
        errors={field: {"_errors": [{"code": error_code, "message": message}]}},
    )
