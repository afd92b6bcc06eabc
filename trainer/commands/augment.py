"""``augment --persona ID``: the current adapter answers a question set; answers go to review."""

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
        "--questions",
        type=Path,
        metavar="FILE",
        help="one question a line (default: personas/<id>/questions.txt)",
    )
    parser.add_argument(
        "--limit", type=int, metavar="N", help="ask only the first N questions (default: all)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="sampling seed (question i uses seed + i)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the answers, queue nothing")


def run(args: argparse.Namespace) -> int:
    from bot.config import ConfigError
    from bot.model.loading import ModelLoadError
    from bot.serving.generation import AdapterError
    from personas.card import UnknownPersonaError, load_cards
    from trainer.augment import augment
    from trainer.commands.common import command_settings, option_file
    from trainer.evaluate import persona_file, read_lines

    settings = None
    try:
        settings = command_settings(args)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        questions_file = option_file(args.questions, "--questions") or persona_file(card, "questions.txt")
        questions = read_lines(questions_file)
        if args.limit:
            questions = questions[: args.limit]
        if not questions:
            raise ValueError("the question list is empty")
        result = asyncio.run(augment(settings, card, questions, seed=args.seed, dry_run=args.dry_run))
    except ModelLoadError as exc:
        print(f"augment: {exc.for_settings(settings) if settings else exc}", file=sys.stderr)
        return 1
    except (ConfigError, AdapterError, UnknownPersonaError, OSError, ValueError) as exc:
        print(f"augment: {exc}", file=sys.stderr)
        return 1
    version = result.adapter_version or "no adapter (prompt-only)"
    if args.dry_run:
        for question, answer in result.answers:
            print(f"Q: {question}\nA: {answer}\n")
        print(f"{len(result.answers)} answers from {card.id} {version}; nothing queued (--dry-run)")
        return 0
    print(
        f"{card.id} {version}: queued {len(result.queued)} answers for review"
        + (f" ({result.empty} empty answers skipped)" if result.empty else "")
    )
    print("moderators approve, edit or reject them in the review channel; then run export-reviews")
    return 0
