"""Every error about a file names that file (and the line, where it has lines): eval on a corrupt
adapter or data file, resuming from a damaged checkpoint, and the JSON reader they share."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bot.model.adapters import set_current
from trainer.checkpoints import CHECKPOINT_DIR, checkpoint_config
from trainer.jsonfile import JsonFileError, read_json


@pytest.fixture
def eval_config(tiny_llama, random_adapters, tmp_path, monkeypatch) -> tuple[Path, Path]:
    """An oshaberi.toml for eval with versions v1 (good) of marisa, and its adapters folder."""
    for var in ("OSHABERI_MODEL", "OSHABERI_DEVICE", "OSHABERI_ADAPTERS_DIR", "OSHABERI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    adapters = tmp_path / "adapters"
    shutil.copytree(random_adapters["llama"]["marisa"], adapters / "marisa" / "v1")
    set_current(adapters, "marisa", "v1")
    config = tmp_path / "oshaberi.toml"
    config.write_text(
        f'[model]\nbase_model = "{tiny_llama}"\ndevice = "cpu"\n'
        f'[paths]\nadapters_dir = "{adapters}"\ndata_dir = "{tmp_path}"\n',
        encoding="utf-8",
    )
    return config, adapters


def run_eval(config: Path, tmp_path: Path, *args: str) -> int:
    from trainer.__main__ import main

    return main(
        ["--config", str(config), "eval", "--persona", "marisa", "--no-ranking", "--no-probes",
         "-o", str(tmp_path / "report.json"), *args]
    )  # fmt: skip


def test_eval_names_a_corrupt_adapter_config(eval_config, tmp_path, capsys) -> None:
    config, adapters = eval_config
    broken = adapters / "marisa" / "v1" / "adapter_config.json"
    broken.write_text('{\n  "r": 4,\n  oops\n}', encoding="utf-8")
    assert run_eval(config, tmp_path, "--version", "v1") == 1
    err = capsys.readouterr().err
    assert str(broken) in err and "line 3" in err and "persona.toml" not in err and "Traceback" not in err


def test_eval_names_the_folder_of_corrupt_weights(eval_config, tmp_path, capsys) -> None:
    config, adapters = eval_config
    folder = adapters / "marisa" / "v1"
    (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 16)  # truncated download
    assert run_eval(config, tmp_path, "--version", "v1") == 1
    err = capsys.readouterr().err
    assert f"adapter {folder} (v1) failed to load" in err and "Traceback" not in err


def test_eval_names_the_file_and_line_of_corrupt_data(eval_config, tmp_path, capsys) -> None:
    config, _ = eval_config
    data = tmp_path / "val.jsonl"
    good = {"turns": [{"speaker": "ユーザー", "text": "やあ"}, {"speaker": "魔理沙", "text": "よう"}]}
    data.write_text(json.dumps(good, ensure_ascii=False) + "\n{bad json\n", encoding="utf-8")
    assert run_eval(config, tmp_path, "--version", "base", "--data", str(data)) == 0
    assert f"{data}:2: not valid JSON" in capsys.readouterr().out


def test_resume_from_a_damaged_checkpoint_names_state_json(tmp_path) -> None:
    state = tmp_path / CHECKPOINT_DIR / "state.json"
    state.parent.mkdir()
    state.write_text('{"state": {"step": 3}, "config": {"lr"', encoding="utf-8")  # cut off mid-write
    with pytest.raises(JsonFileError, match=rf"^{state}:1: not valid JSON"):
        checkpoint_config(tmp_path)
    state.write_text('{"state": {"step": 3}}', encoding="utf-8")
    with pytest.raises(JsonFileError, match=rf"^{state}: no 'config' object"):
        checkpoint_config(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1,\n "b": }', ":2: not valid JSON (column"),
        (b"[1, 2]", ": expected a JSON dict, found list"),
        (b'{"a": "\xff"}', ": not UTF-8 text"),
    ],
)
def test_read_json_names_the_file(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "metadata.json"
    path.write_bytes(content)
    with pytest.raises(JsonFileError) as info:
        read_json(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)


@pytest.mark.parametrize("reader", ["read_lines", "read_ranking"])
def test_question_probe_and_ranking_files_that_are_not_utf8_are_named(tmp_path, reader: str) -> None:
    import trainer.evaluate as evaluate
    from trainer.dataset import DataError

    path = tmp_path / "questions.txt"
    path.write_bytes("元気？\n".encode("cp932"))  # saved by a Japanese Windows editor
    with pytest.raises(DataError, match=rf"^{path}: not UTF-8 text"):
        getattr(evaluate, reader)(path)
