"""The faults the simulator can stage, so a plan can be rehearsed against each of them.

Every fault is a :class:`FaultSpec`: a rate (the chance that a call meets it)
and campaigns it always hits (every call of that ``campaign_id``, or only its
first N). :class:`FaultPicker` decides, call by call, which fault a call meets;
with a seed, or with rate 1.0 and campaign targets, that decision is the same
on every run.

Some faults stick, as they do on wolkvox: a token once rejected stays rejected,
a quota once spent stays spent, until the simulator is reset. A 5xx burst
answers the next ``burst_length`` calls of that server, whatever their token.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.plan.model import campaign_key

__all__ = ["Fault", "FaultPicker", "FaultSpec", "Faults", "combined", "parse_fault"]


class Fault(StrEnum):
    """What a call can meet, in the order they are tried."""

    #: The connection is dropped without an answer; wolkvox still does the clear.
    DROP = "drop"
    #: 5xx answers for the server's next ``burst_length`` calls.
    BURST = "burst"
    #: 403 whose text speaks of maintenance (wolkvox's backup windows).
    MAINTENANCE = "maintenance"
    #: 403 PLEASE VALIDATE TOKEN, for this call and every later one of the token.
    TOKEN_REJECTED = "token_rejected"
    #: The token's daily quota is spent: 403 TOKEN LIMIT EXCEEDED from now on.
    QUOTA_SPENT = "quota_spent"
    #: 403 EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN, as if another process held it.
    SIMULTANEOUS = "simultaneous"
    #: The answer comes after ``slow_s`` seconds, with the token busy all along.
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """When one fault strikes: ``rate`` of all calls, and every call of ``campaigns``.

    ``campaigns`` pairs a ``campaign_id`` (leading zeros dropped, as ``protect``
    reads it) with how many of its calls are hit: ``None`` for all of them.
    Campaign targets apply to clears only; the rate to every call.
    """

    rate: float = 0.0
    campaigns: tuple[tuple[str, int | None], ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"a fault rate must be between 0 and 1, got {self.rate}")

    def merged(self, other: FaultSpec) -> FaultSpec:
        """Both specs at once: the higher rate, the campaigns of both."""
        targets = {**dict(self.campaigns), **dict(other.campaigns)}
        return FaultSpec(max(self.rate, other.rate), tuple(sorted(targets.items())))


NO_FAULT = FaultSpec()


def parse_fault(text: str) -> FaultSpec:
    """A fault from the command line: ``RATE`` (0-1), ``campaign=ID`` or ``campaign=ID:N``.

    ``ID:N`` hits only the first N calls of that campaign, so a plan can be
    rehearsed recovering from the fault. Raises :class:`ValueError`.
    """
    value = text.strip()
    if value.startswith("campaign="):
        target, _, times = value.removeprefix("campaign=").partition(":")
        if not (target.isascii() and target.isdigit()):
            raise ValueError(f"{text!r}: the campaign id must be digits")
        if times and not (times.isascii() and times.isdigit() and int(times) >= 1):
            raise ValueError(f"{text!r}: the count after ':' must be a whole number >= 1")
        return FaultSpec(campaigns=((campaign_key(target), int(times) if times else None),))
    try:
        rate = float(value)
    except ValueError:
        raise ValueError(f"{text!r} is neither a rate (0-1) nor campaign=ID[:N]") from None
    if not 0.0 <= rate <= 1.0:  # also refuses nan
        raise ValueError(f"{text!r}: a rate must be between 0 and 1")
    return FaultSpec(rate=rate)


def combined(specs: Sequence[FaultSpec] | None) -> FaultSpec:
    """One spec for a fault given several times on the command line (or not at all)."""
    result = NO_FAULT
    for spec in specs or ():
        result = result.merged(spec)
    return result


@dataclass(frozen=True, slots=True)
class Faults:
    """Every fault the simulator stages, and how long a slow answer or a burst lasts."""

    drop: FaultSpec = NO_FAULT
    burst: FaultSpec = NO_FAULT
    maintenance: FaultSpec = NO_FAULT
    token_rejected: FaultSpec = NO_FAULT
    quota_spent: FaultSpec = NO_FAULT
    simultaneous: FaultSpec = NO_FAULT
    slow: FaultSpec = NO_FAULT
    slow_s: float = 120.0
    burst_length: int = 5

    def __post_init__(self) -> None:
        if self.slow_s < 0:
            raise ValueError("slow_s must be >= 0")
        if self.burst_length < 1:
            raise ValueError("burst_length must be >= 1")

    def spec(self, fault: Fault) -> FaultSpec:
        spec: FaultSpec = getattr(self, fault.value)
        return spec


NO_FAULTS = Faults()


class FaultPicker:
    """Decides which fault each call meets; holds the faults that stick."""

    def __init__(self, faults: Faults, seed: int | None) -> None:
        self.faults = faults
        self._rng = random.Random(seed)
        self._hits: dict[tuple[Fault, str], int] = {}
        self._burst_left: dict[str, int] = {}
        self.rejected: set[str] = set()
        self.spent: set[str] = set()
        self.counts: dict[str, int] = {}

    def pick(self, server: str, token_id: str, campaign_id: str | None) -> Fault | None:
        """The fault this call meets, or ``None``; a sticky one is remembered for its token."""
        if self._burst_left.get(server, 0) > 0:
            self._burst_left[server] -= 1
            return self._count(Fault.BURST)
        for fault in Fault:
            if self._strikes(fault, campaign_id):
                if fault is Fault.BURST:
                    self._burst_left[server] = self.faults.burst_length - 1
                elif fault is Fault.TOKEN_REJECTED:
                    self.rejected.add(token_id)
                elif fault is Fault.QUOTA_SPENT:
                    self.spent.add(token_id)
                return self._count(fault)
        return None

    def _strikes(self, fault: Fault, campaign_id: str | None) -> bool:
        spec = self.faults.spec(fault)
        targets = dict(spec.campaigns)
        if campaign_id is not None:
            key = campaign_key(campaign_id)
            if key in targets:
                limit, done = targets[key], self._hits.get((fault, key), 0)
                if limit is None or done < limit:
                    self._hits[(fault, key)] = done + 1
                    return True
        # Drawn only for faults with a rate, so adding a campaign target elsewhere
        # leaves the sequence of a seeded run as it was.
        return spec.rate > 0 and self._rng.random() < spec.rate

    def _count(self, fault: Fault) -> Fault:
        self.counts[fault.value] = self.counts.get(fault.value, 0) + 1
        return fault
