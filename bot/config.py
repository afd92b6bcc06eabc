"""Settings from one TOML file plus environment variables.

Precedence, lowest first: the defaults below, ``oshaberi.toml`` (or the file named by
``OSHABERI_CONFIG``), then environment variables ``OSHABERI_<SECTION>__<KEY>``
(for example ``OSHABERI_MODEL__BASE_MODEL``) and a few short aliases. The entry points first
read ``.env`` of the working directory into the environment, as Docker Compose's ``env_file``
does (a variable already set wins). The Discord token is never read from the file: only from
``DISCORD_TOKEN`` in the environment or ``.env``. Relative paths are made absolute against the
working directory when the settings are loaded, and every message shows them absolute.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
DEFAULT_BASE_MODEL = "rinna/japanese-gpt-neox-3.6b-instruction-ppo"
DEFAULT_CONFIG_FILE = "oshaberi.toml"
ENV_PREFIX = "OSHABERI_"
# Short names for the settings people change most.
ENV_ALIASES = {
    "OSHABERI_MODEL": ("model", "base_model"),
    "OSHABERI_DEVICE": ("model", "device"),
    "OSHABERI_QUANT": ("model", "quantization"),
    "OSHABERI_DTYPE": ("model", "dtype"),
    "OSHABERI_DB": ("paths", "database"),
    "OSHABERI_ADAPTERS_DIR": ("paths", "adapters_dir"),
    "OSHABERI_DEFAULT_PERSONA": ("chat", "default_persona"),
    "OSHABERI_BACKEND": ("engine", "backend"),
    "OSHABERI_VLLM_URLS": ("engine", "vllm_urls"),
}
BACKENDS = ("local", "vllm")
# Variables with the prefix that are read, but are not settings.
OTHER_VARIABLES = {
    "OSHABERI_CONFIG": "the config file to read",
    "OSHABERI_VLLM_PYTHON": "tests only: the interpreter of the vLLM venv",
}
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
# Settings that name a local file or folder: made absolute against the working directory.
# (engine.vllm_adapters_dir is not: it is the path as the vLLM servers see it.)
PATH_SETTINGS = (
    ("paths", "personas_dir"),
    ("paths", "adapters_dir"),
    ("paths", "database"),
    ("paths", "data_dir"),
    ("chat", "blocked_words_file"),
)


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the file or variable and the key."""


@dataclass(frozen=True)
class ModelSettings:
    """Which base model to load and how. ``auto`` picks per device: 4-bit NF4 + bf16 on CUDA, fp32 on CPU."""

    base_model: str = DEFAULT_BASE_MODEL
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    quantization: str = "auto"  # auto | 4bit | 8bit | none
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (compute dtype when quantized)
    revision: str = ""
    local_files_only: bool = False


@dataclass(frozen=True)
class EngineSettings:
    """Which serving backend generates: the in-process engine, or one or more vLLM servers."""

    backend: str = "local"  # local | vllm
    vllm_urls: tuple[str, ...] = ()  # base URLs of vLLM OpenAI-compatible servers
    # The adapters folder as the servers see it (a shared volume); empty: the same path as the bot's.
    vllm_adapters_dir: str = ""
    vllm_health_interval_s: float = 5.0
    vllm_connect_timeout_s: float = 5.0
    # How often CURRENT/CANARY are checked for moves made by another process (trainer promote,
    # rollback, canary); a persona whose pointers moved is reloaded. 0: never.
    adapter_poll_s: float = 3.0
    # Idle connections to the servers are dropped after this; keep it below the servers' own
    # keep-alive (vLLM's VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by default).
    vllm_keepalive_s: float = 4.0
    # A request with no token within this (the first, or the next one) marks its server suspect.
    vllm_first_token_timeout_s: float = 30.0


@dataclass(frozen=True)
class WorkerSettings:
    max_batch_size: int = 8
    batch_window_ms: int = 15
    queue_size: int = 64
    request_timeout_s: float = 180.0
    # continuous: admit waiting requests between decode steps; static: only when the batch is empty.
    scheduler: str = "continuous"
    # Most prompt tokens (rows x columns) read per step while newcomers are prefilled, so a long
    # prompt delays the decoding rows by a bounded amount per step (chunked prefill).
    prefill_chunk_tokens: int = 512
    # Memory for the KV cache of recent prompts and replies, reused by later prompts that start
    # the same way (per adapter version, least recently used evicted first); 0 turns reuse off.
    prefix_cache_mb: int = 1024


@dataclass(frozen=True)
class PathSettings:
    personas_dir: str = ""  # empty: the cards shipped in personas/
    adapters_dir: str = "adapters"
    database: str = "var/oshaberi.sqlite3"
    data_dir: str = "data"


@dataclass(frozen=True)
class ChatSettings:
    default_persona: str = "marisa"
    history_messages: int = 20  # at most this many earlier messages are read before the budget applies
    rate_limit_per_minute: float = 6.0
    rate_limit_burst: int = 3
    blocked_words_file: str = ""  # empty: the list shipped in bot/text/blocked_words.txt
    queue_notice_position: int = 4  # tell users their queue position from this place on; 0: never
    stream_replies: bool = True  # show a reply while it is written; false: post it whole at the end
    stream_edit_interval_s: float = 1.5  # at most one edit of a streamed Discord reply this often
    cast_followups: int = 0  # turns in which personas answer each other, per member message; 0: never


@dataclass(frozen=True)
class DiscordSettings:
    """The Discord defaults. Each server may override the first four (and ``chat.default_persona``
    and whether its replies train) with ``/settings``; a server without settings uses these. Channel
    and role ids belong to one server, so in any other server they match nothing."""

    allowed_channels: tuple[int, ...] = ()  # empty: every channel the bot can read
    allowed_roles: tuple[int, ...] = ()  # empty: everyone may talk to the bot
    review_channel: int = 0  # 0: no review channel (replies are still logged)
    moderator_role: int = 0  # 0: only members with Manage Messages moderate
    # Servers the bot serves; empty: every server that adds it. Listed servers train by default.
    allowed_servers: tuple[int, ...] = ()
    leave_unlisted_servers: bool = False  # in a server not on allowed_servers: leave (true) or stay silent
    use_webhooks: bool = True
    owner_ids: tuple[int, ...] = ()
    review_poll_s: float = 10.0  # how often review items from other processes are looked for
    shutdown_grace_s: float = 20.0  # on SIGTERM, how long in-flight replies may still finish
    # Applications whose webhook reposts are a member's own words (PluralKit, Tupperbox): the
    # repost is answered as that member's message, once (docs/robustness.md, proxied messages).
    proxy_bots: tuple[int, ...] = (466378653216014359, 431544605209788416)


@dataclass(frozen=True)
class ScheduleSettings:
    enabled: bool = False
    cron: str = "0 4 * * *"  # crontab fields: minute hour day month weekday
    min_new_approved: int = 50
    personas: tuple[str, ...] = ()  # empty: every persona
    # After SFT, the preference stage (trainer prefer) runs when the persona has at least this
    # many contrasting decisions (rejections, word-filter blocks, edits) outside the held-out split.
    preference_method: str = "kto"  # kto | dpo | off
    min_preference_decisions: int = 20
    # 0: a candidate the gate passes becomes CURRENT; above 0 it serves this share as a canary.
    canary_share: float = 0.0


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    source: str = ""
    # "section.key" -> where a value that is not the default came from ("OSHABERI_MODEL",
    # "--model", "oshaberi.toml [model] base_model"), so a message names what the operator set.
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def section_names() -> list[str]:
    """The settings' sections, in order: ``model``, ``engine``, …"""
    return [f.name for f in fields(Settings) if f.name not in ("source", "origins")]


def setting_variables() -> dict[str, tuple[str, str]]:
    """Every environment variable that sets a setting (full names and aliases) -> (section, key)."""
    found = {
        f"{ENV_PREFIX}{section.upper()}__{key.name.upper()}": (section, key.name)
        for section in section_names()
        for key in fields(getattr(Settings(), section))
    }
    return {**found, **ENV_ALIASES}


def origin(settings: Settings, key: str) -> str:
    """How ``key`` ("model.base_model") got its value, in the words the operator set it with
    ("--model", "OSHABERI_MODEL", "oshaberi.toml [model] base_model"); for a default, the
    environment variable that sets it (the short alias where there is one)."""
    if key in settings.origins:
        return settings.origins[key]
    section, _, name = key.partition(".")
    aliases = [var for var, target in ENV_ALIASES.items() if target == (section, name)]
    return aliases[0] if aliases else f"{ENV_PREFIX}{section.upper()}__{name.upper()}"


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a TOML or environment value into the field's type, or say clearly why not."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list")
        (item_type, _) = typing.get_args(annotation)
        return tuple(_coerce(v, item_type, where) for v in value)
    if origin in (types.UnionType, typing.Union):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if annotation is float:
            if isinstance(value, bool) or not math.isfinite(number := float(value)):
                raise ValueError(value)
            return number
        if annotation is str:
            if not isinstance(value, str | int | float):
                raise ValueError(value)
            return str(value)
    except (ValueError, TypeError):  # TypeError: a TOML table or list where a number belongs
        raise ConfigError(f"{where}: {value!r} is not {_TYPE_WORDS[annotation]}") from None
    raise ConfigError(f"{where}: unsupported setting type {annotation}")


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(section_obj: T, values: dict[str, Any], where: str) -> T:
    """A copy of a settings dataclass with ``values`` coerced to its field types; ConfigError names the key."""
    hints = _section_types(type(section_obj))
    known = {f.name for f in fields(section_obj)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}' (known: {', '.join(sorted(known))})")
        changes[key] = _coerce(value, hints[key], f"{where}.{key}")
    return replace(section_obj, **changes)


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None, base: Path | None = None
) -> Settings:
    """Build the settings; a missing default file is fine, a missing named file is an error.

    Relative paths (``PATH_SETTINGS``) are made absolute against ``base`` (default: the working
    directory). An ``OSHABERI_`` variable that names no setting is logged as a warning, with the
    closest real name. Raises ConfigError naming the file or variable and the key.
    """
    environ = dict(os.environ if environ is None else environ)
    base = Path.cwd() if base is None else base
    named = path or environ.get("OSHABERI_CONFIG")
    config_path = Path(named) if named else Path(DEFAULT_CONFIG_FILE)
    raw: dict[str, Any] = {}
    if config_path.is_file():
        try:
            raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    elif named:
        raise ConfigError(f"config file {config_path} does not exist")

    settings = Settings(source=str(config_path.absolute()) if raw else "")
    origins: dict[str, str] = {}
    sections = section_names()
    keys = {k.lower() for table in raw.values() if isinstance(table, dict) for k in table}
    if "token" in keys | {k.lower() for k, v in raw.items() if not isinstance(v, dict)}:
        raise ConfigError(
            f"{config_path}: the Discord token may not be in the config file; set DISCORD_TOKEN"
        )
    for name, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(_outside_a_table(config_path, name, sections))
        if name not in sections:
            raise ConfigError(
                f"{config_path}: unknown section [{name}]{_did_you_mean(name, sections, '[{}]')} "
                f"(known: {', '.join(sorted(sections))})"
            )
        where = f"{config_path} [{name}]"
        settings = replace(settings, **{name: apply_overrides(getattr(settings, name), values, where)})
        origins.update({f"{name}.{key}": f"{where} {key}" for key in values})

    variables = setting_variables()
    ours = sorted((var for var in environ if var.upper().startswith(ENV_PREFIX)), key=str.upper)
    for var in ours:
        if var.upper() not in variables and var.upper() not in OTHER_VARIABLES:
            log.warning("%s", _unknown_variable(var, variables))
    # Aliases first, so that the full name wins where both are set.
    for var in sorted(
        (v for v in ours if v.upper() in variables), key=lambda v: v.upper() not in ENV_ALIASES
    ):
        section, key = variables[var.upper()]
        # One variable at a time, so an error names the variable the operator actually set.
        current = getattr(settings, section)
        coerced = _coerce(environ[var], _section_types(type(current))[key], var)
        settings = replace(settings, **{section: replace(current, **{key: coerced})})
        origins[f"{section}.{key}"] = var
    settings = replace(settings, origins=origins)
    validate(settings)
    return absolute_paths(settings, base)


def absolute_paths(settings: Settings, base: Path) -> Settings:
    """The settings with every ``PATH_SETTINGS`` value absolute (``~`` expanded, relative ones
    joined to ``base``); empty values (meaning "the shipped one") stay empty."""
    for section, key in PATH_SETTINGS:
        table = getattr(settings, section)
        value = getattr(table, key)
        if value:
            absolute = os.path.normpath(base / Path(value).expanduser())
            settings = replace(settings, **{section: replace(table, **{key: absolute})})
    return settings


def _did_you_mean(name: str, choices: list[str], shape: str = "{}") -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.75)
    return f"; did you mean {shape.format(close[0])}?" if close else ""


def _outside_a_table(config_path: Path, name: str, sections: list[str]) -> str:
    """The message for ``name = value`` above every [section] header (or a section set to a value)."""
    if name in sections:
        return f"{config_path}: [{name}] must be a table (a [{name}] header with keys below it)"
    owners = [s for s in sections if name in {f.name for f in fields(getattr(Settings(), s))}]
    where = f"; it belongs under [{owners[0]}]" if owners else f" (sections: {', '.join(sections)})"
    return (
        f"{config_path}: key '{name}' is not inside a [section]{where}: keys go below their "
        "section's header, and a key above every header belongs to no section"
    )


def _unknown_variable(var: str, variables: dict[str, tuple[str, str]]) -> str:
    """One warning line for an ``OSHABERI_`` variable that names no setting, with the closest name."""
    names = {name[len(ENV_PREFIX) :]: name for name in [*variables, *OTHER_VARIABLES]}
    close = difflib.get_close_matches(var.upper()[len(ENV_PREFIX) :], list(names), n=1, cutoff=0.7)
    hint = (
        f"; did you mean {names[close[0]]}?"
        if close
        else f" (settings are {ENV_PREFIX}<SECTION>__<KEY>, two underscores; see docs/configuration.md)"
    )
    return f"{var} is not a setting and is ignored{hint}"


def validate(settings: Settings) -> None:
    """Raise ConfigError naming the first setting that cannot be used."""
    m = settings.model
    if m.quantization not in ("auto", "4bit", "8bit", "none"):
        raise ConfigError(f"model.quantization: {m.quantization!r} is not one of auto, 4bit, 8bit, none")
    if m.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"model.dtype: {m.dtype!r} is not one of auto, float32, bfloat16, float16")
    if not DEVICE.fullmatch(m.device):
        raise ConfigError(
            f"model.device ({origin(settings, 'model.device')}): {m.device!r} is not a device: "
            "auto, cpu, cuda, or cuda:N with N the GPU's number (cuda:0, cuda:1, …)"
        )
    for key, value, lowest, inclusive, hint in _ranges(settings):
        if value < lowest or (value == lowest and not inclusive):
            bound = f">= {lowest}" if inclusive else f"> {lowest}"
            section, _, name = key.partition(".")
            raise ConfigError(
                f"{key} ({ENV_PREFIX}{section.upper()}__{name.upper()}): {value!r} must be {bound}{hint}"
            )
    for key, ids in (
        ("discord.allowed_channels", settings.discord.allowed_channels),
        ("discord.allowed_roles", settings.discord.allowed_roles),
        ("discord.owner_ids", settings.discord.owner_ids),
        ("discord.allowed_servers", settings.discord.allowed_servers),
        ("discord.proxy_bots", settings.discord.proxy_bots),
    ):
        if any(i <= 0 for i in ids):
            raise ConfigError(f"{key}: Discord ids are positive numbers, got {list(ids)}")
    for key, one_id, off in (
        ("discord.review_channel", settings.discord.review_channel, "no review channel"),
        ("discord.moderator_role", settings.discord.moderator_role, "no moderator role"),
    ):
        if one_id < 0:
            raise ConfigError(
                f"{key} ({origin(settings, key)}): {one_id} is not a Discord id; ids are positive "
                f"numbers (Discord: right-click → Copy ID, with Developer Mode on), 0 means {off}"
            )
    if not settings.chat.default_persona.strip():
        raise ConfigError("chat.default_persona: must name a persona (an id under personas/)")
    if settings.worker.scheduler not in ("continuous", "static"):
        raise ConfigError(
            f"worker.scheduler (OSHABERI_WORKER__SCHEDULER): {settings.worker.scheduler!r} "
            "is not one of continuous, static"
        )
    if settings.schedule.preference_method not in ("kto", "dpo", "off"):
        raise ConfigError(
            f"schedule.preference_method (OSHABERI_SCHEDULE__PREFERENCE_METHOD): "
            f"{settings.schedule.preference_method!r} is not one of kto, dpo, off"
        )
    if settings.schedule.canary_share >= 1:
        raise ConfigError(
            f"schedule.canary_share (OSHABERI_SCHEDULE__CANARY_SHARE): {settings.schedule.canary_share!r} "
            "must be below 1 (a share of requests; 0: promote directly)"
        )
    e = settings.engine
    if e.backend not in BACKENDS:
        raise ConfigError(f"engine.backend: {e.backend!r} is not one of {', '.join(BACKENDS)}")
    if e.backend == "vllm" and not e.vllm_urls:
        raise ConfigError(
            "engine.backend is 'vllm' but engine.vllm_urls is empty; "
            "set OSHABERI_VLLM_URLS=http://HOST:8000 (or --vllm-url)"
        )
    for url in e.vllm_urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"engine.vllm_urls: {url!r} is not an http:// or https:// URL")


def _ranges(s: Settings) -> list[tuple[str, float, float, bool, str]]:
    """(key, value, lowest, lowest allowed?, hint) for every number that has a sensible range."""
    return [
        ("worker.max_batch_size", s.worker.max_batch_size, 1, True, ""),
        ("worker.batch_window_ms", s.worker.batch_window_ms, 0, True, ""),
        ("worker.queue_size", s.worker.queue_size, 1, True, ""),
        ("worker.request_timeout_s", s.worker.request_timeout_s, 0, False, " (seconds)"),
        ("worker.prefill_chunk_tokens", s.worker.prefill_chunk_tokens, 1, True, " (prompt tokens per step)"),
        ("worker.prefix_cache_mb", s.worker.prefix_cache_mb, 0, True, " (MiB; 0 turns prefix reuse off)"),
        ("chat.history_messages", s.chat.history_messages, 0, True, ""),
        ("chat.rate_limit_per_minute", s.chat.rate_limit_per_minute, 0, True, " (0 switches the limit off)"),
        ("chat.rate_limit_burst", s.chat.rate_limit_burst, 1, True, ""),
        ("chat.queue_notice_position", s.chat.queue_notice_position, 0, True, " (0: never)"),
        (
            "chat.stream_edit_interval_s",
            s.chat.stream_edit_interval_s,
            0,
            False,
            " (seconds; Discord allows about 5 edits per 5 s in a channel, 1.5 is a good value)",
        ),
        ("chat.cast_followups", s.chat.cast_followups, 0, True, " (0: personas never answer each other)"),
        ("discord.review_poll_s", s.discord.review_poll_s, 0, False, " (seconds)"),
        ("discord.shutdown_grace_s", s.discord.shutdown_grace_s, 0, True, " (seconds)"),
        ("schedule.min_new_approved", s.schedule.min_new_approved, 0, True, " (0: every tick)"),
        ("schedule.min_preference_decisions", s.schedule.min_preference_decisions, 1, True, ""),
        ("schedule.canary_share", s.schedule.canary_share, 0, True, " (0: promote directly)"),
        ("engine.adapter_poll_s", s.engine.adapter_poll_s, 0, True, " (seconds; 0: never)"),
        ("engine.vllm_health_interval_s", s.engine.vllm_health_interval_s, 0, False, " (seconds)"),
        ("engine.vllm_connect_timeout_s", s.engine.vllm_connect_timeout_s, 0, False, " (seconds)"),
        (
            "engine.vllm_keepalive_s",
            s.engine.vllm_keepalive_s,
            0,
            False,
            " (seconds; keep it below the servers' VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 by default)",
        ),
        ("engine.vllm_first_token_timeout_s", s.engine.vllm_first_token_timeout_s, 0, False, " (seconds)"),
    ]


def discord_token(environ: dict[str, str] | None = None, dotenv_path: str | Path = ".env") -> str | None:
    """The bot token from the environment, else from ``.env``; never from the config file."""
    environ = os.environ if environ is None else environ
    token = environ.get("DISCORD_TOKEN", "").strip()
    if token:
        return token
    if Path(dotenv_path).is_file():
        from dotenv import dotenv_values

        token = (dotenv_values(dotenv_path).get("DISCORD_TOKEN") or "").strip()
    return token or None


def redact(text: str, secret: str | None) -> str:
    """Remove a secret from text bound for a log or a user."""
    return text.replace(secret, "[REDACTED]") if secret else text
