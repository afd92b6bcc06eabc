"""What ``train``, ``prefer`` and ``promote`` share: the gate's flags and its report.

Not a command itself; each of those commands ends by calling :func:`gate_and_report`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.config import Settings
    from personas.card import PersonaCard
    from trainer.config import TrainConfig


def add_gate_arguments(parser: argparse.ArgumentParser, *, skip: bool = True) -> None:
    """``--force`` and ``--canary SHARE`` (and, for commands that train, ``--no-activate``)."""
    if skip:
        parser.add_argument(
            "--no-activate",
            action="store_true",
            help="publish the candidate but do not judge or promote it (promote later with `trainer promote`)",
        )
    parser.add_argument(
        "--force",
        action="store_true",
        help="promote even if the promotion gate refuses; the metadata and the history say so",
    )
    parser.add_argument(
        "--canary",
        type=float,
        metavar="SHARE",
        default=0.0,
        help="instead of promoting, serve the candidate to this share of requests (0-1) beside CURRENT",
    )


def gate_and_report(
    settings: Settings, card: PersonaCard, cfg: TrainConfig, version: str, args: argparse.Namespace, prog: str
) -> int:
    """Run the gate on ``version``, print its report and what moved; 0 promoted (or canary),
    1 refused or failed (the serving version untouched)."""
    import sqlite3

    from bot.model.adapters import current_version
    from bot.model.loading import ModelLoadError
    from bot.model.rollout import RolloutError, cli_actor
    from bot.store.store import StoreError
    from personas.card import CardError
    from trainer.dataset import DataError
    from trainer.promotion import gate_and_promote

    if current_version(settings.paths.adapters_dir, card.id) == version:
        print(f"{prog}: {version} already is {card.id}'s current version; nothing to judge or move")
        return 0
    if not 0.0 <= args.canary < 1.0:
        print(f"{prog}: --canary {args.canary}: give a share between 0 and 1, such as 0.1", file=sys.stderr)
        return 1
    try:
        result = gate_and_promote(
            settings, card, cfg, version, by=cli_actor(), force=args.force, canary_share=args.canary
        )
    except (
        RolloutError,
        CardError,
        DataError,
        ModelLoadError,
        StoreError,
        sqlite3.Error,
        OSError,
        ValueError,
    ) as exc:
        print(f"{prog}: {version} was not promoted: {exc}", file=sys.stderr)
        return 1
    print(result.report.format())
    print(result.summary())
    return 0 if result.move is not None else 1
