"""``prefer --persona ID --method kto|dpo``: refine the persona's adapter on moderators'
decisions (TRL's KTO or DPO, the current adapter frozen as the reference), publish it as a
candidate, and promote it if the promotion gate finds it not worse."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bot.ops.commandline import module_command
from trainer.commands.gating import add_gate_arguments, gate_and_report
from trainer.config import add_override_arguments, overrides_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--persona", required=True, metavar="ID", help="persona id (a folder under personas/)"
    )
    parser.add_argument(
        "--method",
        choices=("kto", "dpo"),
        default="kto",
        help="kto: approvals vs rejections, blocks and edits (unpaired); dpo: edit pairs only (default: kto)",
    )
    parser.add_argument(
        "--export",
        action="store_true",
        help="first export the persona's decisions to the `preferences` file (what the scheduler runs)",
    )
    parser.add_argument(
        "--from",
        dest="start",
        metavar="VERSION",
        help="the adapter version to start from and keep as the reference (default: CURRENT)",
    )
    parser.add_argument(
        "--version", metavar="NAME", help="name for the new version (default: the UTC start time)"
    )
    parser.add_argument(
        "--train-config",
        type=Path,
        metavar="FILE",
        help="training TOML (default: trainer/default_train.toml)",
    )
    add_gate_arguments(parser)
    add_override_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import sqlite3

    from bot.config import ConfigError
    from bot.model.loading import ModelLoadError
    from bot.store.store import StoreError
    from personas.card import CardError, UnknownPersonaError, load_cards
    from trainer.commands.common import command_settings, no_database, option_file
    from trainer.config import TrainConfigError, load_train_config
    from trainer.dataset import DataError
    from trainer.prefer import prefer
    from trainer.preferences import export_preferences

    try:
        settings = command_settings(args)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        cfg = load_train_config(
            option_file(args.train_config, "--train-config"), card.id, overrides_from_args(args)
        )
        data = Path(cfg.preferences.format(data_dir=settings.paths.data_dir, persona=card.id))
        if args.export:
            database = Path(settings.paths.database)
            if not database.is_file():
                raise no_database(database)
            exported = asyncio.run(
                export_preferences(database, card.id, data, listed_servers=settings.discord.allowed_servers)
            )
            c = exported.train
            print(
                f"{card.id}: exported {c.desirable} approved, {c.undesirable} rejected or blocked and "
                f"{c.pairs} edit pairs to {data}",
                flush=True,
            )
        result = prefer(
            settings, card, cfg, method=args.method, data_path=data, start=args.start, version=args.version
        )
    except (
        ConfigError,
        TrainConfigError,
        DataError,
        ModelLoadError,
        UnknownPersonaError,
        CardError,
        FileNotFoundError,
        FileExistsError,
        StoreError,
        sqlite3.Error,
        ValueError,
    ) as exc:
        print(f"prefer: {exc}", file=sys.stderr)
        return 1
    m = result.metrics
    loss = f"{m['train_loss']:.4f}" if m["train_loss"] is not None else "n/a"
    print(
        f"{result.persona}: {result.method} candidate {result.version} from {result.start_version} saved to "
        f"{result.path}"
    )
    print(f"  steps {m['steps']}, mean loss {loss}, {m['train_seconds']} s")
    if args.no_activate:
        print(
            f"  not judged (--no-activate): {module_command(f'trainer promote --persona {card.id} --version {result.version}')}"
        )
        return 0
    return gate_and_report(settings, card, cfg, result.version, args, "prefer")
