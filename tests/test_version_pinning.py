"""Version-true serving on the local engine (issue 16 item 1): a row keeps the adapter version it
was admitted with until it finishes, whatever reloads happen meanwhile; the old version stays
resident until its last row leaves, then is freed; the result names the admission version.

Each sibling of "the adapter changes under a running row" has its own test: a new CURRENT
(mid-prefill and mid-decode, GPT-NeoX and Llama), the persona going prompt-only (in
test_continuous_batching / test_worker_bad_input), a canary ended or promoted, a failed step.
"""

from __future__ import annotations

import pytest
import torch

from bot.config import ModelSettings
from bot.model.adapters import AdapterSource
from bot.serving.canary import CanarySplit
from bot.serving.generation import GenerationRequest
from bot.serving.local.engine import Engine, RunningBatch
from personas.card import GenerationParams

LONG = "ユーザー: 魔法の研究は順調？\n魔理沙: " * 4  # several prefill chunks of 8 tokens
ARCHS = ["gpt-neox", "llama"]


def forced(n: int) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=n, min_new_tokens=n, repetition_penalty=1.0)


def req(prompt: str = LONG, adapter: str = "marisa", n: int = 16) -> GenerationRequest:
    return GenerationRequest(persona_id=adapter, prompt=prompt, params=forced(n), adapter=adapter)


def published(path, version: str) -> AdapterSource:
    """A version from the adapters layout (immutable), as resolve_adapter gives it."""
    return AdapterSource(str(path), version, True, immutable=True)


def fresh_engine(tiny_models, random_adapters, arch: str) -> Engine:
    """marisa v1 and zundamon v1 resident; ojousama's random adapter serves as marisa's v2 files."""
    engine = Engine.from_settings(ModelSettings(base_model=str(tiny_models[arch])), prefill_chunk_tokens=8)
    engine.load_adapter("marisa", published(random_adapters[arch]["marisa"], "v1"))
    engine.load_adapter("zundamon", published(random_adapters[arch]["zundamon"], "v1"))
    return engine


def run_to_end(batch: RunningBatch, seqs, limit: int = 300) -> None:
    for _ in range(limit):
        if all(s.finished for s in seqs):
            return
        batch.step()
    raise AssertionError("rows did not finish")


def step_until(batch: RunningBatch, done, limit: int = 300) -> None:
    for _ in range(limit):
        if done():
            return
        batch.step()
    raise AssertionError("condition never reached")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("when", ["prefill", "decode"])
def test_a_reload_mid_reply_keeps_the_admission_version(tiny_models, random_adapters, arch, when):
    engine = fresh_engine(tiny_models, random_adapters, arch)
    no_reload = list(engine.generate([req()])[0].token_ids)
    other_req = req("ユーザー: ずんだ餅は好き？\nずんだもん: ", "zundamon")
    other_alone = list(engine.generate([other_req])[0].token_ids)

    batch = RunningBatch(engine)
    row, other = engine.sequence(req()), engine.sequence(other_req)
    batch.add([row, other])
    if when == "prefill":
        batch.step()
        assert batch.prefilling is not None and row in batch.prefilling.seqs  # its prompt is half read
    else:
        step_until(batch, lambda: len(row.generated) >= 4)
    old_key = row.adapter.key

    engine.load_adapter("marisa", published(random_adapters[arch]["ojousama"], "v2"))
    newcomer = engine.sequence(req())  # admitted after the reload: the new version, same batch
    batch.add([newcomer])
    assert old_key in engine.pool.resident_keys()  # still pinned by the running row
    run_to_end(batch, [row, other, newcomer])

    assert row.generated == no_reload  # the same greedy tokens as without the reload
    assert engine.result(row).adapter_version == "v1"
    assert other.generated == other_alone
    v2_alone = list(engine.generate([req()])[0].token_ids)
    assert v2_alone != no_reload  # the versions really differ, so the first assert means something
    assert newcomer.generated == v2_alone and engine.result(newcomer).adapter_version == "v2"
    # v1 was freed with its last row: no PEFT adapter under its key, memory back to one per persona
    assert old_key not in engine.pool.resident_keys() and old_key not in engine.pool.peft.peft_config
    assert len(engine.pool.peft.peft_config) == 2


def test_a_version_already_resident_is_not_read_again(tiny_neox, random_adapters):
    """The instance (its key: what a prefix cache keys on) survives a reload that changes nothing,
    a canary's promotion, and a rollback to a version still finishing rows."""
    engine = fresh_engine({"gpt-neox": tiny_neox}, random_adapters, "gpt-neox")
    files = random_adapters["gpt-neox"]
    v1 = engine.pool.internal_name("marisa")
    engine.load_adapter("marisa", published(files["marisa"], "v1"))
    assert engine.pool.internal_name("marisa") == v1  # /reload with nothing changed

    engine.load_canary("marisa", published(files["ojousama"], "v2"), 0.3)
    (canary,) = engine.canaries()
    assert (canary.version, canary.share) == ("v2", 0.3)
    v2 = next(k for k in engine.pool.resident_keys() if k != v1 and k.startswith("marisa"))
    engine.load_adapter("marisa", published(files["ojousama"], "v2"))  # promote: CURRENT = the canary
    assert engine.pool.internal_name("marisa") == v2 and engine.canaries() == []
    assert v1 not in engine.pool.resident_keys()  # no row held v1: freed at once

    # A row pinned to v2, then a rollback to v1 and back: v2 is revived, not read again.
    batch = RunningBatch(engine)
    row = engine.sequence(req(n=8))
    batch.add([row])
    batch.step()
    engine.load_adapter("marisa", published(files["marisa"], "v1"))
    engine.load_adapter("marisa", published(files["ojousama"], "v2"))
    assert engine.pool.internal_name("marisa") == v2
    run_to_end(batch, [row])
    assert v2 in engine.pool.resident_keys()  # it is CURRENT again, so its last row did not free it

    # A card's own adapter path (not a published version) may change in place: always read again.
    engine.load_adapter("zundamon", AdapterSource(str(files["zundamon"]), "v1", True))
    first = engine.pool.internal_name("zundamon")
    engine.load_adapter("zundamon", AdapterSource(str(files["zundamon"]), "v1", True))
    assert engine.pool.internal_name("zundamon") != first


def test_a_canary_row_finishes_on_the_canary_when_the_canary_ends(tiny_neox, random_adapters):
    engine = fresh_engine({"gpt-neox": tiny_neox}, random_adapters, "gpt-neox")
    files = random_adapters["gpt-neox"]
    engine.load_canary("marisa", published(files["ojousama"], "v2"), 0.5)
    engine.pool.split = CanarySplit(seed=0)
    batch = RunningBatch(engine)
    rows = [engine.sequence(req(n=12)) for _ in range(8)]
    versions = [r.adapter.version for r in rows]
    assert set(versions) == {"v1", "v2"}  # seed 0 gives both within 8 draws
    batch.add(rows)
    step_until(batch, lambda: len(rows[0].generated) >= 3)
    canary_key = next(r.adapter.key for r in rows if r.adapter.version == "v2")
    engine.clear_canary("marisa")
    assert engine.canaries() == [] and canary_key in engine.pool.resident_keys()
    run_to_end(batch, rows)
    by_version = {
        v: {tuple(r.generated) for r, rv in zip(rows, versions, strict=True) if rv == v} for v in versions
    }
    assert len(by_version["v1"]) == len(by_version["v2"]) == 1  # one greedy text per version
    assert by_version["v1"] != by_version["v2"]
    assert [engine.result(r).adapter_version for r in rows] == versions
    assert canary_key not in engine.pool.resident_keys()  # freed with its last row
    # and what v1 gives alone is what its rows gave
    assert by_version["v1"] == {tuple(engine.generate([req(n=12)])[0].token_ids)}


def test_a_failed_step_gives_every_pin_back(tiny_neox, random_adapters, monkeypatch):
    engine = fresh_engine({"gpt-neox": tiny_neox}, random_adapters, "gpt-neox")
    row = engine.sequence(req(n=8))
    engine.load_adapter("marisa", published(random_adapters["gpt-neox"]["ojousama"], "v2"))
    old_key = row.adapter.key
    assert old_key in engine.pool.resident_keys()
    batch = RunningBatch(engine)
    batch.add([row])

    def broken(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(engine, "forward", broken)
    with pytest.raises(torch.OutOfMemoryError):
        batch.step()
    assert batch.abort() == [row]  # what the worker does after a failed step
    assert old_key not in engine.pool.resident_keys()
    with pytest.raises(torch.OutOfMemoryError):
        engine.generate([req(n=4)])  # static batching releases its rows too
    assert engine.pool._current["marisa"].rows == 0
