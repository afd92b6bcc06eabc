"""``eval --persona ID [--version V] [--against V2]``: perplexity, style, probes and ranking."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from trainer.config import add_override_arguments, overrides_from_args

# The ranking test set where `python -m trainer fetch open2ch-ranking` puts it.
DEFAULT_RANKING_GLOB = "{data_dir}/raw/open2ch-ranking/**/test.tsv"
_DATA_KEYS = ("data", "reviewed", "persona_speakers", "val_fraction", "max_length", "batch_size", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--persona", required=True, metavar="ID", help="persona id (a folder under personas/)"
    )
    parser.add_argument(
        "--version",
        metavar="V",
        help="version to evaluate, 'base' (no adapter) or an adapter folder (default: the current one)",
    )
    parser.add_argument(
        "--against", metavar="V", help="a second version (or 'base') to compare side by side (default: none)"
    )
    parser.add_argument(
        "--ranking",
        type=Path,
        metavar="FILE",
        help="open2ch ranking TSV (default: the test.tsv `fetch open2ch-ranking` downloaded, if any)",
    )
    parser.add_argument("--no-ranking", action="store_true", help="skip the ranking measure")
    parser.add_argument(
        "--limit", type=int, metavar="N", help="score only the first N ranking contexts (default: all)"
    )
    parser.add_argument(
        "--probes",
        type=Path,
        metavar="FILE",
        help="probe questions, one a line (default: personas/<id>/probes.txt)",
    )
    parser.add_argument("--no-probes", action="store_true", help="skip the probe answers and style scores")
    parser.add_argument(
        "--gen-seed", type=int, default=0, metavar="N", help="sampling seed for the probe answers"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument(
        "-o", "--out", type=Path, metavar="FILE", help="JSON report (default: runs/<persona>/eval-….json)"
    )
    parser.add_argument(
        "--train-config",
        type=Path,
        metavar="FILE",
        help="training TOML the validation split comes from (default: trainer/default_train.toml)",
    )
    add_override_arguments(parser, only=_DATA_KEYS)


def _ranking_path(args: argparse.Namespace, data_dir: str) -> Path | None:
    from trainer.commands.common import option_file

    if args.no_ranking:
        return None
    if args.ranking is not None:
        return option_file(args.ranking, "--ranking")
    found = sorted(glob.glob(DEFAULT_RANKING_GLOB.format(data_dir=data_dir), recursive=True))
    return Path(found[0]) if found else None


def _ranking_note(args: argparse.Namespace, ranking: Path | None) -> str | None:
    """Why the report has no ranking figures, when the operator did not ask for that."""
    if ranking is not None or args.no_ranking:
        return None
    return "ranking skipped: no ranking TSV (fetch open2ch-ranking, or pass --ranking FILE; --no-ranking: say so)"


def run(args: argparse.Namespace) -> int:
    from bot.config import ConfigError
    from bot.model.loading import ModelLoadError
    from personas.card import UnknownPersonaError, load_cards
    from trainer.commands.common import command_settings, option_file
    from trainer.config import TrainConfigError, load_train_config
    from trainer.dataset import DataError, expand_paths
    from trainer.evaluate import evaluate, format_table, persona_file, read_lines, resolve_target

    settings = None
    try:
        settings = command_settings(args)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        train_config = option_file(args.train_config, "--train-config")
        overrides = overrides_from_args(args)
        cfg = load_train_config(train_config, card.id, overrides)
        if "data" in overrides:  # named on the command line: a missing file is a mistake, not a skip
            expand_paths(cfg.data, data_dir=settings.paths.data_dir, persona=card.id)
        targets = [resolve_target(settings, card.id, args.version)]
        if args.against:
            targets.append(resolve_target(settings, card.id, args.against))
            if targets[0].label == targets[1].label:
                raise ValueError(f"--against names the same version as --version ({targets[0].label})")
        probes: list[str] = []
        if not args.no_probes:
            probes_path = option_file(args.probes, "--probes") or persona_file(card, "probes.txt")
            probes = read_lines(probes_path) if probes_path.is_file() else []
        ranking = _ranking_path(args, settings.paths.data_dir)
        report = evaluate(
            settings,
            card,
            cfg,
            targets,
            ranking_path=ranking,
            ranking_note=_ranking_note(args, ranking),
            ranking_limit=args.limit,
            probes=probes,
            seed=args.gen_seed,
            progress=not args.no_progress,
        )
    except ModelLoadError as exc:
        print(f"eval: {exc.for_settings(settings) if settings else exc}", file=sys.stderr)
        return 1
    except (
        ConfigError,
        TrainConfigError,
        DataError,
        UnknownPersonaError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"eval: {exc}", file=sys.stderr)
        return 1
    table = format_table(report)
    out = args.out
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        names = "-vs-".join(t.label for t in targets)
        out = Path(cfg.runs_dir) / card.id / f"eval-{names}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.as_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
    out.with_suffix(".txt").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"\nwrote {out.absolute()} and {out.absolute().with_suffix('.txt')}")
    return 0
