"""``versions --persona ID``: every adapter version on disk (CURRENT and CANARY marked) with its
moderators' approval rate, decision count and 95% Wilson interval, and whether a canary is
clearly worse or better than CURRENT (see ``bot/learning/version_stats.py``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--persona", required=True, metavar="ID", help="persona id (a folder under personas/)"
    )
    parser.add_argument(
        "--database", type=Path, metavar="FILE", help="the bot's database (default: paths.database)"
    )


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from bot.config import ConfigError
    from bot.learning.version_stats import version_report
    from bot.store.store import StoreError
    from personas.card import UnknownPersonaError, load_cards
    from trainer.commands.common import DATABASE_CREATORS, command_settings

    try:
        settings = command_settings(args)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        database = args.database or Path(settings.paths.database)
        counts = asyncio.run(_counts(database, card.id)) if database.is_file() else []
    except (ConfigError, UnknownPersonaError, StoreError, sqlite3.Error, OSError) as exc:
        print(f"versions: {exc}", file=sys.stderr)
        return 1
    print("\n".join(version_report(settings.paths.adapters_dir, card.id, counts)))
    if not database.is_file():
        print(f"(no database at {database} yet: no replies counted; {DATABASE_CREATORS})")
    return 0


async def _counts(database: Path, persona_id: str):
    from bot.store.store import Store

    store = await Store.open(database)
    try:
        return await store.decisions_by_version(persona_id)
    finally:
        await store.close()
