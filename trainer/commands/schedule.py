"""``schedule [--once | --next N]``: retrain personas with enough new approved replies, on the
config's cron line; ``--next N`` only prints when that line would fire."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import datetime
from pathlib import Path

from tzlocal import get_localzone

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--once", action="store_true", help="run the check now and exit")
    what.add_argument(
        "--next",
        type=int,
        metavar="N",
        help="print the next N times the cron line fires, and the timezone, then exit (default: run the schedule)",
    )
    parser.add_argument(
        "--cron",
        metavar="LINE",
        help="a crontab line: minute hour day month weekday (default: schedule.cron)",
    )
    parser.add_argument(
        "--from",
        dest="start",
        type=_aware_datetime,
        metavar="TIME",
        help="with --next: count from this ISO time, e.g. 2025-01-01T00:00 (default: now)",
    )
    parser.add_argument(
        "--train-config",
        type=Path,
        metavar="FILE",
        help="training TOML passed to each train run (default: trainer/default_train.toml)",
    )
    parser.add_argument(
        "--min-new-approved",
        type=int,
        metavar="N",
        help="retrain after this many new approved replies (default: schedule.min_new_approved)",
    )


def _aware_datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO time such as 2025-01-01T04:00") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=get_localzone())


def print_next(line: str, count: int, start: datetime | None = None) -> None:
    """Print what ``line`` means and the next ``count`` times it fires after ``start`` (default:
    now), in the local timezone the scheduler uses. Raises CronLineError for a bad line."""
    from cronsim import CronSim

    from bot.ops.cron import next_times, normalize

    zone = get_localzone()
    start = (start or datetime.now(zone)).astimezone(zone)
    five = normalize(line)
    meaning = CronSim(five, start).explain()
    shown = line if five == " ".join(line.split()) else f"{line} = {five}"
    print(f"cron {shown!r}: {meaning}")
    print(
        f"timezone {zone} (the machine's local time; set TZ to change it); after {start:%Y-%m-%d %H:%M %Z}:"
    )
    for when in next_times(five, start, count):
        print(f"  {when:%a %Y-%m-%d %H:%M %Z (%z)}")


async def _report_new(persona: str, version: str) -> None:
    # Standalone there is no engine to reload; a running bot sees the pointer move by itself
    # (engine.adapter_poll_s).
    print(f"{persona}: {version} passed the promotion gate and now serves", flush=True)


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

    from bot.config import ConfigError
    from bot.learning.retrain_schedule import RetrainingSchedule
    from bot.ops.cron import cron_trigger
    from trainer.commands.common import command_settings, option_file
    from trainer.config import load_train_config

    try:
        settings = command_settings(args, adapters=False)
        option_file(args.train_config, "--train-config")
        if args.min_new_approved is not None:
            settings = replace(
                settings, schedule=replace(settings.schedule, min_new_approved=args.min_new_approved)
            )
        if args.cron is not None:
            settings = replace(settings, schedule=replace(settings.schedule, cron=args.cron))
        cron_trigger(settings.schedule.cron)  # a bad cron line fails here, not at 4 a.m.
        if args.start is not None and args.next is None:
            raise ValueError("--from only goes with --next N (it says where to count run times from)")
        if args.next is not None:
            if args.next < 1:
                raise ValueError(f"--next {args.next}: give how many run times to print (1 or more)")
            print_next(settings.schedule.cron, args.next, args.start)
            return 0
    except (ConfigError, ValueError, FileNotFoundError) as exc:
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
