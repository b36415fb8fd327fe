"""Timestamps as text: the same as the standard library's formatting, only cheaper."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from orchestrator.output.stamps import iso_utc

MOMENTS = [0.0, 1_764_324_000.0, 1_764_324_000.5, 1_764_324_000.999999, 1_764_324_059.123456]


@pytest.mark.parametrize("now", MOMENTS)
def test_six_digits_read_as_structlogs_iso_timestamps(now: float) -> None:
    expected = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
    assert iso_utc(now, 6) == expected


@pytest.mark.parametrize("now", MOMENTS)
def test_three_digits_read_as_sqlites_strftime(now: float) -> None:
    moment = datetime.fromtimestamp(now, UTC)
    expected = f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"
    assert iso_utc(now, 3) == expected


def test_a_new_second_is_formatted_anew() -> None:
    assert iso_utc(1_764_324_000.25, 3) == "2025-11-28T10:00:00.250Z"
    assert iso_utc(1_764_324_001.25, 3) == "2025-11-28T10:00:01.250Z"


@pytest.mark.parametrize("second", [1.0, 1_764_324_001.0])
def test_the_last_instant_of_a_second_stays_in_it(second: float) -> None:
    just_before = math.nextafter(second, 0.0)
    assert iso_utc(just_before, 6).endswith(".999999Z")
    assert iso_utc(just_before, 3).endswith(".999Z")
