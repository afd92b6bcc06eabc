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
    parser.add_argument("--persona", required=True)
    parser.add_argument(
        "--version", help="version to evaluate (default: the current one; 'base': no adapter)"
    )
    parser.add_argument("--against", help="a second version (or 'base') to compare side by side")
    parser.add_argument(
        "--ranking",
        type=Path,
        help="open2ch ranking TSV (default: the test.tsv `fetch open2ch-ranking` downloaded, if any)",
    )
    parser.add_argument("--no-ranking", action="store_true")
    parser.add_argument("--limit", type=int, help="score only the first N ranking contexts")
    parser.add_argument(
        "--probes", type=Path, help="probe questions, one a line (default: personas/<id>/probes.txt)"
    )
    parser.add_argument("--no-probes", action="store_true")
    parser.add_argument("--gen-seed", type=int, default=0, help="sampling seed for the probe answers")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")
    parser.add_argument("-o", "--out", type=Path, help="JSON report (default: runs/<persona>/eval-….json)")
    parser.add_argument("--train-config", type=Path, help="where the validation split comes from")
    add_override_arguments(parser, only=_DATA_KEYS)


def _ranking_path(args: argparse.Namespace, data_dir: str) -> Path | None:
    if args.no_ranking:
        return None
    if args.ranking is not None:
        if not args.ranking.is_file():
            raise FileNotFoundError(f"ranking file {args.ranking} does not exist")
        return args.ranking
    found = sorted(glob.glob(DEFAULT_RANKING_GLOB.format(data_dir=data_dir), recursive=True))
    return Path(found[0]) if found else None


def run(args: argparse.Namespace) -> int:
    from bot.config import ConfigError, load_settings
    from bot.model.loading import ModelLoadError
    from personas.card import UnknownPersonaError, load_cards
    from trainer.config import TrainConfigError, load_train_config
    from trainer.dataset import DataError
    from trainer.evaluate import evaluate, format_table, persona_file, read_lines, resolve_target

    try:
        settings = load_settings(args.config)
        cards = load_cards(Path(settings.paths.personas_dir) if settings.paths.personas_dir else None)
        card = cards.get(args.persona)
        cfg = load_train_config(args.train_config, card.id, overrides_from_args(args))
        targets = [resolve_target(settings, card.id, args.version)]
        if args.against:
            targets.append(resolve_target(settings, card.id, args.against))
            if targets[0].label == targets[1].label:
                raise ValueError(f"--against names the same version as --version ({targets[0].label})")
        probes: list[str] = []
        if not args.no_probes:
            probes_path = args.probes or persona_file(card, "probes.txt")
            probes = read_lines(probes_path) if probes_path.is_file() or args.probes else []
        report = evaluate(
            settings,
            card,
            cfg,
            targets,
            ranking_path=_ranking_path(args, settings.paths.data_dir),
            ranking_limit=args.limit,
            probes=probes,
            seed=args.gen_seed,
            progress=not args.no_progress,
        )
    except (
        ConfigError,
        TrainConfigError,
        DataError,
        ModelLoadError,
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
    print(f"\nwrote {out} and {out.with_suffix('.txt')}")
    return 0
