"""The review loop: augment queues generated answers, export-reviews turns decisions into
training dialogues (never an opted-out user's), and the scheduler retrains and reloads."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.learning.retrain_schedule import RetrainingSchedule
from bot.model.adapters import current_version, last_export_time, set_current
from bot.ops.cron import cron_trigger
from bot.store.store import LogEntry, Store
from personas.card import load_cards
from trainer.augment import augment
from trainer.dataset import read_dialogues, to_turns
from trainer.export_reviews import export_reviews

CARD = load_cards().get("marisa")
QUESTIONS = ["おはよう！", "今日は何してた？", "魔法って難しい？"]


def write_config(path: Path, model: str, root: Path, **schedule) -> Path:
    lines = [
        f'[model]\nbase_model = "{model}"\ndevice = "cpu"',
        f'[paths]\nadapters_dir = "{root / "adapters"}"\ndatabase = "{root / "bot.sqlite3"}"\ndata_dir = "{root}"',
        "[schedule]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in schedule.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def loop_env(tiny_llama, random_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("reviews")
    shutil.copytree(random_adapters["llama"]["marisa"], root / "adapters" / "marisa" / "v1")
    set_current(root / "adapters", "marisa", "v1")
    base = {
        "source": "t",
        "persona": "p",
        "turns": [{"speaker": "ユーザー", "text": "元気？"}, {"speaker": "p", "text": "元気だぜ！"}],
    }
    (root / "marisa.jsonl").write_text(
        "".join(json.dumps({**base, "id": str(i)}, ensure_ascii=False) + "\n" for i in range(6)),
        encoding="utf-8",
    )
    config = write_config(
        root / "oshaberi.toml", str(tiny_llama), root, min_new_approved=2, personas=["marisa"]
    )
    return root, load_settings(config, environ={})


async def test_augment_queues_generated_answers_for_review(loop_env):
    _, settings = loop_env
    result = await augment(settings, CARD, QUESTIONS, seed=3)
    assert result.adapter_version == "v1"
    assert len(result.queued) + result.empty == 3
    store = await Store.open(settings.paths.database)
    try:
        for log_id, (question, answer) in zip(result.queued, result.answers, strict=False):
            item = await store.get_review(log_id)
            assert item.origin == "generated" and item.decision is None
            assert item.adapter_version == "v1" and item.persona_id == "marisa"
            assert item.user_text == question and item.reply == answer
            assert item.prompt.endswith("魔理沙: ") and question in item.prompt
        assert [r.log_id for r in await store.unposted_reviews()][: len(result.queued)] == result.queued
    finally:
        await store.close()


async def test_export_keeps_approved_and_edited_replies_of_consenting_users(tmp_path):
    db = tmp_path / "export.sqlite3"
    store = await Store.open(db)
    try:
        ok = await store.add_candidate("marisa", "おはよう", "おはようだぜ！", "p", "v1", {})
        edited = await store.add_candidate("marisa", "元気？", "元気です", "p", "v1", {})
        rejected = await store.add_candidate("marisa", "暇？", "ひま", "p", "v1", {})
        other = await store.add_candidate("zundamon", "やあ", "こんにちはなのだ", "p", None, {})
        live = await store.log_reply(
            LogEntry(1, 2, 3, 42, "marisa", "v1", "p", "秘密の話", "秘密だぜ", participants=(42,))
        )
        await store.decide(ok, 9, "approved")
        await store.decide(edited, 9, "edited", "元気だぜ！")
        await store.decide(rejected, 9, "rejected")
        await store.decide(other, 9, "approved")
        await store.decide(live, 9, "approved")
        await store.set_opt_out(42, True)  # after approval: still never exported
    finally:
        await store.close()

    out = tmp_path / "marisa-reviewed.jsonl"
    # Server 1 is listed, so its replies may train: the opt-out alone keeps the live row out.
    result = await export_reviews(db, "marisa", out, listed_servers=(1,))
    assert result.rows == 2 and result.held_back == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(d["id"], d["turns"][1]["text"]) for d in lines] == [
        (f"review:{ok}", "おはようだぜ！"),
        (f"review:{edited}", "元気だぜ！"),
    ]
    assert all(d["source"] == "reviews" and d["turns"][0]["speaker"] == "ユーザー" for d in lines)
    meta = json.loads(Path(f"{out}.meta.json").read_text(encoding="utf-8"))
    assert meta["exported_at"] == result.exported_at and meta["rows"] == 2
    # What train reads: the reply is the persona's turn, the question is not.
    [first, _] = read_dialogues(out)
    assert [t.is_persona for t in to_turns(first, CARD, [])] == [False, True]


async def test_scheduler_retrains_in_a_subprocess_then_reloads(loop_env):
    root, settings = loop_env
    store = await Store.open(settings.paths.database)
    try:
        for q, a in [("おはよう", "おはようだぜ！"), ("元気？", "元気だぜ！")]:
            await store.decide(await store.add_candidate("marisa", q, a, "p", "v1", {}), 7, "approved")
    finally:
        await store.close()

    reloaded, failures = [], []

    async def on_new_version(persona: str, version: str) -> None:
        reloaded.append((persona, version))

    async def on_failure(persona: str, message: str) -> None:
        failures.append((persona, message))

    train_config = root / "fast-train.toml"
    train_config.write_text("gate_probes = 0\nmax_length = 64\n", encoding="utf-8")
    retrainer = RetrainingSchedule(
        settings,
        on_new_version,
        on_failure,
        runs_dir=root / "runs",
        train_config=train_config,
        extra_train_args=["--max-steps", "2", "--batch-size", "2", "--val-fraction", "0"],
    )
    [outcome] = await retrainer.run_once()
    # too few contrasting decisions for the preference stage: SFT, then the gate, which passes it
    assert failures == [] and outcome.status == "promoted", outcome.message
    assert reloaded == [("marisa", outcome.version)]
    assert current_version(settings.paths.adapters_dir, "marisa") == outcome.version
    exported = json.loads((root / "marisa-reviewed.jsonl.meta.json").read_text(encoding="utf-8"))
    assert last_export_time(settings.paths.adapters_dir, "marisa") == exported["exported_at"]
    meta = json.loads(
        (Path(settings.paths.adapters_dir) / "marisa" / outcome.version / "metadata.json").read_text()
    )
    assert any(f["path"].endswith("marisa-reviewed.jsonl") for f in meta["data_files"])
    assert (root / "runs" / "marisa" / outcome.version / "schedule.log").is_file()

    # Nothing new since that export: the next tick trains nothing.
    [again] = await retrainer.run_once()
    assert again.status == "skipped" and again.new_approved == 0 and len(reloaded) == 1


async def test_a_failed_scheduled_run_is_reported_and_keeps_the_adapter(loop_env, tmp_path):
    root, settings = loop_env
    before = current_version(settings.paths.adapters_dir, "marisa")
    config = write_config(
        tmp_path / "bad.toml", str(tmp_path / "no-such-model"), root, min_new_approved=0, personas=["marisa"]
    )
    bad = load_settings(config, environ={})
    failures = []

    async def on_failure(persona: str, message: str) -> None:
        failures.append((persona, message))

    async def never(persona: str, version: str) -> None:
        raise AssertionError("no new version may be announced")

    [outcome] = await RetrainingSchedule(bad, never, on_failure, runs_dir=tmp_path / "runs").run_once()
    assert outcome.status == "failed"
    assert failures and failures[0][0] == "marisa" and "SFT failed (exit 1)" in failures[0][1]
    assert "keeps serving" in failures[0][1] and "schedule.log" in failures[0][1]
    assert "no-such-model" in failures[0][1]  # the child's own error is in the report
    assert current_version(settings.paths.adapters_dir, "marisa") == before


async def test_a_reload_failure_is_reported(loop_env, random_adapters, monkeypatch):
    root, settings = loop_env
    settings = replace(settings, schedule=replace(settings.schedule, min_new_approved=0))
    failures = []

    async def fake_run(self, command, log_path):
        version = command[command.index("--version") + 1]
        if "train" in command:
            shutil.copytree(random_adapters["llama"]["marisa"], root / "adapters" / "marisa" / version)
        elif "promote" in command:
            set_current(root / "adapters", "marisa", version)
        return 0, ""

    async def broken_reload(persona: str, version: str) -> None:
        raise RuntimeError("adapter shapes do not match")

    async def on_failure(persona: str, message: str) -> None:
        failures.append(message)

    monkeypatch.setattr(RetrainingSchedule, "_run", fake_run)
    retrainer = RetrainingSchedule(settings, broken_reload, on_failure, runs_dir=root / "runs")
    [outcome] = await retrainer.run_once()
    assert outcome.status == "failed" and "could not load it" in failures[0] and "shapes" in failures[0]


async def test_the_cron_job_is_scheduled(loop_env):
    _, settings = loop_env
    retrainer = RetrainingSchedule(replace(settings, schedule=replace(settings.schedule, cron="30 3 * * 1")))
    retrainer.start()
    try:
        when = retrainer.next_run_time()
        assert when is not None and (when.hour, when.minute, when.weekday()) == (3, 30, 0)
    finally:
        retrainer.shutdown()


def test_schedule_cli_once_skips_when_too_few_approvals(loop_env, capsys):
    from trainer.__main__ import main

    _, settings = loop_env
    assert main(["--config", settings.source, "schedule", "--once", "--min-new-approved", "100000"]) == 0
    assert "marisa: skipped" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "weekdays"),
    [("0 4 * * 1", {0}), ("0 4 * * 0", {6}), ("0 4 * * 7", {6}), ("0 4 * * 1-5", {0, 1, 2, 3, 4}),
     ("0 4 * * */3", {6, 2, 5}), ("0 4 * * sat,sun", {5, 6}), ("0 4 * * *", set(range(7)))],
)  # fmt: skip
def test_cron_weekdays_mean_what_crontab_means(line, weekdays):
    from datetime import UTC, datetime, timedelta

    trigger = cron_trigger(line)
    seen, when = set(), datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(14):
        when = trigger.get_next_fire_time(None, when + timedelta(minutes=1))
        seen.add(when.weekday())
    assert seen == weekdays
    with pytest.raises(ValueError):
        cron_trigger("0 4 * *")
