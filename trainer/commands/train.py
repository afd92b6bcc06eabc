"""``train --persona ID``: train a new adapter version, publish it as a candidate, and make it the
persona's current one if the promotion gate finds it not worse than the serving version."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot.ops.commandline import module_command
from trainer.commands.gating import add_gate_arguments, gate_and_report
from trainer.config import add_override_arguments, overrides_from_args

if TYPE_CHECKING:
    from bot.config import Settings
    from trainer.config import TrainConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--persona", required=True, metavar="ID", help="persona id (a folder under personas/)"
    )
    parser.add_argument(
        "--train-config",
        type=Path,
        metavar="FILE",
        help="training TOML (default: trainer/default_train.toml)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run: 'last', its version name, or its runs/ folder (default: a new run)",
    )
    parser.add_argument(
        "--version", metavar="NAME", help="name for the new version (default: the UTC start time)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument(
        "--export-reviews",
        action="store_true",
        help="first export the persona's approved/edited replies to the reviewed file (what the scheduler runs)",
    )
    add_gate_arguments(parser)
    add_override_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from bot.config import ConfigError
    from bot.model.loading import ModelLoadError
    from bot.store.store import StoreError
    from personas.card import UnknownPersonaError, load_cards
    from trainer.checkpoints import checkpoint_config, find_resumable
    from trainer.commands.common import command_settings, option_file
    from trainer.config import TrainConfigError, load_train_config
    from trainer.dataset import DataError
    from trainer.train import TrainingInterrupted, train

    settings = None
    try:
        settings = command_settings(args, adapters=False)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        overrides = overrides_from_args(args)
        cfg = load_train_config(option_file(args.train_config, "--train-config"), card.id, overrides)
        resume = None
        if args.resume:
            resume = find_resumable(cfg, card.id, args.resume)
            cfg = checkpoint_config(resume, overrides)
        elif args.export_reviews:
            cfg = _export_reviews(settings, card.id, cfg)
        result = train(
            settings,
            card,
            cfg,
            resume=resume,
            version=args.version,
            activate=False,  # a candidate: the gate below decides
            progress=not args.no_progress,
        )
    except TrainingInterrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    except ModelLoadError as exc:
        print(f"train: {exc.for_settings(settings) if settings else exc}", file=sys.stderr)
        return 1
    except (
        ConfigError,
        TrainConfigError,
        DataError,
        UnknownPersonaError,
        FileNotFoundError,
        FileExistsError,
        StoreError,
        ValueError,
    ) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 1
    m = result.metrics
    val = (
        f"{m['val_loss']:.4f} (perplexity {m['val_perplexity']:.2f})" if m["val_loss"] is not None else "n/a"
    )
    print(f"{result.persona}: adapter version {result.version} saved to {result.path}")
    print(f"  steps {m['steps']}, validation loss {val}, {m['train_seconds']} s")
    if args.no_activate:
        print(
            f"  a candidate, not judged (--no-activate): {module_command(f'trainer promote --persona {card.id} --version {result.version}')}"
        )
        return 0
    return gate_and_report(settings, card, cfg, result.version, args, "train")


def _export_reviews(settings: Settings, persona_id: str, cfg: TrainConfig) -> TrainConfig:
    """Export the approved replies to the config's reviewed file; the config, now naming it."""
    import asyncio
    from dataclasses import replace

    from trainer.export_reviews import export_reviews

    pattern = cfg.reviewed or "{data_dir}/{persona}-reviewed.jsonl"
    reviewed = Path(pattern.format(data_dir=settings.paths.data_dir, persona=persona_id))
    from trainer.commands.export_reviews import held_back_line

    exported = asyncio.run(
        export_reviews(
            settings.paths.database, persona_id, reviewed, listed_servers=settings.discord.allowed_servers
        )
    )
    print(f"{persona_id}: exported {exported.rows} reviewed dialogues to {reviewed}", flush=True)
    if exported.held_back:
        print(held_back_line(exported.held_back), flush=True)
    return replace(cfg, reviewed=str(reviewed))
