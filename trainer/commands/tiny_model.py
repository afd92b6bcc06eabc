"""``tiny-model OUT_DIR``: a random-weight model with a real architecture and tokenizer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", choices=("gpt-neox", "llama"), default="gpt-neox")
    parser.add_argument("--seed", type=int, default=0)


def _python() -> str:
    """The interpreter as the user can type it here: ``.venv/bin/python`` in a checkout, else ``python``."""
    here = Path.cwd()
    executable = Path(sys.executable)
    return str(executable.relative_to(here)) if executable.is_relative_to(here) else "python"


def run(args: argparse.Namespace) -> int:
    from trainer.tiny import build_tiny_model

    out = build_tiny_model(args.out_dir, args.arch, args.seed)
    print(f"wrote a tiny {args.arch} model to {out}")
    print(f"try it: OSHABERI_MODEL={out} {_python()} -m bot chat")
    return 0
