"""The scheduled loop with every stage, as real child processes on a tiny model: SFT on the
approvals, the preference stage once there are enough decisions, the gate, then a canary; and a
candidate ruined by a learning-rate typo refused in one line with the serving version alone."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace

import pytest

from bot.config import load_settings
from bot.learning.retrain_schedule import RetrainingSchedule
from bot.model.adapters import current_version, list_versions, read_canary, set_current, version_metadata
from tests.learning_history import write_bot_config, write_history, write_train_config


@pytest.fixture
async def env(tiny_llama, random_adapters, tmp_path):
    shutil.copytree(random_adapters["llama"]["marisa"], tmp_path / "adapters" / "marisa" / "v1")
    set_current(tmp_path / "adapters", "marisa", "v1")
    await write_history(tmp_path / "bot.sqlite3")
    schedule = (
        '[schedule]\npersonas = ["marisa"]\nmin_new_approved = 10\nmin_preference_decisions = 10\n'
        "canary_share = 0.5\n"
    )
    settings = load_settings(
        write_bot_config(tmp_path / "oshaberi.toml", tiny_llama, tmp_path, schedule), environ={}
    )
    train_config = write_train_config(
        tmp_path / "train.toml", data=[], learning_rate=2e-2, max_steps=6, runs_dir=str(tmp_path / "runs")
    )
    return tmp_path, settings, train_config


def hooks():
    served, posted = [], []

    async def on_new_version(persona: str, version: str) -> None:
        served.append((persona, version))

    async def on_failure(persona: str, message: str) -> None:
        posted.append((persona, message))

    return served, posted, on_new_version, on_failure


async def test_sft_then_kto_then_the_gate_then_a_canary(env) -> None:
    root, settings, train_config = env
    served, posted, on_new, on_failure = hooks()
    retrainer = RetrainingSchedule(
        settings, on_new, on_failure, runs_dir=root / "runs", train_config=train_config
    )
    [outcome] = await retrainer.run_once()
    log = next((root / "runs" / "marisa").glob("*/schedule.log")).read_text(encoding="utf-8")
    assert outcome.status == "canary" and posted == [], f"{outcome}\n{log[-3000:]}"
    sft, kto = sorted(v for v in list_versions(settings.paths.adapters_dir, "marisa") if v != "v1")
    assert kto == f"{sft}-kto" and outcome.version == kto and served == [("marisa", kto)]
    meta = version_metadata(settings.paths.adapters_dir, "marisa", kto)
    assert meta["method"] == "kto" and meta["reference"] == sft  # refined from this run's SFT candidate
    assert meta["gate"]["verdict"] == "pass" and meta["gate"]["serving"] == "v1"
    canary = read_canary(settings.paths.adapters_dir, "marisa")
    assert (canary.version, canary.share) == (kto, 0.5)
    assert current_version(settings.paths.adapters_dir, "marisa") == "v1"  # the canary serves beside it
    for step in ("train --persona marisa", "prefer --persona marisa", "promote --persona marisa"):
        assert f"$ -m trainer --config {settings.source} {step}" in log, step

    # nothing new since: the next tick trains nothing
    [again] = await retrainer.run_once()
    assert again.status == "skipped"


@pytest.mark.slow  # two more child processes; the gate's refusal itself is tests/test_gate.py's
async def test_a_learning_rate_typo_is_refused_in_one_line_and_the_serving_version_stays(env) -> None:
    root, settings, train_config = env
    settings = replace(
        settings, schedule=replace(settings.schedule, preference_method="off", canary_share=0.0)
    )
    served, posted, on_new, on_failure = hooks()
    retrainer = RetrainingSchedule(
        settings, on_new, on_failure, runs_dir=root / "runs", train_config=train_config,
        extra_train_args=["--learning-rate", "50", "--target-modules", "q_proj", "v_proj", "lm_head"],
    )  # fmt: skip
    [outcome] = await retrainer.run_once()
    assert outcome.status == "refused", outcome
    [(persona, message)] = posted
    assert persona == "marisa" and "\n" not in message
    assert (
        f"candidate {outcome.version} was refused by the promotion gate (worse on approved_loglik" in message
    )
    assert "v1 keeps serving" in message
    assert served == [] and current_version(settings.paths.adapters_dir, "marisa") == "v1"
    assert read_canary(settings.paths.adapters_dir, "marisa") is None


async def test_a_refused_or_failed_candidate_posts_one_line_and_nothing_moves(
    env, random_adapters, monkeypatch
) -> None:
    """The scheduler's side of a refusal and of a failed gate, with the children replaced by what
    they leave on disk (the gate's own verdicts are tests/test_gate.py's)."""
    from bot.model.rollout import record_gate

    root, settings, train_config = env
    settings = replace(settings, schedule=replace(settings.schedule, preference_method="off"))
    adapters = root / "adapters"
    outcomes = {"promote": 0}

    async def fake_run(self, command, log_path):
        version = command[command.index("--version") + 1]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if "train" in command:
            shutil.copytree(random_adapters["llama"]["zundamon"], adapters / "marisa" / version)
            return 0, ""
        if outcomes["promote"] == 0:
            record_gate(adapters, "marisa", version, {"verdict": "refuse", "figures": [
                {"name": "approved_loglik", "ok": False}, {"name": "margin_edit", "ok": True}]})  # fmt: skip
            return 1, "promotion gate for marisa ...\nverdict: refuse\n"
        return 1, "Traceback (most recent call last):\n...\nMemoryError: out of memory\n"

    monkeypatch.setattr(RetrainingSchedule, "_run", fake_run)
    served, posted, on_new, on_failure = hooks()
    retrainer = RetrainingSchedule(
        settings, on_new, on_failure, runs_dir=root / "runs", train_config=train_config
    )
    [refused] = await retrainer.run_once()
    assert refused.status == "refused" and served == []
    [(_, message)] = posted
    assert "\n" not in message and "refused by the promotion gate (worse on approved_loglik)" in message
    assert "v1 keeps serving" in message
    outcomes["promote"] = 1
    posted.clear()
    await asyncio.sleep(1.05)  # version names are start times to the second
    [failed] = await retrainer.run_once()
    assert failed.status == "failed" and served == []
    [(_, message)] = posted
    assert "\n" not in message and "the promotion gate failed (exit 1): MemoryError: out of memory" in message
    assert current_version(adapters, "marisa") == "v1" and read_canary(adapters, "marisa") is None
