"""What several trainer commands share: the bot's settings, loaded and checked the way
``python -m bot`` loads them, and files named by an option checked before any work starts."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bot.config import Settings, load_settings
from bot.ops.startup import check_paths, describe_sources

log = logging.getLogger("trainer")


def command_settings(args: argparse.Namespace, adapters: bool = True) -> Settings:
    """The settings for ``args.config``; logs where they came from and what the paths lack.

    ``adapters``: whether a missing adapters folder deserves a warning (eval and augment use the
    trained adapters; train creates the folder). Raises ConfigError as load_settings does.
    """
    settings = load_settings(args.config)
    log.info("%s", describe_sources(settings, getattr(args, "env_file_variables", [])))
    for warning in check_paths(settings, adapters=adapters):
        log.warning("%s", warning)
    return settings


def option_file(path: Path | None, option: str) -> Path | None:
    """``path`` when it is None or an existing file; else FileNotFoundError naming the option."""
    if path is not None and not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{option} {path}: {path.absolute()} {what}")
    return path


DATABASE_CREATORS = "the Discord bot creates it when it starts; trainer augment does too"


def no_database(database: Path) -> FileNotFoundError:
    """The error for a command that needs the bot's database before there is one."""
    return FileNotFoundError(
        f"database {database} does not exist ({DATABASE_CREATORS}; the console chat logs nothing)"
    )
