"""Human-readable views of what a plan will do: the schedule, for people and for scripts.

These never show a token: lanes are named by token name and ``token_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.plan.model import Clear, Lane, Plan, Token

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
        label = _token_label(lane.tokens[0])
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
    lines.extend(f"  token {_token_label(token)}" for token in lane.pool)
    for position, chain in enumerate(campaigns, 1):
        lines.append(f"  campaign {position} to start:")
        lines.extend(f"    {_clear_line(clear)}" for clear in chain)
    return lines


def schedule_document(
    plan: Plan, lanes: Sequence[Lane], warnings: Sequence[str]
) -> dict[str, object]:
    """``validate --json``: the counts, lanes and clears a script can rely on."""
    clears = [c for lane in lanes for c in lane.clears]
    unfiltered = sum(1 for c in clears if c.result is None)
    return {
        "valid": True,
        "plan": plan.source,
        "counts": {
            "clears": len(clears),
            "unfiltered": unfiltered,
            "filtered": len(clears) - unfiltered,
            "campaigns": len({c.target for c in clears}),
            "lanes": len(lanes),
        },
        "warnings": list(warnings),
        "lanes": [_lane_entry(number, lane) for number, lane in enumerate(lanes, 1)],
        "clears": [
            {
                "seq": c.seq,
                "server": c.server,
                "type_campaign": c.type_campaign,
                "campaign_id": c.campaign_id,
                "result": c.result_label,
                "unfiltered": c.result is None,
                "token": str(c.token),
                "on_failure": str(c.on_failure),
                "timeout_s": c.timeout_s,
                "retries": c.retries,
                "tags": list(c.tags),
                "line": c.line,
            }
            for c in sorted(clears, key=lambda c: c.seq)
        ],
    }


def _lane_entry(number: int, lane: Lane) -> dict[str, object]:
    entry: dict[str, object] = {"lane": number, "tokens": list(lane.token_names)}
    if lane.pool:
        # A pool's clears come in the order its campaigns are expected to start.
        entry["pool"] = lane.token_id
    return entry | {"seqs": [c.seq for c in lane.clears]}


def _token_label(token: Token) -> str:
    """Its names in the plan, and its fingerprint once the tokens were read."""
    names = ", ".join(token.token_names)
    return names if token.secret is None else f"{names} (token_id {token.token_id})"


def _clear_line(clear: Clear) -> str:
    result = clear.result or ALL_MARK
    return (
        f"#{clear.seq:<5} server {clear.server} {clear.type_campaign:<10} "
        f"campaign {clear.campaign_id}: {result}"
    )
