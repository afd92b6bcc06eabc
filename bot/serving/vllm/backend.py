"""The vLLM serving backend: the bot's requests served by one or more vLLM servers.

The bot process loads the tokenizer only (no weights). Each request is one streamed
completion on the healthy server with the fewest outstanding requests that has the persona's
adapter. A server that fails before any of the reply was shown has the request retried on
another; one that fails after gives that user a clear "try again" (never a second, different
answer); no healthy server at all gives the same busy answer as a full queue. A stream that
ends without a finish reason meaning "finished" (``abort`` …) is such a failure too, and a
request with no first token within the bound marks its server suspect and moves on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any

import aiohttp

from bot.config import Settings
from bot.model.loading import ModelLoadError, encode_prompt, load_tokenizer
from bot.serving.generation import (
    BASE_ADAPTER,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    QueueFullError,
    RequestCancelledError,
    WorkerStats,
    WorkerStoppedError,
)
from bot.serving.ticket import Ticket
from bot.serving.vllm.adapters import AdapterRegistry, PublishedAdapter
from bot.serving.vllm.http import (
    SERVER_FINISHED,
    ModelNotFound,
    ServerError,
    ServerUnavailable,
    StreamNotFinished,
    VllmClient,
    connection_pool,
    fresh_connections,
)
from bot.serving.vllm.pool import TOKENIZER_PROBE, Server, ServerPool
from bot.serving.vllm.request import StreamDecoder, completion_payload, prompt_ids
from personas.card import CardSet
from personas.render import TokenizerFacts

log = logging.getLogger(__name__)

MID_STREAM = "The model server stopped while writing this reply. Please try again."
RECENT = 64


class VllmBackend:
    """A :class:`~bot.serving.backend.ServingBackend` over vLLM OpenAI-compatible servers."""

    def __init__(
        self,
        settings: Settings,
        cards: CardSet,
        tokenizer: Any,
        max_positions: int,
        session: aiohttp.ClientSession,
        pool: ServerPool,
        fresh: aiohttp.ClientSession | None = None,
    ) -> None:
        self.settings = settings
        self.cards = cards
        self.tokenizer = tokenizer
        self.facts = TokenizerFacts.from_tokenizer(tokenizer)
        self.base_model = settings.model.base_model
        self.max_positions = max_positions
        self.session = session
        self.fresh = fresh  # single-use connections for retries (closed with the backend)
        self.pool = pool
        self.registry = AdapterRegistry(pool, settings, cards)
        self._accepting = True
        self._tickets: dict[Ticket, asyncio.Task[None]] = {}
        self._recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=RECENT)
        self._served = 0
        self._failed = 0

    @classmethod
    async def start(cls, settings: Settings, cards: CardSet) -> VllmBackend:
        """Load the tokenizer, check every server, publish every persona's adapter.

        Servers that cannot be used are logged one line each and retried by the health loop;
        raises ModelLoadError when the tokenizer cannot be loaded.
        """
        tokenizer, max_positions = await asyncio.to_thread(_load_tokenizer, settings)
        probe = tokenizer(TOKENIZER_PROBE, add_special_tokens=True)["input_ids"]
        engine = settings.engine
        session = connection_pool(engine.vllm_keepalive_s)
        fresh = fresh_connections()
        clients = [VllmClient(url, session, engine.vllm_connect_timeout_s, fresh) for url in engine.vllm_urls]
        pool = ServerPool(
            clients,
            probe,
            settings.model.base_model,
            engine.vllm_health_interval_s,
            engine.vllm_first_token_timeout_s,
        )
        backend = cls(settings, cards, tokenizer, max_positions, session, pool, fresh)
        await pool.check_all()
        if pool.healthy():
            await backend.registry.publish_all()
        else:
            log.error(
                "no vLLM server is usable yet (each is checked again every %.0f s)", pool.interval_s
            )
        pool.start()
        return backend

    # -- ServingBackend ----------------------------------------------------------------

    def submit(self, request: GenerationRequest, timeout_s: float | None = None) -> Ticket:
        """Send a request; raises QueueFullError at once when no server is healthy or all are full."""
        if not self._accepting:
            raise WorkerStoppedError("The bot is shutting down and takes no new messages.")
        healthy = len(self.pool.healthy())
        capacity = self.settings.worker.queue_size * max(healthy, 1)
        if not healthy or len(self._tickets) >= capacity:
            raise QueueFullError(len(self._tickets), capacity)
        loop = asyncio.get_running_loop()
        ticket = Ticket(request, loop, timeout_s or self.settings.worker.request_timeout_s, self)
        self._tickets[ticket] = loop.create_task(self._serve(ticket))
        return ticket

    # -- TicketOwner: requests wait in the servers' own schedulers, not in a queue here --------

    def position_of(self, ticket: Ticket) -> int:
        return 0

    def abandon(self, ticket: Ticket) -> None:
        """Close the ticket's stream, which makes the server abort the request."""
        task = self._tickets.get(ticket)
        if task is not None:
            task.cancel()

    def adapter_for(self, persona_id: str) -> str:
        return persona_id if self.registry.has(persona_id) else BASE_ADAPTER

    def context_tokens(self, adapter: str) -> int:
        """The largest context among the healthy servers that may serve ``adapter`` (each one's
        ``max_model_len``, within the model's own); the model's when none is known."""
        current = self.registry.current.get(adapter)
        name = current.name if current is not None else None  # a canary is loaded beside it
        sizes = [self._context_of(s) for s in self.pool.healthy() if name is None or name in s.adapters]
        return max(sizes, default=self.max_positions)

    def _context_of(self, server: Server) -> int:
        return min(server.max_model_len or self.max_positions, self.max_positions)

    def stats(self) -> WorkerStats:
        tokens = sum(t for t, _ in self._recent)
        seconds = sum(s for _, s in self._recent)
        healthy = len(self.pool.healthy())
        counters = [s.prefix_cache for s in self.pool.servers if s.prefix_cache is not None]
        queries = sum(c.queries for c in counters)
        hits = sum(c.hits for c in counters)
        return WorkerStats(
            queue_depth=0,
            queue_capacity=self.settings.worker.queue_size * max(healthy, 1),
            in_flight=len(self._tickets),
            tokens_per_s=tokens / seconds if seconds else 0.0,
            batches_run=self._served,
            requests_failed=self._failed,
            adapters=self.registry.infos(),
            canaries=self.registry.canary_infos(),
            device=f"vLLM, {healthy} of {len(self.pool.servers)} servers healthy",
            servers=[s.status() for s in self.pool.servers],
            # The servers' own counters (since each started): prompt tokens found in their caches.
            prompt_tokens_reused=int(hits),
            prompt_tokens_computed=int(queries - hits),
            prefix_cache_hit_rate=hits / queries if queries else None,
        )

    async def reload(self, persona_id: str | None = None) -> list[str]:
        """Re-read ``CURRENT`` and ``CANARY`` (one persona, or all) and serve what they name;
        requests already running finish on the version they were admitted with. AdapterError
        for a named persona whose adapter or canary cannot be served (see AdapterRegistry.publish)."""
        if persona_id is not None:
            return [await self.registry.publish(persona_id)]
        return await self.registry.publish_all()

    async def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop taking requests, let running ones finish for up to ``drain_timeout``, fail the rest."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout
        while self._tickets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        leftovers = dict(self._tickets)
        for ticket in leftovers:
            ticket.abandon(WorkerStoppedError("The bot is shutting down; this message was not answered."))
        await asyncio.gather(*leftovers.values(), return_exceptions=True)
        await self.pool.stop()
        await self.registry.drain()
        await self.session.close()
        if self.fresh is not None:
            await self.fresh.close()

    # -- one request ---------------------------------------------------------------------

    async def _serve(self, ticket: Ticket) -> None:
        try:
            result = await self._generate(ticket)
        except asyncio.CancelledError:
            ticket._finish(exc=RequestCancelledError("The request was cancelled."))
        except GenerationError as exc:
            self._failed += 1
            ticket._finish(exc=exc)
        except Exception as exc:
            log.exception("a vLLM request failed")
            self._failed += 1
            error = GenerationError("The model failed while writing this reply. Please try again.")
            error.__cause__ = exc
            ticket._finish(exc=error)
        else:
            self._served += 1
            self._recent.append((result.new_tokens, result.seconds))
            ticket._finish(result=result)
        finally:
            self._tickets.pop(ticket, None)

    async def _generate(self, ticket: Ticket) -> GenerationResult:
        """Serve one request on the version it is admitted with (held until it ends)."""
        published = self.registry.admit(ticket.request.adapter)
        try:
            return await self._attempts(ticket, published)
        finally:
            self.registry.release(published)

    async def _attempts(self, ticket: Ticket, published: PublishedAdapter | None) -> GenerationResult:
        """Try healthy servers that have ``published`` until one answers (see the module doc)."""
        name = published.name if published is not None else None
        version = published.version if published is not None else None
        tried: set[Server] = set()
        refreshed: set[Server] = set()
        resized: set[Server] = set()
        while True:
            server = self.pool.pick(name, tried, ticket.request.conversation)
            if server is None and name is not None and self.pool.healthy():
                # Healthy servers exist but none has this version (all restarted?): register, retry.
                for candidate in self.pool.healthy():
                    if candidate not in refreshed:
                        refreshed.add(candidate)
                        await self.registry.ensure_on(candidate)
                server = self.pool.pick(name, tried, ticket.request.conversation)
            if server is None:
                raise QueueFullError(
                    len(self._tickets), self.settings.worker.queue_size * max(len(self.pool.healthy()), 1)
                )
            request, ids = self._fitted(ticket, server)
            decoder = StreamDecoder(self.tokenizer, request)
            payload = completion_payload(name or server.base_model or self.base_model, ids, request)
            server.outstanding += 1
            started = time.perf_counter()
            try:
                await self._stream(server, payload, ticket, decoder)
                server.served += 1
                return decoder.result(request.adapter, version, time.perf_counter() - started)
            except ModelNotFound as exc:
                server.failed += 1
                if decoder.emitted:
                    raise GenerationError(MID_STREAM) from exc
                # The adapter vanished there (a restart between health checks): re-check, retry.
                if server in refreshed:
                    tried.add(server)
                refreshed.add(server)
                server.adapters.discard(name or "")
                await self.pool.check(server)
            except TokenTimeout as exc:
                server.failed += 1
                self.pool.mark_suspect(server, stalled=exc.stalled)
                if decoder.emitted:
                    raise GenerationError(MID_STREAM) from None
                tried.add(server)  # nothing was shown: another server may answer, else "busy"
            except ServerUnavailable as exc:
                server.failed += 1
                self.pool.mark_down(server, str(exc))
                if decoder.emitted:
                    log.warning("%s while a reply was streaming; the user is asked to try again", exc)
                    raise GenerationError(MID_STREAM) from exc
                tried.add(server)  # nothing was shown yet: another server may answer instead
            except ServerError as exc:
                if exc.status == 400 and "context length" in str(exc) and server not in resized:
                    # Its --max-model-len changed (a restart between health checks): read it, refit.
                    resized.add(server)
                    await self.pool.check(server)
                    continue
                server.failed += 1
                log.error("%s", exc)
                raise GenerationError(
                    "The model server refused this request. Please try again later."
                ) from exc
            finally:
                server.outstanding -= 1

    def _fitted(self, ticket: Ticket, server: Server) -> tuple[GenerationRequest, list[int]]:
        """The ticket's request and prompt ids fitted to ``server``'s context: rendered again
        (history cut) when it was rendered for a larger one. The ticket keeps the request sent,
        so the log holds the prompt the model saw."""
        request = ticket.request
        context = self._context_of(server)
        ids = encode_prompt(self.tokenizer, request.prompt)
        if not request.fits(len(ids), context) and request.refit is not None:
            request = ticket.request = request.refit(context)
            ids = encode_prompt(self.tokenizer, request.prompt)
        if not request.fits(len(ids), context):
            ids = prompt_ids(self.tokenizer, request, context)  # cannot be rendered again: keep the end
        return request, ids

    async def _stream(
        self, server: Server, payload: dict[str, Any], ticket: Ticket, decoder: StreamDecoder
    ) -> None:
        """Stream one completion into ``ticket`` through ``decoder``.

        Raises TokenTimeout when no token arrives within the pool's bound, first or next (the
        stream is closed, so the server aborts the request), StreamNotFinished when the stream
        ends without a finish reason that means "finished", and the client's errors.
        """
        reason: str | None = None
        bound = self.pool.first_token_timeout_s
        loop = asyncio.get_running_loop()
        tokens = 0
        # aclosing: leaving the loop early closes the stream at once, so the server stops.
        async with contextlib.aclosing(server.client.stream_completion(payload)) as stream:
            try:
                async with asyncio.timeout(bound) as idle:
                    async for chunk in stream:
                        idle.reschedule(loop.time() + bound)  # the engine answers; the next token, too?
                        tokens += 1
                        if chunk.token_ids:
                            ticket._token(time.monotonic(), len(chunk.token_ids))
                        ticket._piece(decoder.feed(chunk.token_ids))
                        if decoder.finish_reason is not None:
                            break  # a stop string or EOS seen here ends the reply
                        if chunk.finish_reason is not None:
                            reason = chunk.finish_reason
                            break
            except TimeoutError:
                raise TokenTimeout(server.url, stalled=tokens > 0) from None
        if decoder.finish_reason is None and reason not in SERVER_FINISHED:
            raise StreamNotFinished(
                server.url,
                f"ended a reply with finish reason {reason!r} (aborted: restarted, drained or asleep?)"
                if reason
                else "ended a reply without a finish reason",
            )
        ticket._piece(decoder.finish(reason))


class TokenTimeout(Exception):
    """No token within the pool's bound: none at all, or none since the last one (``stalled``).
    Handled inside the backend, never raised out."""

    def __init__(self, url: str, *, stalled: bool) -> None:
        super().__init__(url)
        self.url = url
        self.stalled = stalled


def _load_tokenizer(settings: Settings) -> tuple[Any, int]:
    """The base model's tokenizer and its context length, from the model folder's small files."""
    from transformers import AutoConfig

    name = settings.model.base_model
    try:
        tokenizer = load_tokenizer(name, settings.model)
    except (OSError, ValueError, ImportError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"could not load the tokenizer of {name!r} (the vLLM backend needs it to render prompts): {reason}"
        ) from exc
    max_positions = 2048
    with contextlib.suppress(OSError, ValueError):
        config = AutoConfig.from_pretrained(
            name, revision=settings.model.revision or None, local_files_only=settings.model.local_files_only
        )
        max_positions = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    return tokenizer, max_positions
