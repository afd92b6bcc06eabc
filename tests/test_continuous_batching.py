"""Continuous batching on tiny real-architecture models: rows admitted mid-decode, rows that
leave, chunked prefill, cancellation, removed adapters and over-long prompts."""

import pytest

from bot.config import ModelSettings
from bot.model.adapters import AdapterSource
from bot.serving.generation import BASE_ADAPTER, GenerationRequest, PromptTooLongError
from bot.serving.local.engine import Engine, RunningBatch
from personas.card import GenerationParams


def forced(n: int) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=n, min_new_tokens=n, repetition_penalty=1.0)


ROWS = [
    ("ユーザー: こんにちは\n魔理沙: ", "marisa", 12),
    ("今日は", BASE_ADAPTER, 5),  # leaves early: must not disturb the others
    ("ユーザー: 元気？\nシステム: " * 6, "zundamon", 12),  # long prompt: several prefill chunks
    ("ユーザー: おはよう\nお嬢様: ", "ojousama", 9),
    ("やあ", BASE_ADAPTER, 12),
]


def req(prompt: str, adapter: str, n: int, **kw) -> GenerationRequest:
    return GenerationRequest(persona_id=adapter, prompt=prompt, params=forced(n), adapter=adapter, **kw)


@pytest.fixture(scope="module", params=["gpt-neox", "llama"])
def engine(request, tiny_models, random_adapters) -> Engine:
    engine = Engine.from_settings(ModelSettings(base_model=str(tiny_models[request.param])))
    for name, path in random_adapters[request.param].items():
        engine.load_adapter(name, AdapterSource(str(path), "v1", True))
    return engine


def alone(engine: Engine, request: GenerationRequest) -> list[int]:
    return list(engine.generate([request])[0].token_ids)


def step_until(batch: RunningBatch, done, limit: int = 200) -> None:
    for _ in range(limit):
        if done():
            return
        batch.step()
    raise AssertionError("condition never reached")


def run_to_end(batch: RunningBatch, seqs, limit: int = 200) -> None:
    for _ in range(limit):
        if all(s.finished for s in seqs):
            return
        batch.step()
    raise AssertionError("rows did not finish")


@pytest.mark.parametrize("chunk", [8, 1 << 20])
def test_rows_admitted_mid_decode_give_the_tokens_they_give_alone(engine, chunk):
    requests = [req(*row) for row in ROWS]
    expected = [alone(engine, r) for r in requests]
    batch = RunningBatch(engine, prefill_chunk_tokens=chunk)
    seqs = [engine.sequence(r) for r in requests]
    batch.add(seqs[:2])
    step_until(batch, lambda: len(seqs[0].generated) >= 2)
    batch.add(seqs[2:4])  # while rows 0 and 1 are mid-decode
    step_until(batch, lambda: seqs[1].finished)
    assert not seqs[0].finished  # row 1 left mid-way; row 4 joins a batch that shrank
    batch.add(seqs[4:])
    run_to_end(batch, seqs)
    assert batch.rows == 0 and batch.decoding is None
    for seq, want, request in zip(seqs, expected, requests, strict=True):
        assert seq.generated == want, request.adapter
        assert seq.finish_reason == "length" and len(seq.generated) == request.params.max_new_tokens
    assert max(s.max_rows for s in seqs) >= 3


def test_a_cancelled_row_frees_its_slot_at_the_next_step(engine):
    flags = {"cancel": False}
    keep = req(*ROWS[0])
    batch = RunningBatch(engine)
    doomed = engine.sequence(req(*ROWS[4]), is_cancelled=lambda: flags["cancel"])
    kept = engine.sequence(keep)
    batch.add([doomed, kept])
    batch.step()
    batch.step()
    flags["cancel"] = True
    finished = batch.step()
    assert finished == [doomed] and doomed.finish_reason == "cancelled"
    assert batch.rows == 1 and len(batch.decoding) == 1
    run_to_end(batch, [kept])
    assert kept.generated == alone(engine, keep)


def test_a_request_cancelled_during_its_own_chunked_prefill_leaves_before_decoding(engine):
    flags = {"cancel": False}
    batch = RunningBatch(engine, prefill_chunk_tokens=4)
    other_req = req(*ROWS[0])
    other = engine.sequence(other_req)
    batch.add([other])
    step_until(batch, lambda: other.generated)
    doomed = engine.sequence(req(*ROWS[2]), is_cancelled=lambda: flags["cancel"])
    batch.add([doomed])
    batch.step()
    assert batch.prefilling is not None and doomed in batch.prefilling.seqs  # mid-prefill
    flags["cancel"] = True
    assert batch.step() == [doomed]
    assert batch.prefilling is None and doomed.generated == []
    run_to_end(batch, [other])
    assert other.generated == alone(engine, other_req)


def test_a_row_whose_adapter_is_removed_finishes_on_it_and_the_others_are_unaffected(
    tiny_neox, random_adapters
):
    engine = Engine.from_settings(ModelSettings(base_model=str(tiny_neox)))
    for name, path in random_adapters["gpt-neox"].items():
        engine.load_adapter(name, AdapterSource(str(path), "v1", True))
    survivor_req, victim_req = req(*ROWS[0]), req("やあ", "zundamon", 12)
    expected, expected_victim = alone(engine, survivor_req), alone(engine, victim_req)
    batch = RunningBatch(engine)
    victim = engine.sequence(victim_req)
    survivor = engine.sequence(survivor_req)
    batch.add([victim, survivor])
    batch.step()
    engine.remove_adapter("zundamon")
    assert not engine.has_adapter("zundamon")
    run_to_end(batch, [victim, survivor])
    assert victim.generated == expected_victim and engine.result(victim).adapter_version == "v1"
    assert survivor.generated == expected
    assert victim.adapter.key not in engine.pool.resident_keys()  # freed with its last row


def test_a_prompt_longer_than_the_context_is_refused_with_the_numbers(engine):
    too_long = req("ユーザー: こんにちは\n" * 600, BASE_ADAPTER, 12)
    with pytest.raises(
        PromptTooLongError, match=r"too long for the model: \d+ prompt tokens plus 12"
    ) as info:
        engine.sequence(too_long)
    assert info.value.context == engine.max_positions


def test_sampled_rows_with_a_seed_draw_the_same_tokens_in_any_batch(engine):
    params = GenerationParams(temperature=0.9, top_p=0.9, top_k=30, max_new_tokens=10, repetition_penalty=1.2)
    seeded = GenerationRequest("marisa", ROWS[0][0], params, adapter="marisa", seed=11)
    want = alone(engine, seeded)
    batch = RunningBatch(engine)
    others = [engine.sequence(req(*row)) for row in ROWS[1:3]]
    batch.add(others)
    batch.step()
    mine = engine.sequence(seeded)
    batch.add([mine])
    run_to_end(batch, [mine, *others])
    assert mine.generated == want


def test_a_reply_prints_no_deprecation_warning(engine):
    """The cache goes through the current API (``cache=``, DynamicCache): no warning per reply."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = RunningBatch(engine, prefill_chunk_tokens=4)
        seqs = [engine.sequence(req(*ROWS[0])), engine.sequence(req(*ROWS[3]))]
        batch.add(seqs[:1])
        batch.step()
        batch.add(seqs[1:])
        run_to_end(batch, seqs)
