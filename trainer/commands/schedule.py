"""``schedule [--once]``: retrain personas with enough new approved replies, on the config's cron."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="run the check now and exit")
    parser.add_argument("--train-config", type=Path, help="training TOML passed to each train run")
    parser.add_argument(
        "--min-new-approved", type=int, help="override schedule.min_new_approved for this process"
    )


async def _report_new(persona: str, version: str) -> None:
    # Standalone there is no engine to reload; the bot picks CURRENT up on /reload or restart.
    print(f"{persona}: new adapter version {version} is current (reload the bot to use it)", flush=True)


async def _report_failure(persona: str, message: str) -> None:
    print(f"{persona}: {message}", file=sys.stderr, flush=True)


async def _forever(retrainer) -> None:
    retrainer.start()
    print(f"next check at {retrainer.next_run_time()}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        retrainer.shutdown()


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from bot.config import ConfigError, load_settings
    from bot.cron import cron_trigger
    from bot.retrain_schedule import RetrainingSchedule
    from trainer.config import load_train_config

    try:
        settings = load_settings(args.config)
        if args.min_new_approved is not None:
            settings = replace(
                settings, schedule=replace(settings.schedule, min_new_approved=args.min_new_approved)
            )
        cron_trigger(settings.schedule.cron)  # a bad cron line fails here, not at 4 a.m.
    except (ConfigError, ValueError) as exc:
        print(f"schedule: {exc}", file=sys.stderr)
        return 1
    retrainer = RetrainingSchedule(
        settings,
        _report_new,
        _report_failure,
        train_config=args.train_config,
        default_runs_dir=lambda persona: Path(load_train_config(args.train_config, persona).runs_dir),
    )
    if args.once:
        outcomes = asyncio.run(retrainer.run_once())
        for o in outcomes:
            print(
                f"{o.persona}: {o.status} ({o.new_approved} new approved){' ' + o.version if o.version else ''}"
            )
        return 1 if any(o.status == "failed" for o in outcomes) else 0
    if not settings.schedule.enabled:
        print("note: schedule.enabled is false, so the bot does not run this job; running it here anyway")
    asyncio.run(_forever(retrainer))
    return 0
