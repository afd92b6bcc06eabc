"""``[schedule] cron`` means what crontab(5) means (bot/ops/cron.py), and ``python -m trainer
schedule --next N`` shows it. Expected run times are derived from crontab(5)'s wording for each
field (a predicate over calendar days or clock times), never read back from the code under test."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.ops.cron import MACROS, CronLineError, CrontabTrigger, next_times, normalize

START = datetime(2025, 1, 1, tzinfo=UTC)  # a Wednesday
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)  # date.weekday()


def fire_days(line: str, days: int = 366) -> list[date]:
    """The calendar days in [START, START + days) on which ``line`` fires (once a day lines)."""
    end = START + timedelta(days=days)
    out = []
    for when in next_times(line, START, 400):
        if when >= end:
            break
        out.append(when.date())
    return out


def days_where(predicate, days: int = 366) -> list[date]:
    return [d for i in range(days) if predicate(d := START.date() + timedelta(days=i))]


def test_the_issue_example_fires_on_the_first_and_on_every_monday() -> None:
    # crontab(5): when both day fields are restricted, a day matching EITHER runs the command.
    times = next_times("0 4 1 * 1", START, 120)
    assert all((t.hour, t.minute, t.second) == (4, 0, 0) for t in times)
    assert [t.date() for t in times if t.year == 2025] == days_where(
        lambda d: d.day == 1 or d.weekday() == MON, days=365
    )
    assert [t.date() for t in times[:4]] == [
        date(2025, 1, 1),
        date(2025, 1, 6),
        date(2025, 1, 13),
        date(2025, 1, 20),
    ]


@pytest.mark.parametrize(
    ("line", "predicate"),
    [
        # only day-of-month restricted: every 13th
        ("0 4 13 * *", lambda d: d.day == 13),
        # only day-of-week restricted: every Friday
        ("0 4 * * 5", lambda d: d.weekday() == FRI),
        # both restricted, with ranges and names: the first week of a month OR any Friday
        ("0 4 1-7 * fri", lambda d: d.day <= 7 or d.weekday() == FRI),
        # both restricted by lists, months restrict both halves
        ("0 4 1,15 jan,Jul sun", lambda d: d.month in (1, 7) and (d.day in (1, 15) or d.weekday() == SUN)),
        # a field starting with '*' is "unrestricted" to cron, even with a step: AND, not OR
        ("0 4 */2 * 1", lambda d: d.day % 2 == 1 and d.weekday() == MON),
        ("0 4 13 * */1", lambda d: d.day == 13),
        ("0 4 1 * *", lambda d: d.day == 1),
    ],
)
def test_day_of_month_and_day_of_week_combine_as_in_crontab(line, predicate) -> None:
    assert fire_days(line) == days_where(predicate)


@pytest.mark.parametrize(
    ("field", "weekdays"),
    [
        ("0", {SUN}),
        ("7", {SUN}),
        ("1", {MON}),
        ("1-5", {MON, TUE, WED, THU, FRI}),
        ("5-7", {FRI, SAT, SUN}),
        ("*/2", {SUN, TUE, THU, SAT}),  # 0-7 stepped by 2
        ("*/3", {SUN, WED, SAT}),
        ("1-5/2", {MON, WED, FRI}),
        ("sat,sun", {SAT, SUN}),
        ("SUN", {SUN}),
        ("Mon,3,FRI", {MON, WED, FRI}),  # numbers and names mixed in one list
        ("mon-3", {MON, TUE, WED}),  # a range from a name to a number
        ("mon-wed,6", {MON, TUE, WED, SAT}),
        ("0,7", {SUN}),
        ("*", set(range(7))),
    ],
)
def test_weekdays_mean_what_crontab_means(field, weekdays) -> None:
    assert {d.weekday() for d in fire_days(f"0 4 * * {field}", 28)} == weekdays


@pytest.mark.parametrize(
    ("field", "months"),
    [
        ("1", {1}),
        ("jan", {1}),
        ("JAN-Mar", {1, 2, 3}),
        ("feb,6,Dec", {2, 6, 12}),
        ("*/4", {1, 5, 9}),
        ("2-12/5", {2, 7, 12}),
    ],
)
def test_months_numbers_names_and_steps(field, months) -> None:
    assert {d.month for d in fire_days(f"0 0 1 {field} *")} == months


@pytest.mark.parametrize(
    ("minute", "hour", "clock"),
    [
        ("*/15", "3", {(3, m) for m in (0, 15, 30, 45)}),
        ("5-20/5", "3", {(3, m) for m in (5, 10, 15, 20)}),
        ("0,30", "9-11", {(h, m) for h in (9, 10, 11) for m in (0, 30)}),
        ("0", "9-17/4", {(9, 0), (13, 0), (17, 0)}),
        ("59", "*/12", {(0, 59), (12, 59)}),
        ("7", "23", {(23, 7)}),
    ],
)
def test_minutes_and_hours_lists_ranges_steps(minute, hour, clock) -> None:
    times = next_times(f"{minute} {hour} * * *", START, 48)
    assert {(t.hour, t.minute) for t in times} == clock
    assert all(b > a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("macro", sorted(MACROS))
def test_macros_are_their_five_field_lines(macro) -> None:
    expected = {
        "@yearly": lambda t: (t.month, t.day, t.hour, t.minute) == (1, 1, 0, 0),
        "@annually": lambda t: (t.month, t.day, t.hour, t.minute) == (1, 1, 0, 0),
        "@monthly": lambda t: (t.day, t.hour, t.minute) == (1, 0, 0),
        "@weekly": lambda t: (t.weekday(), t.hour, t.minute) == (SUN, 0, 0),
        "@daily": lambda t: (t.hour, t.minute) == (0, 0),
        "@midnight": lambda t: (t.hour, t.minute) == (0, 0),
        "@hourly": lambda t: t.minute == 0,
    }[macro]
    times = next_times(macro.upper() if macro == "@daily" else macro, START, 3)
    assert all(expected(t) for t in times)
    assert len(set(times)) == 3


def test_extra_whitespace_and_case_are_accepted() -> None:
    assert normalize("  0\t4  *  *  MON ") == "0 4 * * MON"
    assert next_times("0 4 * * MON", START, 5) == next_times("0 4 * * mon", START, 5)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day-of-month"),
        ("* * 32 * *", "day-of-month"),
        ("* * * 0 *", "month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day-of-week"),
        ("mon * * * *", "minute"),  # names only where crontab has them
        ("* jan * * *", "hour"),
        ("* * * * sunday", "day-of-week"),
        ("* * * janvier *", "month"),
        ("*/0 * * * *", "minute"),
        ("5/10 * * * *", "minute"),  # a step needs '*' or a range before it
        ("* 10-2 * * *", "hour"),  # ranges go low-high
        ("* * * * fri-mon", "day-of-week"),
        ("0 4 L * *", "day-of-month"),  # Quartz/other crons' extensions, not crontab's
        ("0 4 * * 5L", "day-of-week"),
        ("0 4 * * 1#2", "day-of-week"),
        ("0 4 15W * *", "day-of-month"),
        ("0 4 ? * 1", "day-of-month"),
        ("0 4 * * 1,", "day-of-week"),
        ("0 4 -1 * *", "day-of-month"),
        ("0 4 * * *-5", "day-of-week"),
        ("0 4 31 2 *", "day-of-month"),  # never happens
        ("0 4 30,31 feb *", "day-of-month"),
    ],
)
def test_lines_crontab_rejects_get_one_line_naming_the_field(line, field) -> None:
    with pytest.raises(CronLineError) as caught:
        normalize(line)
    message = str(caught.value)
    assert f" {field} " in f" {message} " and repr(line) in message and "\n" not in message


@pytest.mark.parametrize("line", ["", "0 4 * *", "0 0 4 * * *", "0 4 * * * 2025", "@fortnightly", "@reboot"])
def test_wrong_shapes_and_unknown_macros_say_what_crontab_has(line) -> None:
    with pytest.raises(CronLineError) as caught:
        normalize(line)
    message = str(caught.value)
    assert "\n" not in message
    assert ("5" in message and "minute hour day-of-month month day-of-week" in message) or "@" in message
    if line == "@reboot":
        assert "--once" in message  # what to do instead


def test_31st_runs_only_in_long_months() -> None:
    assert fire_days("0 4 31 * *") == days_where(lambda d: d.day == 31)


def test_daylight_saving_runs_once_a_day_like_debian_cron() -> None:
    # 2025-03-09 02:30 does not exist in New York and 2025-11-02 01:30 happens twice: a daily
    # job still runs exactly once on each of those days.
    tz = ZoneInfo("America/New_York")
    for line, start in [
        ("30 2 * * *", datetime(2025, 3, 7, tzinfo=tz)),
        ("30 1 * * *", datetime(2025, 10, 31, tzinfo=tz)),
    ]:
        times = next_times(line, start, 5)
        assert [t.date() for t in times] == [start.date() + timedelta(days=i) for i in range(5)], times


def test_trigger_fires_now_when_due_and_after_the_previous_run() -> None:
    trigger = CrontabTrigger("0 4 * * 1", UTC)
    monday_4 = datetime(2025, 1, 6, 4, tzinfo=UTC)
    assert trigger.get_next_fire_time(None, monday_4) == monday_4
    assert trigger.get_next_fire_time(monday_4, monday_4) == monday_4 + timedelta(days=7)
    assert trigger.get_next_fire_time(None, START) == monday_4
    # the scheduler's clock may be in another zone: the line is read in the trigger's
    tokyo = CrontabTrigger("0 4 * * *", ZoneInfo("Asia/Tokyo"))
    assert tokyo.get_next_fire_time(None, START) == datetime(2025, 1, 1, 19, tzinfo=UTC)
    with pytest.raises(CronLineError):
        CrontabTrigger("0 4 * * 1#2")


def test_the_scheduler_runs_the_job_on_the_crontab_line() -> None:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    async def main() -> datetime:
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.start()
        try:
            job = scheduler.add_job(lambda: None, CrontabTrigger("0 4 1 * 1", UTC))
            return job.next_run_time
        finally:
            scheduler.shutdown(wait=False)

    when = asyncio.run(main())
    assert when.hour == 4 and when.minute == 0 and (when.day == 1 or when.weekday() == MON)


def write_config(tmp_path, cron: str) -> str:
    path = tmp_path / "oshaberi.toml"
    path.write_text(
        f'[paths]\ndatabase = "{tmp_path / "db.sqlite3"}"\n[schedule]\ncron = "{cron}"\n', "utf-8"
    )
    return str(path)


@pytest.fixture
def tokyo_local_time(monkeypatch):
    """The machine's local zone is Asia/Tokyo (tzlocal caches the zone, so it is re-read)."""
    import tzlocal

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    tzlocal.reload_localzone()
    yield
    monkeypatch.undo()
    tzlocal.reload_localzone()


def test_cli_next_prints_run_times_and_timezone_and_starts_nothing(
    tmp_path, capsys, tokyo_local_time
) -> None:
    from trainer.__main__ import main

    config = write_config(tmp_path, "0 4 1 * 1")
    assert main(["--config", config, "schedule", "--next", "5", "--from", "2025-01-01T00:00"]) == 0
    out = capsys.readouterr().out
    assert "Asia/Tokyo" in out and "0 4 1 * 1" in out
    lines = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert lines == [
        "Wed 2025-01-01 04:00 JST (+0900)",
        "Mon 2025-01-06 04:00 JST (+0900)",
        "Mon 2025-01-13 04:00 JST (+0900)",
        "Mon 2025-01-20 04:00 JST (+0900)",
        "Mon 2025-01-27 04:00 JST (+0900)",
    ]
    assert not (tmp_path / "db.sqlite3").exists()  # nothing was checked, nothing started


def test_cli_next_with_a_macro_and_a_cron_override(tmp_path, capsys) -> None:
    from trainer.__main__ import main

    config = write_config(tmp_path, "0 4 * * *")
    assert (
        main(
            [
                "--config",
                config,
                "schedule",
                "--cron",
                "@monthly",
                "--next",
                "2",
                "--from",
                "2025-01-15T00:00+00:00",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "0 0 1 * *" in out
    assert len([line for line in out.splitlines() if line.startswith("  ")]) == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cron", "0 4 * * 8", "--next", "3"], "day-of-week"),
        (["--cron", "0 4 * *", "--next", "3"], "needs 5"),
        (["--next", "0"], "--next 0"),
        (["--once", "--from", "2025-01-01T00:00"], "--from only goes with --next"),
    ],
)
def test_cli_bad_input_gets_one_line_and_exit_1(tmp_path, capsys, args, needle) -> None:
    from trainer.__main__ import main

    config = write_config(tmp_path, "0 4 * * *")
    assert main(["--config", config, "schedule", *args]) == 1
    captured = capsys.readouterr()
    assert needle in captured.err and captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_cli_bad_cron_in_the_config_fails_before_anything_runs(tmp_path, capsys) -> None:
    from trainer.__main__ import main

    config = write_config(tmp_path, "0 4 1#2 * *")
    assert main(["--config", config, "schedule", "--once"]) == 1
    assert "day-of-month" in capsys.readouterr().err
    assert not (tmp_path / "db.sqlite3").exists()


def test_the_bot_refuses_a_bad_cron_line_before_loading_anything(capsys) -> None:
    from bot.config import ScheduleSettings, Settings
    from bot.discord.app import run

    settings = Settings(schedule=ScheduleSettings(enabled=True, cron="0 4 * * 1#2"))
    assert run(settings, "not-a-real-token") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: [schedule]") and "day-of-week" in err and err.count("\n") == 1
