"""``export-reviews --persona ID -o FILE``: approved/edited replies as training dialogues;
``--preferences``: every decision as preference data for ``trainer prefer``."""

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
        help="output JSONL (default: <data_dir>/<persona>-reviewed.jsonl, where train looks; with "
        "--preferences <data_dir>/<persona>-preferences.jsonl, where prefer looks)",
    )
    parser.add_argument(
        "--preferences",
        action="store_true",
        help="export every decision as preference data (approved, rejected, blocked, edit pairs) instead",
    )
    parser.add_argument(
        "--database", type=Path, metavar="FILE", help="the bot's database (default: paths.database)"
    )


def held_back_line(count: int) -> str:
    """Why approvals are missing from the file, and the two ways to let them in."""
    return (
        f"  left out {count} approved replies from Discord servers that do not allow training "
        "(their admins: /settings training on; or list the server in discord.allowed_servers)"
    )


def run(args: argparse.Namespace) -> int:
    import sqlite3

    from bot.config import ConfigError
    from bot.store.store import StoreError
    from personas.card import UnknownPersonaError, load_cards
    from trainer.commands.common import command_settings, no_database
    from trainer.export_reviews import export_reviews
    from trainer.preferences import export_preferences, preferences_file

    try:
        settings = command_settings(args, adapters=False)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        database = args.database or Path(settings.paths.database)
        if not database.is_file():
            raise no_database(database)
        listed = settings.discord.allowed_servers
        if args.preferences:
            out = args.out or preferences_file(settings.paths.data_dir, card.id)
            prefs = asyncio.run(export_preferences(database, card.id, out, listed_servers=listed))
        else:
            out = args.out or Path(settings.paths.data_dir) / f"{card.id}-reviewed.jsonl"
            result = asyncio.run(export_reviews(database, card.id, out, listed_servers=listed))
    except (ConfigError, UnknownPersonaError, StoreError, sqlite3.Error, OSError) as exc:
        print(f"export-reviews: {exc}", file=sys.stderr)
        return 1
    if args.preferences:
        c, h = prefs.train, prefs.heldout
        print(
            f"{card.id}: wrote {c.desirable} approved, {c.undesirable} rejected or blocked and {c.pairs} edit "
            f"pairs to {prefs.path} (exported at {prefs.exported_at})"
        )
        print(f"  held out for the promotion gate: {h.desirable + h.undesirable + h.pairs} rows")
        if c.skipped:
            print(f"  skipped {c.skipped} rows with an empty prompt or reply")
        return 0
    print(
        f"{card.id}: wrote {result.rows} reviewed dialogues to {result.path} (exported at {result.exported_at})"
    )
    if result.heldout:
        print(f"  held out for the promotion gate: {result.heldout} rows")
    if result.skipped:
        print(f"  skipped {result.skipped} rows without a question or a reply")
    if result.held_back:
        print(held_back_line(result.held_back))
    return 0
