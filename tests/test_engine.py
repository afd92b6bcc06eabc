"""The engine on tiny real-architecture models: mixed-adapter batches, hot swaps, 4-bit, bad adapters."""

import json
import shutil

import pytest
import torch

from bot.config import ModelSettings
from bot.model.adapters import AdapterSource
from bot.model.loading import ModelLoadError, load_base_model, lora_target_modules
from bot.serving.generation import BASE_ADAPTER, AdapterError, GenerationRequest
from bot.serving.local.engine import Engine
from personas.card import GenerationParams

GREEDY = GenerationParams(temperature=0, max_new_tokens=10, repetition_penalty=1.0)
PROMPTS = [
    "ユーザー: こんにちは\n魔理沙: ",
    "ユーザー: 元気？\nシステム: ",
    "ユーザー: おはよう\nお嬢様: ",
    "今日は",
]


def make_engine(model_dir, adapters: dict, **settings) -> Engine:
    engine = Engine.from_settings(ModelSettings(base_model=str(model_dir), **settings))
    for name, path in adapters.items():
        engine.load_adapter(name, AdapterSource(str(path), f"{name}-v1", True))
    return engine


def req(
    prompt: str, adapter: str = BASE_ADAPTER, params: GenerationParams = GREEDY, **kw
) -> GenerationRequest:
    return GenerationRequest(persona_id=adapter, prompt=prompt, params=params, adapter=adapter, **kw)


def tokens(engine: Engine, result) -> list[int]:
    return engine.tokenizer(result.text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module", params=["gpt-neox", "llama"])
def engine(request, tiny_models, random_adapters) -> Engine:
    arch = request.param
    return make_engine(tiny_models[arch], random_adapters[arch])


def test_mixed_batch_equals_each_row_alone(engine):
    rows = [
        req(PROMPTS[0], "marisa"),
        req(PROMPTS[1], "zundamon"),
        req(PROMPTS[2], "ojousama"),
        req(PROMPTS[3], BASE_ADAPTER),
        req(PROMPTS[1], "marisa"),
    ]
    mixed = engine.generate(rows)
    for row, together in zip(rows, mixed, strict=True):
        alone = engine.generate([row])[0]
        assert together.text == alone.text, row.adapter
        assert together.new_tokens == alone.new_tokens
    assert {r.batch_size for r in mixed} == {5}


def test_switching_persona_changes_output(engine):
    outputs = {
        name: engine.generate([req(PROMPTS[0], name)])[0].text
        for name in ("marisa", "zundamon", BASE_ADAPTER)
    }
    assert len(set(outputs.values())) == 3


def test_prompt_only_persona_equals_base_model(engine, tiny_models):
    arch = engine.loaded.architecture.replace("gpt_neox", "gpt-neox")
    plain = make_engine(tiny_models[arch], {})
    for prompt in PROMPTS:
        assert engine.generate([req(prompt)])[0].text == plain.generate([req(prompt)])[0].text


def test_plain_hf_generate_agrees_with_the_decode_loop(engine, tiny_models):
    """The hand-written loop is ordinary greedy decoding: it must match transformers' own generate."""
    from bot.model.loading import encode_prompt

    plain = make_engine(tiny_models["gpt-neox" if engine.loaded.architecture == "gpt_neox" else "llama"], {})
    ids = torch.tensor([encode_prompt(plain.tokenizer, PROMPTS[0])])
    out = plain.loaded.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=10,
        do_sample=False,
        min_new_tokens=10,
        eos_token_id=None,
        pad_token_id=plain.tokenizer.pad_token_id,
    )
    ours = plain.generate(
        [
            req(
                PROMPTS[0],
                params=GenerationParams(
                    temperature=0, max_new_tokens=10, min_new_tokens=10, repetition_penalty=1.0
                ),
            )
        ]
    )[0]
    assert list(ours.token_ids) == out[0, ids.shape[1] :].tolist()
    # The random model emits stray byte-fallback tokens; their U+FFFD is never part of a reply.
    expected = plain.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert expected.replace("\ufffd", "") == ours.text


def test_rows_keep_their_own_parameters_and_stop_strings(engine):
    free = req(PROMPTS[0], "marisa")
    reference = engine.generate([free])[0].text
    assert len(reference) >= 2
    stop_at = reference[1]
    short = GenerationParams(temperature=0, max_new_tokens=3, repetition_penalty=1.0)
    rows = [req(PROMPTS[0], "marisa", stop=(stop_at,)), req(PROMPTS[1], "zundamon", params=short), free]
    stopped, capped, untouched = engine.generate(rows)
    assert (
        stopped.finish_reason == "stop" and stop_at not in stopped.text and reference.startswith(stopped.text)
    )
    assert capped.new_tokens == 3 and capped.finish_reason == "length"
    assert untouched.text == reference


def test_sampling_with_a_seed_is_reproducible_and_banned_words_never_appear(engine):
    params = GenerationParams(temperature=1.0, top_p=0.9, top_k=20, max_new_tokens=12)
    first = engine.generate([req(PROMPTS[0], "marisa", params=params, seed=7)])[0].text
    again = engine.generate([req(PROMPTS[0], "marisa", params=params, seed=7)])[0].text
    assert first == again
    greedy_text = engine.generate([req(PROMPTS[0], "marisa")])[0].text
    word = greedy_text[:1]
    banned = engine.generate([req(PROMPTS[0], "marisa", banned_words=(word,))])[0]
    assert word not in banned.text


def test_streamed_pieces_add_up_to_the_text(engine):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    results = engine.generate(
        [req(PROMPTS[0], "marisa"), req(PROMPTS[1], "zundamon")], on_piece=lambda i, p: pieces[i].append(p)
    )
    for i, result in enumerate(results):
        assert "".join(pieces[i]) == result.text


def test_reloading_fifty_times_keeps_memory_flat(tiny_neox, random_adapters):
    engine = make_engine(tiny_neox, random_adapters["gpt-neox"])
    params_before = engine.parameter_count()
    before = engine.generate([req(PROMPTS[0], "marisa")])[0].text
    for i in range(50):
        engine.load_adapter(
            "marisa", AdapterSource(str(random_adapters["gpt-neox"]["marisa"]), f"v{i}", True)
        )
    assert engine.parameter_count() == params_before
    assert len(engine._peft.peft_config) == 3 and len(engine.adapters()) == 3
    assert engine.adapter_version("marisa") == "v49"
    assert engine.generate([req(PROMPTS[0], "marisa")])[0].text == before


def test_add_and_remove_adapters_at_run_time(tiny_neox, random_adapters):
    engine = make_engine(tiny_neox, {})
    base_params = engine.parameter_count()
    engine.load_adapter("marisa", AdapterSource(str(random_adapters["gpt-neox"]["marisa"]), "v1", True))
    assert engine.parameter_count() > base_params
    engine.remove_adapter("marisa")
    assert not engine.has_adapter("marisa") and engine.adapters() == []
    assert engine.generate([req(PROMPTS[0])])[0].new_tokens > 0
    with pytest.raises(AdapterError, match="not loaded"):
        engine.generate([req(PROMPTS[0], "marisa")])


def test_corrupt_or_missing_adapter_keeps_the_old_one(tmp_path, tiny_neox, random_adapters):
    good = random_adapters["gpt-neox"]["marisa"]
    engine = make_engine(tiny_neox, {"marisa": good})
    before = engine.generate([req(PROMPTS[0], "marisa")])[0].text

    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="failed to load"):
        engine.load_adapter("marisa", AdapterSource(str(corrupt), "bad", True))

    with pytest.raises(AdapterError, match="does not exist"):
        engine.load_adapter("marisa", AdapterSource(str(tmp_path / "nowhere"), "gone", True))

    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(good / "adapter_config.json", no_weights)
    with pytest.raises(AdapterError, match="no weights"):
        engine.load_adapter("marisa", AdapterSource(str(no_weights), "empty", True))

    assert engine.adapter_version("marisa") == "marisa-v1"
    assert engine.generate([req(PROMPTS[0], "marisa")])[0].text == before
    assert len(engine._peft.peft_config) == 1


def test_adapter_for_another_base_model_is_refused(tmp_path, tiny_neox, random_adapters):
    from personas.card import load_cards

    foreign = tmp_path / "foreign"
    shutil.copytree(random_adapters["gpt-neox"]["marisa"], foreign)
    cfg = json.loads((foreign / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/another-model"
    (foreign / "adapter_config.json").write_text(json.dumps(cfg))
    engine = make_engine(tiny_neox, {})
    with pytest.raises(AdapterError, match="another-model"):
        engine.load_adapter("marisa", AdapterSource(str(foreign), "x", True), load_cards().get("marisa"))


def test_four_bit_cpu_path_loads_and_generates(tiny_neox, random_adapters):
    engine = make_engine(tiny_neox, random_adapters["gpt-neox"], quantization="4bit")
    import bitsandbytes as bnb

    assert engine.loaded.quantization == "4bit"
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in engine.loaded.model.modules())
    results = engine.generate([req(PROMPTS[0], "marisa"), req(PROMPTS[1], BASE_ADAPTER)])
    assert all(r.new_tokens > 0 for r in results)
    assert results[0].text == engine.generate([req(PROMPTS[0], "marisa")])[0].text


def test_target_modules_come_from_the_architecture(tiny_models):
    neox = load_base_model(ModelSettings(base_model=str(tiny_models["gpt-neox"]))).model
    llama = load_base_model(ModelSettings(base_model=str(tiny_models["llama"]))).model
    assert lora_target_modules(neox) == ["query_key_value"]
    assert set(lora_target_modules(llama)) >= {"q_proj", "v_proj"}


def test_missing_model_path_says_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match=r"does not exist.*OSHABERI_MODEL"):
        load_base_model(ModelSettings(base_model=str(tmp_path / "no-such-model")))
    with pytest.raises(ModelLoadError, match=r"could not load base model.*local model folder"):
        load_base_model(ModelSettings(base_model="nobody/no-such-model", local_files_only=True))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_gives_the_last_positions_logits_of_the_whole_model(tiny_neox, random_adapters, dtype):
    # Engine.forward keeps only the last position's logits (an index tensor, not a slice: see
    # its comment); they must be the model's own logits at that position, prefill and decode.
    from bot.serving.local.kv_cache import new_cache

    engine = make_engine(tiny_neox, random_adapters["gpt-neox"], dtype=dtype)
    ids = torch.tensor([[5, 9, 17, 33, 2, 41], [7, 7, 12, 19, 23, 29]])
    ones = torch.ones_like(ids)
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    adapters = [engine.pool.acquire("marisa").key, engine.pool.acquire("zundamon").key]
    with torch.inference_mode():
        whole = engine.pool.model(
            input_ids=ids, attention_mask=ones, position_ids=positions, adapter_names=adapters
        )
        cache = new_cache()
        prefill = engine.forward(ids[:, :-1], ones[:, :-1], positions[:, :-1], cache, adapters)
        decode = engine.forward(ids[:, -1:], ones, positions[:, -1:], cache, adapters)
    assert prefill.shape == decode.shape == (2, whole.logits.shape[-1]) and prefill.dtype == torch.float32
    tol = 1e-5 if dtype == "float32" else 5e-2
    torch.testing.assert_close(prefill, whole.logits[:, -2].float(), atol=tol, rtol=tol)
    torch.testing.assert_close(decode, whole.logits[:, -1].float(), atol=tol, rtol=tol)


def test_a_cpu_with_amx_is_told_that_bfloat16_serves_faster(tiny_neox, monkeypatch, caplog):
    import bot.model.loading as loading

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = ModelSettings(base_model=str(tiny_neox))
    monkeypatch.setattr(loading, "cpu_has_amx", lambda: True)
    assert 'model.dtype = "bfloat16"' in loading.bfloat16_hint(auto, cpu, "none")
    for settings, device, quant in [
        (ModelSettings(base_model=str(tiny_neox), dtype="float32"), cpu, "none"),  # chosen on purpose
        (ModelSettings(base_model=str(tiny_neox), dtype="bfloat16"), cpu, "none"),  # already
        (auto, cpu, "4bit"),  # bitsandbytes' CPU kernels decide there
        (auto, cuda, "none"),  # auto is bfloat16 on a GPU anyway
    ]:
        assert loading.bfloat16_hint(settings, device, quant) is None
    with caplog.at_level("INFO", logger="bot.model.loading"):
        load_base_model(auto)
    assert sum("AMX" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setattr(loading, "cpu_has_amx", lambda: False)
    assert loading.bfloat16_hint(auto, cpu, "none") is None
