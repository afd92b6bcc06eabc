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
        ("[worker]\nqueue_size = 'many'\n", {}, "queue_size: 'many' is not a valid int"),
        ("[model]\nquantization = '3bit'\n", {}, "quantization"),
        ("[discord]\ntoken = 'abc'\n", {}, "DISCORD_TOKEN"),
        ("", {"OSHABERI_NOPE__X": "1"}, "unknown section 'nope'"),
        ("", {"OSHABERI_SCHEDULE__ENABLED": "perhaps"}, "not a valid bool"),
        ("[model\n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, environ, message):
    path = tmp_path / "oshaberi.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, environ=environ)


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
