"""UTC timestamps as text, fast: the log and the journal stamp every clear.

``datetime.now(UTC).isoformat()`` and ``strftime`` cost more than the rest of
a log line; the formatted second is kept, and only the fraction is new.
"""

from __future__ import annotations

import time

#: The last second formatted, and its text: consecutive stamps nearly always share it.
_last_second = -1
_last_text = ""


def _second(second: int) -> str:
    """Format ``second`` and keep it; iso_utc calls this only for a new second."""
    global _last_second, _last_text
    _last_second, _last_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return _last_text


def iso_utc(now: float, digits: int) -> str:
    """``now`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.fffZ`` with ``digits`` decimals.

    With 6 digits and a fraction of zero the decimals are left out, as
    ``datetime.isoformat`` does.
    """
    second = int(now)
    text = _last_text if second == _last_second else _second(second)
    if digits == 6:  # the log's, twice per clear
        # At most 999999: the largest fraction below 1 times a million rounds below it.
        micros = int((now - second) * 1_000_000)
        # %-formatting: a quarter cheaper than an f-string with a format spec.
        return "%s.%06dZ" % (text, micros) if micros else text + "Z"  # noqa: UP031
    scale = 10**digits
    fraction = min(int((now - second) * scale), scale - 1)
    return f"{text}.{fraction:0{digits}d}Z"
