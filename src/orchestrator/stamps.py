"""UTC timestamps as text, fast: the log and the journal stamp every clear.

``datetime.now(UTC).isoformat()`` and ``strftime`` cost more than the rest of
a log line; the formatted second is kept, and only the fraction is new.
"""

from __future__ import annotations

import functools
import time


@functools.lru_cache(maxsize=2)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def iso_utc(now: float, digits: int) -> str:
    """``now`` (seconds since the epoch) as ``YYYY-MM-DDTHH:MM:SS.fffZ`` with ``digits`` decimals.

    With 6 digits and a fraction of zero the decimals are left out, as
    ``datetime.isoformat`` does.
    """
    second = int(now)
    scale = 10**digits
    fraction = min(int((now - second) * scale), scale - 1)
    if digits == 6 and fraction == 0:
        return f"{_second(second)}Z"
    return f"{_second(second)}.{fraction:0{digits}d}Z"
