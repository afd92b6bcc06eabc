"""``rollback --persona ID [--to VERSION]``: make an earlier version CURRENT at once (no gate:
it goes back to what already served); a running bot picks it up within seconds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--persona", required=True, metavar="ID", help="persona id (a folder under personas/)"
    )
    parser.add_argument(
        "--to",
        metavar="VERSION",
        help="the version to serve (default: the newest earlier version that served before)",
    )
    parser.add_argument("--reason", default="", metavar="TEXT", help="a note for the history (default: none)")


def run(args: argparse.Namespace) -> int:
    from bot.config import ConfigError
    from bot.model.rollout import NothingToMove, RolloutError, cli_actor, rollback
    from personas.card import UnknownPersonaError, load_cards
    from trainer.commands.common import command_settings

    try:
        settings = command_settings(args)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        move = rollback(settings.paths.adapters_dir, card.id, args.to, by=cli_actor(), reason=args.reason)
    except NothingToMove as exc:
        print(f"rollback: {exc}; nothing moved")
        return 0
    except (ConfigError, UnknownPersonaError, RolloutError) as exc:
        print(f"rollback: {exc}; nothing moved", file=sys.stderr)
        return 1
    print(move.describe())
    return 0
