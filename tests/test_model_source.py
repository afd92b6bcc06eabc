"""Finding the base model before loading it: typos and empty folders are named at once, and an
unreachable hub is found out with one short probe instead of the hub client's minute of retries."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ModelSettings
from bot.model.loading import ModelLoadError
from bot.model.source import hub_reachable, looks_like_path, missing_model_files, resolve_model_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def online(monkeypatch) -> None:
    """As on an operator's machine: the hub client is not told to stay offline (conftest does)."""
    for var in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("./models/x", True),
        ("/opt/models/x", True),
        ("~/models/x", True),
        ("models/rinna/x", True),
        ("rinna/japanese-gpt-neox-3.6b-instruction-ppo", False),
        ("gpt2", False),
    ],
)
def test_what_looks_like_a_path(name: str, expected: bool, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert looks_like_path(name) is expected


def test_a_hub_shaped_name_under_an_existing_folder_is_a_path(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("models/nonexistent")
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    assert looks_like_path("models/nonexistent")
    with pytest.raises(ModelLoadError) as info:
        resolve_model_source(ModelSettings(base_model="models/nonexistent"))
    text = str(info.value)
    assert "model folder 'models/nonexistent' does not exist" in text and "holds: tiny" in text


def test_a_complete_folder_is_used_locally(tiny_neox) -> None:
    assert missing_model_files(tiny_neox) == []
    source = resolve_model_source(ModelSettings(base_model=str(tiny_neox)))
    assert source.is_local and source.local_files_only and source.name == str(tiny_neox)


def test_an_empty_or_incomplete_folder_names_what_is_missing(tiny_neox, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"is missing config\.json, weights \(.*\), tokenizer \("):
        resolve_model_source(ModelSettings(base_model=str(empty)))
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "spiece.model"):
        (partial / name).write_bytes((tiny_neox / name).read_bytes())
    with pytest.raises(ModelLoadError) as info:
        resolve_model_source(ModelSettings(base_model=str(partial)))
    assert "missing weights (model.safetensors" in str(info.value) and "config.json," not in str(info.value)


def test_a_file_is_not_a_model_folder(tiny_neox) -> None:
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_source(ModelSettings(base_model=str(tiny_neox / "config.json")))


def test_an_unreachable_hub_fails_from_the_probe_with_the_offline_advice(online, monkeypatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(ModelLoadError) as info:
        resolve_model_source(ModelSettings(base_model="nosuch-org/nosuch-model"))
    text = str(info.value)
    assert "cannot reach 127.0.0.1 to download 'nosuch-org/nosuch-model'" in text
    assert "point OSHABERI_MODEL at a local model folder" in text


def test_an_unreachable_hub_uses_a_cached_copy(online, monkeypatch, tmp_path) -> None:
    import huggingface_hub.constants as hub_constants

    snapshot = tmp_path / "models--org--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "models--org--cached" / "refs").mkdir()
    (tmp_path / "models--org--cached" / "refs" / "main").write_text("abc123", encoding="utf-8")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    source = resolve_model_source(ModelSettings(base_model="org/cached"))
    assert not source.is_local and source.local_files_only


def test_a_reachable_hub_is_asked(online, monkeypatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert hub_reachable(endpoint, 2.0)
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        source = resolve_model_source(ModelSettings(base_model="org/model"))
    assert source == type(source)("org/model", False, False)


def test_not_a_folder_and_not_a_hub_id() -> None:
    with pytest.raises(ModelLoadError, match="neither a local model folder nor a hub id"):
        resolve_model_source(ModelSettings(base_model="a b/c"))


def run_chat(cwd: Path, **env_vars: str) -> tuple[str, list[str]]:
    """``python -m bot chat`` as an operator runs it, online settings; (stderr, its error lines)."""
    offline = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSHABERI_", "DISCORD_", *offline))}
    env.update(PYTHONPATH=str(ROOT), DISCORD_TOKEN="", **env_vars)
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "chat"],
        cwd=cwd,
        env=env,
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr, [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_the_entry_point_reports_a_mistyped_folder_in_one_line(tmp_path) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    stderr, errors = run_chat(tmp_path, OSHABERI_MODEL="models/nonexistent")
    assert len(errors) == 1 and "model folder 'models/nonexistent' does not exist" in errors[0]
    assert "huggingface.co" not in stderr and "checking that" not in stderr  # the hub was never asked


def test_the_entry_point_reports_an_unreachable_hub_in_one_line(tmp_path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    stderr, errors = run_chat(tmp_path, OSHABERI_MODEL="nosuch-org/nosuch-model", HF_ENDPOINT=endpoint)
    assert f"checking that {endpoint} is reachable" in stderr  # the wait is announced
    assert len(errors) == 1 and "cannot reach 127.0.0.1 to download 'nosuch-org/nosuch-model'" in errors[0]
