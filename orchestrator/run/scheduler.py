"""Run lanes of clears: one call at a time per token, lanes side by side.

A lane's next clear starts only after its previous one is confirmed
successful (or, with ``on_failure: continue``, definitely finished). Time comes
from an injected clock and backoff from an injected function: tests do not sleep.

A pool's lane is served by each of its tokens in turn (see
:class:`~orchestrator.run.lanes.Pool`): a token that is free takes the next
campaign not yet started and runs its clears, one at a time and in order, to the
end of its chain. A token that is rejected, has spent its quota or lost its lock
leaves the pool; the campaign it served goes back to the head of the queue, at the
clear it was on, for another token. A token named both alone and in a pool is one
token: every call holds its token's guard, so its calls stay one at a time in this
process, as its lock keeps them across processes.

Lanes run in an anyio task group, at most ``max_parallel`` at once (a capacity
limiter). Stopping is graceful first: :meth:`Scheduler.interrupt` starts nothing
new and lets calls in flight finish (a cut call leaves wolkvox working on the
token); a second :meth:`Scheduler.interrupt` cancels the cancel scopes of the calls
in flight and of the tokens' rests, and nothing else.

A token rests (each rest announced by a :class:`TokenResting`) after a call whose
outcome is unknown, before a resumed run's first call on it if its call was in flight,
before a call when its lock came with a busy mark (a holder killed or cut mid-call),
and, up to ``maintenance_wait_s``, while wolkvox says it is under maintenance.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta

import anyio

from orchestrator.errors import LockError
from orchestrator.plan.model import DEFAULT_MAINTENANCE_WAIT_S, Clear, Lane, OnFailure, Secret
from orchestrator.run.backoff import MaintenanceWindow, backoff_delay, maintenance_delay
from orchestrator.run.clock import Clock, SystemClock, utc_now
from orchestrator.run.events import (
    ClearFinished,
    ClearRetrying,
    ClearStarted,
    Listener,
    Outcome,
    Reason,
    Recorder,
    RestReason,
    TokenLeftPool,
    TokenResting,
    TokenWaiting,
)
from orchestrator.run.lanes import (
    LANE_ENDING,
    TIMED_OUT,
    Attempts,
    LaneState,
    Pool,
    Token,
    failure_reason,
)
from orchestrator.run.recording import EventSink
from orchestrator.state.locks import NoLocks, TokenLocks
from orchestrator.wolkvox.client import Answer, Verdict

#: Sends one attempt of a clear with a token and judges the answer.
Sender = Callable[[Clear, Secret], Awaitable[Answer]]

#: ``(attempt, retry_after_s) -> seconds`` to wait before the next attempt.
Backoff = Callable[[int, float | None], float]


def default_backoff(attempt: int, retry_after_s: float | None) -> float:
    """Full-jitter exponential backoff, 1 s base, 60 s cap, honouring Retry-After."""
    return backoff_delay(attempt, retry_after_s=retry_after_s)


class Scheduler:
    """Runs lanes of clears once; create one per run.

    The ``recorder`` (the journal) hears every event first: a clear's start is
    settled before its request leaves, and its end before the ``listeners`` (the
    log, the report, the display) hear of it. Listeners are called synchronously,
    in the order things happened.
    """

    def __init__(
        self,
        lanes: Sequence[Lane],
        send: Sender,
        *,
        max_parallel: int,
        cooldown_s: float,
        listeners: Iterable[Listener] = (),
        recorder: Recorder | None = None,
        clock: Clock | None = None,
        backoff: Backoff = default_backoff,
        locks: TokenLocks | None = None,
        already_succeeded: frozenset[int] = frozenset(),
        cooling_tokens: frozenset[str] = frozenset(),
        maintenance_wait_s: float = DEFAULT_MAINTENANCE_WAIT_S,
        maintenance_backoff: Backoff = maintenance_delay,
        wall_clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._lanes = lanes
        self._send = send
        self._max_parallel = max(1, max_parallel)
        self._cooldown_s = cooldown_s
        self._events = EventSink(recorder, listeners, lambda: self._stop(Reason.RECORDING_FAILED))
        self._clock = clock or SystemClock()
        self._backoff = backoff
        self._maintenance_wait_s = maintenance_wait_s
        self._maintenance_backoff = maintenance_backoff
        self._wall_clock = wall_clock
        self._locks: TokenLocks = locks or NoLocks()
        # A resumed run: clears that succeeded before are not sent again, and tokens whose
        # call was in flight when the process died rest before their first use.
        self._already_succeeded = already_succeeded
        self._cooling_tokens = cooling_tokens
        self._halt_reason: Reason | None = None
        # Each wait, call and rest runs in its own cancel scope: a halt ends the waits,
        # a second interrupt cuts the calls and the rests.
        self._waits: set[anyio.CancelScope] = set()
        self._calls: set[anyio.CancelScope] = set()
        self._rests: set[anyio.CancelScope] = set()
        self._interrupts = 0
        self._calls_sent = 0
        self._tokens: dict[str, Token] = {}

    @property
    def in_flight(self) -> int:
        """How many calls are waiting for their answer right now."""
        return len(self._calls)

    @property
    def resting(self) -> int:
        """How many tokens are kept unused after a call whose outcome is unknown."""
        return len(self._rests)

    @property
    def recording_error(self) -> Exception | None:
        """The first error a listener raised; the run halted on it."""
        return self._events.error

    @property
    def calls_sent(self) -> int:
        """How many calls left this process."""
        return self._calls_sent

    def interrupt(self) -> None:
        """Stop starting clears; on the second call, also cut the calls in flight and rests."""
        self._interrupts += 1
        self._stop(Reason.INTERRUPTED)
        if self._cutting:
            for scope in self._calls | self._rests:
                scope.cancel()

    async def run(self) -> None:
        """Run every lane to its end; at most ``max_parallel`` tokens at once, in lane order."""
        slots = anyio.CapacityLimiter(self._max_parallel)
        async with anyio.create_task_group() as lanes:
            for lane in self._lanes:
                # The limiter serves its waiters first come, first served: lane order.
                if lane.pool:
                    tokens = [self._token(t.token_id, t.secret) for t in lane.pool]
                    pool = Pool(lane, tokens, self._maintenance_window)
                    for token in tokens:
                        lanes.start_soon(self._serve_pool, pool, token, slots)
                else:
                    lanes.start_soon(self._lane, lane, slots)

    def _token(self, token_id: str, secret: Secret | None) -> Token:
        token = self._tokens.get(token_id)
        if token is None:
            token = self._tokens[token_id] = Token(token_id, secret)
            token.cooling = token_id in self._cooling_tokens
        return token

    def _maintenance_window(self) -> MaintenanceWindow:
        return MaintenanceWindow(self._maintenance_wait_s, self._maintenance_backoff)

    @property
    def _cutting(self) -> bool:
        return self._interrupts > 1

    def _stop(self, reason: Reason) -> None:
        # The first reason wins: an abort that came before a signal stays an abort.
        if self._halt_reason is None:
            self._halt_reason = reason
        for scope in self._waits:
            scope.cancel()

    async def _lane(self, lane: Lane, slots: anyio.CapacityLimiter) -> None:
        async with slots:
            state = LaneState(
                self._token(lane.token_id, lane.secret), lane.clears, self._maintenance_window()
            )
            try:
                await self._run_clears(state)
            finally:
                self._locks.forget(lane.token_id)  # its lock file is not needed again

    async def _serve_pool(self, pool: Pool, token: Token, slots: anyio.CapacityLimiter) -> None:
        """Take the pool's next campaign whenever this token is free, until none is left."""
        try:
            while True:
                async with slots:
                    change = pool.next_change()
                    if not pool.queue and pool.running == 0:
                        return
                    if pool.queue:
                        campaign = pool.queue.popleft()
                        campaign.token, campaign.left = token, None
                        pool.running += 1
                        try:
                            await self._run_clears(campaign)
                            if campaign.left is not None:
                                # Still counted as running: no token may stop waiting before
                                # the campaign is handed back.
                                await self._leave_pool(pool, token, campaign)
                        finally:
                            pool.running -= 1
                            pool.changed()
                        if campaign.left is not None:
                            return
                        continue
                # Campaigns are under way on other tokens: one may yet be handed back.
                await change.wait()
        finally:
            self._locks.forget(token.token_id)

    async def _leave_pool(self, pool: Pool, token: Token, campaign: LaneState) -> None:
        """Take ``token`` out of ``pool``; hand its campaign on, or skip the rest if it is empty."""
        reason = campaign.left
        assert reason is not None
        pool.tokens.remove(token)
        clear = campaign.clears[min(campaign.next, len(campaign.clears) - 1)]
        self._events.emit(
            TokenLeftPool(clear, token.token_id, pool.pool_id, reason, len(pool.tokens))
        )
        if campaign.next < len(campaign.clears):
            pool.queue.appendleft(campaign)  # it goes on first, where it stopped
        if pool.tokens:
            return
        while pool.queue:
            rest = pool.queue.popleft()
            rest.left, rest.blocked = None, rest.blocked or reason
            await self._run_clears(rest)

    async def _run_clears(self, state: LaneState) -> None:
        while state.next < len(state.clears) and state.left is None:
            clear = state.clears[state.next]
            if clear.seq in self._already_succeeded:
                await self._skip(state, clear, Reason.ALREADY_SUCCEEDED)
                state.next += 1
                continue
            token = state.token
            if token.cooling and state.blocked is None and self._halt_reason is None:
                # The earlier attempt's call may still run at wolkvox: rest before the first.
                # Under the token's guard: a lane sharing the token in this process waits too.
                async with token.guard:
                    if token.cooling:
                        token.cooling = False
                        if self._cooldown_s > 0:
                            self._announce_rest(
                                clear, state, RestReason.IN_FLIGHT_AT_RESUME, self._cooldown_s, None
                            )
                            await self._pause(self._cooldown_s)
            skip = state.blocked or self._halt_reason
            if skip is not None:
                await self._skip_or_end(state, clear, skip)
                state.next += 1
                continue
            finished = await self._run_clear(state, clear)
            if finished is None:
                return  # its token left the pool mid-clear: another token carries on
            state.next += 1
            self._after(state, clear, finished)

    async def _skip_or_end(self, state: LaneState, clear: Clear, reason: Reason) -> None:
        """Skip ``clear``, unless a token that left the pool made attempts of it: it failed."""
        tries, state.tries = state.tries, None
        if tries is None or tries.count == 0:
            await self._skip(state, clear, reason)
            return
        tries.reason = reason
        await self._finish(state, clear, Outcome.FAILED, tries)

    def _after(self, state: LaneState, clear: Clear, finished: ClearFinished) -> None:
        if finished.outcome is not Outcome.FAILED or finished.reason is self._halt_reason:
            # A clear cut by a halt is not the lane's failure: the halt's reason covers the rest.
            return
        if state.blocked is not None:
            return
        lane_ending = finished.reason in LANE_ENDING.values()
        if lane_ending:
            state.blocked = finished.reason
        elif clear.on_failure is OnFailure.STOP:
            state.blocked, state.blocked_by = Reason.BLOCKED_BY_FAILURE, clear.seq
        elif clear.on_failure is OnFailure.ABORT:
            self._stop(Reason.ABORTED)

    async def _pause(self, seconds: float) -> bool:
        """Sleep unless the run halts first; return True when it halted."""
        if self._halt_reason is None and seconds > 0:
            with anyio.CancelScope() as scope:
                self._waits.add(scope)
                try:
                    await self._clock.sleep(seconds)
                finally:
                    self._waits.discard(scope)
        return self._halt_reason is not None

    async def _run_clear(self, state: LaneState, clear: Clear) -> ClearFinished | None:
        """Run ``clear`` to its end; ``None`` when its token left the pool before it ended."""
        tries, state.tries = state.tries or Attempts(started=self._clock.monotonic()), None
        tries.reason = tries.error = None  # a token that left the pool took its reason along
        while True:
            answer = await self._locked_call(state, clear, tries)
            if answer is None and state.left is not None:
                state.tries = tries  # nothing came back: another token of the pool sends it
                return None
            if answer is None:
                # Nothing sent at all is a skip; a clear with an attempt behind it has failed.
                outcome = Outcome.FAILED if tries.count else Outcome.SKIPPED
                return await self._finish(state, clear, outcome, tries)
            tries.answer = answer
            maintenance = answer.verdict is Verdict.MAINTENANCE
            if maintenance:
                tries.maintenance += 1
            else:
                state.maintenance.close()
            if answer.verdict is Verdict.SUCCEEDED:
                return await self._finish(state, clear, Outcome.SUCCEEDED, tries)
            token_ending = LANE_ENDING.get(answer.verdict)
            if state.pool is not None and token_ending is not None:
                # wolkvox refused the token, not the clear: another token may send it.
                tries.handed_over += 1
                self._token_lost(state, token_ending)
            if state.left is not None and (
                token_ending or answer.verdict in (Verdict.RETRY, Verdict.MAINTENANCE)
            ):
                state.tries = tries
                return None
            if not maintenance and (
                answer.verdict is not Verdict.RETRY or tries.retried > clear.retries
            ):
                tries.reason = failure_reason(answer)
                return await self._finish(state, clear, Outcome.FAILED, tries)
            if state.blocked is Reason.LOCK_LOST:
                tries.reason = Reason.LOCK_LOST
                return await self._finish(state, clear, Outcome.FAILED, tries)
            if maintenance:
                halted = await self._wait_out_maintenance(state, clear, tries, answer)
            else:
                halted = await self._wait_to_retry(state, clear, tries, answer)
            if halted:
                tries.reason = self._halt_reason or Reason.MAINTENANCE
                return await self._finish(state, clear, Outcome.FAILED, tries)

    async def _locked_call(self, state: LaneState, clear: Clear, tries: Attempts) -> Answer | None:
        """Send one attempt while holding the token's lock; None when nothing came back."""
        token_id = state.token.token_id
        try:
            async with state.token.guard, self._locks.hold(token_id) as lease:
                if self._halt_reason is not None:
                    # The run halted while this lane waited for another process's call.
                    tries.reason = self._halt_reason
                    return None
                if lease.waited_s > 0:
                    self._events.emit(TokenWaiting(clear, token_id, lease.waited_s))
                if lease.busy_left_s > 0:
                    # A holder killed or cut mid-call left its mark: its call may still run.
                    why, began = RestReason.BUSY_ELSEWHERE, self._clock.monotonic()
                    self._announce_rest(clear, state, why, lease.busy_left_s, None)
                    halted = await self._pause(lease.busy_left_s)
                    tries.rested_s += self._clock.monotonic() - began
                    if halted:
                        tries.reason = self._halt_reason
                        return None
                # Counted once it leaves: an attempt stopped here (or by a LockError) is none.
                started = ClearStarted(clear, token_id, tries.count + 1)
                if await self._events.record_start(started):
                    self._events.emit(started, recorded=True)
                if self._events.error is not None:
                    # The in-flight mark was not recorded: this attempt must not leave.
                    tries.reason = Reason.RECORDING_FAILED
                    return None
                # Marks the token busy, for every process, until this call's deadline plus
                # the cooldown, so one that dies mid-call still keeps the others off.
                if not await lease.confirm(busy_s=clear.timeout_s + self._cooldown_s):
                    # Redis lost the lease, or cannot vouch for it: this attempt must not leave.
                    tries.reason = Reason.LOCK_LOST
                    self._token_lost(state, Reason.LOCK_LOST)
                    return None
                tries.count += 1
                self._calls_sent += 1
                answer = await self._call(state, clear, tries)
                # The busy mark goes once wolkvox surely no longer works on the token; a
                # call or rest cut short leaves it for whoever takes the token next.
                if answer is not None and (
                    not answer.outcome_unknown or await self._rest(state, clear, tries, answer)
                ):
                    await lease.idle()
        except LockError as exc:
            tries.reason, tries.error = Reason.LOCK_LOST, str(exc)
            self._token_lost(state, Reason.LOCK_LOST)
            return None
        if lease.lost:
            # Someone else may now hold the token: stop the lane rather than risk two callers.
            self._token_lost(state, Reason.LOCK_LOST)
        return answer

    def _token_lost(self, state: LaneState, reason: Reason) -> None:
        """The token cannot be used again: its lane stops, or it leaves its pool."""
        if state.pool is None:
            state.blocked = reason
        elif state.left is None:
            state.left = reason

    async def _call(self, state: LaneState, clear: Clear, tries: Attempts) -> Answer | None:
        """One request within the clear's ``timeout_s``; ``None`` when a second interrupt cut it."""
        secret = state.token.secret
        assert secret is not None, "a lane without a token cannot send"
        with anyio.move_on_after(clear.timeout_s) as scope:
            if self._cutting:
                scope.cancel()
            self._calls.add(scope)
            try:
                return await self._send(clear, secret)
            finally:
                self._calls.discard(scope)
        if not self._cutting:
            return TIMED_OUT  # the deadline passed: wolkvox may still be working on it
        tries.error, tries.reason = "interrupted", Reason.INTERRUPTED
        return None  # the lane itself goes on, to skip what is left

    async def _rest(self, state: LaneState, clear: Clear, tries: Attempts, answer: Answer) -> bool:
        """Keep the token unused for the cooldown after a call whose outcome is unknown.

        wolkvox may still be working on it. The rest is taken while the token's lock is
        held, so other processes keep off the token too. A halt does not shorten it, since
        the lock would pass to another process while the server still works on the token;
        only a second interrupt cuts it, as it cuts the calls in flight. True: not cut.
        """
        if self._cooldown_s > 0:
            self._announce_rest(clear, state, RestReason.OUTCOME_UNKNOWN, self._cooldown_s, answer)
        began = self._clock.monotonic()
        with anyio.CancelScope() as scope:
            if self._cutting:
                scope.cancel()
            self._rests.add(scope)
            try:
                await self._clock.sleep(self._cooldown_s)
            finally:
                self._rests.discard(scope)
                tries.rested_s += self._clock.monotonic() - began
        return not scope.cancelled_caught

    async def _wait_to_retry(
        self, state: LaneState, clear: Clear, tries: Attempts, answer: Answer
    ) -> bool:
        # Any rest the token needed is over by now: the delay is the backoff alone.
        delay = self._backoff(tries.retried, answer.retry_after_s)
        self._events.emit(ClearRetrying(clear, state.token.token_id, tries.count, delay, answer))
        return await self._pause(delay)

    async def _wait_out_maintenance(
        self, state: LaneState, clear: Clear, tries: Attempts, answer: Answer
    ) -> bool:
        """Rest through wolkvox's maintenance; True when the run halted or the wait is spent."""
        now = self._clock.monotonic()
        delay = state.maintenance.next_wait(now, answer.retry_after_s)
        if delay is None:
            return True
        self._announce_rest(clear, state, RestReason.MAINTENANCE, delay, answer)
        try:
            return await self._pause(delay)
        finally:
            tries.rested_s += self._clock.monotonic() - now

    def _announce_rest(
        self,
        clear: Clear,
        state: LaneState,
        why: RestReason,
        seconds: float,
        answer: Answer | None,
    ) -> None:
        until = self._wall_clock() + timedelta(seconds=seconds)
        self._events.emit(TokenResting(clear, state.token.token_id, why, seconds, until, answer))

    async def _finish(
        self, state: LaneState, clear: Clear, outcome: Outcome, tries: Attempts
    ) -> ClearFinished:
        ended = tries.ended(clear, state.token.token_id, outcome, self._clock.monotonic())
        return await self._events.end(ended)

    async def _skip(self, state: LaneState, clear: Clear, reason: Reason) -> None:
        await self._events.end(state.skipped(clear, reason))
