"""Crontab lines as APScheduler triggers, with crontab's meaning.

It lives in ``bot`` (below ``trainer``) because both sides use it: the bot runs the retraining
schedule, and ``python -m trainer schedule`` checks and runs the same line standalone.
"""

from __future__ import annotations

_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")  # crontab: 0 and 7 are Sunday


def _crontab_weekdays(field: str) -> str:
    """Crontab's numeric weekdays as names. APScheduler 3 reads numbers Monday-based (0 = Monday),
    so ``from_crontab("0 4 * * 1")`` would fire on Tuesdays; names mean the same to both."""
    if field == "*" or any(c.isalpha() for c in field):
        return field
    days: list[int] = []
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if span == "*":
            lo, hi = 0, 6
        elif "-" in span:
            lo, hi = (int(x) for x in span.split("-", 1))
        else:
            lo = int(span)
            hi = 6 if step_text else lo
        if not (0 <= lo <= 7 and 0 <= hi <= 7 and lo <= hi and step >= 1):
            raise ValueError(f"bad weekday field {field!r} in the cron line")
        days.extend(d % 7 for d in range(lo, hi + 1, step))
    return ",".join(_CRON_DAYS[d] for d in sorted(set(days)))


def cron_trigger(expr: str):
    """An APScheduler trigger for a standard five-field crontab line (local time).

    Raises ValueError naming what is wrong with the line.
    """
    from apscheduler.triggers.cron import CronTrigger

    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron line {expr!r} needs 5 fields: minute hour day month weekday")
    minute, hour, day, month, weekday = fields
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=_crontab_weekdays(weekday))
