"""Several vLLM servers: health checks, routing by conversation then by load, per-server adapter sets.

A server is *healthy* when ``/health`` answers 200 (its engine runs: vLLM's API process can go on
answering ``/v1/models`` after the engine died, vllm-project/vllm#39863), ``/v1/models`` lists
its model and adapters, and its tokenizer gives the bot's token ids for a probe text (so the
prompts the bot renders mean the same thing there). A server that let a request wait longer than
the first-token bound is *suspect* (its engine may hang while ``/health`` still answers): out of
rotation until a one-token test completion answers within that bound. A request goes to
the healthy server with the fewest outstanding requests among those that have its adapter,
except that a request of a conversation (a channel) goes back to the server that answered that
conversation last while it is healthy, has the adapter and is not overloaded (at most
``AFFINITY_SLACK`` requests more than the least-loaded candidate): that server's prefix cache
holds the conversation's earlier prompts (SGLang's router does the same, cache-aware with a
load-balance threshold).
A server that fails a request is taken out of rotation at once and put back by the next health
check that passes; a server whose adapters vanished (it restarted) gets them registered again
through the ``on_ready`` callback before it serves requests that need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from cachetools import LRUCache

from bot.serving.generation import ServerStatus
from bot.serving.vllm.http import PrefixCacheCounters, ServerError, VllmClient

DEFAULT_FIRST_TOKEN_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)

# Japanese and ASCII both, so a tokenizer for another language or vocabulary differs here.
TOKENIZER_PROBE = "こんにちは、魔理沙だぜ。ずんだ餅なのだ！ Hello 123"
# A conversation leaves its server when that one has this many more requests outstanding than the
# least-loaded candidate: one reused prefix is not worth waiting behind several whole replies.
AFFINITY_SLACK = 4
# Conversations remembered (least recently routed forgotten first).
AFFINITY_ENTRIES = 4096


@dataclass(eq=False)
class Server:
    """One server's state as this process sees it."""

    client: VllmClient
    healthy: bool = False
    suspect: bool = False  # no first token within the bound: back only after a test completion
    problem: str | None = "not checked yet"
    base_model: str | None = None  # the id the server serves its base model under
    max_model_len: int | None = None
    outstanding: int = 0
    served: int = 0
    failed: int = 0
    adapters: set[str] = field(default_factory=set)  # versioned adapter names loaded there
    adapter_problems: dict[str, str] = field(default_factory=dict)  # versioned name -> one line
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one adapter change at a time per server
    last_pick: int = 0
    prefix_cache: PrefixCacheCounters | None = None  # the server's counters at the last health check

    @property
    def url(self) -> str:
        return self.client.url

    def status(self) -> ServerStatus:
        return ServerStatus(
            url=self.url,
            healthy=self.healthy,
            outstanding=self.outstanding,
            served=self.served,
            failed=self.failed,
            adapters=len(self.adapters),
            problem=self.problem,
            adapter_problems=tuple(self.adapter_problems.values()),
            prefix_cache_hit_rate=(
                self.prefix_cache.hits / self.prefix_cache.queries
                if self.prefix_cache is not None and self.prefix_cache.queries
                else None
            ),
        )


class ServerPool:
    """The servers, their health loop and the routing rule."""

    def __init__(
        self,
        clients: Sequence[VllmClient],
        probe_ids: Sequence[int],
        bot_base_model: str,
        interval_s: float = 5.0,
        first_token_timeout_s: float = DEFAULT_FIRST_TOKEN_TIMEOUT_S,
    ) -> None:
        self.servers = [Server(c) for c in clients]
        self.first_token_timeout_s = first_token_timeout_s
        self._probe_ids = list(probe_ids)
        self._bot_base_model = bot_base_model
        self.interval_s = interval_s
        self.on_ready: Callable[[Server], Awaitable[None]] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._picks = itertools.count(1)
        self._checking: dict[Server, asyncio.Task[None]] = {}
        self._affinity: LRUCache[str, Server] = LRUCache(maxsize=AFFINITY_ENTRIES)

    def healthy(self) -> list[Server]:
        return [s for s in self.servers if s.healthy]

    def pick(
        self,
        adapter: str | None,
        exclude: set[Server] | frozenset[Server] = frozenset(),
        conversation: str | None = None,
    ) -> Server | None:
        """The server for a request: the one that last served ``conversation`` while it can
        (healthy, not excluded, has ``adapter``, at most ``AFFINITY_SLACK`` requests above the
        least-loaded candidate), else the healthy server with the fewest outstanding requests
        that has ``adapter`` (None: the base model, any healthy server); ties go to the least
        recently picked. The choice is remembered for ``conversation``."""
        candidates = [
            s
            for s in self.servers
            if s.healthy and s not in exclude and (adapter is None or adapter in s.adapters)
        ]
        if not candidates:
            return None
        server = min(candidates, key=lambda s: (s.outstanding, s.last_pick))
        if conversation is not None:
            previous = self._affinity.get(conversation)
            if previous in candidates and previous.outstanding <= server.outstanding + AFFINITY_SLACK:
                server = previous
            self._affinity[conversation] = server  # (re)set: the most recently used
        server.last_pick = next(self._picks)
        return server

    def mark_down(self, server: Server, reason: str) -> None:
        """Take a server out of rotation until a health check passes again."""
        if server.healthy:
            log.warning("%s; its requests go to the other servers until it answers again", reason)
        server.healthy = False
        server.problem = reason
        self.check_soon(server)

    def mark_suspect(self, server: Server, *, stalled: bool = False) -> None:
        """A request saw no first token within the bound (or, ``stalled``, no next one): the
        engine may hang behind a live API process. Out of rotation (the next request goes
        elsewhere or is told "busy" at once) until a health check's one-token test completion
        answers within the bound."""
        what = "a stream stalled: no token for" if stalled else "no first token within"
        reason = (
            f"vLLM server {server.url}: {what} {self.first_token_timeout_s:g} s "
            "(its engine may be hung or overloaded); not used until a test completion answers"
        )
        server.suspect = True
        self.mark_down(server, reason)

    def check_soon(self, server: Server) -> None:
        """Start a health check of one server now, unless one is already running."""
        task = self._checking.get(server)
        if task is None or task.done():
            self._checking[server] = asyncio.get_running_loop().create_task(self.check(server))

    async def check(self, server: Server) -> None:
        """Probe one server: reachable, same tokenizer, adapters still there (else re-register)."""
        try:
            await server.client.health()
            models = await server.client.models()
            if models.base != server.base_model or not server.healthy:
                ids = await server.client.tokenize(models.base, TOKENIZER_PROBE)
                if ids != self._probe_ids:
                    self._set_down(
                        server,
                        f"vLLM server {server.url}: serves {models.base!r}, whose tokenizer differs from the "
                        f"bot's base model {self._bot_base_model!r}; start it with the same model",
                    )
                    return
            if server.suspect:
                await server.client.probe_completion(models.base, self._probe_ids, self.first_token_timeout_s)
        except ServerError as exc:
            reason = str(exc)
            if server.suspect:
                reason = (
                    f"vLLM server {server.url}: suspect since a request got no token within "
                    f"{self.first_token_timeout_s:g} s, and the test completion failed: {_after_url(exc)}"
                )
            self._set_down(server, reason)
            return
        server.suspect = False
        lost = server.adapters - models.adapters
        if lost:
            log.warning(
                "vLLM server %s lost adapters %s (restarted?); registering them again",
                server.url,
                sorted(lost),
            )
        # Figures only: a server that does not report them still serves.
        with contextlib.suppress(ServerError):
            server.prefix_cache = await server.client.prefix_cache()
        # The server's own listing is the truth: it survives our marking it down, not its restart.
        server.adapters = set(models.adapters)
        server.base_model = models.base
        server.max_model_len = models.max_model_len
        if not server.healthy:
            log.warning("vLLM server %s is serving (%s)", server.url, models.base)
            server.adapter_problems.clear()  # a restarted server may now accept what it refused
        server.healthy = True
        server.problem = None
        if self.on_ready is not None:
            await self.on_ready(server)

    def _set_down(self, server: Server, reason: str) -> None:
        if server.healthy or server.problem != reason:
            log.error("%s", reason)
        server.healthy = False
        server.problem = reason
        server.adapters.clear()  # unknown until it answers again; then the listing decides

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(s) for s in self.servers))

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="vllm-health")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_all()
            except Exception:  # a bug in one check must not stop health checking for good
                log.exception("vLLM health check failed")

    async def stop(self) -> None:
        tasks = [t for t in [self._loop_task, *self._checking.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop_task = None


def _after_url(exc: ServerError) -> str:
    """A ServerError's reason without its 'vLLM server URL: ' prefix."""
    return str(exc).split(": ", 1)[-1]
