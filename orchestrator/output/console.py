"""The console log: one short line per event, for a person watching a terminal.

A line reads ``02:10:05 ✓ succeeded #7 0014/predictive/3001/busy  env:TOK_A  1.2 s``:
local time, a mark for the outcome, what happened, the clear, its token's reference
and only the details that mean something for that event. A line never wraps: it is
cut at the terminal's width (80 to 120 columns) with an ellipsis, so free text such
as wolkvox's message always comes last. The run id is said once, by ``run.started``.

:class:`ConsoleLineRenderer` is the last processor of the console log's structlog
chain; the JSON log keeps every field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from structlog.typing import EventDict, WrappedLogger

#: The widest line, whatever the terminal.
MAX_WIDTH = 120
#: The narrowest line: below this a line says too little to be worth cutting further.
MIN_WIDTH = 80
#: The longest token reference shown whole (a deep ``file:`` path is cut in its middle),
#: so that a clear's duration and outcome still fit on its line.
MAX_TOKEN_LABEL = 40

#: Marks by kind of line: the Unicode one, and the ASCII a stream that cannot encode it gets.
_MARKS = {
    "started": ("▶", ">"),
    "succeeded": ("✓", "+"),
    "failed": ("✗", "x"),
    "skipped": ("–", "-"),  # noqa: RUF001 (an en dash: a hyphen reads as a minus)
    "retrying": ("↻", "~"),
    "waiting": ("⋯", "."),
    "warning": ("!", "!"),
    "info": ("·", "*"),
    "cut": ("…", "..."),
}
UNICODE_MARKS = {kind: marks[0] for kind, marks in _MARKS.items()}
ASCII_MARKS = {kind: marks[1] for kind, marks in _MARKS.items()}

_COLOURS = {
    "started": "\x1b[36m",
    "succeeded": "\x1b[32m",
    "failed": "\x1b[1;31m",
    "skipped": "\x1b[33m",
    "retrying": "\x1b[33m",
    "warning": "\x1b[33m",
}
_RESET = "\x1b[0m"

#: Fields that the clear's name and the line's head already show, or that a person
#: does not need on every line (the run id, the token's fingerprint).
_SHOWN_ELSEWHERE = frozenset(
    {
        "event",
        "timestamp",
        "level",
        "run_id",
        "seq",
        "token_id",
        "token",
        "server",
        "type_campaign",
        "campaign_id",
        "result",
    }
)

#: What a line shows after its head: its kind (the mark) and the pieces, in order.
Line = tuple[str, list[str]]


def marks_for(encoding: str | None) -> Mapping[str, str]:
    """The Unicode marks when ``encoding`` can carry them (``None``: a text buffer can)."""
    if encoding is None:
        return UNICODE_MARKS
    try:
        "".join(UNICODE_MARKS.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_MARKS
    return UNICODE_MARKS


def console_width(columns: int | None) -> int:
    """The line width for a terminal of ``columns`` (``None``: not a terminal)."""
    if columns is None:
        return MAX_WIDTH
    return max(MIN_WIDTH, min(MAX_WIDTH, columns))


class ConsoleLineRenderer:
    """structlog's last processor for the console: renders an event dict as one line.

    ``timestamp`` is expected as the local ``HH:MM:SS`` (``TimeStamper(fmt="%H:%M:%S",
    utc=False)``). Text the stream's ``encoding`` cannot carry is escaped, as are control
    characters, so an answer's message can neither break the line nor fail the write.
    """

    def __init__(
        self, *, width: int = MAX_WIDTH, encoding: str | None = None, colors: bool = False
    ) -> None:
        """Lines at most ``width`` characters, for a stream in ``encoding``, ANSI-coloured marks."""
        self._width = width
        self._encoding = encoding
        self._marks = marks_for(encoding)
        self._colors = colors

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> str:
        """The line for ``event_dict``."""
        name = str(event_dict.get("event", ""))
        describe = _LINES.get(name, _other)
        kind, pieces = describe(event_dict)
        head = _text(event_dict.get("timestamp"))
        body = "  ".join(piece for piece in pieces if piece)
        mark = self._marks.get(kind, self._marks["info"])
        if self._marks is ASCII_MARKS:
            body = body.replace(UNICODE_MARKS["cut"], ASCII_MARKS["cut"])
        room = self._width - len(head) - len(mark) - 2
        body = self._fit(self._encodable(body), room)
        if self._colors and kind in _COLOURS:
            mark = f"{_COLOURS[kind]}{mark}{_RESET}"
        return f"{head} {mark} {body}" if head else f"{mark} {body}"

    def _encodable(self, text: str) -> str:
        if self._encoding is None:
            return text
        try:
            return text.encode(self._encoding, "backslashreplace").decode(self._encoding)
        except LookupError:
            return text.encode("ascii", "backslashreplace").decode("ascii")

    def _fit(self, text: str, room: int) -> str:
        if len(text) <= room:
            return text
        cut = self._marks["cut"]
        return text[: max(0, room - len(cut))].rstrip(" :,;") + cut


def _text(value: object) -> str:
    """``value`` as text a line can hold: control characters escaped, ``None`` as nothing."""
    if value is None:
        return ""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _shown(value: object) -> bool:
    """Whether a value says anything (``None``, ``""`` and empty collections do not)."""
    if value is None:
        return False
    if isinstance(value, str | list | tuple | dict | set | frozenset):
        return len(value) > 0
    return True


def plural(count: object, noun: str) -> str:
    """``1 clear``, ``2 clears``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _duration(ms: object) -> str:
    """``52 ms``, ``9.0 s``, ``1m05s``, ``1h02m05s``."""
    if not isinstance(ms, int | float):
        return ""
    if ms < 1000:
        return f"{round(ms)} ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f} s"
    hours, rest = divmod(round(ms / 1000), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _seconds(value: object) -> str:
    """``0.6 s``, ``42.0 s``, ``1m05s``: a delay or a wait, which are never in milliseconds."""
    if not isinstance(value, int | float):
        return ""
    return f"{value:.1f} s" if value < 60 else _duration(value * 1000)


def _words(reason: object) -> str:
    """A reason as words: ``retries_exhausted`` reads ``retries exhausted``."""
    return _text(reason).replace("_", " ")


def _clear(e: EventDict) -> list[str]:
    """The clear a line is about and its token, as a person names them."""
    where = "/".join(
        _text(e[key])
        for key in ("server", "type_campaign", "campaign_id", "result")
        if _shown(e.get(key))
    )
    seq = f"#{e['seq']}" if _shown(e.get("seq")) else ""
    return [" ".join(part for part in (seq, where) if part), _token_label(e.get("token"))]


def _token_label(reference: object) -> str:
    """The token's reference; a long file path loses its middle, keeping kind and file name."""
    text = _text(reference)
    if len(text) <= MAX_TOKEN_LABEL:
        return text
    tail = MAX_TOKEN_LABEL * 2 // 3
    return f"{text[: MAX_TOKEN_LABEL - tail - 1]}…{text[-tail:]}"


def _answer(e: EventDict) -> str:
    """What the answer said, wolkvox's message first, with the HTTP status it lacks."""
    texts = [_text(e.get(key)) for key in ("msg", "error") if _shown(e.get(key))]
    said = ": ".join(dict.fromkeys(texts))  # an error that repeats the message says it once
    status, code = e.get("http_status"), e.get("code")
    heads = []
    if _shown(status) and f"HTTP {status}" not in said:
        heads.append(f"HTTP {status}")
    if _shown(code) and code != status:
        heads.append(f"code {code}")
    return ": ".join(part for part in (" ".join(heads), said) if part)


def _head(word: str) -> str:
    # Padded to the longest word, so the clears of consecutive lines line up.
    return word.ljust(9)


def _run_started(e: EventDict) -> Line:
    counts = ", ".join(
        part
        for part in (
            plural(e["clears"], "clear") if _shown(e.get("clears")) else "",
            plural(e["tokens"], "token") if _shown(e.get("tokens")) else "",
        )
        if part
    )
    plan = _text(e.get("plan"))
    what = f"{plan}: {counts}" if plan and counts else plan or counts
    if e.get("dry_run"):  # it has no run id: it is not journaled
        return "started", ["dry run started", what, "nothing is sent, not journaled"]
    where = "at the simulator, not wolkvox" if e.get("simulated") else ""
    return "started", [f"run {_text(e.get('run_id'))} started", what, where]


def _run_interrupted(e: EventDict) -> Line:
    signal = _text(e.get("signal")) or "signal"
    calls = e.get("calls_in_flight") or 0
    in_flight = plural(calls, "call") + " in flight" if calls else "no call in flight"
    resting = e.get("tokens_resting") or 0
    if e.get("cut"):
        return "warning", [_head("stopping"), f"{signal} again: {in_flight} cut, outcome unknown"]
    rest = f", {plural(resting, 'token')} resting" if resting else ""
    return "warning", [_head("stopping"), f"{signal}: {in_flight} let finish{rest}"]


def _run_finished(e: EventDict) -> Line:
    counts = ", ".join(
        f"{e[key]} {key.replace('_', ' ')}"
        for key in ("succeeded", "already_succeeded", "failed", "skipped")
        # Clears done before count only in a resumed run, where there are some.
        if _shown(e.get(key)) and (key != "already_succeeded" or e[key])
    )
    took = _duration(e.get("duration_ms"))
    summary = " in ".join(part for part in (counts, took) if part)
    exit_code = e.get("exit_code")
    ending = f"exit {exit_code}" if _shown(exit_code) else ""
    kind = "succeeded" if exit_code == 0 else "failed"
    return kind, [
        _head("finished"),
        ", ".join(p for p in (summary, ending) if p),
        _text(e.get("error")),
    ]


def _clear_started(e: EventDict) -> Line:
    attempt = e.get("attempt")
    again = f"attempt {attempt}" if isinstance(attempt, int) and attempt > 1 else ""
    return "started", [_head("started"), *_clear(e), again]


def _clear_retrying(e: EventDict) -> Line:
    # The delay before the answer: a long answer is cut, the delay never.
    delay = _seconds(e.get("delay_s"))
    if delay and e.get("retry_after_capped"):
        delay += " (Retry-After capped)"
    said = ": ".join(part for part in (f"attempt {_text(e.get('attempt'))}", _answer(e)) if part)
    return "retrying", [_head("retrying"), *_clear(e), f"in {delay}" if delay else "", said]


def _finished(kind: str) -> Callable[[EventDict], Line]:
    def line(e: EventDict) -> Line:
        if e.get("reason") == "already_succeeded":
            # Not sent again, yet done: to the operator that is no skip.
            return "succeeded", [_head("done"), *_clear(e), "already succeeded, not sent again"]
        attempts = e.get("attempts")
        took = [plural(attempts, "attempt")] if isinstance(attempts, int) and attempts > 1 else []
        if e.get("duration_ms"):
            # Rests in it (rested_ms) had lines of their own; the JSON log keeps the figure.
            took.append(_duration(e.get("duration_ms")))
        why = _words(e.get("reason"))
        if _shown(e.get("blocked_by")):
            why += f" of #{e['blocked_by']}"
        said = _answer(e) if kind != "succeeded" else ""
        return kind, [
            _head(kind),
            *_clear(e),
            ", ".join(took),
            ": ".join(part for part in (why, said) if part),
        ]

    return line


def _token_waiting(e: EventDict) -> Line:
    waited = _seconds(e.get("waited_s"))
    return "waiting", [_head("waited"), *_clear(e), f"{waited} for another process using the token"]


#: Why a token rests, in words. Only the unknown outcome adds what the call got (a timeout,
#: a dropped connection); "under maintenance" is all the maintenance answer says.
_REST_WHY = {
    "outcome_unknown": "outcome unknown",
    "in_flight_at_resume": "in flight when the run stopped",
    "maintenance": "wolkvox under maintenance",
    "busy_elsewhere": "another process's call may run",
}


def _token_resting(e: EventDict) -> Line:
    reason = _text(e.get("reason"))
    said = _answer(e) if reason == "outcome_unknown" else ""
    why = ": ".join(part for part in (_REST_WHY.get(reason, _words(reason)), said) if part)
    until = _local_time(e.get("until"))
    rest = " ".join(
        part for part in (_seconds(e.get("rest_s")), until and f"until {until}") if part
    )
    return "waiting", [_head("resting"), *_clear(e), rest, why]


def _local_time(value: object) -> str:
    """An ISO 8601 time as the local ``HH:MM:SS`` the lines start with; else as written."""
    try:
        return datetime.fromisoformat(str(value)).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return _text(value)


def _other(e: EventDict) -> Line:
    """An event without a line of its own: its name, its clear if any, its other fields."""
    level = str(e.get("level", "info"))
    kind = {"error": "failed", "critical": "failed", "warning": "warning"}.get(level, "info")
    fields = " ".join(
        f"{key}={_text(value)}"
        for key, value in e.items()
        if key not in _SHOWN_ELSEWHERE and _shown(value)
    )
    clear = _clear(e) if "seq" in e else []
    return kind, [_text(e.get("event")), *clear, fields]


_LINES: dict[str, Callable[[EventDict], Line]] = {
    "run.started": _run_started,
    "run.interrupted": _run_interrupted,
    "run.finished": _run_finished,
    "clear.started": _clear_started,
    "clear.retrying": _clear_retrying,
    "clear.succeeded": _finished("succeeded"),
    "clear.failed": _finished("failed"),
    "clear.skipped": _finished("skipped"),
    "token.waiting": _token_waiting,
    "token.resting": _token_resting,
}
