"""Settings an operator sets are used or named: the device is checked in full, .env is read as
Docker Compose reads it, a variable that is no setting gets a warning with the closest name,
relative paths have one stated base, and a message names the setting as the operator set it."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bot.config import ConfigError, Settings, load_settings, origin
from bot.ops.startup import check_paths, describe_sources, load_env_file

ROOT = Path(__file__).resolve().parents[1]


def run_entry_point(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OSHABERI_", "DISCORD_"))}
    clean.update(env or {}, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=clean,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- 3. the device ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device", ["cuda:x", "cuda:", "cuda:-1", "cuda:1.5", "gpu", "CUDA", "cuda:0 ", "mps"]
)
def test_a_device_that_is_not_one_is_refused_with_its_origin(device):
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"OSHABERI_DEVICE": device})
    message = str(caught.value)
    assert message.startswith("model.device (OSHABERI_DEVICE): ") and repr(device) in message
    assert "cuda:N" in message


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_every_real_device_is_accepted(device):
    assert load_settings(environ={"OSHABERI_MODEL__DEVICE": device}).model.device == device


def test_a_gpu_number_the_host_lacks_is_one_line(monkeypatch):
    import torch

    from bot.model.loading import ModelLoadError, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1").index == 1
    with pytest.raises(ModelLoadError) as caught:
        resolve_device("cuda:2")
    settings = load_settings(environ={"OSHABERI_DEVICE": "cuda:2"})
    assert caught.value.for_settings(settings) == (
        "device 'cuda:2' was asked for, but this host has 2 CUDA GPUs (cuda:0 to cuda:1); "
        "set OSHABERI_DEVICE to one of them, or to cuda"
    )


def test_a_bad_device_stops_the_bot_in_one_line(tmp_path):
    result = run_entry_point(["bot", "chat"], tmp_path, {"OSHABERI_DEVICE": "cuda:x"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert lines == [
        "error: model.device (OSHABERI_DEVICE): 'cuda:x' is not a device: auto, cpu, cuda, "
        "or cuda:N with N the GPU's number (cuda:0, cuda:1, …)"
    ]


def test_a_bad_device_stops_the_trainer_in_one_line(tmp_path, monkeypatch, capsys):
    from trainer.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OSHABERI_DEVICE", "cuda:x")
    assert main(["train", "--persona", "marisa"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "train: model.device (OSHABERI_DEVICE): 'cuda:x' is not a device"
    )


# -- 4. .env, as Docker Compose reads it -----------------------------------------------------------


def test_every_line_of_env_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\nDISCORD_TOKEN=abc.def\nOSHABERI_MODEL=models/tiny\nexport OSHABERI_DB='x.sqlite3'\n"
        "HF_HOME=/cache/hf\nOSHABERI_DEFAULT_PERSONA=nucc\n",
        encoding="utf-8",
    )
    for name in ("DISCORD_TOKEN", "OSHABERI_MODEL", "OSHABERI_DB", "HF_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OSHABERI_DEFAULT_PERSONA", "zundamon")  # already set: the environment wins
    added = load_env_file(env_file)
    assert added == ["DISCORD_TOKEN", "HF_HOME", "OSHABERI_DB", "OSHABERI_MODEL"]
    assert os.environ["OSHABERI_MODEL"] == "models/tiny" and os.environ["OSHABERI_DB"] == "x.sqlite3"
    assert os.environ["OSHABERI_DEFAULT_PERSONA"] == "zundamon"
    settings = load_settings(environ=dict(os.environ), base=tmp_path)
    assert settings.model.base_model == "models/tiny" and settings.chat.default_persona == "zundamon"
    line = describe_sources(settings, added)
    assert "OSHABERI_MODEL" in line and "abc.def" not in line  # names, never values


def test_the_bot_uses_a_setting_it_finds_only_in_env_and_says_where_paths_point(tmp_path):
    """One start from a folder that is not the checkout: OSHABERI_MODEL only in .env, no adapters."""
    (tmp_path / ".env").write_text("OSHABERI_MODEL=models/tiyn\n", encoding="utf-8")
    (tmp_path / "models").mkdir()
    result = run_entry_point(["bot", "chat"], tmp_path)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    # The value from .env is the one used, and the message names where it was set.
    assert error.startswith("error: model folder 'models/tiyn' does not exist"), error
    assert "set OSHABERI_MODEL to" in error
    # Said at start-up: what .env set, and the base of relative paths...
    assert f"{tmp_path / '.env'} (OSHABERI_MODEL)" in result.stderr
    assert f"relative paths are relative to the working directory {tmp_path}" in result.stderr
    # ...and that the adapters folder is not there, so every persona is prompt-only.
    [warning] = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert (
        f"paths.adapters_dir (OSHABERI_ADAPTERS_DIR): {tmp_path / 'adapters'} does not exist, so no "
        "persona has a trained adapter and each answers prompt-only"
    ) in warning


def test_the_trainer_reads_env_too(tmp_path, monkeypatch, capsys):
    import bot.ops.startup
    from trainer.__main__ import main

    (tmp_path / ".env").write_text("OSHABERI_PATHS__PERSONAS_DIR=cards\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bot.ops.startup, "ENV_FILE", tmp_path / ".env")
    monkeypatch.setenv("OSHABERI_PATHS__PERSONAS_DIR", "")  # so that the variable .env sets is undone after
    monkeypatch.delenv("OSHABERI_PATHS__PERSONAS_DIR")
    assert main(["eval", "--persona", "marisa"]) == 1
    assert (
        f"paths.personas_dir (OSHABERI_PATHS__PERSONAS_DIR): the folder {tmp_path / 'cards'} does not exist"
    ) in capsys.readouterr().err


def test_compose_passes_the_same_env_file_the_entry_points_read():
    import bot.ops.startup

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text(encoding="utf-8"))
    for service in ("bot", "trainer"):
        [env_file] = compose["services"][service]["env_file"]
        # Compose resolves it against docker/; the entry points against the working directory,
        # which is the repository root in every documented command.
        assert (ROOT / "docker" / env_file).resolve() == ROOT / ".env"
    # (The tests point ENV_FILE elsewhere; the shipped default is the working directory's .env.)
    assert 'ENV_FILE = Path(".env")' in Path(bot.ops.startup.__file__).read_text(encoding="utf-8")
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert "reads only DISCORD_TOKEN" not in text and "every line" in text.lower()


# -- 5. variables that name no setting -------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("OSHABERI_CHAT_HISTORY_MESSAGES", "OSHABERI_CHAT__HISTORY_MESSAGES"),
        ("OSHABERI_CHAT__HISTORY_MESAGES", "OSHABERI_CHAT__HISTORY_MESSAGES"),
        ("OSHABERI_HISTORY_MESSAGES", "OSHABERI_CHAT__HISTORY_MESSAGES"),
        ("OSHABERI_MODLE", "OSHABERI_MODEL"),
        ("OSHABERI_DISCORD_REVIEW_CHANNEL", "OSHABERI_DISCORD__REVIEW_CHANNEL"),
        ("OSHABERI_CONFIG_FILE", "OSHABERI_CONFIG"),
        ("OSHABERI_FOO", None),
        ("OSHABERI_NOPE__X", None),
    ],
)
def test_a_variable_that_is_no_setting_gets_one_warning_with_the_closest_name(caplog, variable, suggestion):
    with caplog.at_level(logging.WARNING, logger="bot.config"):
        settings = load_settings(environ={variable: "3"})
    assert settings == load_settings(environ={})  # ignored...
    [record] = caplog.records  # ...but said, once
    message = record.getMessage()
    assert message.startswith(f"{variable} is not a setting and is ignored")
    if suggestion:
        assert message.endswith(f"did you mean {suggestion}?")
    else:
        assert "two underscores" in message and "did you mean" not in message


def test_real_settings_and_other_variables_get_no_warning(caplog):
    environ = {
        "OSHABERI_MODEL": "m",
        "OSHABERI_CHAT__HISTORY_MESSAGES": "3",
        "OSHABERI_CONFIG": "",
        "OSHABERI_VLLM_PYTHON": "/x/python",
        "PATH": "/usr/bin",
    }
    with caplog.at_level(logging.WARNING, logger="bot.config"):
        assert load_settings(environ=environ).chat.history_messages == 3
    assert caplog.records == []


def test_the_full_name_wins_over_the_alias():
    settings = load_settings(environ={"OSHABERI_MODEL__BASE_MODEL": "full", "OSHABERI_MODEL": "alias"})
    assert (
        settings.model.base_model == "full"
        and origin(settings, "model.base_model") == "OSHABERI_MODEL__BASE_MODEL"
    )


# -- 6. relative paths: one base, said; a missing adapters folder is a warning ---------------------


def test_relative_paths_are_made_absolute_against_the_working_directory(tmp_path):
    config = tmp_path / "oshaberi.toml"
    config.write_text('[paths]\nadapters_dir = "ad"\ndatabase = "/abs/db.sqlite3"\n', encoding="utf-8")
    settings = load_settings(config, environ={"OSHABERI_PATHS__DATA_DIR": "../d"}, base=tmp_path / "work")
    assert settings.paths.adapters_dir == str(tmp_path / "work" / "ad")
    assert settings.paths.database == "/abs/db.sqlite3"
    assert settings.paths.data_dir == str(tmp_path / "d")
    assert settings.paths.personas_dir == "" and settings.chat.blocked_words_file == ""  # shipped ones
    home = load_settings(environ={"OSHABERI_ADAPTERS_DIR": "~/ad"}, base=tmp_path).paths.adapters_dir
    assert home == str(Path.home() / "ad")


def test_missing_files_and_folders_the_settings_name(tmp_path):
    base = load_settings(environ={}, base=tmp_path)
    assert len(check_paths(base)) == 1 and check_paths(base, adapters=False) == []
    (tmp_path / "adapters").mkdir()
    assert check_paths(base) == []
    for environ, message in [
        (
            {"OSHABERI_PATHS__PERSONAS_DIR": "cards"},
            "paths.personas_dir (OSHABERI_PATHS__PERSONAS_DIR): the folder",
        ),
        (
            {"OSHABERI_CHAT__BLOCKED_WORDS_FILE": "words.txt"},
            "chat.blocked_words_file (OSHABERI_CHAT__BLOCKED_WORDS_FILE): ",
        ),
        ({"OSHABERI_ADAPTERS_DIR": "oshaberi.toml"}, "paths.adapters_dir (OSHABERI_ADAPTERS_DIR): "),
    ]:
        (tmp_path / "oshaberi.toml").write_text("", encoding="utf-8")
        settings = load_settings(environ=environ, base=tmp_path)
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
            check_paths(settings)


# -- 8. messages that name what the operator set ---------------------------------------------------


def test_origin_names_the_flag_the_file_key_or_the_variable(tmp_path):
    from bot.__main__ import apply_cli_overrides, build_parser

    config = tmp_path / "oshaberi.toml"
    config.write_text('[model]\nbase_model = "models/x"\n', encoding="utf-8")
    from_file = load_settings(config, environ={})
    assert origin(from_file, "model.base_model") == f"{config} [model] base_model"
    assert origin(load_settings(environ={"OSHABERI_MODEL": "x"}), "model.base_model") == "OSHABERI_MODEL"
    assert origin(Settings(), "model.base_model") == "OSHABERI_MODEL"
    assert origin(Settings(), "worker.queue_size") == "OSHABERI_WORKER__QUEUE_SIZE"
    cli = apply_cli_overrides(from_file, build_parser().parse_args(["chat", "--model", "models/tiyn"]))
    assert origin(cli, "model.base_model") == "--model"


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("--model", "set --model to a hub id"),
        ("env", "set OSHABERI_MODEL to a hub id"),
        ("file", "[model] base_model to a hub id"),
    ],
)
def test_a_missing_model_folder_names_where_it_was_set(tmp_path, how, expected):
    from bot.__main__ import apply_cli_overrides, build_parser
    from bot.model.source import ModelLoadError, resolve_model_source

    (tmp_path / "models").mkdir()
    config = tmp_path / "oshaberi.toml"
    config.write_text(f'[model]\nbase_model = "{tmp_path}/models/tiyn"\n', encoding="utf-8")
    if how == "--model":
        settings = apply_cli_overrides(
            load_settings(environ={}),
            build_parser().parse_args(["chat", "--model", f"{tmp_path}/models/tiyn"]),
        )
    elif how == "env":
        settings = load_settings(environ={"OSHABERI_MODEL": f"{tmp_path}/models/tiyn"})
    else:
        settings = load_settings(config, environ={})
    with pytest.raises(ModelLoadError) as caught:
        resolve_model_source(settings.model)
    message = caught.value.for_settings(settings)
    assert "does not exist" in message and expected in message
    assert (how == "env") == ("OSHABERI_MODEL" in message)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'base_model = "x"\n[chat]\n',
            "key 'base_model' is not inside a [section]; it belongs under [model]",
        ),
        (
            "review_channel = 5\n",
            "key 'review_channel' is not inside a [section]; it belongs under [discord]",
        ),
        ("foo = 1\n", "key 'foo' is not inside a [section] (sections: model, engine, worker, paths"),
        ('model = "x"\n', "[model] must be a table"),
        ("[modle]\n", "unknown section [modle]; did you mean [model]?"),
        ('token = "abc"\n', "the Discord token may not be in the config file; set DISCORD_TOKEN"),
    ],
)
def test_a_key_outside_every_section_is_named_as_a_key(tmp_path, text, message):
    config = tmp_path / "oshaberi.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert str(caught.value).startswith(str(config)) and message in str(caught.value)


@pytest.mark.parametrize("key", ["review_channel", "moderator_role"])
@pytest.mark.parametrize("source", ["file", "env"])
def test_a_negative_discord_id_is_refused(tmp_path, key, source):
    config = tmp_path / "oshaberi.toml"
    config.write_text(f"[discord]\n{key} = -5\n" if source == "file" else "", encoding="utf-8")
    environ = {f"OSHABERI_DISCORD__{key.upper()}": "-5"} if source == "env" else {}
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ=environ)
    where = f"{config} [discord] {key}" if source == "file" else f"OSHABERI_DISCORD__{key.upper()}"
    assert str(caught.value).startswith(f"discord.{key} ({where}): -5 is not a Discord id")
    config.write_text(f"[discord]\n{key} = 0\n", encoding="utf-8")
    assert getattr(load_settings(config, environ={}).discord, key) == 0  # 0: switched off


def test_a_variable_env_sets_too_late_to_act_on_is_named():
    from bot.ops.startup import too_late

    warnings = too_late(["HF_HOME", "MALLOC_ARENA_MAX", "OSHABERI_MODEL", "PYTHONHASHSEED", "LD_PRELOAD"])
    assert [w.split()[0] for w in warnings] == ["MALLOC_ARENA_MAX", "PYTHONHASHSEED", "LD_PRELOAD"]
    assert all("has no effect here" in w and "export it in the shell" in w for w in warnings)
