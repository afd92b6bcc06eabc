"""The vLLM backend against small vLLM-shaped servers (tests/fake_vllm.py) for the protocol-level
failures a real server cannot be made to show on cue: keep-alive connections the server already
closed, streams that end unfinished (``abort``, ``error``, ``repetition``, no reason), a dead
engine behind a live ``/v1/models``, and an engine that never produces a first token."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.chatflow.service import ChatService
from bot.serving.generation import UNFINISHED_REPLY, GenerationError, GenerationResult, QueueFullError
from bot.serving.ticket import Ticket
from bot.serving.vllm.backend import MID_STREAM, VllmBackend
from bot.serving.vllm.http import SERVER_KEEPALIVE_S, connection_pool
from tests.fake_vllm import FakeVllm
from tests.test_vllm_backend import greedy_cards
from tests.vllm_server import backend_settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def tokenizer(tiny_neox: Path):
    from bot.config import ModelSettings
    from bot.model.loading import load_tokenizer

    return load_tokenizer(str(tiny_neox), ModelSettings(base_model=str(tiny_neox)))


@pytest.fixture
async def servers(tokenizer) -> AsyncIterator[list[FakeVllm]]:
    started = [await FakeVllm(tokenizer).start(), await FakeVllm(tokenizer).start()]
    yield started
    for server in started:
        await server.stop()


async def start_backend(tiny_neox: Path, tmp_path: Path, urls, **engine) -> VllmBackend:
    settings = backend_settings(
        tiny_neox,
        tmp_path / "adapters",
        tuple(urls),
        **{"vllm_health_interval_s": 0.1, "vllm_first_token_timeout_s": 5.0, **engine},
    )
    return await VllmBackend.start(settings, greedy_cards())


async def ask(backend: VllmBackend, text: str = "やあ", persona: str = "ojousama") -> str:
    chat = ChatService(backend.cards, backend, backend.facts)
    return await chat.submit(persona, [chat.user_turn(persona, text)]).text()


async def eventually(predicate, timeout_s: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


# -- 7. connections the server already closed -----------------------------------------------------


def test_the_pools_keep_alive_stays_below_vllms() -> None:
    async def keepalive() -> float:
        session = connection_pool()
        try:
            return session.connector._keepalive_timeout  # type: ignore[union-attr]
        finally:
            await session.close()

    assert asyncio.run(keepalive()) < SERVER_KEEPALIVE_S


async def test_idle_connections_are_dropped_before_the_server_drops_them(
    servers, tiny_neox, tmp_path
) -> None:
    server = servers[0]
    server.drop_idle_after_s = 0.4  # the server's keep-alive, scaled down
    backend = await start_backend(
        tiny_neox, tmp_path, [server.url], vllm_keepalive_s=0.2, vllm_health_interval_s=600.0
    )
    try:
        for _ in range(3):
            await asyncio.sleep(0.6)  # idle past both keep-alives
            assert await ask(backend)
        assert server.dropped == 0  # the pool never offered the server a connection it had closed
        assert backend.pool.servers[0].healthy and backend.pool.servers[0].failed == 0
    finally:
        await backend.stop(drain_timeout=1)


@pytest.mark.parametrize("what", ["completion", "health check"])
async def test_a_request_on_a_connection_the_server_closed_is_retried_and_nobody_is_marked_down(
    servers, tiny_neox, tmp_path, what, caplog
) -> None:
    server = servers[0]
    # The bot keeps connections longer than the server does (aiohttp's default 15 s against vLLM's 5 s).
    backend = await start_backend(
        tiny_neox, tmp_path, [server.url], vllm_keepalive_s=60.0, vllm_health_interval_s=600.0
    )
    try:
        assert await ask(backend)  # leaves a pooled connection
        caplog.clear()
        await asyncio.sleep(0.3)
        server.drop_idle_after_s = 0.2  # now that connection is past the server's keep-alive
        before = len(server.seen)
        if what == "completion":
            assert await ask(backend) == await ask(backend)
        else:
            await backend.pool.check(backend.pool.servers[0])
        state = backend.pool.servers[0]
        # aiohttp itself retries an idempotent GET on a reused connection; a POST is retried here.
        assert server.dropped == 1 and state.client.stale_retries == (1 if what == "completion" else 0)
        assert state.healthy and state.failed == 0 and backend.stats().requests_failed == 0
        retried = server.seen[before + 1]
        assert retried.connection != server.seen[before].connection  # a fresh connection
        assert not [
            r for r in caplog.records if r.levelno >= logging.WARNING and server.url in r.getMessage()
        ]
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_server_that_drops_the_retry_too_is_down_and_the_other_serves(
    servers, tiny_neox, tmp_path
) -> None:
    a, b = servers
    backend = await start_backend(tiny_neox, tmp_path, [a.url, b.url], vllm_health_interval_s=600.0)
    try:
        backend.pool.servers[1].last_pick = 10**6  # ties go to A first
        a.drop_next = 2  # the pooled try and the fresh retry both fail: a real failure
        assert await ask(backend)
        state_a, state_b = backend.pool.servers
        assert not state_a.healthy and state_a.failed == 1 and "connection lost" in (state_a.problem or "")
        assert state_b.served == 1
    finally:
        await backend.stop(drain_timeout=1)


# -- 8. streams that end unfinished ---------------------------------------------------------------


@pytest.mark.parametrize("reason", ["abort", "error", "repetition", None, "something-new"])
async def test_a_stream_that_ends_unfinished_is_a_failure_never_a_reply(
    servers, tiny_neox, tmp_path, reason
) -> None:
    server = servers[0]
    server.finish_reason = reason
    backend = await start_backend(tiny_neox, tmp_path, [server.url], vllm_health_interval_s=600.0)
    try:
        chat = ChatService(backend.cards, backend, backend.facts)
        pending = chat.submit("ojousama", [chat.user_turn("ojousama", "やあ")])
        shown = "".join([piece async for piece in pending.pieces()])
        with pytest.raises(GenerationError) as info:
            await pending.text()
        assert str(info.value) == MID_STREAM and shown  # the half sentence was shown, then failed
        assert pending.result is None  # nothing to log or card
        state = backend.pool.servers[0]
        assert not state.healthy and (repr(reason) if reason else "without a finish reason") in state.problem
        await eventually(lambda: state.healthy, what="the health check puts it back")
    finally:
        await backend.stop(drain_timeout=1)


@pytest.mark.parametrize("reason", ["stop", "length"])
async def test_stop_and_length_finish_a_reply(servers, tiny_neox, tmp_path, reason) -> None:
    servers[0].finish_reason = reason
    backend = await start_backend(tiny_neox, tmp_path, [servers[0].url])
    try:
        assert await ask(backend)
        assert backend.pool.servers[0].healthy
    finally:
        await backend.stop(drain_timeout=1)


async def test_an_abort_before_any_text_is_answered_by_the_other_server(servers, tiny_neox, tmp_path) -> None:
    a, b = servers
    a.reply = ""  # no token at all: one chunk with the finish reason only
    a.finish_reason = "abort"
    backend = await start_backend(tiny_neox, tmp_path, [a.url, b.url], vllm_health_interval_s=600.0)
    try:
        backend.pool.servers[1].last_pick = 10**6  # A first
        assert await ask(backend) and len(a.completions()) == 1 and len(b.completions()) == 1
        assert not backend.pool.servers[0].healthy and backend.stats().requests_failed == 0
    finally:
        await backend.stop(drain_timeout=1)


def test_a_ticket_never_finishes_with_an_unfinished_reason() -> None:
    """Both backends report through Ticket: a result with any other reason becomes a failure."""

    class Owner:
        def position_of(self, ticket):
            return 0

        def abandon(self, ticket):
            pass

    async def run(reason: str) -> BaseException | GenerationResult:
        ticket = Ticket(request=None, loop=asyncio.get_running_loop(), timeout_s=5, owner=Owner())  # type: ignore[arg-type]
        ticket._finish(result=GenerationResult("半分", 3, reason, "m", None))  # type: ignore[arg-type]
        try:
            return await ticket.result()
        except GenerationError as exc:
            return exc

    for reason in ("stop", "eos", "length"):
        assert isinstance(asyncio.run(run(reason)), GenerationResult)
    for reason in ("abort", "cancelled", "error", ""):
        outcome = asyncio.run(run(reason))
        assert isinstance(outcome, GenerationError) and str(outcome) == UNFINISHED_REPLY


# -- 9. a dead or hung engine behind a live API server --------------------------------------------


async def test_a_dead_engine_behind_a_live_models_listing_is_down_in_one_line(
    servers, tiny_neox, tmp_path, caplog
) -> None:
    server = servers[0]
    backend = await start_backend(tiny_neox, tmp_path, [server.url])
    try:
        assert await ask(backend)
        server.health_status = 503  # /v1/models still answers
        state = backend.pool.servers[0]
        await eventually(lambda: not state.healthy, what="the dead engine noticed")
        assert "engine is not running (/health answered 503" in (state.problem or "")
        with pytest.raises(QueueFullError):  # "busy" at once, not after the request timeout
            await ask(backend)
        lines = [r.getMessage() for r in caplog.records if "engine is not running" in r.getMessage()]
        assert len(lines) == 1 and "\n" not in lines[0]  # one line, not one per health check
        server.health_status = 200
        await eventually(lambda: state.healthy, what="back once /health answers")
        assert await ask(backend)
    finally:
        await backend.stop(drain_timeout=1)


async def test_no_first_token_in_time_marks_the_server_suspect_and_the_next_request_is_busy_at_once(
    servers, tiny_neox, tmp_path
) -> None:
    server = servers[0]
    backend = await start_backend(tiny_neox, tmp_path, [server.url], vllm_first_token_timeout_s=0.5)
    try:
        server.engine_running.clear()  # hung: /health and /v1/models answer, no token ever comes
        began = time.monotonic()
        with pytest.raises(QueueFullError):
            await ask(backend)
        assert time.monotonic() - began < 3  # the bound, not the 120 s request timeout
        state = backend.pool.servers[0]
        assert state.suspect and not state.healthy and "no first token within 0.5 s" in (state.problem or "")
        began = time.monotonic()
        with pytest.raises(QueueFullError):
            await ask(backend)
        assert time.monotonic() - began < 0.2  # busy at once
        await asyncio.sleep(1.0)  # health checks keep running: /health passes, the test completion does not
        assert state.suspect and not state.healthy and "test completion failed" in (state.problem or "")
        server.engine_running.set()
        await eventually(lambda: state.healthy, what="back once a test completion answers")
        assert not state.suspect and await ask(backend)
    finally:
        await backend.stop(drain_timeout=1)


async def test_with_two_servers_the_request_without_a_first_token_goes_to_the_other(
    servers, tiny_neox, tmp_path
) -> None:
    a, b = servers
    backend = await start_backend(
        tiny_neox, tmp_path, [a.url, b.url], vllm_first_token_timeout_s=0.5, vllm_health_interval_s=600.0
    )
    try:
        backend.pool.servers[1].last_pick = 10**6  # A first
        a.engine_running.clear()
        assert await ask(backend)
        state_a, state_b = backend.pool.servers
        assert state_a.suspect and state_b.served == 1 and backend.stats().requests_failed == 0
        assert await ask(backend) and state_b.served == 2  # A is out of rotation meanwhile
    finally:
        await backend.stop(drain_timeout=1)


async def test_a_stream_that_stalls_after_its_first_tokens_fails_within_the_bound(
    servers, tiny_neox, tmp_path
) -> None:
    server = servers[0]
    backend = await start_backend(tiny_neox, tmp_path, [server.url], vllm_first_token_timeout_s=0.5)
    try:
        server.stall_after = 2
        server.engine_running.clear()  # two tokens, then nothing: the engine hung mid-reply
        chat = ChatService(backend.cards, backend, backend.facts)
        pending = chat.submit("ojousama", [chat.user_turn("ojousama", "やあ")])
        began = time.monotonic()
        shown = "".join([piece async for piece in pending.pieces()])
        with pytest.raises(GenerationError) as info:
            await pending.text()
        assert str(info.value) == MID_STREAM and shown and time.monotonic() - began < 3
        state = backend.pool.servers[0]
        assert state.suspect and "a stream stalled: no token for 0.5 s" in (state.problem or "")
    finally:
        await backend.stop(drain_timeout=1)
