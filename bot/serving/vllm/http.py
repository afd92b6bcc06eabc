"""One vLLM OpenAI-compatible server over HTTP: models, tokenizer probe, runtime LoRA
load/unload, and streamed completions (server-sent events).

aiohttp is used because discord.py already depends on it: no new package, and one event-loop
friendly client for the whole bot. Every error raised here names the server, so an operator
reading one line knows which of several servers is meant.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)
# vLLM's API server (uvicorn) closes a connection idle for VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by
# default; aiohttp keeps idle connections 15 s. A request sent on a connection the server is
# closing fails before the server read it (aio-libs/aiohttp#9138), so the pool's keep-alive stays
# below the server's (``engine.vllm_keepalive_s``) and such a failure is retried on a fresh one.
SERVER_KEEPALIVE_S = 5.0
DEFAULT_KEEPALIVE_S = 4.0
# A reply is finished only by these; vLLM's others are "abort" (restarted, drained, asleep),
# "error" and "repetition" (vllm/v1/engine/__init__.py: FinishReason).
SERVER_FINISHED = frozenset({"stop", "length"})


def connection_pool(keepalive_s: float = DEFAULT_KEEPALIVE_S) -> aiohttp.ClientSession:
    """The bot's pool of connections to its vLLM servers: no connection cap (every outstanding
    stream holds one; the queue size bounds them), idle connections dropped after ``keepalive_s``."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive_s))


def fresh_connections() -> aiohttp.ClientSession:
    """Connections used once and closed: for the retry of a request whose pooled connection the
    server had already closed, so that retry cannot meet another stale one."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))


def _never_reached_the_server(exc: BaseException) -> bool:
    """A failure on an established connection before any byte of the response: the server closed
    it (keep-alive expiry) or reset it. Not a refused connect, not a timeout (those say the
    server is down or stuck)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return False
    return isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
# A sample line of either counter (Prometheus text format), any labels, not its _created twin.
_PREFIX_COUNTER = re.compile(r"^vllm:prefix_cache_(queries|hits)(?:_total)?(?:\{[^}]*\})?\s+(\S+)\s*$", re.M)


class ServerError(RuntimeError):
    """A request to one server failed; the message names the server and says why."""

    def __init__(self, url: str, message: str, status: int | None = None) -> None:
        super().__init__(f"vLLM server {url}: {message}")
        self.url = url
        self.status = status


class ServerUnavailable(ServerError):
    """The server could not be reached, refused, or failed (5xx): another server may do."""


class ModelNotFound(ServerError):
    """The server answered 404 for the model name: the adapter is not (or no longer) loaded there."""


class StreamNotFinished(ServerUnavailable):
    """The stream ended without a finish reason that means "finished" (``abort`` when the server
    is restarted, drained or put to sleep; ``error``; ``repetition``; none at all)."""


@dataclass(frozen=True)
class ServedModels:
    """What ``GET /v1/models`` lists: the base model's id and the LoRA adapters' ids."""

    base: str
    max_model_len: int | None
    adapters: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class PrefixCacheCounters:
    """vLLM's prefix-cache counters since the server started, in prompt tokens."""

    queries: float
    hits: float


@dataclass(frozen=True)
class CompletionChunk:
    """One server-sent event of a streamed completion (a single choice)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None  # None while streaming; "stop" | "length" | "abort" at the end
    stop_reason: str | int | None  # the stop string that ended it; None for EOS


def _first_line(text: str, limit: int = 300) -> str:
    """The useful part of an error body: vLLM's ``message`` field if JSON, else the first line."""
    try:
        body = json.loads(text)
        message = body.get("message") or body.get("error", {}).get("message") or body.get("detail")
        if message:
            text = str(message)
    except (ValueError, AttributeError):
        pass
    line = " ".join(text.strip().split())
    return line[:limit] or "(empty answer)"


class VllmClient:
    """Calls one server. ``url`` is its base URL (``http://host:8000``, with or without ``/v1``)."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        connect_timeout_s: float = 5.0,
        fresh: aiohttp.ClientSession | None = None,
    ) -> None:
        url = url.rstrip("/")
        self.url = url[: -len("/v1")] if url.endswith("/v1") else url
        self._session = session
        self._fresh = fresh or session  # the retry's connections (see fresh_connections)
        self.stale_retries = 0  # requests retried because the server had closed their connection
        self._connect_timeout_s = connect_timeout_s
        # Short calls (health, models, tokenize) must not hang a health check for long.
        self._short = aiohttp.ClientTimeout(
            total=max(connect_timeout_s * 2, 5.0), sock_connect=connect_timeout_s
        )
        # Loading an adapter reads files and may compile: allow longer, still bounded.
        self._load = aiohttp.ClientTimeout(total=120.0, sock_connect=connect_timeout_s)
        # A stream may run for minutes; only connecting is bounded (the ticket has its own deadline).
        self._stream = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=None)

    def __repr__(self) -> str:
        return f"VllmClient({self.url!r})"

    async def _send(self, method: str, path: str, timeout: aiohttp.ClientTimeout, **kwargs: Any) -> Any:
        """Send a request and return its response (headers read, body not yet).

        A failure before any byte of the response on a pooled connection means the server had
        closed (or reset) it, not that the server is down: it is retried once on a fresh
        connection, and only that retry's failure is raised (aiohttp's errors, for the caller).
        aiohttp retries idempotent methods (GET) on a reused connection itself; POSTs
        (completions, tokenize, adapter loads) are what this adds.
        """
        try:
            return await self._session.request(method, self.url + path, timeout=timeout, **kwargs)
        except (aiohttp.ClientError, OSError) as exc:
            if not _never_reached_the_server(exc):
                raise
            self.stale_retries += 1
            log.info("vLLM server %s closed a pooled connection (%s); retrying on a fresh one", self.url, exc)
        return await self._fresh.request(method, self.url + path, timeout=timeout, **kwargs)

    async def _request(self, method: str, path: str, timeout: aiohttp.ClientTimeout, **kwargs: Any) -> Any:
        """One JSON call; raises ServerUnavailable, ModelNotFound (404) or ServerError (other 4xx)."""
        try:
            async with await self._send(method, path, timeout, **kwargs) as resp:
                text = await resp.text()
                if resp.status >= 500:
                    raise ServerUnavailable(
                        self.url, f"{path} answered {resp.status}: {_first_line(text)}", resp.status
                    )
                if resp.status == 404:
                    raise ModelNotFound(self.url, f"{path} answered 404: {_first_line(text)}", 404)
                if resp.status >= 400:
                    raise ServerError(
                        self.url, f"{path} answered {resp.status}: {_first_line(text)}", resp.status
                    )
                return json.loads(text) if text.strip().startswith(("{", "[")) else text
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerUnavailable(self.url, f"not reachable ({_describe(exc)})") from None

    async def health(self) -> None:
        """``GET /health``: 200 while the engine runs. vLLM answers 503 once its engine died, while
        ``/v1/models`` (the API process) may go on answering (vllm-project/vllm#39863). Raises
        ServerUnavailable (or ServerError for a 4xx: no vLLM there)."""
        try:
            await self._request("GET", "/health", self._short)
        except ServerUnavailable as exc:
            if exc.status is None:
                raise  # not reachable at all: the line says so
            raise ServerUnavailable(
                self.url,
                f"its engine is not running (/health answered {exc.status}, whatever /v1/models says)",
                exc.status,
            ) from None

    async def models(self) -> ServedModels:
        """The served base model and adapters. Raises ServerUnavailable or ServerError."""
        body = await self._request("GET", "/v1/models", self._short)
        try:
            entries = body["data"]
            bases = [m for m in entries if not m.get("parent")]
            base = bases[0] if bases else entries[0]
        except (TypeError, KeyError, IndexError):
            raise ServerError(self.url, "/v1/models did not list a model; is this a vLLM server?") from None
        adapters = frozenset(m["id"] for m in entries if m.get("parent"))
        return ServedModels(base["id"], base.get("max_model_len"), adapters)

    async def tokenize(self, model: str, text: str) -> list[int]:
        """Token ids of ``text`` (with special tokens) by the server's tokenizer for ``model``."""
        body = await self._request("POST", "/tokenize", self._short, json={"model": model, "prompt": text})
        try:
            return list(body["tokens"])
        except (TypeError, KeyError):
            raise ServerError(self.url, "/tokenize gave no tokens") from None

    async def prefix_cache(self) -> PrefixCacheCounters | None:
        """The server's ``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits`` counters
        (Prometheus text at ``/metrics``, summed over engines); None when it does not report them
        (metrics off, or an older vLLM). Raises ServerUnavailable when it cannot be reached."""
        try:
            text = await self._request("GET", "/metrics", self._short)
        except ServerUnavailable:
            raise
        except ServerError:
            return None
        if not isinstance(text, str):
            return None
        totals: dict[str, float] = {}
        for match in _PREFIX_COUNTER.finditer(text):
            totals[match[1]] = totals.get(match[1], 0.0) + float(match[2])
        if len(totals) < 2:
            return None
        return PrefixCacheCounters(totals["queries"], totals["hits"])

    async def load_lora(self, name: str, path: str) -> None:
        """Register an adapter folder (read by the server itself) under ``name``.

        An adapter the server already has under that name counts as loaded. Raises
        ServerUnavailable when the server cannot be reached, else ServerError with the
        server's reason (runtime loading off, LoRA disabled, rank too high, folder not found).
        """
        try:
            await self._request(
                "POST", "/v1/load_lora_adapter", self._load, json={"lora_name": name, "lora_path": path}
            )
        except ServerError as exc:
            reason = _tail(exc)
            if exc.status is None:
                raise  # not reachable: the pool marks the server down
            if exc.status == 400 and "already been loaded" in reason:
                return
            if exc.status == 404 and reason.strip() == "Not Found":
                # The route itself is missing: vLLM registers it only with runtime updating on.
                raise ServerError(
                    self.url,
                    "runtime adapter loading is off: start the server with --enable-lora and "
                    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
                    404,
                ) from None
            # A refusal (rank above --max-lora-rank comes back as a 500) is about this adapter,
            # not the server's health: report it as a plain ServerError.
            raise ServerError(
                self.url, f"could not load adapter {name!r} from {path}: {reason}", exc.status
            ) from None

    async def unload_lora(self, name: str) -> None:
        """Drop an adapter; an adapter the server does not have counts as dropped."""
        try:
            await self._request("POST", "/v1/unload_lora_adapter", self._short, json={"lora_name": name})
        except ModelNotFound:
            return

    async def probe_completion(self, model: str, prompt_ids: list[int], timeout_s: float) -> None:
        """Generate one token within ``timeout_s``: the engine itself answers, not only the API
        process. Raises ServerUnavailable when it does not (timed out, 5xx, unreachable)."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._connect_timeout_s)
        payload = {"model": model, "prompt": prompt_ids, "max_tokens": 1, "temperature": 0.0}
        await self._request("POST", "/v1/completions", timeout, json=payload)

    async def stream_completion(self, payload: dict[str, Any]) -> AsyncIterator[CompletionChunk]:
        """POST /v1/completions with ``stream: true``; yields chunks as they arrive.

        Leaving the iteration early (cancel, ``aclose``) closes the connection, which makes vLLM
        abort the request. Raises ServerUnavailable (connect failure, 5xx, the connection lost),
        ModelNotFound (404: the adapter is not loaded there) or ServerError (another 4xx).
        """
        body = {**payload, "stream": True}
        try:
            async with await self._send("POST", "/v1/completions", self._stream, json=body) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    kind = (
                        ServerUnavailable
                        if resp.status >= 500
                        else ModelNotFound
                        if resp.status == 404
                        else ServerError
                    )
                    raise kind(
                        self.url, f"completion answered {resp.status}: {_first_line(text)}", resp.status
                    )
                async for chunk in _sse_chunks(resp, self.url):
                    yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ServerUnavailable(self.url, f"connection lost ({_describe(exc)})") from None


async def _sse_chunks(resp: aiohttp.ClientResponse, url: str) -> AsyncIterator[CompletionChunk]:
    """Parse vLLM's event stream: ``data: {json}`` lines, ended by ``data: [DONE]``."""
    finished = False
    async for raw in resp.content:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators and comments
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            finished = True
            break
        event = json.loads(data)
        if "error" in event:
            raise ServerUnavailable(url, f"failed while generating: {_first_line(json.dumps(event))}")
        for choice in event.get("choices") or ():
            yield CompletionChunk(
                text=choice.get("text") or "",
                token_ids=tuple(choice.get("token_ids") or ()),
                finish_reason=choice.get("finish_reason"),
                stop_reason=choice.get("stop_reason"),
            )
    if not finished:
        raise ServerUnavailable(url, "the stream ended before the reply was complete")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tail(exc: ServerError) -> str:
    """A ServerError's reason without the 'vLLM server URL: path answered N:' prefix."""
    return str(exc).split(": ", 2)[-1]
