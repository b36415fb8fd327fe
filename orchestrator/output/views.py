"""Human-readable views of what a plan will do: the schedule and the confirmation.

These never show a token: lanes are named by token name and ``token_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.plan.model import Clear, Lane, Plan

ALL_MARK = "ALL RECORDS"


def describe_counts(clears: Sequence[Clear]) -> str:
    """``5 clears: 1 unfiltered (all records), 4 filtered by result``."""
    unfiltered = sum(1 for c in clears if c.result is None)
    return (
        f"{len(clears)} clear{'s' if len(clears) != 1 else ''}: "
        f"{unfiltered} unfiltered (all records), {len(clears) - unfiltered} filtered by result"
    )


def render_schedule(plan: Plan, lanes: Sequence[Lane]) -> str:
    """The unfiltered clears set apart, then every clear lane by lane in sending order."""
    clears = [c for lane in lanes for c in lane.clears]
    unfiltered = [c for c in clears if c.result is None]
    lines = [f"{plan.source}: {describe_counts(clears)}, in {len(lanes)} lane(s)"]
    if unfiltered:
        lines.append(f"{len(unfiltered)} unfiltered clear(s) delete EVERY record of a campaign:")
        lines.extend(f"  {_clear_line(clear)}" for clear in unfiltered)
    lines.append(
        f"{len(clears) - len(unfiltered)} filtered clear(s) delete only records with the "
        "given result."
    )
    lines.append("Every clear, lane by lane, in sending order:")
    for number, lane in enumerate(lanes, 1):
        if lane.pool:
            lines.extend(_pool_lines(number, lane))
            continue
        names = ", ".join(lane.token_names)
        label = names if lane.secret is None else f"{names} (token_id {lane.token_id})"
        lines.append(f"lane {number}: {label}: {len(lane.clears)} clear(s), one at a time")
        lines.extend(f"  {_clear_line(clear)}" for clear in lane.clears)
    return "\n".join(lines)


def _pool_lines(number: int, lane: Lane) -> list[str]:
    """A pool: its tokens, then its campaigns in the order they are expected to start."""
    campaigns = lane.campaigns()
    lines = [
        f"lane {number}: {lane.token_id}, a pool of {len(lane.pool)} token(s): "
        f"{len(campaigns)} campaign(s), {len(lane.clears)} clear(s); whichever token is "
        "free takes the next campaign, each campaign's clears one at a time in this order"
    ]
    for token in lane.pool:
        names = ", ".join(token.token_names)
        label = names if token.secret is None else f"{names} (token_id {token.token_id})"
        lines.append(f"  token {label}")
    for position, chain in enumerate(campaigns, 1):
        lines.append(f"  campaign {position} to start:")
        lines.extend(f"    {_clear_line(clear)}" for clear in chain)
    return lines


def render_confirmation(lanes: Sequence[Lane]) -> str:
    """What will be deleted, per campaign, with unfiltered clears set apart."""
    campaigns: dict[tuple[str, str, str], list[str]] = {}
    for lane in lanes:
        for clear in lane.clears:
            campaigns.setdefault(clear.target, []).append(clear.result or ALL_MARK)
    clears = [c for lane in lanes for c in lane.clears]
    everything = [t for t, results in campaigns.items() if ALL_MARK in results]
    filtered = [t for t in campaigns if t not in everything]
    lines = [
        f"This run deletes records from {len(campaigns)} campaign(s), {describe_counts(clears)}."
    ]
    if everything:
        lines.append(f"EVERY record of {len(everything)} campaign(s):")
        lines.extend(f"  server {s} {t} campaign {c}: {ALL_MARK}" for s, t, c in everything)
    if filtered:
        lines.append(f"Records with these results in {len(filtered)} campaign(s):")
        lines.extend(
            f"  server {s} {t} campaign {c}: {', '.join(campaigns[(s, t, c)])}"
            for s, t, c in filtered
        )
    return "\n".join(lines)


def _clear_line(clear: Clear) -> str:
    result = clear.result or ALL_MARK
    return (
        f"#{clear.seq:<5} server {clear.server} {clear.type_campaign:<10} "
        f"campaign {clear.campaign_id}: {result}"
    )
