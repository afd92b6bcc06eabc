"""``export-reviews --persona ID -o FILE``: approved/edited replies as training dialogues."""

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
        "-o",
        "--out",
        type=Path,
        metavar="FILE",
        help="output JSONL (default: <data_dir>/<persona>-reviewed.jsonl, where train looks)",
    )
    parser.add_argument(
        "--database", type=Path, metavar="FILE", help="the bot's database (default: paths.database)"
    )


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from bot.config import ConfigError
    from bot.store.store import StoreError
    from personas.card import UnknownPersonaError, load_cards
    from trainer.commands.common import command_settings
    from trainer.export_reviews import export_reviews

    try:
        settings = command_settings(args, adapters=False)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        database = args.database or Path(settings.paths.database)
        if not database.is_file():
            raise FileNotFoundError(f"database {database} does not exist (the bot creates it on first run)")
        out = args.out or Path(settings.paths.data_dir) / f"{card.id}-reviewed.jsonl"
        result = asyncio.run(export_reviews(database, card.id, out))
    except (ConfigError, UnknownPersonaError, StoreError, sqlite3.Error, OSError) as exc:
        print(f"export-reviews: {exc}", file=sys.stderr)
        return 1
    print(
        f"{card.id}: wrote {result.rows} reviewed dialogues to {result.path} (exported at {result.exported_at})"
    )
    if result.skipped:
        print(f"  skipped {result.skipped} rows without a question or a reply")
    return 0
