"""``promote --persona ID [--version V]``: judge a candidate with the promotion gate and make it
CURRENT (or a canary with ``--canary SHARE``); ``--force`` promotes past a refusal."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.commands.gating import add_gate_arguments, gate_and_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--persona", required=True, metavar="ID", help="persona id (a folder under personas/)"
    )
    parser.add_argument(
        "--version",
        metavar="NAME",
        help="the candidate (default: the persona's canary, else its newest version)",
    )
    parser.add_argument(
        "--train-config",
        type=Path,
        metavar="FILE",
        help="training TOML with the gate's tolerances (default: trainer/default_train.toml)",
    )
    add_gate_arguments(parser, skip=False)


def run(args: argparse.Namespace) -> int:
    from bot.config import ConfigError
    from bot.model.adapters import list_versions, read_canary
    from personas.card import UnknownPersonaError, load_cards
    from trainer.commands.common import command_settings, option_file
    from trainer.config import TrainConfigError, load_train_config

    try:
        settings = command_settings(args)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        cfg = load_train_config(option_file(args.train_config, "--train-config"), card.id)
    except (ConfigError, TrainConfigError, UnknownPersonaError) as exc:
        print(f"promote: {exc}", file=sys.stderr)
        return 1
    adapters = settings.paths.adapters_dir
    version = args.version
    if version is None:
        canary = read_canary(adapters, card.id)
        versions = list_versions(adapters, card.id)
        version = canary.version if canary else (versions[-1] if versions else None)
    if version is None:
        print(f"promote: {card.id} has no adapter version yet (train one first)", file=sys.stderr)
        return 1
    return gate_and_report(settings, card, cfg, version, args, "promote")
