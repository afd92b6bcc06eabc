"""What the entry points do before the settings are used: read ``.env``, check the paths the
settings name, and say in one line where the settings came from.

Docker Compose hands every line of ``.env`` to the container (``env_file``); run on the host, the
entry points read the same file the same way, so a setting in ``.env`` means the same in both
(a variable already in the environment wins, as with Compose's ``environment:``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bot.config import ConfigError, Settings, origin

# The entry points log the start-up line and the path warnings here.
log = logging.getLogger(__name__)
# Read by the C library or the interpreter before any Python runs: set from .env they come too
# late (Compose sets them before the container's process starts, so there they work).
PROCESS_START_ONLY = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHON")

# The working directory's .env, as Compose reads the repository root's ../.env; tests point it
# elsewhere so that a developer's own .env never leaks into them.
ENV_FILE = Path(".env")


def load_env_file(path: Path | None = None) -> list[str]:
    """Put every variable of ``path`` (default ``ENV_FILE``) that the environment lacks into it.

    Returns the names it set, sorted (never the values: the token is among them). A missing file
    sets nothing. Parsing is python-dotenv's, which reads the ``KEY=value`` lines Compose reads.
    """
    from dotenv import dotenv_values

    path = ENV_FILE if path is None else path
    if not path.is_file():
        return []
    added = []
    for name, value in dotenv_values(path).items():
        if value is not None and name not in os.environ:
            os.environ[name] = value
            added.append(name)
    return sorted(added)


def too_late(from_env_file: list[str]) -> list[str]:
    """A warning for each variable ``.env`` set that this process can no longer act on."""
    return [
        f"{name} in {ENV_FILE.absolute()} has no effect here: it is read when a process starts, "
        "before .env is; export it in the shell (Docker Compose passes it in time)"
        for name in from_env_file
        if name.startswith(PROCESS_START_ONLY)
    ]


def describe_sources(settings: Settings, from_env_file: list[str]) -> str:
    """One line: the config file (or none), what ``.env`` set, and the base of relative paths."""
    parts = [f"config file {settings.source}" if settings.source else "no config file"]
    if from_env_file:
        parts.append(f"{ENV_FILE.absolute()} ({', '.join(from_env_file)})")
    return (
        f"settings: {', '.join(parts)} and the environment; relative paths are relative to the "
        f"working directory {Path.cwd()}"
    )


def check_paths(settings: Settings, adapters: bool = True) -> list[str]:
    """Raise ConfigError for a file or folder a setting names that is not there; return warnings.

    A ``paths.personas_dir`` or ``chat.blocked_words_file`` that is set but missing is an error
    (nothing sensible can be served without it). A missing ``paths.adapters_dir`` is a warning
    when ``adapters`` (the bot, eval, augment: every persona then answers prompt-only); ``train``
    creates the folder and passes False.
    """
    paths, chat = settings.paths, settings.chat
    if paths.personas_dir and not Path(paths.personas_dir).is_dir():
        raise ConfigError(
            f"paths.personas_dir ({origin(settings, 'paths.personas_dir')}): the folder "
            f"{paths.personas_dir} does not exist; it should hold one <id>/persona.toml per persona "
            "(leave it empty for the shipped personas/)"
        )
    if chat.blocked_words_file and not Path(chat.blocked_words_file).is_file():
        raise ConfigError(
            f"chat.blocked_words_file ({origin(settings, 'chat.blocked_words_file')}): "
            f"{chat.blocked_words_file} does not exist (leave it empty for the shipped list)"
        )
    folder = Path(paths.adapters_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(
            f"paths.adapters_dir ({origin(settings, 'paths.adapters_dir')}): {folder} is a file, not a folder"
        )
    if adapters and not folder.exists():
        return [
            f"paths.adapters_dir ({origin(settings, 'paths.adapters_dir')}): {folder} does not exist, "
            "so no persona has a trained adapter and each answers prompt-only (the trainer's "
            "`train` writes adapters there; relative paths follow the working directory: start "
            "from the checkout, or set an absolute path)"
        ]
    return []
