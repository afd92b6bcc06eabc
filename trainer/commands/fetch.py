"""``fetch NAME [--dest data/raw] [--url URL]``: download a public dataset and print its license."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.fetch import REGISTRY, Dataset, FetchError, fetch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        nargs="?",
        choices=sorted(REGISTRY),
        metavar="NAME",
        help=f"the dataset: {', '.join(REGISTRY)} (default: none, list them)",
    )
    parser.add_argument(
        "--dest", type=Path, default=Path("data/raw"), help="download folder (default: data/raw)"
    )
    parser.add_argument(
        "--url",
        help="download from here instead, a mirror or a file:// path (default: the dataset's own URL)",
    )
    parser.add_argument("--accept-license", action="store_true", help="agree to a restricted license (nucc)")
    parser.add_argument("--force", action="store_true", help="download again even if the file is there")
    parser.add_argument("--list", action="store_true", help="list the datasets and their licenses")


def _describe(dataset: Dataset) -> str:
    return f"{dataset.name}: {dataset.url}\n  license: {dataset.license}\n  note: {dataset.note}"


def run(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        print("\n".join(_describe(d) for d in REGISTRY.values()))
        return 0 if args.list else 2
    dataset = REGISTRY[args.name]
    print(f"license: {dataset.license}")
    if dataset.requires_acceptance and not args.accept_license:
        print(
            f"fetch: {dataset.name} is restricted: {dataset.note}. "
            "Re-run with --accept-license if you agree to these terms.",
            file=sys.stderr,
        )
        return 2
    try:
        result = fetch(dataset, args.dest, url=args.url, force=args.force)
    except FetchError as exc:
        print(f"fetch: {exc}", file=sys.stderr)
        return 1
    if result.size:
        print(f"downloaded {result.size:,} bytes to {result.path.absolute()}")
    else:
        print(f"{result.path.absolute()} is already there (use --force to download it again)")
    if result.extracted:
        print(f"extracted {len(result.extracted)} files into {result.path.parent.absolute()}")
    print(f"note: {dataset.note}")
    return 0
