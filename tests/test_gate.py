"""The promotion gate: a candidate trained on garbage is refused and the serving version keeps
serving; --force promotes it and says so; a corrupt candidate is one line; every figure is
printed for both versions with the verdict."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.model.adapters import current_version, list_versions, set_current, version_metadata
from bot.model.rollout import read_history
from tests.learning_history import GOOD, QUESTIONS, write_bot_config, write_history, write_train_config
from trainer.__main__ import main as trainer_main
from trainer.config import load_train_config
from trainer.train import train

ROOT_KEYS = {"target_modules": ["q_proj", "v_proj", "lm_head"], "learning_rate": 2e-2, "max_steps": 12}


def dialogues(path: Path, replies: list[str]) -> Path:
    lines = []
    for i in range(24):
        turns = [{"speaker": "ユーザー", "text": QUESTIONS[i % 6]}, {"speaker": "p", "text": replies[i % len(replies)]}]
        lines.append(json.dumps({"source": "t", "id": str(i), "persona": "p", "turns": turns}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def env(tiny_llama, tmp_path_factory):
    """A serving version trained on the approved style, and a candidate trained on garbage."""
    root = tmp_path_factory.mktemp("gate")
    asyncio.run(write_history(root / "bot.sqlite3"))
    config = write_bot_config(root / "oshaberi.toml", tiny_llama, root)
    rng = random.Random(0)
    garbage = ["".join(rng.choice("ぁあぃいぅうぇえぉおアイウエオ#@%&") for _ in range(12)) for _ in range(12)]
    train_config = write_train_config(
        root / "train.toml", runs_dir=str(root / "runs"), data=[str(dialogues(root / "good.jsonl", GOOD))], reviewed="", **ROOT_KEYS
    )
    settings = load_settings(config, environ={})
    from tests.learning_history import CARD

    cfg = load_train_config(train_config, "marisa")
    train(settings, CARD, cfg, version="v-good", activate=True, progress=False)
    from dataclasses import replace

    bad_cfg = replace(cfg, data=(str(dialogues(root / "garbage.jsonl", garbage)),), learning_rate=5e-2)
    train(settings, CARD, bad_cfg, version="v-garbage", progress=False)
    return root, str(config), str(train_config)


def run(env, *args: str) -> int:
    _, config, train_config = env
    return trainer_main(["--config", config, *args, "--train-config", train_config])


def test_a_candidate_trained_on_garbage_is_refused_and_the_serving_version_stays(env, capsys) -> None:
    root, _, _ = env
    adapters = root / "adapters"
    assert current_version(adapters, "marisa") == "v-good"
    code = run(env, "promote", "--persona", "marisa", "--version", "v-garbage")
    out = capsys.readouterr().out
    print(out)
    assert code == 1
    assert "serving v-good" in out and "candidate v-garbage" in out
    for figure in ("approved_loglik", "margin_approved_rejected", "margin_edit", "style_marker_rate"):
        assert figure in out, figure
    assert "approved_loglik" in out.split("verdict: refuse (v-garbage is worse on ")[1]
    assert "refused by the promotion gate" in out and "v-good keeps serving" in out
    assert current_version(adapters, "marisa") == "v-good"
    gate = version_metadata(adapters, "marisa", "v-garbage")["gate"]
    assert gate["verdict"] == "refuse" and gate["forced"] is False and gate["serving"] == "v-good"
    loglik = next(f for f in gate["figures"] if f["name"] == "approved_loglik")
    assert loglik["candidate"] < loglik["serving"] - loglik["tolerance"] and loglik["count"] == 6
    assert read_history(adapters, "marisa") == []  # nothing moved


def test_force_promotes_past_a_refusal_and_says_so(env, capsys) -> None:
    root, _, _ = env
    adapters = root / "adapters"
    set_current(adapters, "marisa", "v-good")
    code = run(env, "promote", "--persona", "marisa", "--version", "v-garbage", "--force")
    out = capsys.readouterr().out
    assert code == 0 and "verdict: refuse" in out and "now current (forced past a refusing gate)" in out
    assert current_version(adapters, "marisa") == "v-garbage"
    assert version_metadata(adapters, "marisa", "v-garbage")["gate"]["forced"] is True
    [move] = read_history(adapters, "marisa")
    assert move.forced and (move.from_version, move.to_version) == ("v-good", "v-garbage")
    # and back: rollback from the CLI serves the earlier version again
    assert run_plain(env, "rollback", "--persona", "marisa") == 0
    assert current_version(adapters, "marisa") == "v-good"


def run_plain(env, *args: str) -> int:
    _, config, _ = env
    return trainer_main(["--config", config, *args])


def test_the_gate_passes_a_version_against_itself_and_shows_style(env, capsys, tmp_path) -> None:
    root, config, _ = env
    adapters = root / "adapters"
    set_current(adapters, "marisa", "v-good")
    shutil.copytree(adapters / "marisa" / "v-good", adapters / "marisa" / "v-good-copy")
    (adapters / "marisa" / "v-good-copy" / "metadata.json").unlink()
    one_probe = write_train_config(tmp_path / "t.toml", gate_probes=1, max_length=64)
    code = trainer_main(["--config", config, "promote", "--persona", "marisa", "--version", "v-good-copy",
                         "--train-config", str(one_probe), "--canary", "0.3"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "verdict: pass" in out, out
    style = next(line for line in out.splitlines() if line.startswith("style_marker_rate"))
    assert style.split()[1] == style.split()[2] != "-"  # the same adapter, the same seeds: the same rate
    assert "canary v-good-copy on 30% of requests" in out
    assert current_version(adapters, "marisa") == "v-good"
    assert run_plain(env, "canary", "stop", "--persona", "marisa") == 0


def test_a_corrupt_candidate_is_one_line_and_nothing_moves(env, capsys) -> None:
    root, _, _ = env
    adapters = root / "adapters"
    set_current(adapters, "marisa", "v-good")
    broken = adapters / "marisa" / "v-broken"
    shutil.copytree(adapters / "marisa" / "v-good", broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    versions = list_versions(adapters, "marisa")
    code = run(env, "promote", "--persona", "marisa", "--version", "v-broken")
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "v-broken was not promoted" in err and "truncated" in err
    code = run(env, "promote", "--persona", "marisa", "--version", "v-missing")
    err = capsys.readouterr().err
    assert code == 1 and "marisa has no version 'v-missing'" in err and err.count("\n") == 1
    assert current_version(adapters, "marisa") == "v-good" and list_versions(adapters, "marisa") == versions


def test_empty_probe_answers_are_the_worst_style_not_a_missing_figure() -> None:
    from trainer.gate import Figure, style_rate

    markers = ["だぜ"]
    assert style_rate(["", "  "], markers) == 0.0
    assert style_rate(["元気だぜ。", "ふつう。"], markers) == 0.5
    assert style_rate(["元気だぜ。"], []) is None
    assert Figure("style_marker_rate", 0.5, style_rate(["", ""], markers), 0.1).ok is False
    assert Figure("approved_loglik", -7.0, float("nan"), 0.1).ok is False  # a broken candidate fails
