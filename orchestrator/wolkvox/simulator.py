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

Errors carry the HTTP status name in ``error`` (``FORBIDDEN``) and the detail
in ``msg``; ``token_info`` answers as wolkvox does, every value as text
(``"4,800"``) in a ``data`` list. The faults of :mod:`orchestrator.wolkvox.faults`
can be staged on top (``SimulatorConfig.faults``).

Run it in-process (``async with Simulator(...) as sim``) or standalone through
:func:`serve`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from aiohttp import web

from orchestrator.plan.model import CAMPAIGN_TYPES, RESULT_FILTERS, token_fingerprint
from orchestrator.wolkvox.calllog import Call, CallLog, SimulatorStats
from orchestrator.wolkvox.client import CAMPAIGN_PATH, INFORMATION_PATH
from orchestrator.wolkvox.faults import NO_FAULTS, Fault, FaultPicker, Faults

__all__ = ["SERVER_PREFIX", "Simulator", "SimulatorConfig", "serve"]

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
OVERLOADED = "THE SERVER IS OVERLOADED, TRY AGAIN LATER"
#: What a proxy in front of wolkvox sends when the server behind it fails: not JSON.
GATEWAY_PAGE = "<html><head><title>{status} {phrase}</title></head><body>{phrase}</body></html>"
#: The statuses of a 5xx burst, in turn: JSON from wolkvox, HTML from its proxy.
BURST_STATUSES = (503, 502, 500, 504)

_RESULT_SET = frozenset(RESULT_FILTERS)
_TYPE_SET = frozenset(CAMPAIGN_TYPES)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the simulated wolkvox behaves.

    ``valid_tokens`` holds raw tokens, so it is left out of ``repr``; ``None``
    accepts any non-empty token. ``token_limit`` is the number of calls a token
    may make per simulated day (the simulator's lifetime, or until a reset).
    ``fail_rate`` is the probability that an otherwise good clear answers 503.
    ``shared_limit`` makes ``token_limit`` count the calls of every token on a
    server together (an operation whose quota is shared), and ``token_info``
    then reports what is left of that. ``faults`` are the staged faults.
    """

    latency_ms: float = 50.0
    fail_rate: float = 0.0
    seed: int | None = None
    valid_tokens: frozenset[str] | None = field(default=None, repr=False)
    token_limit: int = 1_000_000
    records_per_result: int = 100
    code_as_string: bool = False
    maintenance: bool = False
    shared_limit: bool = False
    faults: Faults = NO_FAULTS

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
        self._faults = FaultPicker(config.faults, config.seed)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._records: dict[CampaignKey, dict[str, int]] = {}
        # Tokens with a call being served. Survives reset(): those calls still hold them.
        self._busy: set[str] = set()
        self._log = CallLog()
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
        return self._log.calls

    def stats(self, *, timeline: bool = True) -> SimulatorStats:
        """Counters and, unless ``timeline`` is false, the per-call timeline."""
        return self._log.stats(self._faults.counts, timeline=timeline)

    def reset(self) -> None:
        """Forget calls, counters, quota use, records and sticky faults; reseed the RNGs."""
        self._records.clear()
        self._log = CallLog()
        self._rng = random.Random(self.config.seed)
        self._faults = FaultPicker(self.config.faults, self.config.seed)

    # -- HTTP ------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        for prefix in ("", SERVER_PREFIX):
            app.router.add_route("*", prefix + CAMPAIGN_PATH, self._handle_clear)
            app.router.add_route("*", prefix + INFORMATION_PATH, self._handle_token_info)
        app.router.add_get("/_simulator/stats", self._handle_stats)
        app.router.add_post("/_simulator/reset", self._handle_reset)
        return app

    def _reply(self, call: Call | None, code: int, error: str | None, msg: str) -> web.Response:
        """Answer; ``code`` is both the HTTP status and the body's code, except 202."""
        status = 200 if code == 202 else code  # wolkvox's success: HTTP 200, 202 in the body
        self._log.depart(call, status)
        shown = str(code) if self.config.code_as_string else code
        return web.json_response({"code": shown, "error": error, "msg": msg}, status=status)

    def _error(self, call: Call | None, status: int, detail: str) -> web.Response:
        """wolkvox's error shape: the status name in ``error``, the detail in ``msg``."""
        return self._reply(call, status, HTTPStatus(status).phrase.upper(), detail)

    def _gate(
        self,
        request: web.Request,
        call: Call | None,
        token_id: str | None,
        method: str,
        api: str,
    ) -> tuple[web.Response | None, Fault | None]:
        """The checks shared by every API route, in order, and the fault the call meets.

        Returns the refusal (``None`` when every check passes) and the staged
        fault left for the route to act out (a drop or a slow answer).
        """
        fault = None
        if call is not None and token_id is not None:
            campaign = call.campaign_id if api == "clear_campaign" else None
            fault = self._faults.pick(call.server, token_id, campaign)
        if fault is Fault.BURST:
            return self._burst(call), None
        if self.config.maintenance or fault is Fault.MAINTENANCE:
            return self._error(call, 403, MAINTENANCE), None
        if request.method != method:
            return self._error(call, 405, METHOD_NOT_ALLOWED), None
        if request.query.get("api") != api:
            return self._error(call, 400, API_NOT_FOUND), None
        if token_id is None:
            return self._error(call, 401, TOKEN_MISSING), None
        if token_id in self._faults.rejected or (
            self._valid_ids is not None and token_id not in self._valid_ids
        ):
            return self._error(call, 403, TOKEN_INVALID), None
        if fault is Fault.SIMULTANEOUS:
            return self._error(call, 403, SIMULTANEOUS), None
        return None, fault

    def _burst(self, call: Call | None) -> web.Response:
        status = BURST_STATUSES[self._faults.counts[Fault.BURST.value] % len(BURST_STATUSES)]
        if status in (502, 504):
            self._log.depart(call, status)
            phrase = HTTPStatus(status).phrase
            page = GATEWAY_PAGE.format(status=status, phrase=phrase)
            return web.Response(text=page, status=status, content_type="text/html")
        return self._error(call, status, OVERLOADED if status == 500 else UNAVAILABLE)

    def _spent(self, call: Call, token_id: str) -> bool:
        """Whether the daily quota was spent before this call."""
        if token_id in self._faults.spent:
            return True
        use = self._log.server_usage[call.server] if self.config.shared_limit else None
        return max(self._log.usage[token_id], use or 0) > self.config.token_limit

    async def _handle_clear(self, request: web.Request) -> web.StreamResponse:
        call, token_id = self._log.arrive(request, self._busy)
        refused, fault = self._gate(request, call, token_id, "DELETE", "clear_campaign")
        if refused is not None:
            return refused
        assert call is not None and token_id is not None  # _gate refuses tokenless calls
        if self._spent(call, token_id):
            return self._error(call, 403, TOKEN_LIMIT)
        if token_id in self._busy:
            self._log.simultaneous += 1
            return self._error(call, 403, SIMULTANEOUS)
        problem = _check_clear_params(call)
        if problem is not None:
            return self._error(call, 400, problem)
        if self.config.fail_rate and self._rng.random() < self.config.fail_rate:
            return self._error(call, 503, UNAVAILABLE)
        if fault is Fault.DROP:
            # Lost on the way back: the client cannot know that the clear goes on.
            _drop(request)
        faults, latency_s = self.config.faults, self.config.latency_ms / 1000
        await self._work(token_id, faults.slow_s if fault is Fault.SLOW else latency_s)
        assert call.type_campaign is not None and call.campaign_id is not None
        counts = self._campaign((call.server, call.type_campaign, call.campaign_id))
        if call.result is None:
            for r in counts:
                counts[r] = 0
        else:
            counts[call.result] = 0
        if fault is Fault.DROP:
            self._log.depart(call, 0)
            return web.Response(status=200)  # written nowhere: the connection is gone
        msg = f"All records has been deleted of campaign_id {call.campaign_id} successfully"
        return self._reply(call, 202, None, msg)

    async def _handle_token_info(self, request: web.Request) -> web.StreamResponse:
        call, token_id = self._log.arrive(request, self._busy)
        refused, fault = self._gate(request, call, token_id, "GET", "token_info")
        if refused is not None:
            return refused
        assert call is not None and token_id is not None
        if token_id in self._busy:
            self._log.simultaneous += 1
            return self._error(call, 403, SIMULTANEOUS)
        if fault is Fault.DROP:
            _drop(request)
            self._log.depart(call, 0)
            return web.Response(status=200)
        if fault is Fault.SLOW:
            await self._work(token_id, self.config.faults.slow_s)
        # Answers even past the quota: this is how a client learns it is spent.
        # Real token_info answers carry the code as text, whatever the clears do.
        self._log.depart(call, 200)
        body = {"code": "200", "error": None, "msg": "1 records were found"}
        return web.json_response({**body, "data": [self._info(call)]})

    async def _work(self, token_id: str, seconds: float) -> None:
        """Take ``seconds`` over a call, the token busy all along."""
        self._busy.add(token_id)
        try:
            if seconds:
                await asyncio.sleep(seconds)
        finally:
            self._busy.discard(token_id)

    def _info(self, call: Call) -> dict[str, str]:
        """The ``token_info`` record as wolkvox sends it: every value as text."""
        limit = self.config.token_limit
        # The calls before this one; this one counts once it is answered.
        own = self._log.usage[call.token_id] - 1
        shared = self._log.server_usage[call.server] - 1
        if call.token_id in self._faults.spent:
            own = shared = max(own, shared, limit)
        left = limit - (max(own, shared) if self.config.shared_limit else own)
        return {
            "description": f"simulated token {call.token_id}",
            "token_limit": f"{limit:,}",
            "token_use_today": f"{own:,}",
            "all_token_today": f"{max(shared, own):,}",
            "available_consumption_options": f"{max(0, left):,}",
        }

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


def _drop(request: web.Request) -> None:
    """Close the connection at once, no answer written."""
    transport = request.transport
    if transport is not None:
        transport.abort()


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
