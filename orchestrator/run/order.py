"""Which campaigns and lanes start first: the longest expected first, so a run ends sooner.

A pool's tokens take its campaigns in turn, and lanes beyond ``max_parallel_tokens``
wait for a free slot; either way, what starts last ends last. Started longest first,
a long campaign written last no longer finishes alone after everything else. The
expected duration of a clear is the median of its last successful durations in the
journal (same server, type, campaign and result), or :data:`DEFAULT_CLEAR_S` when it
has none. ``settings.order: plan`` keeps the order of the plan. Sorting is stable:
clears expected to take as long keep their plan order, so a first run (no history)
starts in plan order.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.plan.model import Clear, Lane, Order, Plan, count_tokens
from orchestrator.state.journal import read_durations

#: The expected duration of a clear the journal has no success of, in seconds.
DEFAULT_CLEAR_S = 10.0

#: (server, type_campaign, campaign_id, result label): what a duration is kept for.
Key = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class Estimates:
    """The expected duration of each clear, from the journal's last successful ones."""

    seconds: Mapping[Key, float] = field(default_factory=dict)
    #: The most durations behind any one estimate: "from the last N runs".
    runs: int = 0

    @classmethod
    def from_durations(cls, durations: Mapping[Key, Sequence[int]]) -> Estimates:
        """Medians of the durations (ms) journaled for each clear."""
        seconds = {key: statistics.median(ms) / 1000 for key, ms in durations.items() if ms}
        return cls(seconds, max((len(ms) for ms in durations.values()), default=0))

    def known(self, clear: Clear) -> bool:
        """Whether the journal has a successful duration of ``clear``."""
        return _key(clear) in self.seconds

    def of(self, clear: Clear) -> float:
        """Seconds ``clear`` is expected to take."""
        return self.seconds.get(_key(clear), DEFAULT_CLEAR_S)

    def chain(self, clears: Iterable[Clear]) -> float:
        """Seconds ``clears`` are expected to take one after another."""
        return sum(self.of(clear) for clear in clears)


def expected_s(lane: Lane, estimates: Estimates) -> float:
    """How long ``lane`` is expected to take: its clears one after another, or, for a
    pool, its longest campaign or all its campaigns spread over its tokens."""
    if not lane.pool:
        return estimates.chain(lane.clears)
    chains = [estimates.chain(chain) for chain in lane.campaigns()]
    return max(max(chains, default=0.0), sum(chains) / len(lane.pool))


def order_lanes(
    lanes: Sequence[Lane], estimates: Estimates, *, order: Order, max_parallel: int
) -> tuple[Lane, ...]:
    """``lanes`` in the order they start: each pool's campaigns, and the lanes when more
    tokens than ``max_parallel`` wait for a slot, longest expected first."""
    if order is Order.PLAN:
        return tuple(lanes)
    ordered = [_longest_campaigns_first(lane, estimates) if lane.pool else lane for lane in lanes]
    if count_tokens(ordered) > max_parallel:
        ordered.sort(key=lambda lane: expected_s(lane, estimates), reverse=True)
    return tuple(ordered)


def in_start_order(
    plan: Plan, lanes: Sequence[Lane], state_dir: Path
) -> tuple[tuple[Lane, ...], Estimates]:
    """``lanes`` ordered by what the journal in ``state_dir`` knows (read only), and the
    estimates that ordered them."""
    estimates = Estimates.from_durations(read_durations(state_dir))
    settings = plan.settings
    ordered = order_lanes(
        lanes, estimates, order=settings.order, max_parallel=settings.max_parallel_tokens
    )
    return ordered, estimates


def _longest_campaigns_first(lane: Lane, estimates: Estimates) -> Lane:
    chains = sorted(lane.campaigns(), key=estimates.chain, reverse=True)
    return dataclasses.replace(lane, clears=tuple(clear for chain in chains for clear in chain))


def _key(clear: Clear) -> Key:
    return (clear.server, clear.type_campaign, clear.campaign_id, clear.result_label)
