"""The generation worker: batching, bounded queue, timeouts, cancellation, failures, loop lag."""

import asyncio
import threading
import time

import pytest
import torch

from bot.adapters import AdapterSource
from bot.config import ModelSettings, WorkerSettings
from bot.engine import Engine
from bot.generation import (
    BASE_ADAPTER,
    GenerationError,
    GenerationRequest,
    GenerationResult,
    QueueFullError,
    RequestCancelledError,
    RequestTimeoutError,
)
from bot.worker import GenerationWorker
from personas.card import GenerationParams

GREEDY = GenerationParams(temperature=0, max_new_tokens=8, repetition_penalty=1.0)


def req(prompt: str = "こんにちは", adapter: str = BASE_ADAPTER, **kw) -> GenerationRequest:
    return GenerationRequest(
        persona_id=adapter, prompt=prompt, params=kw.pop("params", GREEDY), adapter=adapter, **kw
    )


class FakeEngine:
    """Stands in for the model where the test is about the worker's own logic."""

    def __init__(self, delay: float = 0.0, fail_when=None) -> None:
        self.delay = delay
        self.fail_when = fail_when or (lambda batch: None)
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.device = torch.device("cpu")

    def has_adapter(self, name: str) -> bool:
        return name in ("marisa", "zundamon")

    def adapters(self):
        return []

    def generate(self, requests, on_piece=None, is_cancelled=None):
        prompts = [r.prompt for r in requests]
        self.batches.append(prompts)
        self.release.wait(10)
        time.sleep(self.delay)
        error = self.fail_when(prompts)
        if error is not None:
            raise error
        out = []
        for i, r in enumerate(requests):
            if on_piece:
                on_piece(i, "re:")
                on_piece(i, r.prompt)
            out.append(GenerationResult("re:" + r.prompt, 2, "length", r.adapter, None, 0.01, len(requests)))
        return out


async def started(engine, **settings) -> GenerationWorker:
    worker = GenerationWorker(engine, WorkerSettings(**settings))
    worker.start()
    return worker


async def test_requests_arriving_during_a_batch_are_gathered_across_personas():
    engine = FakeEngine()
    engine.release.clear()
    worker = await started(engine, max_batch_size=8, batch_window_ms=5)
    first = worker.submit(req("a"))
    await asyncio.sleep(0.1)  # the first batch is now running (and held)
    later = [
        worker.submit(req(p, adapter))
        for p, adapter in [("b", "marisa"), ("c", "zundamon"), ("d", BASE_ADAPTER)]
    ]
    assert [t.position for t in later] == [1, 2, 3] and first.position == 0
    engine.release.set()
    results = await asyncio.gather(first.result(), *(t.result() for t in later))
    assert [r.text for r in results] == ["re:a", "re:b", "re:c", "re:d"]
    assert engine.batches == [["a"], ["b", "c", "d"]]
    stats = worker.stats()
    assert stats.recent_batch_sizes == [1, 3] and stats.queue_depth == 0 and stats.tokens_per_s > 0
    await worker.stop()


async def test_full_queue_refuses_at_once_with_the_depth():
    engine = FakeEngine()
    engine.release.clear()
    worker = await started(engine, queue_size=2, max_batch_size=1, batch_window_ms=0)
    running = worker.submit(req("running"))
    await asyncio.sleep(0.1)
    queued = [worker.submit(req("q1")), worker.submit(req("q2"))]
    with pytest.raises(QueueFullError) as info:
        worker.submit(req("one too many"))
    assert info.value.depth == 2 and "2 requests waiting" in str(info.value)
    engine.release.set()
    assert (await running.result()).text == "re:running"
    assert [(await t.result()).text for t in queued] == ["re:q1", "re:q2"]
    await worker.stop()


async def test_cancelled_request_that_has_not_started_is_never_computed():
    engine = FakeEngine()
    engine.release.clear()
    worker = await started(engine, max_batch_size=1, batch_window_ms=0)
    running = worker.submit(req("running"))
    await asyncio.sleep(0.1)
    doomed = worker.submit(req("doomed"))
    kept = worker.submit(req("kept"))
    doomed.cancel()
    assert kept.position == 1
    engine.release.set()
    with pytest.raises(RequestCancelledError):
        await doomed.result()
    await running.result()
    await kept.result()
    assert ["doomed"] not in engine.batches and engine.batches == [["running"], ["kept"]]
    await worker.stop()


async def test_timeout_gives_up_and_an_expired_request_is_skipped():
    engine = FakeEngine()
    engine.release.clear()
    worker = await started(engine, max_batch_size=1, batch_window_ms=0)
    running = worker.submit(req("running"), timeout_s=5)
    await asyncio.sleep(0.1)
    waiting = worker.submit(req("waiting"), timeout_s=0.2)
    with pytest.raises(RequestTimeoutError, match="too long"):
        await waiting.result()
    engine.release.set()
    await running.result()
    follow = worker.submit(req("after"))
    await follow.result()
    assert engine.batches == [["running"], ["after"]]
    await worker.stop()


async def test_a_failing_batch_fails_only_its_requests_and_the_worker_goes_on(caplog):
    engine = FakeEngine(
        fail_when=lambda batch: RuntimeError("boom /internal/path") if "bad" in batch else None
    )
    worker = await started(engine, max_batch_size=4, batch_window_ms=20)
    bad = [worker.submit(req("bad")), worker.submit(req("neighbour"))]
    for ticket in bad:
        with pytest.raises(GenerationError, match="failed while writing") as info:
            await ticket.result()
        assert "boom" not in str(info.value)  # users never see internals...
        assert isinstance(info.value.__cause__, RuntimeError)
    assert "boom /internal/path" in caplog.text  # ...the operator's log has them
    assert (await worker.submit(req("good")).result()).text == "re:good"
    assert worker.stats().requests_failed == 2
    await worker.stop()


async def test_out_of_memory_retries_in_halves():
    def oom_when_big(batch):
        return torch.OutOfMemoryError("CUDA out of memory") if len(batch) > 1 else None

    engine = FakeEngine(fail_when=oom_when_big)
    engine.release.clear()
    worker = await started(engine, max_batch_size=4, batch_window_ms=50)
    tickets = [worker.submit(req(p)) for p in "wxyz"]
    engine.release.set()
    assert [(await t.result()).text for t in tickets] == ["re:w", "re:x", "re:y", "re:z"]
    assert engine.batches == [["w", "x", "y", "z"], ["w", "x"], ["w"], ["x"], ["y", "z"], ["y"], ["z"]]
    await worker.stop()


async def test_unknown_adapter_fails_alone():
    engine = FakeEngine()
    worker = await started(engine, batch_window_ms=30)
    missing = worker.submit(req("x", adapter="reimu"))
    fine = worker.submit(req("y", adapter="marisa"))
    with pytest.raises(GenerationError, match="not loaded"):
        await missing.result()
    assert (await fine.result()).text == "re:y"
    await worker.stop()


async def test_pieces_stream_before_the_result():
    worker = await started(FakeEngine())
    ticket = worker.submit(req("abc"))
    pieces = [p async for p in ticket]
    assert "".join(pieces) == (await ticket.result()).text == "re:abc"
    await worker.stop()


async def test_stop_fails_what_is_left_and_refuses_new_work():
    engine = FakeEngine()
    engine.release.clear()
    worker = await started(engine, max_batch_size=1, batch_window_ms=0)
    running = worker.submit(req("running"))
    await asyncio.sleep(0.05)
    queued = worker.submit(req("queued"))
    stopping = asyncio.create_task(worker.stop(drain_timeout=0.2))
    await asyncio.sleep(0.3)
    engine.release.set()
    await stopping
    for ticket in (running, queued):
        with pytest.raises(GenerationError, match="shutting down"):
            await ticket.result()
    with pytest.raises(GenerationError, match="shutting down"):
        worker.submit(req("late"))


@pytest.fixture(scope="module")
def real_engine(tiny_neox, random_adapters) -> Engine:
    engine = Engine.from_settings(ModelSettings(base_model=str(tiny_neox)))
    for name, path in random_adapters["gpt-neox"].items():
        engine.load_adapter(name, AdapterSource(str(path), "v1", True))
    return engine


async def test_event_loop_is_not_blocked_while_a_real_batch_runs(real_engine):
    worker = await started(real_engine, max_batch_size=8, batch_window_ms=5)
    long = GenerationParams(temperature=0, max_new_tokens=300, min_new_tokens=300, repetition_penalty=1.0)
    tickets = [
        worker.submit(req("ユーザー: こんにちは\n魔理沙: " * 20, a, params=long))
        for a in ("marisa", "zundamon")
    ]
    lags = []
    while not all(t.state == "done" for t in tickets):
        before = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - before - 0.01)
    results = [await t.result() for t in tickets]
    assert all(r.new_tokens == 300 for r in results)
    assert len(lags) > 10, "the batch finished too fast to measure anything"
    assert max(lags) < 0.05, f"event loop lagged {max(lags) * 1000:.1f} ms"
    await worker.stop()


async def test_worker_results_match_the_engine_run_directly(real_engine):
    worker = await started(real_engine, max_batch_size=8, batch_window_ms=30)
    rows = [
        req("ユーザー: やあ\n魔理沙: ", "marisa"),
        req("ユーザー: やあ\nシステム: ", "zundamon"),
        req("やあ"),
    ]
    tickets = [worker.submit(r) for r in rows]
    results = [await t.result() for t in tickets]
    assert {r.batch_size for r in results} == {3}
    for row, result in zip(rows, results, strict=True):
        assert result.text == real_engine.generate([row])[0].text
    await worker.stop()


async def test_launch_builds_the_engine_on_the_worker_thread_and_reports_a_failed_build():
    built_on: list[str] = []

    def build():
        built_on.append(threading.current_thread().name)
        return FakeEngine()

    worker = await GenerationWorker.launch(build, WorkerSettings())
    assert built_on == ["generation-worker"]
    assert (await worker.submit(req("hi")).result()).text == "re:hi"
    await worker.stop()

    def broken():
        raise RuntimeError("no model here")

    with pytest.raises(RuntimeError, match="no model here"):
        await GenerationWorker.launch(broken, WorkerSettings())
