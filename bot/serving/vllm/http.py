"""One vLLM OpenAI-compatible server over HTTP: models, tokenizer probe, runtime LoRA
load/unload, and streamed completions (server-sent events).

aiohttp is used because discord.py already depends on it: no new package, and one event-loop
friendly client for the whole bot. Every error raised here names the server, so an operator
reading one line knows which of several servers is meant.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

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

    def __init__(self, url: str, session: aiohttp.ClientSession, connect_timeout_s: float = 5.0) -> None:
        url = url.rstrip("/")
        self.url = url[: -len("/v1")] if url.endswith("/v1") else url
        self._session = session
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

    async def _request(self, method: str, path: str, timeout: aiohttp.ClientTimeout, **kwargs: Any) -> Any:
        """One JSON call; raises ServerUnavailable, ModelNotFound (404) or ServerError (other 4xx)."""
        try:
            async with self._session.request(method, self.url + path, timeout=timeout, **kwargs) as resp:
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

    async def stream_completion(self, payload: dict[str, Any]) -> AsyncIterator[CompletionChunk]:
        """POST /v1/completions with ``stream: true``; yields chunks as they arrive.

        Leaving the iteration early (cancel, ``aclose``) closes the connection, which makes vLLM
        abort the request. Raises ServerUnavailable (connect failure, 5xx, the connection lost),
        ModelNotFound (404: the adapter is not loaded there) or ServerError (another 4xx).
        """
        body = {**payload, "stream": True}
        try:
            async with self._session.post(
                self.url + "/v1/completions", json=body, timeout=self._stream
            ) as resp:
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
