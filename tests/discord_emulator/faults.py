"""REST fault injection: make the next N matching requests fail the way Discord fails.

Rate limits and 5xx errors are where bots break in production (lost replies,
double posts after a retry), so the faults reproduce the exact headers and
bodies discord.py keys its retry logic on: a 429 needs ``retry_after`` in the
JSON *and* a ``Via`` header, or discord.py treats it as a Cloudflare ban.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

_STATUS_MESSAGES = {
    400: "400: Bad Request",
    401: "401: Unauthorized",
    403: "Missing Permissions",
    404: "404: Not Found",
    429: "You are being rate limited.",
    500: "500: Internal Server Error",
    502: "502: Bad Gateway",
    503: "503: Service Unavailable",
    504: "504: Gateway Timeout",
}
_STATUS_CODES = {403: 50013}


@dataclass
class Fault:
    """A pending fault; ``hits`` counts how many requests it has failed so far."""

    method: str
    path_regex: str
    status: int
    count: int
    retry_after: float = 1.0
    scope: str = "user"
    code: int | None = None
    message: str | None = None
    body: dict[str, Any] | None = None
    skip: int = 0  # let this many matching requests through first (fail the 2nd chunk, not the 1st)
    hits: int = 0
    _pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._pattern = re.compile(self.path_regex)
        self.method = self.method.upper()

    @property
    def remaining(self) -> int:
        return self.count - self.hits

    def matches(self, method: str, path: str) -> bool:
        return (
            self.remaining > 0
            and self.method in ("*", method.upper())
            and self._pattern.search(path) is not None
        )

    def response(self, bucket: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Status, JSON body and headers for one injected failure."""
        self.hits += 1
        if self.body is not None:
            body = dict(self.body)
        else:
            body = {
                "message": self.message or _STATUS_MESSAGES.get(self.status, f"{self.status}"),
                "code": self.code if self.code is not None else _STATUS_CODES.get(self.status, 0),
            }
        headers: dict[str, str] = {}
        if self.status == 429:
            is_global = self.scope == "global"
            body.setdefault("retry_after", self.retry_after)
            body.setdefault("global", is_global)
            headers.update(
                {
                    "Retry-After": str(max(1, math.ceil(self.retry_after))),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": f"{self.retry_after:.3f}",
                    "X-RateLimit-Bucket": bucket,
                    "X-RateLimit-Scope": self.scope,
                    # discord.py treats a 429 without Via as a Cloudflare ban and gives up.
                    "Via": "1.1 google",
                }
            )
            if is_global:
                headers["X-RateLimit-Global"] = "true"
        return self.status, body, headers


class FaultInjector:
    """Ordered list of pending faults; the first one matching a request fires."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(method, path):
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                return fault
        return None

    def clear(self) -> None:
        self.faults.clear()
