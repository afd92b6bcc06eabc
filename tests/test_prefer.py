"""The preference stage on tiny models: KTO on a synthetic review history raises the held-out
margin (and the command prints it), TRL gets the project's token ids and the starting adapter
as its frozen reference, and every bad input is one line with the serving version untouched."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from bot.config import load_settings
from bot.model.adapters import current_version, list_versions, set_current, version_metadata
from bot.model.loading import load_base_model
from personas.render import PromptRenderer, TokenizerFacts
from tests.learning_history import CARD, write_bot_config, write_history, write_train_config
from trainer.__main__ import main as trainer_main
from trainer.dataset import ExampleEncoder
from trainer.preference_data import KTO_TARGET_RATIO, build_preference_set, kto_class_weights
from trainer.preferences import export_preferences, read_preferences
from trainer.scoring import batch_nll


@pytest.fixture(scope="module")
def env(tiny_llama, random_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("prefer")
    shutil.copytree(random_adapters["llama"]["marisa"], root / "adapters" / "marisa" / "v1")
    set_current(root / "adapters", "marisa", "v1")
    asyncio.run(write_history(root / "bot.sqlite3"))
    config = write_bot_config(root / "oshaberi.toml", tiny_llama, root)
    train_config = write_train_config(root / "train.toml", runs_dir=str(root / "runs"))
    return root, str(config), str(train_config)


def run(env, *args: str) -> int:
    _, config, train_config = env
    return trainer_main(["--config", config, *args[:1], *args[1:], "--train-config", train_config])


def figures(out: str) -> dict[str, tuple[float | None, float | None]]:
    """The gate's table: figure name → (serving, candidate)."""
    rows = {}
    for line in out.splitlines():
        m = re.match(r"(approved_loglik|margin_\w+|style_marker_rate)\s+(\S+)\s+(\S+)", line)
        if m:
            rows[m[1]] = tuple(None if v == "-" else float(v) for v in m.group(2, 3))
    return rows


def test_kto_on_the_review_history_raises_the_heldout_margin_and_prints_it(env, capsys) -> None:
    root, config, _ = env
    set_current(root / "adapters", "marisa", "v1")
    code = run(env, "prefer", "--persona", "marisa", "--method", "kto", "--export", "--version", "v-kto")
    out = capsys.readouterr().out
    print(out)
    table = figures(out)
    serving, candidate = table["margin_approved_rejected"]
    assert candidate > serving + 0.05, out  # approved minus rejected, held-out rows only
    assert table["margin_edit"][1] > table["margin_edit"][0], out
    assert "verdict: pass" in out and code == 0
    settings = load_settings(config, environ={})
    assert current_version(settings.paths.adapters_dir, "marisa") == "v-kto"
    meta = version_metadata(settings.paths.adapters_dir, "marisa", "v-kto")
    assert (meta["method"], meta["beta"], meta["reference"], meta["stage"]) == ("kto", 0.1, "v1", "preference")
    counts = meta["counts"]
    # 30 approvals + 8 edits desirable; 14 rejections + 8 originals undesirable (held-out rows left out)
    assert (counts["desirable"], counts["undesirable"], counts["pairs"]) == (38, 22, 8)
    assert meta["class_weights"] == dict(zip(("desirable_weight", "undesirable_weight"), kto_class_weights(38, 22), strict=True))
    [data] = meta["data_files"]
    assert data["path"].endswith("marisa-preferences.jsonl") and len(data["sha256"]) == 64
    assert meta["reviews_exported_at"] and meta["packages"]["trl"].startswith("1.16")
    assert meta["gate"]["verdict"] == "pass" and meta["gate"]["forced"] is False
    set_current(settings.paths.adapters_dir, "marisa", "v1")


def test_dpo_learns_from_edit_pairs(env, capsys) -> None:
    root, _config, _ = env
    set_current(root / "adapters", "marisa", "v1")
    code = run(env, "prefer", "--persona", "marisa", "--method", "dpo", "--version", "v-dpo", "--no-activate")
    out = capsys.readouterr().out
    assert code == 0 and "dpo candidate v-dpo from v1" in out and "not judged" in out
    meta = version_metadata(root / "adapters", "marisa", "v-dpo")
    assert meta["method"] == "dpo" and meta["counts"]["pairs"] == 8 and meta["class_weights"] is None
    assert current_version(root / "adapters", "marisa") == "v1"  # --no-activate: a candidate only


def test_kto_class_weights_follow_trls_guidance() -> None:
    for desirable, undesirable in [(38, 22), (100, 3), (5, 40), (10, 10), (12, 10), (1, 1)]:
        dw, uw = kto_class_weights(desirable, undesirable)
        ratio = dw * desirable / (uw * undesirable)
        assert 1.0 <= round(ratio, 6) <= 4 / 3, (desirable, undesirable, ratio)
        # TRL's own check (KTOTrainer._prepare_dataset): one of the two weights within its bounds
        low, high = round(undesirable * uw / desirable, 2), round(undesirable * uw / desirable * 1.33, 2)
        ulow, uhigh = round(desirable * dw / undesirable / 1.33, 2), round(desirable * dw / undesirable, 2)
        assert low <= dw <= high or ulow <= uw <= uhigh or desirable == undesirable
    assert kto_class_weights(38, 22)[0] == round(KTO_TARGET_RATIO / (38 / 22), 4)


def test_trl_gets_the_projects_token_ids_and_the_starting_adapter_as_reference(
    tiny_neox, random_adapters, tmp_path
) -> None:
    """On the rinna-style tokenizer, which appends </s> to every encoding: the batch TRL forms
    holds exactly our ids (no </s> between prompt and reply), its KL pairs are TRL's rotation,
    and its reference log-probabilities are the starting adapter's, not the bare base model's."""
    from datasets import Dataset
    from peft import PeftModel

    from bot.config import ModelSettings
    from trainer.config import TrainConfig
    from trainer.prefer import _trainer_classes, training_arguments

    asyncio.run(write_history(tmp_path / "bot.sqlite3"))
    export = asyncio.run(
        export_preferences(tmp_path / "bot.sqlite3", "marisa", tmp_path / "p.jsonl", listed_servers=(1,))
    )
    loaded = load_base_model(ModelSettings(base_model=str(tiny_neox), device="cpu"))
    tokenizer = loaded.tokenizer
    assert tokenizer("おはよう")["input_ids"][-1] == tokenizer.eos_token_id  # rinna's habit
    encoder = ExampleEncoder(PromptRenderer(CARD, TokenizerFacts.from_tokenizer(tokenizer)), tokenizer, 64)
    data = build_preference_set(read_preferences(export.path), encoder, "kto", seed=1)
    cfg = TrainConfig(batch_size=4, grad_accum=1, max_steps=1, max_length=64)
    start = random_adapters["gpt-neox"]["marisa"]
    model = PeftModel.from_pretrained(loaded.model, str(start), is_trainable=True)
    kto, _ = _trainer_classes()
    trainer = kto(
        model=model,
        args=training_arguments(cfg, "kto", tmp_path / "run", loaded.device, desirable_weight=0.5),
        train_dataset=Dataset.from_list(data.rows),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    for i, row in enumerate(data.rows[:4]):
        ids = row["prompt_ids"] + row["completion_ids"]
        assert batch["input_ids"][i, : len(ids)].tolist() == ids
        assert batch["completion_mask"][i].sum() == len(row["completion_ids"])
        assert row["prompt_ids"][-1] != tokenizer.eos_token_id  # the reply follows the prompt directly
        previous = data.rows[(i - 1) % 4]["completion_ids"]
        expected = (row["prompt_ids"] + previous)[:64]  # TRL's collator cuts at max_length
        assert batch["KL_input_ids"][i, : len(expected)].tolist() == expected

    # the reference: TRL's frozen "ref" copy of the starting adapter
    assert set(model.peft_config) == {"default", "ref"}
    ref_logps, _ = trainer.compute_ref_log_probs(model, {k: v for k, v in batch.items()})
    ours = _summed_logps(model, batch)
    torch.testing.assert_close(ref_logps, ours, rtol=1e-4, atol=1e-3)
    with model.disable_adapter():
        bare = _summed_logps(model, batch)
    assert (ref_logps - bare).abs().max() > 0.5  # not the bare base model


def _summed_logps(model, batch) -> torch.Tensor:
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        sums, _ = batch_nll(
            model,
            {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels},
            torch.device("cpu"),
            torch.float32,
        )
    return -sums


def _prefs(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")


APPROVED = {"prompt": "ユーザー: 元気？\n魔理沙: ", "completion": "元気だぜ！", "label": True}
REJECTED = {"prompt": "ユーザー: 元気？\n魔理沙: ", "completion": "元気です。", "label": False}


@pytest.mark.parametrize(
    ("lines", "method", "message"),
    [
        ([], "kto", "has no decisions yet"),
        ([APPROVED, APPROVED], "kto", "KTO needs approved and rejected replies; the export has 2 desirable and 0"),
        ([REJECTED], "kto", "has 0 desirable and 1 undesirable"),
        ([APPROVED, REJECTED], "dpo", "DPO learns from edits, and the export has no edit pairs"),
        (None, "kto", "no preference export at"),
        ("garbage", "kto", "p.jsonl:1: not valid JSON"),
    ],
)
def test_bad_preference_data_is_one_line_and_changes_nothing(env, tmp_path, capsys, lines, method, message) -> None:
    root, _, _ = env
    set_current(root / "adapters", "marisa", "v1")
    before = list_versions(root / "adapters", "marisa")
    data = tmp_path / "p.jsonl"
    if lines == "garbage":
        data.write_text("{oops\n", encoding="utf-8")
    elif lines is not None:
        _prefs(data, lines)
    code = run(env, "prefer", "--persona", "marisa", "--method", method, "--preferences", str(data))
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert current_version(root / "adapters", "marisa") == "v1"
    assert list_versions(root / "adapters", "marisa") == before


def test_a_persona_with_no_adapter_yet_is_told_to_train_first(env, capsys) -> None:
    code = run(env, "prefer", "--persona", "zundamon", "--method", "kto")
    err = capsys.readouterr().err
    assert code == 1 and "zundamon has no adapter yet: train one first" in err and err.count("\n") == 1
