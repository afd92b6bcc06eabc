import pytest

from bot.config import ConfigError, discord_token, load_settings, redact


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings.model.base_model == "rinna/japanese-gpt-neox-3.6b-instruction-ppo"
    assert settings.model.quantization == "auto" and settings.source == ""


def test_file_then_environment_then_aliases(tmp_path):
    path = tmp_path / "oshaberi.toml"
    path.write_text(
        '[model]\nbase_model = "from-file"\n[worker]\nqueue_size = 5\n[discord]\nallowed_channels = [1, 2]\n'
    )
    settings = load_settings(path, environ={"OSHABERI_WORKER__QUEUE_SIZE": "9", "OSHABERI_QUANT": "4bit"})
    assert settings.model.base_model == "from-file"
    assert settings.worker.queue_size == 9 and settings.model.quantization == "4bit"
    assert settings.discord.allowed_channels == (1, 2)
    env_list = load_settings(path, environ={"OSHABERI_DISCORD__ALLOWED_CHANNELS": "7, 8"})
    assert env_list.discord.allowed_channels == (7, 8)
    assert load_settings(path, environ={"OSHABERI_MODEL": "alias"}).model.base_model == "alias"


@pytest.mark.parametrize(
    ("text", "environ", "message"),
    [
        ("[model]\nbase_modle = 'x'\n", {}, "unknown key 'base_modle'"),
        ("[modle]\n", {}, r"unknown section \[modle\]"),
        ("[worker]\nqueue_size = 'many'\n", {}, r"\[worker\]\.queue_size: 'many' is not an integer"),
        ("[model]\nquantization = '3bit'\n", {}, "quantization"),
        ("[discord]\ntoken = 'abc'\n", {}, "DISCORD_TOKEN"),
        (
            "",
            {"OSHABERI_SCHEDULE__ENABLED": "perhaps"},
            "OSHABERI_SCHEDULE__ENABLED: 'perhaps' is not true or false",
        ),
        ("[model\n", {}, "not valid TOML"),
        (
            "",
            {"OSHABERI_CHAT__HISTORY_MESSAGES": "abc"},
            "^OSHABERI_CHAT__HISTORY_MESSAGES: 'abc' is not an integer$",
        ),
        (
            "",
            {"OSHABERI_DB": "x", "OSHABERI_WORKER__QUEUE_SIZE": "1.5"},
            "^OSHABERI_WORKER__QUEUE_SIZE: '1.5'",
        ),
        (
            "",
            {"OSHABERI_CHAT__RATE_LIMIT_PER_MINUTE": "nan"},
            "^OSHABERI_CHAT__RATE_LIMIT_PER_MINUTE: 'nan' is not a number",
        ),
        ("", {"OSHABERI_DEFAULT_PERSONA": " "}, "chat.default_persona: must name a persona"),
        ("[discord]\nallowed_channels = [-5]\n", {}, "discord.allowed_channels: Discord ids are positive"),
        ("[chat]\nrate_limit_per_minute = [1]\n", {}, r"rate_limit_per_minute: \[1\] is not a number"),
        ("[worker]\nqueue_size = {a = 1}\n", {}, r"queue_size: \{'a': 1\} is not an integer"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, environ, message):
    path = tmp_path / "oshaberi.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ=environ)


# Every number with a sensible range, just outside it, from the file and from the environment.
OUT_OF_RANGE = [
    ("worker", "max_batch_size", "0"),
    ("worker", "batch_window_ms", "-1"),
    ("worker", "queue_size", "0"),
    ("worker", "request_timeout_s", "0"),
    ("chat", "history_messages", "-1"),
    ("chat", "rate_limit_per_minute", "-1"),
    ("chat", "rate_limit_burst", "0"),
    ("chat", "queue_notice_position", "-2"),
    ("discord", "review_poll_s", "0"),
    ("discord", "shutdown_grace_s", "-0.5"),
    ("schedule", "min_new_approved", "-1"),
]


@pytest.mark.parametrize(("section", "key", "value"), OUT_OF_RANGE)
def test_out_of_range_numbers_are_refused_in_one_line(tmp_path, section, key, value):
    variable = f"OSHABERI_{section.upper()}__{key.upper()}"
    expected = rf"^{section}\.{key} \({variable}\): -?[0-9.]+ must be [>]=? "
    for text, environ in ((f"[{section}]\n{key} = {value}\n", {}), ("", {variable: value})):
        path = tmp_path / "oshaberi.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=expected) as caught:
            load_settings(path, environ=environ)
        assert "must be" in str(caught.value) and "\n" not in str(caught.value)


def test_boundary_values_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    environ = {
        "OSHABERI_CHAT__RATE_LIMIT_PER_MINUTE": "0",
        "OSHABERI_CHAT__HISTORY_MESSAGES": "0",
        "OSHABERI_CHAT__QUEUE_NOTICE_POSITION": "0",
        "OSHABERI_WORKER__BATCH_WINDOW_MS": "0",
        "OSHABERI_DISCORD__SHUTDOWN_GRACE_S": "0",
    }
    settings = load_settings(environ=environ)
    assert settings.chat.rate_limit_per_minute == 0 and settings.chat.history_messages == 0


def test_a_named_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_token_from_environment_or_dotenv_and_redaction(tmp_path):
    assert discord_token({"DISCORD_TOKEN": " abc.def "}, tmp_path / ".env") == "abc.def"
    dotenv = tmp_path / ".env"
    dotenv.write_text("DISCORD_TOKEN=from-dotenv\n")
    assert discord_token({}, dotenv) == "from-dotenv"
    assert discord_token({}, tmp_path / "none.env") is None
    assert redact("login with from-dotenv failed", "from-dotenv") == "login with [REDACTED] failed"


def test_backend_from_file_environment_and_command_line(tmp_path):
    from bot.__main__ import apply_cli_overrides, build_parser

    path = tmp_path / "oshaberi.toml"
    path.write_text('[engine]\nbackend = "vllm"\nvllm_urls = ["http://gpu1:8000"]\n')
    settings = load_settings(path, environ={})
    assert settings.engine.backend == "vllm" and settings.engine.vllm_urls == ("http://gpu1:8000",)
    env = load_settings(environ={"OSHABERI_BACKEND": "vllm", "OSHABERI_VLLM_URLS": "http://a:1, http://b:2"})
    assert env.engine.vllm_urls == ("http://a:1", "http://b:2")
    args = build_parser().parse_args(["chat", "--vllm-url", "http://x:1", "--vllm-url", "http://y:2"])
    cli = apply_cli_overrides(load_settings(environ={}), args)
    assert cli.engine.backend == "vllm" and cli.engine.vllm_urls == ("http://x:1", "http://y:2")
    back = apply_cli_overrides(settings, build_parser().parse_args(["--backend", "local", "chat"]))
    assert back.engine.backend == "local"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OSHABERI_BACKEND": "tgi"}, "engine.backend: 'tgi' is not one of local, vllm"),
        ({"OSHABERI_BACKEND": "vllm"}, "engine.vllm_urls is empty; set OSHABERI_VLLM_URLS"),
        ({"OSHABERI_BACKEND": "vllm", "OSHABERI_VLLM_URLS": "gpu1:8000"}, "'gpu1:8000' is not an http"),
    ],
)
def test_bad_backend_settings_say_what_to_set(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_the_console_chat_names_an_unusable_vllm_server_in_one_line(tiny_neox, tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    url = f"http://127.0.0.1:{port}"
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OSHABERI_CONFIG": "", "DISCORD_TOKEN": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "chat", "--model", str(tiny_neox), "--vllm-url", url],
        input="こんにちは\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[1])},
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and url in errors[0] and "not reachable" in errors[0]
    assert "Traceback" not in proc.stderr
