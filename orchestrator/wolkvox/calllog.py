"""What the simulator saw: every call that carried a token, and the counters behind its stats.

Tests and benchmarks read it to check how a client behaved (one call at a time
per token, connections per token, statuses); the simulator reads its quota
counts. Tokens appear by fingerprint only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

from aiohttp import web

from orchestrator.plan.model import token_fingerprint
from orchestrator.wolkvox.client import TOKEN_HEADER

__all__ = ["Call", "CallLog", "SimulatorStats"]


class SimulatorStats(TypedDict):
    """What :meth:`Simulator.stats` and ``GET /_simulator/stats`` return.

    ``max_in_flight_per_token`` counts the arriving request too, so 1 means no
    request ever arrived while another on the same token was being served.
    ``busy_window_s`` runs from the first arrival to the last departure.
    ``simultaneous_rejections`` counts only real overlaps; ``faults`` counts the
    staged faults by name, the simultaneous-use answers staged among them.
    """

    total_calls: int
    requests_without_token: int
    calls_per_token: dict[str, int]
    statuses: dict[str, int]
    simultaneous_rejections: int
    max_in_flight_per_token: int
    connections_per_token: dict[str, int]
    busy_window_s: float
    faults: dict[str, int]
    timeline: list[dict[str, object]]


@dataclass(slots=True)
class Call:
    """A request that carried a token; ``departed``/``status`` are set when it answers.

    ``arrived``/``departed`` are :func:`time.monotonic` (system-wide on Linux,
    so comparable across processes); the ``_wall`` twins are :func:`time.time`.
    ``connection`` is the client's ``host:port``, one per TCP connection.
    ``status`` stays 0 for a call whose connection was dropped.
    """

    seq: int
    token_id: str
    server: str
    path: str
    method: str
    api: str | None
    type_campaign: str | None
    campaign_id: str | None
    result: str | None
    connection: str
    arrived: float
    arrived_wall: float
    departed: float = 0.0
    departed_wall: float = 0.0
    status: int = 0

    def as_dict(self) -> dict[str, object]:
        """The call as a JSON-serializable dict (times in seconds, monotonic and wall-clock)."""
        return dataclasses.asdict(self)


class CallLog:
    """The calls in arrival order and the counters kept as they come and go.

    ``usage`` counts every call per token and ``server_usage`` per server,
    whatever their answers: both are what a wolkvox quota counts.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.usage: dict[str, int] = {}
        self.server_usage: dict[str, int] = {}
        self.simultaneous = 0
        self._connections: dict[str, set[str]] = {}
        self._statuses: dict[int, int] = {}
        self._without_token = 0
        self._max_in_flight = 0

    def arrive(self, request: web.Request, busy: set[str]) -> tuple[Call | None, str | None]:
        """Log the request if it carries a token; return the call and the token id.

        ``busy`` holds the tokens with a call being served.
        """
        arrived, arrived_wall = time.monotonic(), time.time()
        token = request.headers.get(TOKEN_HEADER, "").strip()
        if not token:
            self._without_token += 1
            return None, None
        token_id = token_fingerprint(token)
        server = request.match_info.get("server", "")
        self.usage[token_id] = self.usage.get(token_id, 0) + 1
        self.server_usage[server] = self.server_usage.get(server, 0) + 1
        # Measures the client, not the server: any arrival while the token is
        # busy is a breach of the one-at-a-time rule, whatever it is answered.
        observed = 2 if token_id in busy else 1
        if observed > self._max_in_flight:
            self._max_in_flight = observed
        connection = _peer(request)
        self._connections.setdefault(token_id, set()).add(connection)
        query = request.query
        call = Call(
            seq=len(self.calls) + 1,
            token_id=token_id,
            server=server,
            path=request.path,
            method=request.method,
            api=query.get("api"),
            type_campaign=query.get("type_campaign"),
            campaign_id=query.get("campaign_id"),
            result=query.get("result"),
            connection=connection,
            arrived=arrived,
            arrived_wall=arrived_wall,
        )
        self.calls.append(call)
        return call, token_id

    def depart(self, call: Call | None, status: int) -> None:
        """Record an answer; status 0 is a dropped connection (not counted in ``statuses``)."""
        if status:
            self._statuses[status] = self._statuses.get(status, 0) + 1
        if call is not None:
            call.status = status
            call.departed = time.monotonic()
            call.departed_wall = time.time()

    def stats(self, faults: Mapping[str, int], *, timeline: bool = True) -> SimulatorStats:
        """Counters and, unless ``timeline`` is false, the per-call timeline."""
        if self.calls:
            first = self.calls[0].arrived
            last = max((c.departed for c in self.calls), default=first)
            busy = max(0.0, last - first)
        else:
            busy = 0.0
        return SimulatorStats(
            total_calls=len(self.calls),
            requests_without_token=self._without_token,
            calls_per_token=dict(self.usage),
            statuses={str(s): n for s, n in sorted(self._statuses.items())},
            simultaneous_rejections=self.simultaneous,
            max_in_flight_per_token=self._max_in_flight,
            connections_per_token={t: len(c) for t, c in self._connections.items()},
            busy_window_s=busy,
            faults=dict(faults),
            timeline=[c.as_dict() for c in self.calls] if timeline else [],
        )


def _peer(request: web.Request) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return f"conn-{id(request.protocol)}"
