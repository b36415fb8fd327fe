"""A stand-in for wolkvox's ``clear_campaign`` API, for end-to-end tests and benchmarks.

:class:`Simulator` is an :mod:`aiohttp.web` server that answers like wolkvox
does: HTTP 200 with the real code in the body on success, HTTP status equal to
the code on errors, a daily call quota per token and, above all, the rule that
one token cannot be used by two requests at the same time. It keeps record
counts per campaign and result, so a clear really deletes, and it logs every
call that carried a token (by fingerprint, never the token itself) so tests and
benchmarks can check how the client behaved.

Routes, each also served under a ``/wv{server}`` prefix (the server code, kept
verbatim with its leading zeros; ``""`` without the prefix):

* ``DELETE /api/v2/campaign.php?api=clear_campaign&type_campaign=..&campaign_id=..[&result=..]``
* ``GET /api/v2/information.php?api=token_info``
* ``GET /_simulator/stats`` (``?timeline=0`` leaves out the per-call list) and
  ``POST /_simulator/reset``: no token needed.

Run it in-process (``async with Simulator(...) as sim``) or standalone through
:func:`serve`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

from aiohttp import web

from orchestrator.plan.model import CAMPAIGN_TYPES, RESULT_FILTERS, token_fingerprint

__all__ = [
    "SERVER_PREFIX",
    "Call",
    "CallInfo",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "serve",
]

TOKEN_HEADER = "wolkvox-token"
CAMPAIGN_PATH = "/api/v2/campaign.php"
INFORMATION_PATH = "/api/v2/information.php"
SERVER_PREFIX = "/wv{server}"

# wolkvox's own texts where its documentation gives them; ours otherwise.
API_NOT_FOUND = "THE API YOU WANT TO CONSULT DOES NOT EXIST"
PARAMETERS_REQUIRED = "SOME PARAMETERS ARE REQUIRED"
INVALID_TYPE_CAMPAIGN = "THE TYPE_CAMPAIGN IS NOT VALID"
INVALID_CAMPAIGN_ID = "THE CAMPAIGN_ID MUST BE NUMERIC"
INVALID_RESULT = "THE RESULT IS NOT VALID"
METHOD_NOT_ALLOWED = "METHOD NOT ALLOWED"
TOKEN_MISSING = "PLEASE ENTER THE WOLKVOX-TOKEN"
TOKEN_INVALID = "PLEASE VALIDATE TOKEN"
TOKEN_LIMIT = "TOKEN LIMIT EXCEEDED"
SIMULTANEOUS = "EXCEEDS THE LIMIT OF SIMULTANEOUS REQUESTS PER TOKEN"
MAINTENANCE = "SERVICE UNDER MAINTENANCE"
UNAVAILABLE = "SERVICE UNAVAILABLE"

_RESULT_SET = frozenset(RESULT_FILTERS)
_TYPE_SET = frozenset(CAMPAIGN_TYPES)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulated wolkvox behaves.

    ``valid_tokens`` holds raw tokens, so it is left out of ``repr``; ``None``
    accepts any non-empty token. ``token_limit`` is the number of calls a token
    may make per simulated day (the simulator's lifetime, or until a reset).
    ``fail_rate`` is the probability that an otherwise good clear answers 503.
    """

    latency_ms: float = 50.0
    fail_rate: float = 0.0
    seed: int | None = None
    valid_tokens: frozenset[str] | None = field(default=None, repr=False)
    token_limit: int = 1_000_000
    records_per_result: int = 100
    code_as_string: bool = False
    maintenance: bool = False

    def __post_init__(self) -> None:
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if not 0.0 <= self.fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if self.token_limit < 0:
            raise ValueError("token_limit must be >= 0")
        if self.records_per_result < 0:
            raise ValueError("records_per_result must be >= 0")


DEFAULT_CONFIG = SimulatorConfig()


class CallInfo(TypedDict):
    """One logged call as plain JSON: times are seconds (monotonic and wall-clock)."""

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
    departed: float
    arrived_wall: float
    departed_wall: float
    status: int


class SimulatorStats(TypedDict):
    """What :meth:`Simulator.stats` and ``GET /_simulator/stats`` return.

    ``max_in_flight_per_token`` counts the arriving request too, so 1 means no
    request ever arrived while another on the same token was being served.
    ``busy_window_s`` runs from the first arrival to the last departure.
    """

    total_calls: int
    requests_without_token: int
    calls_per_token: dict[str, int]
    statuses: dict[str, int]
    simultaneous_rejections: int
    max_in_flight_per_token: int
    connections_per_token: dict[str, int]
    busy_window_s: float
    timeline: list[CallInfo]


@dataclass(slots=True)
class Call:
    """A request that carried a token; ``departed``/``status`` are set when it answers.

    ``arrived``/``departed`` are :func:`time.monotonic` (system-wide on Linux,
    so comparable across processes); the ``_wall`` twins are :func:`time.time`.
    ``connection`` is the client's ``host:port``, one per TCP connection.
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

    def as_dict(self) -> CallInfo:
        """The call as a JSON-serializable dict."""
        return CallInfo(
            seq=self.seq,
            token_id=self.token_id,
            server=self.server,
            path=self.path,
            method=self.method,
            api=self.api,
            type_campaign=self.type_campaign,
            campaign_id=self.campaign_id,
            result=self.result,
            connection=self.connection,
            arrived=self.arrived,
            departed=self.departed,
            arrived_wall=self.arrived_wall,
            departed_wall=self.departed_wall,
            status=self.status,
        )


CampaignKey = tuple[str, str, str]


class Simulator:
    """The simulated wolkvox API and the state behind it.

    Use as ``async with Simulator(config) as sim:`` (binds 127.0.0.1 on a free
    port), or call :meth:`start`/:meth:`stop`. ``app`` is the bare
    :class:`aiohttp.web.Application` for callers that run it themselves.
    """

    def __init__(self, config: SimulatorConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._valid_ids = (
            None
            if config.valid_tokens is None
            else frozenset(token_fingerprint(t) for t in config.valid_tokens)
        )
        self._rng = random.Random(config.seed)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._records: dict[CampaignKey, dict[str, int]] = {}
        # Tokens with a call being served. Survives reset(): those calls still hold them.
        self._busy: set[str] = set()
        self._calls: list[Call] = []
        self._usage: dict[str, int] = {}
        self._connections: dict[str, set[str]] = {}
        self._statuses: dict[int, int] = {}
        self._without_token = 0
        self._simultaneous = 0
        self._max_in_flight = 0
        self.app = self._build_app()

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port); return the base URL template.

        The template is ``http://HOST:PORT/wv{server}``, ready for the client's
        ``base_url`` setting.
        """
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        runner = web.AppRunner(
            self.app,
            access_log=None,
            # Like wolkvox, keep serving a call whose client gave up: its token
            # stays busy until the call would have finished.
            handler_cancellation=False,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        # A benchmark opens thousands of connections at once; the default
        # backlog of 128 would turn a burst into SYN retries of a second each.
        site = web.TCPSite(runner, host, port, backlog=4096)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._runner = runner
        self._url = f"http://{shown}:{bound_port}"
        return self._url + SERVER_PREFIX

    async def stop(self) -> None:
        """Stop listening and close connections; safe to call more than once."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        """``http://host:port`` of the running simulator."""
        if self._url is None:
            raise RuntimeError("simulator not started")
        return self._url

    # -- records ---------------------------------------------------------------

    def records(self, server: str, type_campaign: str, campaign_id: str) -> dict[str, int]:
        """A copy of the record counts per result of one campaign."""
        return dict(self._campaign((server, type_campaign, campaign_id)))

    def set_records(
        self, server: str, type_campaign: str, campaign_id: str, counts: dict[str, int]
    ) -> None:
        """Replace a campaign's record counts; results not in ``counts`` get 0."""
        unknown = set(counts) - _RESULT_SET
        if unknown:
            raise ValueError(f"unknown result values: {sorted(unknown)}")
        if any(n < 0 for n in counts.values()):
            raise ValueError("record counts must be >= 0")
        self._records[(server, type_campaign, campaign_id)] = {
            r: counts.get(r, 0) for r in RESULT_FILTERS
        }

    def _campaign(self, key: CampaignKey) -> dict[str, int]:
        counts = self._records.get(key)
        if counts is None:
            counts = dict.fromkeys(RESULT_FILTERS, self.config.records_per_result)
            self._records[key] = counts
        return counts

    # -- observations ----------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every request that carried a token, in arrival order (live; do not modify)."""
        return self._calls

    def stats(self, *, timeline: bool = True) -> SimulatorStats:
        """Counters and, unless ``timeline`` is false, the per-call timeline."""
        if self._calls:
            first = self._calls[0].arrived
            last = max((c.departed for c in self._calls), default=first)
            busy = max(0.0, last - first)
        else:
            busy = 0.0
        return SimulatorStats(
            total_calls=len(self._calls),
            requests_without_token=self._without_token,
            calls_per_token=dict(self._usage),
            statuses={str(s): n for s, n in sorted(self._statuses.items())},
            simultaneous_rejections=self._simultaneous,
            max_in_flight_per_token=self._max_in_flight,
            connections_per_token={t: len(c) for t, c in self._connections.items()},
            busy_window_s=busy,
            timeline=[c.as_dict() for c in self._calls] if timeline else [],
        )

    def reset(self) -> None:
        """Forget calls, counters, quota use and records; reseed the failure RNG."""
        self._records.clear()
        self._calls = []
        self._usage.clear()
        self._connections.clear()
        self._statuses.clear()
        self._without_token = 0
        self._simultaneous = 0
        self._max_in_flight = 0
        self._rng = random.Random(self.config.seed)

    # -- HTTP ------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        for prefix in ("", SERVER_PREFIX):
            app.router.add_route("*", prefix + CAMPAIGN_PATH, self._handle_clear)
            app.router.add_route("*", prefix + INFORMATION_PATH, self._handle_token_info)
        app.router.add_get("/_simulator/stats", self._handle_stats)
        app.router.add_post("/_simulator/reset", self._handle_reset)
        return app

    def _body(self, code: int, error: str | None, msg: str) -> dict[str, Any]:
        return {
            "code": str(code) if self.config.code_as_string else code,
            "error": error,
            "msg": msg,
        }

    def _reply(
        self, call: Call | None, status: int, error: str | None, msg: str, **extra: Any
    ) -> web.Response:
        """Answer; ``status`` is both the HTTP status and the body code, except 202."""
        code = status
        if status == 202:  # wolkvox's success: HTTP 200 with 202 in the body
            status = 200
        self._statuses[status] = self._statuses.get(status, 0) + 1
        if call is not None:
            call.status = status
            call.departed = time.monotonic()
            call.departed_wall = time.time()
        return web.json_response({**self._body(code, error, msg), **extra}, status=status)

    def _error(self, call: Call | None, status: int, text: str) -> web.Response:
        return self._reply(call, status, text, text)

    def _arrive(self, request: web.Request) -> tuple[Call | None, str | None]:
        """Log the request if it carries a token; return the call and the token id."""
        arrived, arrived_wall = time.monotonic(), time.time()
        token = request.headers.get(TOKEN_HEADER, "").strip()
        if not token:
            self._without_token += 1
            return None, None
        token_id = token_fingerprint(token)
        # Every call counts against the quota, whatever its answer.
        self._usage[token_id] = self._usage.get(token_id, 0) + 1
        # Measures the client, not the server: any arrival while the token is
        # busy is a breach of the one-at-a-time rule, whatever it is answered.
        observed = 2 if token_id in self._busy else 1
        if observed > self._max_in_flight:
            self._max_in_flight = observed
        connection = _peer(request)
        self._connections.setdefault(token_id, set()).add(connection)
        query = request.query
        call = Call(
            seq=len(self._calls) + 1,
            token_id=token_id,
            server=request.match_info.get("server", ""),
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
        self._calls.append(call)
        return call, token_id

    def _gate(
        self,
        request: web.Request,
        call: Call | None,
        token_id: str | None,
        method: str,
        api: str,
    ) -> web.Response | None:
        """The checks shared by every API route, in order; ``None`` when all pass."""
        if self.config.maintenance:
            return self._error(call, 403, MAINTENANCE)
        if request.method != method:
            return self._error(call, 405, METHOD_NOT_ALLOWED)
        if request.query.get("api") != api:
            return self._error(call, 400, API_NOT_FOUND)
        if token_id is None:
            return self._error(call, 401, TOKEN_MISSING)
        if self._valid_ids is not None and token_id not in self._valid_ids:
            return self._error(call, 403, TOKEN_INVALID)
        return None

    async def _handle_clear(self, request: web.Request) -> web.Response:
        call, token_id = self._arrive(request)
        refused = self._gate(request, call, token_id, "DELETE", "clear_campaign")
        if refused is not None:
            return refused
        assert call is not None and token_id is not None  # _gate refuses tokenless calls
        if self._usage[token_id] > self.config.token_limit:
            return self._error(call, 403, TOKEN_LIMIT)
        if token_id in self._busy:
            self._simultaneous += 1
            return self._error(call, 403, SIMULTANEOUS)
        problem = _check_clear_params(call)
        if problem is not None:
            return self._error(call, 400, problem)
        if self.config.fail_rate and self._rng.random() < self.config.fail_rate:
            return self._error(call, 503, UNAVAILABLE)

        self._busy.add(token_id)
        try:
            if self.config.latency_ms:
                await asyncio.sleep(self.config.latency_ms / 1000)
        finally:
            self._busy.discard(token_id)
        assert call.type_campaign is not None and call.campaign_id is not None
        counts = self._campaign((call.server, call.type_campaign, call.campaign_id))
        if call.result is None:
            for r in counts:
                counts[r] = 0
        else:
            counts[call.result] = 0
        msg = f"All records has been deleted of campaign_id {call.campaign_id} successfully"
        return self._reply(call, 202, None, msg)

    async def _handle_token_info(self, request: web.Request) -> web.Response:
        call, token_id = self._arrive(request)
        refused = self._gate(request, call, token_id, "GET", "token_info")
        if refused is not None:
            return refused
        assert token_id is not None
        if token_id in self._busy:
            self._simultaneous += 1
            return self._error(call, 403, SIMULTANEOUS)
        # Answers even past the quota: this is how a client learns it is spent.
        data = {
            "token_limit": self.config.token_limit,
            "token_use_today": self._usage[token_id] - 1,
        }
        return self._reply(call, 200, None, "OK", data=data)

    async def _handle_stats(self, request: web.Request) -> web.Response:
        timeline = request.query.get("timeline", "1") not in ("0", "false", "no")
        return web.json_response(self.stats(timeline=timeline))

    async def _handle_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})


def _check_clear_params(call: Call) -> str | None:
    """The error text for bad clear parameters, or ``None`` when they are good."""
    if not call.type_campaign or not call.campaign_id:
        return PARAMETERS_REQUIRED
    if call.type_campaign not in _TYPE_SET:
        return INVALID_TYPE_CAMPAIGN
    if not (call.campaign_id.isascii() and call.campaign_id.isdigit()):
        return INVALID_CAMPAIGN_ID
    # An empty result is refused rather than read as "all": a client that
    # meant one result must never delete every record.
    if call.result is not None and call.result not in _RESULT_SET:
        return INVALID_RESULT
    return None


def _peer(request: web.Request) -> str:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return f"conn-{id(request.protocol)}"


async def serve(
    config: SimulatorConfig,
    host: str,
    port: int,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run a simulator on ``host:port`` until cancelled, then stop it cleanly.

    ``on_ready`` receives the base URL template once the port is open.
    """
    sim = Simulator(config)
    base_url = await sim.start(host, port)
    try:
        if on_ready is not None:
            on_ready(base_url)
        await asyncio.Event().wait()
    finally:
        await sim.stop()
