"""``python -m trainer <command>``: the operator's CLI. Each command lives in its own module
(``trainer/commands/<name>.py``) exposing ``add_arguments(parser)`` and ``run(args) -> int``."""

from __future__ import annotations

# First, so that outside the venv the user gets one line instead of an import traceback.
from bot.ops.preflight import require_dependencies

require_dependencies("python -m trainer")

import argparse
import importlib
import logging
import sys

from bot.ops.quiet import quiet_libraries

# command name -> (module, one-line help). Modules are imported only when their command runs,
# so `prepare` never pays for importing torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "tiny-model": (
        "trainer.commands.tiny_model",
        "build a tiny random-weight model folder for offline trials",
    ),
    "train": ("trainer.commands.train", "train a persona's LoRA adapter; saves a new adapter version"),
    "eval": ("trainer.commands.eval", "evaluate adapter versions: perplexity, style, probes, ranking"),
    "augment": ("trainer.commands.augment", "current adapter answers a question set; answers go to review"),
    "prefer": (
        "trainer.commands.prefer",
        "refine an adapter on moderators' decisions (KTO or DPO); the gate decides on promotion",
    ),
    "promote": ("trainer.commands.promote", "judge a candidate with the promotion gate and make it current"),
    "rollback": ("trainer.commands.rollback", "make an earlier adapter version current again"),
    "canary": ("trainer.commands.canary", "serve a candidate to a share of requests (start/stop/history)"),
    "export-reviews": (
        "trainer.commands.export_reviews",
        "export approved/edited replies as training JSONL (--preferences: every decision)",
    ),
    "schedule": ("trainer.commands.schedule", "retrain personas with enough new approved replies (cron)"),
    "versions": (
        "trainer.commands.versions",
        "a persona's adapter versions with approval rates (Wilson intervals); canary vs CURRENT",
    ),
    "prepare": ("trainer.commands.prepare", "convert raw sources into one normalized dialogue JSONL"),
    "fetch": ("trainer.commands.fetch", "download a public dataset (prints its license)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("--config", help="bot config TOML (default: oshaberi.toml or $OSHABERI_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    quiet_libraries(args.verbose)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
