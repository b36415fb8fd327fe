"""backoff_delay: full-jitter exponential backoff with a Retry-After floor."""

from __future__ import annotations

import math

import pytest

from orchestrator.run.backoff import RETRY_AFTER_CEILING_S, backoff_delay


def one() -> float:
    return 1.0


def zero() -> float:
    return 0.0


def test_first_attempt_waits_at_most_base() -> None:
    assert backoff_delay(1, base_s=1.0, rand=one) == 1.0


def test_ceiling_doubles_with_each_attempt() -> None:
    delays = [backoff_delay(n, base_s=0.5, cap_s=1000.0, rand=one) for n in range(1, 6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_ceiling_is_capped() -> None:
    assert backoff_delay(10, base_s=1.0, cap_s=60.0, rand=one) == 60.0


def test_huge_attempt_number_stays_at_cap() -> None:
    assert backoff_delay(100_000, base_s=1.0, cap_s=60.0, rand=one) == 60.0


def test_jitter_scales_the_ceiling() -> None:
    assert backoff_delay(3, base_s=1.0, rand=lambda: 0.25) == 1.0


def test_zero_jitter_gives_no_wait() -> None:
    assert backoff_delay(5, rand=zero) == 0.0


def test_out_of_range_random_values_are_clamped() -> None:
    assert backoff_delay(1, rand=lambda: -3.0) == 0.0
    assert backoff_delay(1, rand=lambda: 7.0) == 1.0


def test_default_random_stays_within_ceiling() -> None:
    assert all(0.0 <= backoff_delay(3) <= 4.0 for _ in range(200))


def test_retry_after_is_a_floor() -> None:
    assert backoff_delay(1, retry_after_s=30.0, rand=zero) == 30.0


def test_retry_after_below_the_jittered_delay_changes_nothing() -> None:
    assert backoff_delay(4, retry_after_s=2.0, rand=one) == 8.0


def test_retry_after_may_exceed_the_cap() -> None:
    assert backoff_delay(1, cap_s=60.0, retry_after_s=120.0, rand=one) == 120.0


def test_hostile_retry_after_is_clamped() -> None:
    assert backoff_delay(1, retry_after_s=1e12, rand=zero) == RETRY_AFTER_CEILING_S


@pytest.mark.parametrize("bad", [-5.0, math.nan])
def test_invalid_retry_after_is_ignored(bad: float) -> None:
    assert backoff_delay(2, retry_after_s=bad, rand=one) == 2.0


def test_attempt_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(0)


def test_negative_base_is_refused() -> None:
    with pytest.raises(ValueError, match="base_s"):
        backoff_delay(1, base_s=-1.0)
