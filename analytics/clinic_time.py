"""The clinic's time zone: where stored wall-clock times live.

Times are stored as the clinic's local wall-clock time, without an offset (a
visit at 20:50 stays on its day). An imported date-time that carries an ISO 8601
offset (`2024-03-05T14:30:00+01:00`, `...Z`) is converted to this zone first.

The zone is `$OUTCOMES_TIMEZONE` (an IANA name such as `Europe/Berlin`), else the
machine's own zone (`$TZ`, then /etc/localtime), else UTC.

"Today" is the clinic's calendar date (`today()`), and every "days since", "days ago",
"overdue by" and "due in" a page shows is `days_since`: whole calendar days between the
stored time's date and today, so a score at 09:00 today is 0 days old (never -1, as
today's midnight minus a timestamp would say), and one at 23:50 yesterday is 1 day old.
"""
from __future__ import annotations

import os
from datetime import date, datetime, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

TIMEZONE_ENV = "OUTCOMES_TIMEZONE"
TODAY_ENV = "OUTCOMES_TODAY"  # YYYY-MM-DD: a fixed "today" for a demo or test clinic


class TimeZoneSettingError(ValueError):
    """OUTCOMES_TIMEZONE names no time zone."""


def zone() -> tzinfo:
    """The clinic's time zone (raises TimeZoneSettingError for an unknown OUTCOMES_TIMEZONE)."""
    name = os.environ.get(TIMEZONE_ENV, "").strip()
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise TimeZoneSettingError(
                f"{TIMEZONE_ENV}={name!r} is not a time zone name; use an IANA name such as "
                "Europe/Berlin or America/New_York, or unset it to use the machine's zone") from None
    return machine_zone()


def machine_zone() -> tzinfo:
    tz = os.environ.get("TZ", "").strip().lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    localtime = Path("/etc/localtime")
    try:
        with localtime.open("rb") as handle:
            return ZoneInfo.from_file(handle, key=_zone_key(localtime))
    except (OSError, ValueError):
        return timezone.utc


def _zone_key(localtime: Path) -> str | None:
    target = os.path.realpath(localtime)
    marker = "zoneinfo" + os.sep
    return target.split(marker, 1)[1] if marker in target else None


def now() -> datetime:
    """The clinic's current wall-clock time (naive, like stored times)."""
    return datetime.now(zone()).replace(tzinfo=None)


def today() -> date:
    """The clinic's calendar date (or $OUTCOMES_TODAY, so a demo or test clinic has a fixed today)."""
    fixed = os.environ.get(TODAY_ENV, "").strip()
    if fixed:
        try:
            return date.fromisoformat(fixed)
        except ValueError:
            raise TimeZoneSettingError(f"{TODAY_ENV}={fixed!r} is not a date YYYY-MM-DD; unset it to use today") from None
    return now().date()


def days_since(when, today: date):
    """Whole calendar days from `when` to `today`: 0 for any time today, 1 for yesterday, negative
    for a date after today. `when` is a stored time (clinic wall clock, naive), a date, or a Series
    of them (then a Series of whole days, missing where `when` is missing); None gives None.

    Stored times are the clinic's local wall-clock times, so their calendar day is their date:
    only `today` needs the clinic's zone (`today()`), never the machine's."""
    day = pd.Timestamp(today)
    if isinstance(when, pd.Series):
        return (day - pd.to_datetime(when).dt.normalize()).dt.days.astype("Int64")
    if when is None or pd.isna(when):
        return None
    return int((day - pd.Timestamp(when).normalize()).days)


def days_text(days: int | None) -> str:
    """`days_since`'s number in words: "today", "yesterday", "3 days ago", "tomorrow", "in 3 days"."""
    if days is None or pd.isna(days):
        return "never"
    days = int(days)
    if days == 0:
        return "today"
    if days == 1:
        return "yesterday"
    if days == -1:
        return "tomorrow"
    return f"{days} days ago" if days > 0 else f"in {-days} days"
