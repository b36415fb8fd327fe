"""How long a lane waits before retrying a clear: full-jitter exponential backoff,
and the longer waits while wolkvox is under maintenance.

The functions are pure: the random source is a parameter, so tests pin it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

#: The longest wait a ``Retry-After`` header can impose. A hostile or broken
#: header ("Retry-After: 999999999") must not park a lane for the whole run.
RETRY_AFTER_CEILING_S = 3600.0

# 2.0 ** 1000 is still a finite float; beyond it the ceiling is the cap anyway,
# and bounding the exponent keeps a huge attempt number from raising OverflowError.
_MAX_EXPONENT = 1000

#: Less of a maintenance budget than this is not worth another call.
_NO_TIME_S = 0.001


def backoff_delay(
    attempt: int,
    *,
    base_s: float = 1.0,
    cap_s: float = 60.0,
    retry_after_s: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after attempt number ``attempt`` (1-based) failed.

    The wait is ``rand() * min(cap_s, base_s * 2 ** (attempt - 1))`` ("full
    jitter", so lanes that failed together do not retry together), but never
    less than ``retry_after_s`` when the server sent one, itself clamped to
    :data:`RETRY_AFTER_CEILING_S`. Invalid ``retry_after_s`` values (negative,
    NaN) are ignored.

    Raises :class:`ValueError` for ``attempt < 1`` or a negative ``base_s``/``cap_s``.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if base_s < 0 or cap_s < 0:
        raise ValueError("base_s and cap_s must be >= 0")
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    # A misbehaving random source must not produce a negative or inflated wait.
    delay = min(max(rand(), 0.0), 1.0) * ceiling
    if retry_after_s is not None and retry_after_s >= 0 and not math.isnan(retry_after_s):
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CEILING_S))
    return delay


def maintenance_delay(
    attempt: int, retry_after_s: float | None = None, *, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after the ``attempt``-th "under maintenance" answer in a row.

    About 1, 2, 4, then 5 minutes (or the ``retry_after_s`` asked for, if longer). Most
    of each step is kept, unlike full jitter: a maintenance window lasts minutes, and an
    early retry would only spend a call. The fifth of the step left to chance keeps
    lanes that met the window together apart.
    """
    return backoff_delay(
        attempt,
        base_s=60.0,
        cap_s=300.0,
        retry_after_s=retry_after_s,
        rand=lambda: 0.8 + 0.2 * rand(),
    )


@dataclass(slots=True)
class MaintenanceWindow:
    """A lane's unbroken series of "under maintenance" answers, and what it may still wait.

    ``budget_s`` (the plan's ``maintenance_wait_s``) counts from the series' first
    answer; any other answer ends the series (:meth:`close`).
    """

    budget_s: float
    #: ``(answers so far, retry_after_s) -> seconds``, as :func:`maintenance_delay`.
    backoff: Callable[[int, float | None], float] = maintenance_delay
    since: float | None = None
    answers: int = 0

    def next_wait(self, now: float, retry_after_s: float | None) -> float | None:
        """Seconds to wait before the next call, cut to fit the budget; ``None`` once spent."""
        if self.since is None:
            self.since = now
        self.answers += 1
        left = self.budget_s - (now - self.since)
        if left < _NO_TIME_S:
            return None
        return min(self.backoff(self.answers, retry_after_s), left)

    def close(self) -> None:
        """An answer other than "under maintenance" came: the next one starts a new series."""
        self.since, self.answers = None, 0
