"""Training on a tiny model: the loss goes down, the version is published only on success,
the adapter changes what the bot's engine says, and an interrupted run resumes exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bot.config import ModelSettings, PathSettings, Settings
from bot.model.adapters import STAGING_DIR, current_version, list_versions, resolve_adapter, set_current
from bot.model.loading import encode_prompt, load_base_model
from bot.ops.filemode import default_file_mode
from bot.serving.generation import BASE_ADAPTER, GenerationRequest
from bot.serving.local.engine import Engine
from personas.card import GenerationParams, load_cards
from personas.render import PromptRenderer, Turn
from trainer.checkpoints import find_resumable
from trainer.config import TrainConfig
from trainer.dataset import continuation_ids, sha256_file
from trainer.train import TrainingInterrupted, train

CARD = load_cards().get("marisa")
QUESTIONS = ["元気？", "おはよう", "今日は何してた？", "魔法って難しい？", "疲れたよ", "好きな食べ物は？"]
REPLIES = [
    "元気だぜ！",
    "おはようだぜ！",
    "研究してたんだぜ。",
    "努力次第だぜ。",
    "休むといいぜ。",
    "キノコだぜ！",
]


def write_data(path: Path) -> Path:
    lines = []
    for i in range(12):
        q, a = QUESTIONS[i % 6], REPLIES[i % 6]
        turns = [
            {"speaker": "ユーザー", "text": q},
            {"speaker": "persona", "text": a},
            {"speaker": "霊夢", "text": "魔理沙、またそれか"},
            {"speaker": "persona", "text": REPLIES[(i + 1) % 6]},
        ]
        lines.append(
            json.dumps(
                {"source": "test", "id": str(i), "persona": "persona", "turns": turns}, ensure_ascii=False
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def env(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model_dir = tiny_llama
    data = write_data(root / "marisa.jsonl")
    settings = Settings(
        model=ModelSettings(base_model=str(model_dir), device="cpu"),
        paths=PathSettings(adapters_dir=str(root / "adapters"), data_dir=str(root)),
    )
    cfg = TrainConfig(
        data=(str(data),),
        # A random tiny model's output head caps its logits near uniform (small weights after a
        # norm), so LoRA on attention alone moves the loss slowly; adapting the head too lets a
        # few CPU steps show real learning. Real models need no such help.
        target_modules=("q_proj", "v_proj", "lm_head"),
        max_steps=30,
        batch_size=2,
        grad_accum=2,
        learning_rate=2e-2,
        warmup_ratio=0.1,
        val_fraction=0.2,
        eval_every=10,
        save_every=100,
        runs_dir=str(root / "runs"),
    )
    result = train(settings, CARD, cfg, version="v-ref", activate=True, progress=False)
    return root, settings, cfg, result


def _reply_nll(model, tokenizer, pairs: list[tuple[str, str]]) -> float:
    """Mean NLL of the reply tokens only, given their prompt."""
    total = 0.0
    for prompt, reply in pairs:
        context = encode_prompt(tokenizer, prompt)
        ids = torch.tensor([context + continuation_ids(tokenizer, reply)])
        labels = ids.clone()
        labels[0, : len(context)] = -100
        with torch.no_grad():
            total += float(model(input_ids=ids, labels=labels).loss)
    return total / len(pairs)


def test_training_lowers_the_loss_and_publishes_a_complete_version(env):
    root, settings, _, result = env
    assert result.activated and current_version(settings.paths.adapters_dir, "marisa") == "v-ref"
    version_dir = Path(settings.paths.adapters_dir) / "marisa" / "v-ref"
    assert {"adapter_config.json", "adapter_model.safetensors", "metadata.json"} <= {
        p.name for p in version_dir.iterdir()
    }
    meta = json.loads((version_dir / "metadata.json").read_text(encoding="utf-8"))
    assert meta["base_model"] == settings.model.base_model
    assert meta["data_files"][0]["sha256"] == sha256_file(root / "marisa.jsonl")
    assert meta["hyperparameters"]["r"] == 16 and meta["hyperparameters"]["target_modules"] == [
        "q_proj",
        "v_proj",
        "lm_head",
    ]
    assert meta["metrics"]["steps"] == 30
    assert meta["metrics"]["val_loss"] < meta["metrics"]["initial_val_loss"]
    assert not (Path(settings.paths.adapters_dir) / STAGING_DIR).exists() or not any(
        (Path(settings.paths.adapters_dir) / STAGING_DIR).iterdir()
    )
    assert list((root / "runs" / "marisa" / "v-ref").glob("events.out.tfevents.*"))
    # Published files get the umask's mode (safetensors and the CURRENT pointer go through 0600 temp files).
    published = [*version_dir.iterdir(), version_dir.parent / "CURRENT"]
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in published} == {
        p.name: oct(default_file_mode()) for p in published
    }

    # Independently of the trainer's own numbers: the persona's replies got likelier.
    from peft import PeftModel

    loaded = load_base_model(settings.model)
    renderer = PromptRenderer(CARD)
    pairs = [
        (renderer.render_prompt([Turn("ユーザー", q)]).text, a + "\n")
        for q, a in zip(QUESTIONS, REPLIES, strict=True)
    ]
    before = _reply_nll(loaded.model, loaded.tokenizer, pairs)
    tuned = PeftModel.from_pretrained(loaded.model, str(version_dir))
    assert _reply_nll(tuned, loaded.tokenizer, pairs) < before - 1.0


def test_the_saved_adapter_loads_in_the_engine_and_changes_its_output(env):
    _, settings, _, _ = env
    engine = Engine(load_base_model(settings.model))
    source = resolve_adapter(CARD, settings.paths.adapters_dir)
    assert source is not None and source.version == "v-ref"
    engine.load_adapter("marisa", source, CARD)
    prompt = PromptRenderer(CARD, engine.facts).render_prompt([Turn("ユーザー", "元気？")])
    greedy = GenerationParams(temperature=0, max_new_tokens=12, repetition_penalty=1.0)
    base, tuned = engine.generate(
        [
            GenerationRequest("marisa", prompt.text, greedy, adapter=BASE_ADAPTER),
            GenerationRequest("marisa", prompt.text, greedy, adapter="marisa"),
        ]
    )
    assert tuned.adapter_version == "v-ref"
    assert base.text != tuned.text


def test_a_failed_run_leaves_the_adapter_in_use_untouched(env):
    _, settings, cfg, _ = env

    def explode(step: int) -> None:
        if step == 2:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        train(settings, CARD, cfg, version="v-failed", progress=False, on_step=explode)
    assert current_version(settings.paths.adapters_dir, "marisa") == "v-ref"
    assert "v-failed" not in list_versions(settings.paths.adapters_dir, "marisa")


def test_an_interrupted_run_resumes_to_the_same_adapter(env):
    _, settings, cfg, _ = env

    def interrupt(step: int) -> None:
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="--resume v-int"):
        train(settings, CARD, cfg, version="v-int", progress=False, on_step=interrupt)
    assert current_version(settings.paths.adapters_dir, "marisa") == "v-ref"
    assert "v-int" not in list_versions(settings.paths.adapters_dir, "marisa")

    result = train(settings, CARD, cfg, resume=find_resumable(cfg, "marisa", "last"), progress=False)
    assert result.version == "v-int" and result.metrics["steps"] == 30
    # published as a candidate: only the gate (or activate=True) moves CURRENT
    assert current_version(settings.paths.adapters_dir, "marisa") == "v-ref" and not result.activated
    meta = json.loads((result.path / "metadata.json").read_text(encoding="utf-8"))
    assert meta["resumed_from_step"] == 13

    from safetensors.torch import load_file

    ref = load_file(Path(settings.paths.adapters_dir) / "marisa" / "v-ref" / "adapter_model.safetensors")
    resumed = load_file(result.path / "adapter_model.safetensors")
    assert ref.keys() == resumed.keys()
    for key in ref:
        torch.testing.assert_close(resumed[key], ref[key], rtol=1e-4, atol=1e-5)
    set_current(settings.paths.adapters_dir, "marisa", "v-ref")


def test_cli_trains_with_overrides_and_no_activate(env, tmp_path, monkeypatch):
    from trainer.__main__ import main

    root, settings, cfg, _ = env
    config = tmp_path / "oshaberi.toml"
    config.write_text(
        f'[model]\nbase_model = "{settings.model.base_model}"\ndevice = "cpu"\n'
        f'[paths]\nadapters_dir = "{settings.paths.adapters_dir}"\ndata_dir = "{root}"\n',
        encoding="utf-8",
    )
    for var in ("OSHABERI_MODEL", "OSHABERI_DEVICE", "OSHABERI_ADAPTERS_DIR", "OSHABERI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    code = main(
        [
            "--config", str(config), "train", "--persona", "marisa", "--version", "v-cli",
            "--max-steps", "1", "--batch-size", "2", "--runs-dir", str(tmp_path / "runs"),
            "--no-activate", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    assert "v-cli" in list_versions(settings.paths.adapters_dir, "marisa")
    assert current_version(settings.paths.adapters_dir, "marisa") == "v-ref"
    # The default data path ({data_dir}/{persona}.jsonl) was used, and the override was recorded.
    meta = json.loads((Path(settings.paths.adapters_dir) / "marisa" / "v-cli" / "metadata.json").read_text())
    assert meta["hyperparameters"]["max_steps"] == 1
    assert meta["data_files"][0]["path"].endswith("marisa.jsonl")
    assert replace(cfg).max_steps == 30  # the module's config is untouched


def test_cpu_training_of_a_4bit_config_uses_full_precision_and_checkpointing(env):
    # bitsandbytes' CPU 4-bit kernels have no backward: the adapter would silently stay zero.
    _, settings, cfg, _ = env
    four_bit = replace(settings, model=replace(settings.model, quantization="4bit"))
    result = train(
        four_bit,
        CARD,
        replace(cfg, max_steps=2, gradient_checkpointing="on"),
        version="v-4bit-cfg",
        activate=False,
        progress=False,
    )
    meta = json.loads((result.path / "metadata.json").read_text(encoding="utf-8"))
    assert (meta["method"], meta["quantization"]) == ("lora", "none")
    from safetensors.torch import load_file

    weights = load_file(result.path / "adapter_model.safetensors")
    assert any(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)
