"""Crontab lines with crontab's meaning: checked against crontab(5)'s grammar here, evaluated by
``cronsim`` (which mimics Debian's vixie cron), and driven by APScheduler through
:class:`CrontabTrigger`. It lives in ``bot`` because both sides use it: the bot runs the
retraining schedule, and ``python -m trainer schedule`` checks and runs the same line.

Why not APScheduler's own ``CronTrigger``: it counts weekdays from Monday (``1`` is Tuesday) and
always ANDs day-of-month with day-of-week, while crontab fires when *either* matches once both
are restricted (``0 4 1 * 1`` is "the 1st of each month and every Monday").

What crontab(5) accepts, and so this module: five fields ``minute hour day-of-month month
day-of-week``; each a comma list of ``*``, ``*/step``, ``N``, ``N-M`` or ``N-M/step``; month and
weekday values may be three-letter English names in any case, mixed with numbers; weekday 0 and 7
are both Sunday; and the @-macros ``@yearly @annually @monthly @weekly @daily @midnight
@hourly``. ``@reboot`` is refused (see :data:`MACROS`). Extensions other crons have (``L``,
``W``, ``#``, ``?``, a seconds field, ``N/step``) are refused with the field named.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from apscheduler.triggers.base import BaseTrigger
from cronsim import CronSim, CronSimError

from bot.ops.commandline import module_command

# crontab(5)'s macros, as the five-field lines cronie substitutes for them.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] stands for low + i
    hint: str = ""

    def value(self, text: str) -> int | None:
        if text.isdigit():
            return int(text)
        if text.lower() in self.names:
            return self.names.index(text.lower()) + self.low
        return None


FIELDS = (
    _Field("minute", 0, 59, hint="0-59"),
    _Field("hour", 0, 23, hint="0-23"),
    _Field("day-of-month", 1, 31, hint="1-31"),
    _Field("month", 1, 12, MONTHS, hint="1-12 or jan-dec"),
    _Field("day-of-week", 0, 7, WEEKDAYS, hint="0-7 (0 and 7 are Sunday) or sun-sat"),
)

# One list element: "*", "*/step", "V", "V-V" or "V-V/step" (V a number or a name).
_ELEMENT = re.compile(
    r"^(?:\*(?:/(?P<star_step>\d+))?|(?P<lo>[0-9A-Za-z]+)(?:-(?P<hi>[0-9A-Za-z]+)(?:/(?P<step>\d+))?)?)$"
)


class CronLineError(ValueError):
    """A line crontab would not accept; the message is one line naming the field and the fix."""


def _check_element(line: str, field: _Field, element: str) -> None:
    def bad(why: str) -> CronLineError:
        return CronLineError(f"cron line {line!r}: {field.name} {element!r} {why}")

    if "/" in element and not element.startswith("*") and "-" not in element.split("/", 1)[0]:
        start = element.split("/", 1)[0]
        raise bad(f"steps only follow '*' or a range in crontab; write {start}-{field.high}/… instead")
    match = _ELEMENT.match(element)
    if match is None:
        raise bad(f"is not crontab syntax (use *, */step, N, N-M or N-M/step; {field.name} is {field.hint})")
    step = match["star_step"] or match["step"]
    if step is not None and int(step) == 0:
        raise bad("has a step of 0")
    values = []
    for text in (match["lo"], match["hi"]):
        if text is None:
            continue
        value = field.value(text)
        if value is None:
            raise bad(
                f"has {text!r}, which is not a number{' or a name' if field.names else ''}: {field.name} is {field.hint}"
            )
        if not field.low <= value <= field.high:
            raise bad(f"is out of range: {field.name} is {field.hint}")
        values.append(value)
    if len(values) == 2 and values[0] > values[1]:
        raise bad("is a range running backwards (crontab ranges go low-high)")


def normalize(line: str) -> str:
    """The five-field form of a crontab line: macros replaced, whitespace collapsed.

    Raises :class:`CronLineError` (a ``ValueError``) for anything crontab would not accept, and
    for day/month combinations that can never occur (``0 4 31 2 *``), which crontab accepts but
    never runs.
    """
    text = " ".join(line.split())
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise CronLineError(
                "cron line '@reboot' is not a schedule here: the check runs while the bot runs; "
                f"to check at start-up, run `{module_command('trainer schedule --once')}` from your service manager"
            )
        if text.lower() not in MACROS:
            raise CronLineError(f"cron line {line!r}: unknown macro; crontab has {', '.join(MACROS)}")
        return MACROS[text.lower()]
    fields = text.split(" ") if text else []
    if len(fields) != 5:
        raise CronLineError(
            f"cron line {line!r} has {len(fields)} field(s); crontab needs 5: minute hour day-of-month month day-of-week"
        )
    for field, value in zip(FIELDS, fields, strict=True):
        for element in value.split(","):
            _check_element(line, field, element)
    try:
        CronSim(text, datetime(2000, 1, 1))
    except CronSimError:  # the grammar is checked above: only an impossible date is left
        raise CronLineError(
            f"cron line {line!r}: day-of-month {fields[2]!r} never occurs in month {fields[3]!r}, "
            "so this line would never run"
        ) from None
    return text


def next_times(line: str, start: datetime, count: int) -> list[datetime]:
    """The next ``count`` times ``line`` fires strictly after ``start``, in ``start``'s timezone.

    ``start`` should be timezone-aware (naive times are taken as wall-clock times without DST).
    Daylight-saving gaps and repeats are handled as Debian's cron does. Raises
    :class:`CronLineError` for a line crontab would not accept.
    """
    it = CronSim(normalize(line), start)
    return [next(it) for _ in range(count)]


class CrontabTrigger(BaseTrigger):
    """An APScheduler 3 trigger that fires when crontab would fire ``line`` in ``timezone``.

    Raises :class:`CronLineError` at construction for a line crontab would not accept, so a bad
    line fails when the scheduler is set up, not at 4 a.m.
    """

    __slots__ = ("_five", "line", "timezone")

    def __init__(self, line: str, timezone: tzinfo | None = None) -> None:
        from apscheduler.util import astimezone
        from tzlocal import get_localzone

        self.line = line
        self._five = normalize(line)
        self.timezone = astimezone(timezone) if timezone is not None else get_localzone()

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        # cronsim yields times strictly after its start: after the previous run, or from just
        # before ``now`` so a run due exactly now is not skipped.
        start = previous_fire_time if previous_fire_time is not None else now - timedelta(microseconds=1)
        return next(iter(CronSim(self._five, start.astimezone(self.timezone))))

    def __getstate__(self) -> dict[str, object]:
        return {"version": 1, "line": self.line, "timezone": self.timezone}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.line = str(state["line"])
        self._five = normalize(self.line)
        self.timezone = state["timezone"]  # type: ignore[assignment]

    def __str__(self) -> str:
        return f"crontab[{self.line}]"

    def __repr__(self) -> str:
        return f"<CrontabTrigger (line={self.line!r}, timezone={self.timezone!s})>"


def cron_trigger(expr: str, timezone: tzinfo | None = None) -> CrontabTrigger:
    """An APScheduler trigger firing when crontab would fire ``expr`` (local time by default).

    Raises :class:`CronLineError` (a ``ValueError``) for a line crontab rejects.
    """
    return CrontabTrigger(expr, timezone)
