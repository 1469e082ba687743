"""The clinic's time zone: where stored wall-clock times live.

Times are stored as the clinic's local wall-clock time, without an offset (a
visit at 20:50 stays on its day). An imported date-time that carries an ISO 8601
offset (`2024-03-05T14:30:00+01:00`, `...Z`) is converted to this zone first.

The zone is `$OUTCOMES_TIMEZONE` (an IANA name such as `Europe/Berlin`), else the
machine's own zone (`$TZ`, then /etc/localtime), else UTC.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

TIMEZONE_ENV = "OUTCOMES_TIMEZONE"


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
