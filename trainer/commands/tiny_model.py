"""``tiny-model OUT_DIR``: a random-weight model with a real architecture and tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the model folder to write")
    parser.add_argument(
        "--arch",
        choices=("gpt-neox", "llama"),
        default="gpt-neox",
        help="the model family (and its tokenizer)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="seed for the random weights")


def run(args: argparse.Namespace) -> int:
    from bot.ops.commandline import module_command
    from trainer.tiny import build_tiny_model

    out = build_tiny_model(args.out_dir, args.arch, args.seed)
    print(f"wrote a tiny {args.arch} model to {Path(out).absolute()}")
    print(f"try it: OSHABERI_MODEL={out} {module_command('bot chat')}")
    return 0
