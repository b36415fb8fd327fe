"""The open-file budget: raised as far as the hard limit allows, else the run is refused."""

from __future__ import annotations

import resource

import pytest

from orchestrator.errors import UsageError
from orchestrator.run.openfiles import (
    BASE_FILES,
    allow_every_open_file,
    ensure_open_files,
    files_needed,
)

INFINITY = resource.RLIM_INFINITY


class Limits:
    """getrlimit and setrlimit of a pretend process."""

    def __init__(self, soft: int, hard: int, *, refuse: bool = False) -> None:
        self.limits = (soft, hard)
        self.refuse = refuse
        self.set_to: list[tuple[int, int]] = []

    def get(self, kind: int) -> tuple[int, int]:
        assert kind == resource.RLIMIT_NOFILE
        return self.limits

    def set(self, kind: int, limits: tuple[int, int]) -> None:
        assert kind == resource.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed")
        self.set_to.append(limits)
        self.limits = limits


def ensure(needed: int, limits: Limits) -> None:
    ensure_open_files(needed, lanes_at_once=7, get=limits.get, set_=limits.set)


def test_files_needed_counts_a_connection_and_a_lock_per_lane_and_the_simulator_end() -> None:
    assert files_needed(0, simulated=False) == BASE_FILES
    assert files_needed(1000, simulated=False) == BASE_FILES + 2000
    assert files_needed(1000, simulated=True) == BASE_FILES + 3000


@pytest.mark.parametrize("soft", [300, 4096, INFINITY])
def test_a_soft_limit_that_is_enough_is_left_alone(soft: int) -> None:
    limits = Limits(soft, INFINITY)
    ensure(300, limits)
    assert limits.set_to == []


@pytest.mark.parametrize("hard", [300, 524288, INFINITY])
def test_a_low_soft_limit_is_raised_to_what_is_needed_within_the_hard_limit(hard: int) -> None:
    limits = Limits(256, hard)
    ensure(300, limits)
    assert limits.set_to == [(300, hard)]


def test_a_hard_limit_below_the_need_refuses_the_run_naming_the_figures() -> None:
    limits = Limits(256, 299)
    with pytest.raises(UsageError) as caught:
        ensure(300, limits)
    assert str(caught.value) == (
        "7 lanes at once (max_parallel_tokens) may need 300 open files, but this process "
        "may open only 256 (ulimit -n; hard limit 299): lower max_parallel_tokens or raise "
        "the limit; nothing was sent"
    )
    assert limits.set_to == []


def test_a_limit_the_system_will_not_raise_refuses_the_run() -> None:
    limits = Limits(256, INFINITY, refuse=True)
    with pytest.raises(UsageError, match=r"may open only 256 \(ulimit -n; hard limit unlimited\)"):
        ensure(300, limits)


@pytest.mark.parametrize("hard", [4096, INFINITY])
def test_the_simulator_may_open_as_many_files_as_the_hard_limit_allows(hard: int) -> None:
    limits = Limits(1024, hard)
    assert allow_every_open_file(get=limits.get, set_=limits.set) == hard
    assert limits.set_to == [(hard, hard)]


def test_a_limit_already_at_its_ceiling_or_not_raisable_is_left_as_it_is() -> None:
    at_ceiling, refusing = Limits(4096, 4096), Limits(1024, 4096, refuse=True)
    assert allow_every_open_file(get=at_ceiling.get, set_=at_ceiling.set) == 4096
    assert allow_every_open_file(get=refusing.get, set_=refusing.set) == 1024
    assert at_ceiling.set_to == refusing.set_to == []
