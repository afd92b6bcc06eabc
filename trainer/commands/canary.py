"""``canary start --persona ID --version V --share S`` / ``canary stop --persona ID``: serve a
candidate to a share of a persona's requests beside CURRENT, or stop; ``canary history`` lists
the persona's pointer moves."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=("start", "stop", "history"), help="start a canary, stop it, or list the moves"
    )
    parser.add_argument(
        "--persona", required=True, metavar="ID", help="persona id (a folder under personas/)"
    )
    parser.add_argument(
        "--version", metavar="NAME", help="start: the candidate to serve (default: none; start needs it)"
    )
    parser.add_argument(
        "--share", type=float, default=0.1, metavar="X", help="start: share of requests, 0-1 (default: 0.1)"
    )
    parser.add_argument("--reason", default="", metavar="TEXT", help="a note for the history (default: none)")


def run(args: argparse.Namespace) -> int:
    from bot.config import ConfigError
    from bot.model.rollout import (
        NothingToMove,
        RolloutError,
        cli_actor,
        read_history,
        start_canary,
        stop_canary,
    )
    from personas.card import UnknownPersonaError, load_cards
    from trainer.commands.common import command_settings

    try:
        settings = command_settings(args)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        adapters = settings.paths.adapters_dir
        if args.action == "history":
            for m in read_history(adapters, card.id):
                note = f" ({m.reason})" if m.reason else ""
                print(f"{m.at}  {m.by:16}  {m.describe()}{note}")
            return 0
        if args.action == "start":
            if not args.version:
                raise RolloutError("canary start needs --version (the candidate to serve)")
            move = start_canary(
                adapters, card.id, args.version, args.share, by=cli_actor(), reason=args.reason
            )
        else:
            move = stop_canary(adapters, card.id, by=cli_actor(), reason=args.reason)
    except NothingToMove as exc:
        print(f"canary: {exc}; nothing moved")
        return 0
    except (ConfigError, UnknownPersonaError, RolloutError) as exc:
        print(f"canary: {exc}; nothing moved", file=sys.stderr)
        return 1
    print(move.describe())
    return 0
