"""Prefix reuse in the engine on tiny real-architecture models: greedy output is token-identical
with and without the cache (GPT-NeoX and Llama, mixed adapters, a hit while others decode), and
the bad inputs of issue 20: budget 0, a budget smaller than one prompt, an adapter reloaded while
its old version's prefixes are cached (or while its rows run), a prompt that shares a prefix with
a cancelled request."""

import pytest

from bot.config import ModelSettings
from bot.model.adapters import AdapterSource
from bot.serving.generation import BASE_ADAPTER, GenerationRequest
from bot.serving.local.engine import Engine, RunningBatch
from personas.card import GenerationParams

MB = 2**20
HEADER = (
    "以下は、魔法使いの霧雨魔理沙とユーザーの会話です。\nユーザー: おはよう！\n魔理沙: おう、おはようだぜ！\n"
)


def forced(n: int) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=n, min_new_tokens=n, repetition_penalty=1.0)


def req(prompt: str, adapter: str, n: int = 8) -> GenerationRequest:
    return GenerationRequest(persona_id=adapter, prompt=prompt, params=forced(n), adapter=adapter)


def turn(k: int) -> str:
    return f"ユーザー: 今日は{k}回目の質問だよ。元気？\n魔理沙: "


@pytest.fixture(scope="module", params=["gpt-neox", "llama"])
def engine(request, tiny_models, random_adapters) -> Engine:
    engine = Engine.from_settings(ModelSettings(base_model=str(tiny_models[request.param])))
    for name, path in random_adapters[request.param].items():
        engine.load_adapter(name, AdapterSource(str(path), "v1", True))
    return engine


@pytest.fixture(autouse=True)
def empty_cache(engine):
    engine.prefix_cache.set_budget(0)
    yield
    engine.prefix_cache.set_budget(0)


def without_cache(engine: Engine, request: GenerationRequest) -> list[int]:
    budget = engine.prefix_cache.budget_bytes
    engine.prefix_cache.budget_bytes = 0  # off for this call, keeping what is cached
    try:
        return list(engine.generate([request])[0].token_ids)
    finally:
        engine.prefix_cache.budget_bytes = budget


def prompt_ids(engine: Engine, request: GenerationRequest) -> list[int]:
    """The request's prompt ids; the sequence made for it gives its adapter pin back."""
    seq = engine.sequence(request)
    engine.release(seq)
    return seq.prompt_ids


def run_to_end(batch: RunningBatch, seqs, limit: int = 300) -> None:
    for _ in range(limit):
        if all(s.finished for s in seqs):
            return
        batch.step()
    raise AssertionError("rows did not finish")


def conversation(engine: Engine, adapter: str, turns: int) -> list[tuple[GenerationRequest, object]]:
    """A channel: each prompt is the previous prompt, its reply and a new turn."""
    prompt, out = HEADER, []
    for k in range(turns):
        prompt += turn(k)
        request = req(prompt, adapter)
        seq = engine.sequence(request)
        batch = RunningBatch(engine)
        batch.add([seq])
        run_to_end(batch, [seq])
        out.append((request, seq))
        prompt += seq.text.replace("\n", " ") + "\n"
    return out


@pytest.mark.parametrize("adapter", ["marisa", BASE_ADAPTER])
def test_a_channels_prompts_reuse_their_prefix_and_give_the_same_tokens(engine, adapter):
    engine.prefix_cache.set_budget(64 * MB)
    before = engine.prefix_cache.stats()
    rounds = conversation(engine, adapter, 4)
    after = engine.prefix_cache.stats()
    reused, computed = (
        after.tokens_reused - before.tokens_reused,
        after.tokens_computed - before.tokens_computed,
    )
    assert reused > computed > 0
    assert (after.lookups - before.lookups, after.hits - before.hits) == (4, 3)
    assert rounds[0][1].reused_tokens == 0
    for request, seq in rounds[1:]:
        # Everything up to the previous prompt is reused (its reply's text may re-tokenize).
        assert seq.reused_tokens >= len(prompt_ids(engine, request)) // 2
        assert seq.generated == without_cache(engine, request)


def test_mixed_adapters_never_reuse_each_others_prefixes(engine):
    engine.prefix_cache.set_budget(64 * MB)
    prompt = HEADER + turn(1)
    first = engine.generate([req(prompt, "marisa")])[0]
    assert first.token_ids
    batch = RunningBatch(engine)
    requests = [req(prompt + "ね", a) for a in ("marisa", "zundamon", BASE_ADAPTER, "marisa")]
    seqs = [engine.sequence(r) for r in requests]
    batch.add(seqs)
    run_to_end(batch, seqs)
    assert [s.reused_tokens > 0 for s in seqs] == [True, False, False, True]
    for seq, request in zip(seqs, requests, strict=True):
        assert seq.generated == without_cache(engine, request), request.adapter
    # The very same prompt again (a retry): all but its last token is reused.
    again = engine.sequence(req(prompt, "marisa"))
    batch.add([again])
    run_to_end(batch, [again])
    assert again.reused_tokens == len(again.prompt_ids) - 1 and again.generated == list(first.token_ids)


def test_a_prefix_hit_joins_a_batch_that_is_decoding(engine):
    engine.prefix_cache.set_budget(64 * MB)
    shared = HEADER + turn(2)
    engine.generate([req(shared, "zundamon")])  # cached now
    running = [req("ユーザー: やあ\nお嬢様: ", "ojousama", 14), req("今日は", BASE_ADAPTER, 14)]
    late = [
        req(shared + "それで？\n魔理沙: ", "zundamon", 6),
        req(HEADER + "ユーザー: 別の話\n魔理沙: ", "marisa", 6),
    ]
    expected = [without_cache(engine, r) for r in running + late]
    batch = RunningBatch(engine, prefill_chunk_tokens=8)  # the miss is read in several chunks
    seqs = [engine.sequence(r) for r in running]
    batch.add(seqs)
    for _ in range(40):
        if all(len(s.generated) >= 2 for s in seqs):
            break
        batch.step()
    assert all(len(s.generated) >= 2 for s in seqs) and batch.decoding is not None
    newcomers = [engine.sequence(r) for r in late]
    batch.add(newcomers)
    run_to_end(batch, seqs + newcomers)
    assert newcomers[0].reused_tokens > 0 and newcomers[1].reused_tokens == 0
    assert [s.generated for s in seqs + newcomers] == expected


def test_budget_zero_is_todays_behaviour(engine):
    request = req(HEADER + turn(3), "marisa")
    first = engine.generate([request])[0]
    again = engine.sequence(request)
    batch = RunningBatch(engine)
    batch.add([again])
    run_to_end(batch, [again])
    assert again.reused_tokens == 0 and again.generated == list(first.token_ids)
    stats = engine.prefix_cache.stats()
    assert stats.used_bytes == 0 and stats.tokens == 0 and engine.prefix_cache.adapter_keys() == []


def test_a_budget_smaller_than_one_prompt_stays_within_it_and_changes_nothing(engine):
    request = req(HEADER + turn(4), "marisa")
    ids = prompt_ids(engine, request)
    config = engine.loaded.model.config
    per_token = config.num_hidden_layers * 2 * config.hidden_size * 4  # float32 K and V, all layers
    engine.prefix_cache.set_budget(per_token - 1)  # not even one token
    assert list(engine.generate([request])[0].token_ids) == without_cache(engine, request)
    assert engine.prefix_cache.used_bytes == 0
    small = per_token * (len(ids) // 2)  # half a prompt
    engine.prefix_cache.set_budget(small)
    for k in range(3):
        follow = req(HEADER + turn(4) + f"ね{k}", "marisa")
        seq = engine.sequence(follow)
        batch = RunningBatch(engine)
        batch.add([seq])
        run_to_end(batch, [seq])
        assert seq.generated == without_cache(engine, follow)
        assert 0 < engine.prefix_cache.used_bytes <= small
        assert k == 0 or 0 < seq.reused_tokens <= len(ids) // 2  # the start that fitted is reused
    assert engine.prefix_cache.tokens == len(ids) // 2


def test_a_reloaded_adapter_never_serves_its_old_versions_prefixes(engine, random_adapters, tiny_models):
    arch = "llama" if engine.loaded.model.config.model_type == "llama" else "gpt-neox"
    engine.prefix_cache.set_budget(64 * MB)
    request = req(HEADER + turn(5), "marisa")
    engine.generate([request])
    old_key = engine.pool.internal_name("marisa")
    assert old_key in engine.prefix_cache.adapter_keys()
    other = random_adapters[arch]["ojousama"]  # the "new version": different weights
    try:
        engine.load_adapter("marisa", AdapterSource(str(other), "v2", True))
        assert old_key not in engine.prefix_cache.adapter_keys()  # dropped with the old weights
        seq = engine.sequence(request)
        batch = RunningBatch(engine)
        batch.add([seq])
        run_to_end(batch, [seq])
        assert seq.reused_tokens == 0
        assert seq.generated == without_cache(engine, req(HEADER + turn(5), "ojousama"))
    finally:
        engine.load_adapter("marisa", AdapterSource(str(random_adapters[arch]["marisa"]), "v1", True))


def test_a_row_whose_adapter_is_reloaded_while_it_runs_is_not_cached(engine, random_adapters):
    arch = "llama" if engine.loaded.model.config.model_type == "llama" else "gpt-neox"
    engine.prefix_cache.set_budget(64 * MB)
    seq = engine.sequence(req(HEADER + turn(6), "marisa", 10))
    batch = RunningBatch(engine)
    batch.add([seq])
    batch.step()
    batch.step()
    try:
        engine.load_adapter("marisa", AdapterSource(str(random_adapters[arch]["marisa"]), "v1-again", True))
        run_to_end(batch, [seq])
        # Its K/V mix two loads of the adapter: stored under neither.
        assert not [k for k in engine.prefix_cache.adapter_keys() if k.startswith("marisa")]
    finally:
        engine.prefix_cache.set_budget(0)


def test_a_prompt_sharing_a_prefix_with_a_cancelled_request_is_answered_right(engine):
    engine.prefix_cache.set_budget(64 * MB)
    flags = {"decoding": False, "prefill": False}
    batch = RunningBatch(engine, prefill_chunk_tokens=4)
    during_decode = engine.sequence(
        req(HEADER + turn(7), "zundamon", 12), is_cancelled=lambda: flags["decoding"]
    )
    batch.add([during_decode])
    for _ in range(100):
        if len(during_decode.generated) >= 3:
            break
        batch.step()
    flags["decoding"] = True
    assert batch.step() == [during_decode] and during_decode.finish_reason == "cancelled"
    during_prefill = engine.sequence(
        req(HEADER + turn(8), "ojousama", 12), is_cancelled=lambda: flags["prefill"]
    )
    batch.add([during_prefill])
    batch.step()
    assert batch.prefilling is not None  # cancelled half-read
    flags["prefill"] = True
    batch.step()
    assert during_prefill.finish_reason == "cancelled"
    follow_ups = [req(HEADER + turn(7) + "続き", "zundamon"), req(HEADER + turn(8) + "続き", "ojousama")]
    seqs = [engine.sequence(r) for r in follow_ups]
    batch.add(seqs)
    run_to_end(batch, seqs)
    assert seqs[0].reused_tokens > 0  # the cancelled row's prompt (and reply so far) was kept
    for seq, request in zip(seqs, follow_ups, strict=True):
        assert seq.generated == without_cache(engine, request)
