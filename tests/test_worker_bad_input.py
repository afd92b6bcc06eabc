"""Bad input through the worker (issue 8): each gets a clear answer, the others are unaffected,
and the batch holds nothing afterwards."""

import asyncio
import gc
import weakref

import pytest

from bot.config import ModelSettings, WorkerSettings
from bot.model.adapters import AdapterSource
from bot.serving.generation import (
    BASE_ADAPTER,
    GenerationError,
    GenerationRequest,
    PromptTooLongError,
    QueueFullError,
    RequestCancelledError,
)
from bot.serving.local.engine import Engine
from bot.serving.local.worker import GenerationWorker
from personas.card import GenerationParams


def forced(n: int) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=n, min_new_tokens=n, repetition_penalty=1.0)


def req(prompt: str, adapter: str = BASE_ADAPTER, n: int = 8) -> GenerationRequest:
    return GenerationRequest(persona_id=adapter, prompt=prompt, params=forced(n), adapter=adapter)


@pytest.fixture(scope="module")
def engine(tiny_neox, random_adapters) -> Engine:
    engine = Engine.from_settings(ModelSettings(base_model=str(tiny_neox)), prefill_chunk_tokens=16)
    for name, path in random_adapters["gpt-neox"].items():
        engine.load_adapter(name, AdapterSource(str(path), "v1", True))
    return engine


async def started(engine: Engine, **settings) -> GenerationWorker:
    worker = GenerationWorker(engine, WorkerSettings(**settings))
    worker.start()
    return worker


async def test_a_prompt_longer_than_the_context_gets_a_clear_answer(engine):
    worker = await started(engine, batch_window_ms=20)
    too_long = worker.submit(req("ユーザー: こんにちは\n" * 600))
    fine = worker.submit(req("やあ", "marisa"))
    with pytest.raises(PromptTooLongError, match="too long for the model"):
        await too_long.result()
    assert (await fine.result()).token_ids == engine.generate([fine.request])[0].token_ids
    await worker.stop()


async def test_a_request_cancelled_during_its_own_prefill(engine):
    worker = await started(engine, batch_window_ms=0, prefill_chunk_tokens=4)
    running = worker.submit(req("やあ", "marisa", n=60))
    while running.first_token_at is None:
        await asyncio.sleep(0.002)
    long_prompt = worker.submit(req("ユーザー: 元気？\nシステム: " * 30, "zundamon"))
    while worker._batch.prefilling is None:  # 4 prompt tokens a step: it is mid-prefill for many steps
        await asyncio.sleep(0.001)
    long_prompt.cancel()
    with pytest.raises(RequestCancelledError):
        await long_prompt.result()
    assert long_prompt.tokens == 0
    assert (await running.result()).token_ids == engine.generate([running.request])[0].token_ids
    await worker.stop()


async def test_a_persona_whose_adapter_is_removed_while_its_rows_run(tiny_neox, random_adapters):
    engine = Engine.from_settings(ModelSettings(base_model=str(tiny_neox)))
    for name, path in random_adapters["gpt-neox"].items():
        engine.load_adapter(name, AdapterSource(str(path), "v1", True))
    expected = engine.generate([req("やあ", "marisa", n=40)])[0].token_ids
    expected_victim = engine.generate([req("やあ", "zundamon", n=60)])[0].token_ids
    worker = await started(engine, batch_window_ms=20)
    victim = worker.submit(req("やあ", "zundamon", n=60))
    other = worker.submit(req("やあ", "marisa", n=40))
    while victim.tokens < 3:
        await asyncio.sleep(0.002)
    await worker.call(lambda e: e.remove_adapter("zundamon"))
    # The running reply finishes on the adapter it started with (its weights stay until it leaves).
    finished = await victim.result()
    assert finished.token_ids == expected_victim and finished.adapter_version == "v1"
    assert (await other.result()).token_ids == expected
    assert len(engine.pool.resident_keys()) == 2  # zundamon's weights are gone with its last row
    later = worker.submit(req("やあ", "zundamon"))
    with pytest.raises(GenerationError, match="not loaded"):
        await later.result()
    await worker.stop()


async def test_a_burst_of_64_with_a_queue_of_16(engine):
    worker = await started(engine, queue_size=16, max_batch_size=8, batch_window_ms=0)
    accepted, refused = [], []
    for i in range(64):
        try:
            accepted.append(
                worker.submit(req(f"ユーザー: {i}番目\n魔理沙: ", ("marisa", BASE_ADAPTER)[i % 2]))
            )
        except QueueFullError as exc:
            refused.append(exc)
    # Submitted within one event-loop turn: the worker took at most a batch's worth meanwhile.
    assert 16 <= len(accepted) <= 16 + 8 and len(refused) == 64 - len(accepted)
    assert all("Please retry shortly" in str(e) for e in refused)
    while worker._batch.decoding is None:
        await asyncio.sleep(0.001)
    cache = weakref.ref(worker._batch.decoding.cache)  # the burst's KV cache
    results = [await t.result() for t in accepted]
    assert all(r.new_tokens == 8 for r in results)
    sample = accepted[5]
    assert results[5].token_ids == engine.generate([sample.request])[0].token_ids
    # Memory returns to its level before the burst: no rows, no KV cache, nobody remembered.
    for _ in range(100):
        if worker.stats().in_flight == 0:
            break
        await asyncio.sleep(0.01)
    batch = worker._batch
    assert batch.rows == 0 and batch.decoding is None and batch.prefilling is None
    assert worker.stats().queue_depth == 0 and not worker._running
    gc.collect()
    assert cache() is None, "the KV cache of the burst is still referenced"
    await worker.stop()
