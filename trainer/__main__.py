"""Build the personas' LoRA adapters: get data, prepare it, train, evaluate, and keep training
on the replies moderators approved.

A first run, in order: fetch (or write dialogues yourself), prepare, train, eval; then augment,
export-reviews, prefer, promote, canary, versions and rollback keep an adapter growing from the
bot's reviewed replies, and schedule runs that loop on a cron. tiny-model makes a small model for
trying it all offline. docs/trainer.md and docs/learning-loop.md have every command in depth.
"""

from __future__ import annotations

# First, so that outside the venv the user gets one line instead of an import traceback.
from bot.ops.preflight import require_dependencies

require_dependencies("python -m trainer")

import argparse
import importlib
import logging
import sys

from bot.ops.commandline import HelpFormatter, module_command
from bot.ops.quiet import quiet_libraries
from bot.ops.startup import load_env_file, too_late
from bot.ops.startup import log as startup_log

# command name -> (module, one-line help), in the order an operator uses them. Each module
# (trainer/commands/<name>.py) has add_arguments(parser) and run(args) -> int, and is imported
# only when --help is asked or its command runs, so `prepare` never pays for importing torch.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("trainer.commands.fetch", "download a public dataset (prints its license)"),
    "prepare": ("trainer.commands.prepare", "convert raw sources into one normalized dialogue JSONL"),
    "train": ("trainer.commands.train", "train a persona's LoRA adapter; saves a new adapter version"),
    "eval": ("trainer.commands.eval", "evaluate adapter versions: perplexity, style, probes, ranking"),
    "augment": ("trainer.commands.augment", "current adapter answers a question set; answers go to review"),
    "export-reviews": (
        "trainer.commands.export_reviews",
        "export approved/edited replies as training JSONL (--preferences: every decision)",
    ),
    "prefer": (
        "trainer.commands.prefer",
        "refine an adapter on moderators' decisions (KTO or DPO); the gate decides on promotion",
    ),
    "promote": ("trainer.commands.promote", "judge a candidate with the promotion gate and make it current"),
    "canary": ("trainer.commands.canary", "serve a candidate to a share of requests (start/stop/history)"),
    "versions": (
        "trainer.commands.versions",
        "a persona's adapter versions with approval rates (Wilson intervals); canary vs CURRENT",
    ),
    "rollback": ("trainer.commands.rollback", "make an earlier adapter version current again"),
    "schedule": ("trainer.commands.schedule", "retrain personas with enough new approved replies (cron)"),
    "tiny-model": (
        "trainer.commands.tiny_model",
        "build a tiny random-weight model folder for offline trials",
    ),
}


def common_options() -> argparse.ArgumentParser:
    """--config and -v, accepted before or after the command (SUPPRESS: a later parser never
    overwrites an earlier value with its default)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="the bot's settings TOML (default: oshaberi.toml, or $OSHABERI_CONFIG)",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logs and library notices",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    program = module_command("trainer")
    parser = argparse.ArgumentParser(
        prog=program, description=__doc__, parents=[common], formatter_class=HelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(
            name, help=help_text, description=help_text, parents=[common], formatter_class=HelpFormatter
        )
        sp.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    from_env_file = load_env_file()  # .env's variables, as Docker Compose passes them
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    args.verbose = getattr(args, "verbose", False)
    args.env_file_variables = from_env_file
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    quiet_libraries(args.verbose)
    for warning in too_late(from_env_file):
        startup_log.warning("%s", warning)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
