"""Moving a persona's pointers: promote, rollback, canary start/stop, from the CLI and the API.
Every move is atomic under a lock and recorded; every refused move changes nothing."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import pytest

from bot.model.adapters import current_version, read_canary, set_current
from bot.model.rollout import (
    HISTORY_FILE,
    NothingToMove,
    RolloutError,
    check_version_usable,
    pointer_lock,
    promote,
    read_history,
    record_gate,
    rollback,
    start_canary,
    stop_canary,
)
from trainer.__main__ import main as trainer_main

VERSIONS = ("v20260101-000000", "v20260201-000000", "v20260301-000000")


@pytest.fixture
def adapters(random_adapters, tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    for v in VERSIONS:
        shutil.copytree(random_adapters["llama"]["marisa"], root / "marisa" / v)
    set_current(root, "marisa", VERSIONS[0])
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every pointer and history file, to show a refused move changed nothing."""
    return {p.name: p.read_bytes() for p in (root / "marisa").iterdir() if p.is_file() and p.name != ".lock"}


def test_promote_then_rollback_walks_back_through_served_versions(adapters: Path) -> None:
    v1, _v2, v3 = VERSIONS
    promote(adapters, "marisa", v3, by="cli:op", reason="gate pass")
    assert current_version(adapters, "marisa") == v3
    # v2 never served: rollback goes to v1, the version served before v3
    move = rollback(adapters, "marisa", by="discord:9")
    assert (move.from_version, move.to_version, move.by) == (v3, v1, "discord:9")
    assert current_version(adapters, "marisa") == v1
    moves = read_history(adapters, "marisa")
    assert [(m.action, m.from_version, m.to_version) for m in moves] == [("promote", v1, v3), ("rollback", v3, v1)]
    with pytest.raises(RolloutError, match="no earlier version than"):
        rollback(adapters, "marisa", by="cli:op")


def test_rollback_without_history_skips_versions_the_gate_refused(adapters: Path) -> None:
    v1, v2, v3 = VERSIONS
    set_current(adapters, "marisa", v3)  # moved by hand, before there was a history
    record_gate(adapters, "marisa", v2, {"verdict": "refuse"})
    assert rollback(adapters, "marisa", by="cli:op").to_version == v1


def test_refused_moves_change_nothing(adapters: Path, tmp_path: Path) -> None:
    v1, v2, _ = VERSIONS
    before = snapshot(adapters)
    with pytest.raises(RolloutError, match="has no version 'v9'.*known: v2026"):
        rollback(adapters, "marisa", "v9", by="cli:op")
    with pytest.raises(RolloutError, match="not a version name"):
        promote(adapters, "marisa", "../etc", by="cli:op")
    with pytest.raises(NothingToMove, match="already is"):
        promote(adapters, "marisa", v1, by="cli:op")
    # a corrupt candidate: truncated weights, then an unreadable config
    weights = adapters / "marisa" / v2 / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(RolloutError, match="corrupt: adapter_model.safetensors is truncated|broken header"):
        promote(adapters, "marisa", v2, by="cli:op")
    with pytest.raises(RolloutError, match="corrupt"):
        start_canary(adapters, "marisa", v2, 0.1, by="cli:op")
    (adapters / "marisa" / VERSIONS[2] / "adapter_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RolloutError, match="corrupt"):
        rollback(adapters, "marisa", VERSIONS[2], by="cli:op")
    with pytest.raises(RolloutError, match="between 0 and 1"):
        start_canary(adapters, "marisa", v1, 1.5, by="cli:op")
    with pytest.raises(RolloutError, match="already marisa's current version"):
        start_canary(adapters, "marisa", v1, 0.2, by="cli:op")
    with pytest.raises(NothingToMove, match="no canary"):
        stop_canary(adapters, "marisa", by="cli:op")
    assert snapshot(adapters) == before
    # a persona with no adapter yet
    with pytest.raises(RolloutError, match="no current version"):
        rollback(adapters, "zundamon", by="cli:op")
    with pytest.raises(RolloutError, match="zundamon has no version 'v1' \\(known: none yet\\)"):
        promote(adapters, "zundamon", "v1", by="cli:op")


def test_canary_start_stop_and_promotion_ends_it(adapters: Path) -> None:
    _v1, v2, v3 = VERSIONS
    start_canary(adapters, "marisa", v2, 0.25, by="cli:op")
    assert read_canary(adapters, "marisa").version == v2
    start_canary(adapters, "marisa", v3, 0.1, by="cli:op")  # replaces the canary
    assert (read_canary(adapters, "marisa").version, read_canary(adapters, "marisa").share) == (v3, 0.1)
    promote(adapters, "marisa", v3, by="cli:op")
    assert read_canary(adapters, "marisa") is None and current_version(adapters, "marisa") == v3
    start_canary(adapters, "marisa", v2, 0.5, by="cli:op")
    assert stop_canary(adapters, "marisa", by="cli:op").from_version == v2
    assert read_canary(adapters, "marisa") is None
    actions = [m.action for m in read_history(adapters, "marisa")]
    assert actions == ["canary-start", "canary-start", "promote", "canary-start", "canary-stop"]


def _rollback_in_process(root: str, barrier) -> str:
    barrier.wait()
    try:
        return rollback(root, "marisa", by="cli:racer").to_version or ""
    except RolloutError as exc:
        return f"refused: {exc}"


def test_two_rollbacks_at_once_run_one_after_the_other(adapters: Path) -> None:
    v1, v2, v3 = VERSIONS
    promote(adapters, "marisa", v2, by="cli:op")
    promote(adapters, "marisa", v3, by="cli:op")
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = pool.starmap(_rollback_in_process, [(str(adapters), barrier)] * 2)
    # one went v3 → v2, the other then v2 → v1: a chain, never two moves from the same place
    assert sorted(results) == [v1, v2]
    moves = [m for m in read_history(adapters, "marisa") if m.action == "rollback"]
    assert [(m.from_version, m.to_version) for m in moves] == [(v3, v2), (v2, v1)]
    assert current_version(adapters, "marisa") == v1
    lines = (adapters / "marisa" / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line) for line in lines)  # nothing half-written


def test_a_held_lock_times_out_with_one_line(adapters: Path) -> None:
    with pointer_lock(adapters, "marisa"):
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            message = pool.apply(_locked_move, (str(adapters),))
    assert "another move of marisa's adapter is still running" in message


def _locked_move(root: str) -> str:
    try:
        with pointer_lock(root, "marisa", timeout_s=0.2):
            return "got it"
    except RolloutError as exc:
        return str(exc)


def test_a_crash_mid_append_leaves_a_readable_history(adapters: Path) -> None:
    promote(adapters, "marisa", VERSIONS[1], by="cli:op")
    with open(adapters / "marisa" / HISTORY_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"at": "2026-')  # the power went out here
    assert [m.to_version for m in read_history(adapters, "marisa")] == [VERSIONS[1]]
    assert check_version_usable(adapters, "marisa", VERSIONS[1]).name == VERSIONS[1]


def _config(tmp_path: Path, adapters: Path) -> Path:
    config = tmp_path / "oshaberi.toml"
    config.write_text(f'[paths]\nadapters_dir = "{adapters}"\n', encoding="utf-8")
    return config


def test_cli_rollback_canary_and_history(adapters: Path, tmp_path: Path, capsys) -> None:
    _v1, v2, v3 = VERSIONS
    config = str(_config(tmp_path, adapters))
    promote(adapters, "marisa", v3, by="cli:op")
    assert trainer_main(["--config", config, "rollback", "--persona", "marisa", "--to", v2]) == 0
    assert f"CURRENT {v3} → {v2}" in capsys.readouterr().out
    assert current_version(adapters, "marisa") == v2

    assert trainer_main(["--config", config, "rollback", "--persona", "marisa", "--to", "v404"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no version 'v404'" in err and "nothing moved" in err
    assert current_version(adapters, "marisa") == v2

    assert trainer_main(["--config", config, "canary", "start", "--persona", "marisa", "--version", v3, "--share", "0.2"]) == 0
    assert "canary v20260301-000000 on 20% of requests" in capsys.readouterr().out
    assert trainer_main(["--config", config, "canary", "stop", "--persona", "marisa"]) == 0
    assert trainer_main(["--config", config, "canary", "stop", "--persona", "marisa"]) == 0
    assert "no canary; nothing moved" in capsys.readouterr().out
    assert trainer_main(["--config", config, "canary", "history", "--persona", "marisa"]) == 0
    history = capsys.readouterr().out.splitlines()
    assert len(history) == 4 and "cli:" in history[1] and "rollback" not in history[0]
