"""REST plumbing: routing under ``/api/v10``, auth, fault injection, recording, rate-limit headers.

Route handlers (``routes_*.py``) only see an :class:`ApiRequest` and return a
:class:`Reply` or raise :class:`ApiError`; everything every request shares is
here, so each request is recorded the same way whether it succeeded, failed in
a handler, hit an unknown route or was failed on purpose by ``fail_next``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from . import wire
from .errors import ApiError
from .messages import UploadedFile
from .recorder import Call

if TYPE_CHECKING:
    from .server import DiscordEmulator

log = logging.getLogger(__name__)

API_PREFIX_RE = re.compile(r"^/api(?:/v(?P<version>\d+))?(?P<path>/.*)$")
# Paths authenticated by the token in the URL rather than the Authorization header.
TOKEN_AUTH_RE = re.compile(r"^/(webhooks/\d+/[^/]+|interactions/\d+/[^/]+/callback)(/|$)")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    uploads: list[UploadedFile] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return self.json if isinstance(self.json, dict) else {}


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # None with 204 means no content
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[ApiRequest, dict[str, str]], Awaitable[Reply]]


class Router:
    """Tiny method+path router with ``{param}`` segments; first match wins."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, str, re.Pattern[str], Handler]] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
        self.routes.append((method.upper(), template, re.compile(f"^{pattern}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str], str] | None:
        for route_method, template, pattern, handler in self.routes:
            if route_method != method:
                continue
            m = pattern.match(path)
            if m:
                return handler, m.groupdict(), template
        return None

    def template_for(self, method: str, path: str) -> str:
        found = self.match(method, path)
        return found[2] if found else path


async def read_request(request: web.Request, path: str) -> ApiRequest:
    """Parse a JSON or multipart (``payload_json`` + ``files[n]``) body the way Discord does."""
    body: Any = None
    uploads: list[UploadedFile] = []
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue  # nested multipart: Discord does not use it
            name = part.name or ""
            if name == "payload_json":
                body = json.loads(await part.text())
            elif name.startswith("files[") or name == "file":
                index = int(name[6:-1]) if name.startswith("files[") else 0
                data = await part.read(decode=False)
                uploads.append(
                    UploadedFile(
                        index=index,
                        filename=part.filename or f"file{index}",
                        content_type=part.headers.get("Content-Type", "application/octet-stream"),
                        data=bytes(data),
                    )
                )
    elif request.can_read_body:
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("x-audit-log-reason",)}
    return ApiRequest(request.method, path, dict(request.query), body, uploads, headers)


def _bucket(template: str) -> str:
    return hashlib.sha1(template.encode()).hexdigest()[:16]


class RestApi:
    """The aiohttp handler for ``/api/...``."""

    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        self.router = Router()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        m = API_PREFIX_RE.match(request.path)
        assert m is not None
        path = m.group("path")
        method = request.method.upper()
        template = self.router.template_for(method, path)
        bucket = _bucket(template)
        try:
            api_request = await read_request(request, path)
        except ApiError as exc:
            api_request = ApiRequest(method, path, dict(request.query), None)
            reply, injected = Reply(exc.status, exc.body()), False
        else:
            reply, injected = await self._respond(api_request, request, bucket)
        if reply.status < 300 and reply.status != 429:
            reply.headers.setdefault("X-RateLimit-Limit", "50")
            reply.headers.setdefault("X-RateLimit-Remaining", "49")
            reply.headers.setdefault("X-RateLimit-Reset", f"{time.time() + 1:.3f}")
            reply.headers.setdefault("X-RateLimit-Reset-After", "1.000")
            reply.headers.setdefault("X-RateLimit-Bucket", bucket)
        call = Call(
            method=method,
            path=path,
            query=api_request.query,
            json=api_request.json,
            status=reply.status,
            response=reply.body,
            files=[
                {
                    "index": u.index,
                    "filename": u.filename,
                    "content_type": u.content_type,
                    "size": len(u.data),
                }
                for u in api_request.uploads
            ],
            headers=api_request.headers,
            injected=injected,
        )
        if method in MUTATING and reply.status < 400 and not injected:
            self.emu.state.save()
        self.emu.calls.append(call)
        if reply.status == 204 or reply.body is None:
            return web.Response(status=reply.status if reply.body is not None else 204, headers=reply.headers)
        # Exactly "application/json" (no charset): discord.py compares the header verbatim.
        headers = {**reply.headers, "Content-Type": "application/json"}
        body = wire.dumps(reply.body).encode("utf-8")
        return web.Response(status=reply.status, body=body, headers=headers)

    async def _respond(self, req: ApiRequest, request: web.Request, bucket: str) -> tuple[Reply, bool]:
        fault = self.emu.faults.take(req.method, req.path)
        if fault is not None:
            status, body, headers = fault.response(bucket)
            return Reply(status, body, headers), True
        if not TOKEN_AUTH_RE.match(req.path):
            auth = request.headers.get("Authorization", "")
            token = auth[4:] if auth.startswith("Bot ") else None
            if not self.emu.check_token(token):
                return Reply(401, {"message": "401: Unauthorized", "code": 0}), False
        found = self.router.match(req.method, req.path)
        if found is None:
            self.emu.unhandled.append(f"{req.method} {req.path}")
            log.warning("discord emulator: unhandled route %s %s", req.method, req.path)
            return Reply(404, {"message": "404: Not Found", "code": 0}), False
        handler, params, _ = found
        try:
            return await handler(req, params), False
        except ApiError as exc:
            return Reply(exc.status, exc.body()), False
