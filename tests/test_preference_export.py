"""Preference data from moderation: every decision kind becomes the right line, the held-out
rows stay out of every training file, and no export path ever carries an opted-out or
forgotten user's row."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bot.store.heldout import HELDOUT_SHARE, heldout_fraction, is_heldout
from bot.store.store import LogEntry, Store
from trainer.__main__ import main as trainer_main
from trainer.export_reviews import export_reviews
from trainer.preferences import export_preferences, heldout_lines, read_preferences

LISTED = (1,)  # the history's server: listed, so its rows may train


def entry(user: int | None, text: str, reply: str, *, status: str = "pending", others=(), version="v1"):
    return LogEntry(
        1, 2, 3, user, "marisa", version, f"PROMPT {text}\n魔理沙: ", text, reply,
        status=status, participants=(*([user] if user else []), *others),
        blocked_words=("ばか",) if status == "blocked" else (),
    )  # fmt: skip


def test_the_heldout_split_is_a_fixed_tenth_by_log_id() -> None:
    ids = range(1, 5001)
    share = sum(is_heldout(i) for i in ids) / len(ids)
    assert abs(share - HELDOUT_SHARE) < 0.015
    # fixed by the id alone: the same answer every time, and ids 1-12 (small test databases) train
    assert [i for i in range(1, 30) if is_heldout(i)] == [13, 20, 25, 26, 27]
    assert heldout_fraction(13) == heldout_fraction(13) < HELDOUT_SHARE


async def _history(db: Path) -> dict[str, int]:
    store = await Store.open(db)
    ids: dict[str, int] = {}
    try:
        ids["approved"] = await store.log_reply(entry(10, "おはよう", "おはようだぜ！"))
        ids["rejected"] = await store.log_reply(entry(10, "元気？", "元気です。"))
        ids["edited"] = await store.log_reply(entry(10, "暇？", "暇です"))
        ids["blocked"] = await store.log_reply(entry(10, "悪口", "ばかだぜ", status="blocked"))
        ids["blocked_approved"] = await store.log_reply(entry(10, "冗談", "ばかだなあ", status="blocked"))
        ids["undecided"] = await store.log_reply(entry(10, "まだ", "まだだぜ"))
        ids["other_persona"] = await store.add_candidate("zundamon", "やあ", "なのだ", "p", None)
        ids["opted_out"] = await store.log_reply(entry(20, "秘密", "秘密だぜ"))
        ids["opted_out_participant"] = await store.log_reply(entry(10, "噂", "噂だぜ", others=(21,)))
        ids["forgotten"] = await store.log_reply(entry(30, "忘れて", "忘れたぜ"))
        ids["blocked_forgotten"] = await store.log_reply(entry(31, "悪い", "ばか", status="blocked"))
        ids["blocked_opted_out"] = await store.log_reply(entry(10, "悪い2", "ばか2", status="blocked", others=(21,)))
        for key in ("approved", "blocked_approved"):
            await store.decide(ids[key], 9, "approved")
        await store.decide(ids["rejected"], 9, "rejected")
        await store.decide(ids["edited"], 9, "edited", "暇だぜ！")
        for key in ("other_persona", "opted_out", "opted_out_participant", "forgotten"):
            await store.decide(ids[key], 9, "approved")
        # ids 13-20: approvals, but 20 rejected; 13 and 20 fall in the held-out split
        for _ in range(8):
            filler = await store.log_reply(entry(10, "天気", "晴れだぜ"))
            await store.decide(filler, 9, "rejected" if filler == 20 else "approved")
        assert filler == 20
        ids["heldout_approved"], ids["heldout_rejected"] = 13, 20
        await store.set_opt_out(20, True)  # after the decision: still never exported
        await store.set_opt_out(21, True)  # a participant, not the requester
        await store.forget_user(30)
        await store.forget_user(31)
    finally:
        await store.close()
    return ids


async def test_each_decision_kind_becomes_its_preference_line(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    ids = await _history(db)
    result = await export_preferences(db, "marisa", tmp_path / "prefs.jsonl", listed_servers=LISTED)
    lines = {line["log_id"]: line for line in read_preferences(result.path)}

    assert lines[ids["approved"]]["completion"] == "おはようだぜ！" and lines[ids["approved"]]["label"] is True
    assert lines[ids["rejected"]]["completion"] == "元気です。" and lines[ids["rejected"]]["label"] is False
    edit = lines[ids["edited"]]
    assert (edit["chosen"], edit["rejected"]) == ("暇だぜ！", "暇です") and "label" not in edit
    blocked = lines[ids["blocked"]]
    assert blocked["label"] is False and blocked["blocked"] is True and blocked["decision"] is None
    # a moderator's approval wins over the word filter
    assert lines[ids["blocked_approved"]]["label"] is True
    for key in ("undecided", "other_persona"):
        assert ids[key] not in lines, key
    for line in lines.values():  # the prompt as the bot rendered it, the version, the log id
        assert line["prompt"].startswith("PROMPT ") and line["prompt"].endswith("魔理沙: ")
        assert line["adapter_version"] == "v1" and line["id"] == f"review:{line['log_id']}"
    assert (result.train.pairs, result.heldout.desirable, result.heldout.undesirable) == (1, 1, 1)
    meta = json.loads(Path(f"{result.path}.meta.json").read_text(encoding="utf-8"))
    assert meta["counts"] == result.train.as_dict() and meta["exported_at"] == result.exported_at


async def test_opted_out_and_forgotten_users_never_reach_any_export(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    ids = await _history(db)
    private = {ids[k] for k in ("opted_out", "opted_out_participant", "forgotten", "blocked_forgotten", "blocked_opted_out")}
    prefs = await export_preferences(db, "marisa", tmp_path / "prefs.jsonl", listed_servers=LISTED)
    sft = await export_reviews(db, "marisa", tmp_path / "reviewed.jsonl", listed_servers=LISTED)
    held = await heldout_lines(db, "marisa", listed_servers=LISTED)
    exported = {line["log_id"] for line in read_preferences(prefs.path)}
    exported |= {line["log_id"] for line in held}
    exported |= {
        int(json.loads(t)["id"].split(":")[1]) for t in sft.path.read_text(encoding="utf-8").splitlines()
    }
    assert exported and not exported & private
    # nor their words, under any id
    every_text = prefs.path.read_text(encoding="utf-8") + sft.path.read_text(encoding="utf-8") + json.dumps(held)
    for word in ("秘密", "噂", "忘れ", "悪い"):
        assert word not in every_text, word


async def test_heldout_rows_are_in_no_training_file_and_only_in_the_gates_split(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    ids = await _history(db)
    prefs = await export_preferences(db, "marisa", tmp_path / "prefs.jsonl", listed_servers=LISTED)
    sft = await export_reviews(db, "marisa", tmp_path / "reviewed.jsonl", listed_servers=LISTED)
    trained = {line["log_id"] for line in read_preferences(prefs.path)}
    trained |= {int(json.loads(t)["id"].split(":")[1]) for t in sft.path.read_text("utf-8").splitlines()}
    held = {line["log_id"]: line for line in await heldout_lines(db, "marisa", listed_servers=LISTED)}
    assert set(held) == {ids["heldout_approved"], ids["heldout_rejected"]}
    assert not trained & set(held) and all(is_heldout(i) for i in held) and sft.heldout == 1
    assert held[20]["label"] is False and held[13]["label"] is True


def test_cli_preferences_flag_prints_counts(tmp_path: Path, capsys, monkeypatch) -> None:
    db = tmp_path / "bot.sqlite3"
    asyncio.run(_history(db))
    config = tmp_path / "oshaberi.toml"
    config.write_text(
        f'[paths]\ndatabase = "{db}"\ndata_dir = "{tmp_path}"\n[discord]\nallowed_servers = [1]\n', encoding="utf-8"
    )
    monkeypatch.setenv("OSHABERI_CONFIG", str(config))
    code = trainer_main(["export-reviews", "--persona", "marisa", "--preferences"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "8 approved, 2 rejected or blocked and 1 edit pairs" in out and "held out" in out
    assert (tmp_path / "marisa-preferences.jsonl").is_file()


async def test_an_export_with_no_decisions_writes_an_empty_file_not_an_error(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    store = await Store.open(db)
    await store.close()
    result = await export_preferences(db, "marisa", tmp_path / "prefs.jsonl", listed_servers=LISTED)
    assert result.path.read_text(encoding="utf-8") == "" and result.train.as_dict()["desirable"] == 0


async def test_a_server_that_does_not_train_gives_no_preference_rows(tmp_path: Path) -> None:
    """Training per server (issue 19's rule) holds for the preference export and the gate's split
    too: server 1 is not listed, so none of its decisions leave the store."""
    db = tmp_path / "bot.sqlite3"
    await _history(db)
    result = await export_preferences(db, "marisa", tmp_path / "prefs.jsonl", listed_servers=(2,))
    assert read_preferences(result.path) == []
    assert await heldout_lines(db, "marisa", listed_servers=(2,)) == []
    store = await Store.open(db)
    try:
        assert await store.count_preference_decisions("marisa", listed_servers=(2,)) == 0
        assert await store.count_preference_decisions("marisa", listed_servers=LISTED) > 0
    finally:
        await store.close()
