"""Benchmark orchestrator against the critical path, a bare aiohttp loop and the floor.

    .venv/bin/python benchmarks/bench.py [--scenario latency|cpu|scale|startup|all]
                                         [--repeat N] [--smoke] [--profile pyinstrument|py-spy]
                                         [--instructions] [--floor] [--settle S] [--keep]

Every scenario starts the simulator in its own process (``orchestrator
simulate --port 0 --latency-ms X``), writes a plan of L tokens x C clears
(and the same calls as a job file for ``benchmarks/bare.py``) and runs, side by
side in the same invocation, (a) ``orchestrator run PLAN --yes --log-format
json`` as a user would and (b) the bare loop; with ``--floor``, in the latency and
cpu scenarios, also (c) ``benchmarks/floor.py``, the bare loop plus the work the
issues require of every clear. Figures come from the
simulator's stats (busy window, per-call timeline, connections per token) and
from the child's own rusage (``os.wait4``: CPU, peak RSS). Each run is
repeated (rotating which goes first) and medians are quoted; results go to
``benchmarks/results/<scenario>.json``. See docs/performance.md.

Exit status: 0 when every scenario could be measured (missed targets included),
1 when the harness or a measured run broke (wrong number of calls, non-zero
exit of a child, timeout), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import hashlib
import itertools
import json
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
BARE = BENCH_DIR / "bare.py"
FLOOR = BENCH_DIR / "floor.py"
EXAMPLE_PLAN = ROOT / "plans" / "example.yaml"

#: The ``results`` values a campaign can list (one clear each), as in orchestrator.plan.model.
RESULTS = (
    "no-answer",
    "answer-machine",
    "abandon",
    "busy",
    "congestion",
    "unknown",
    "failed",
    "do-not-call",
    "chanunavail",
    "answer",
)
SERVER = "0014"
TYPE_CAMPAIGN = "predictive"
CAMPAIGN_PATH = "/api/v2/campaign.php"

#: A plan like the README's, for the start-up figure when plans/example.yaml is absent.
README_PLAN = """\
version: 1
settings:
  max_parallel_tokens: 32
  cooldown_s: 60
defaults:
  server: 0014
  token_env: WOLKVOX_TOKEN
  type_campaign: predictive
campaigns:
  - campaign_id: 3001
    results: [no-answer, busy, abandon]
    tags: [nightly]
  - campaign_id: 3002
    type_campaign: preview
    results: all
  - campaign_id: 4001
    server: 0038
    token_env: WOLKVOX_TOKEN_OPS
    results: [failed]
    on_failure: continue
"""


class HarnessError(Exception):
    """The harness, or a run it measures, broke: figures cannot be trusted."""


# ----------------------------------------------------------------------------- children


def compile_sources() -> None:
    """Write orchestrator's bytecode, as ``pip install`` does for a regular install.

    An editable install writes it on first import, unless ``PYTHONDONTWRITEBYTECODE``
    is set (as on the development VM): then every run compiled each module again,
    about 40 ms of start-up that no installed copy pays.
    """
    if not compileall.compile_dir(ROOT / "orchestrator", quiet=1):
        raise HarnessError("could not compile orchestrator")
    print("bytecode: orchestrator compiled, as an installed copy has it")


def orchestrator_cmd() -> list[str]:
    """The installed console script, as a user runs it (``python -m`` as a fallback)."""
    script = Path(sys.executable).parent / "orchestrator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


@dataclass
class Child:
    """One finished child process, measured from outside."""

    exit_code: int
    spawned: float  # time.monotonic() just before the spawn
    wall_s: float  # spawn to exit
    user_s: float
    sys_s: float
    maxrss_mb: float
    timed_out: bool = False

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


#: The soft limit of open files most Linux systems give a process (this VM gives 20,000).
#: Measured children start with it, so a tool that needs more must raise it itself, as
#: it would have to on an operator's machine.
CHILD_OPEN_FILES = 1024


def _default_open_files() -> None:
    """In the child, before exec: the soft limit of open files a default system gives."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > CHILD_OPEN_FILES:
        resource.setrlimit(resource.RLIMIT_NOFILE, (CHILD_OPEN_FILES, hard))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_child(
    cmd: list[str],
    *,
    env: dict[str, str],
    stdout: Path | None,
    stderr: Path,
    timeout_s: float,
    default_open_files: bool = True,
) -> Child:
    """Run ``cmd`` to its end in a session of its own; reap it with ``os.wait4`` for rusage.

    With ``default_open_files`` it starts with :data:`CHILD_OPEN_FILES`. On timeout the
    whole process group is killed; the child never outlives this call.
    """
    out = open(stdout, "wb") if stdout is not None else open(os.devnull, "wb")  # noqa: SIM115
    err = open(stderr, "wb")  # noqa: SIM115
    reaped: dict[str, Any] = {}
    try:
        spawned = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=_default_open_files if default_open_files else None,
        )

        def reap() -> None:
            try:
                reaped["result"] = os.wait4(proc.pid, 0)
                reaped["at"] = time.monotonic()
            except BaseException as exc:  # pragma: no cover - reported below
                reaped["error"] = exc

        waiter = threading.Thread(target=reap, name=f"wait4-{proc.pid}", daemon=True)
        waiter.start()
        try:
            waiter.join(timeout_s)
            timed_out = waiter.is_alive()
            if timed_out:
                _kill_group(proc.pid)
                waiter.join(30)
        except BaseException:
            _kill_group(proc.pid)
            waiter.join(30)
            raise
        if "result" not in reaped:
            raise HarnessError(f"could not reap {cmd[0]}: {reaped.get('error')!r}")
        _, status, usage = reaped["result"]
        proc.returncode = os.waitstatus_to_exitcode(status)
        # Grandchildren (none expected) must not outlive the run either.
        _kill_group(proc.pid)
        return Child(
            exit_code=proc.returncode,
            spawned=spawned,
            wall_s=reaped["at"] - spawned,
            user_s=usage.ru_utime,
            sys_s=usage.ru_stime,
            maxrss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
            timed_out=timed_out,
        )
    finally:
        out.close()
        err.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- simulator

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SimulatorProcess:
    """``orchestrator simulate`` in its own process on a free loopback port."""

    def __init__(self, latency_ms: float, workdir: Path, env: dict[str, str]) -> None:
        self.latency_ms = latency_ms
        self._log = workdir / f"simulator-{latency_ms:g}ms.log"
        self._env = env
        self._proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""  # http://127.0.0.1:PORT/wv{server}
        self.root = ""  # http://127.0.0.1:PORT

    def __enter__(self) -> SimulatorProcess:
        cmd = [
            *orchestrator_cmd(),
            "simulate",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--latency-ms",
            f"{self.latency_ms:g}",
        ]
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=self._env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                match = re.search(
                    r"simulating wolkvox at (http://127\.0\.0\.1:\d+)(\S*)", _tail(self._log)
                )
                if match:
                    self.root, self.base_url = match.group(1), match.group(1) + match.group(2)
                    break
                if self._proc.poll() is not None:
                    raise HarnessError(f"simulator exited at start:\n{_tail(self._log)}")
                time.sleep(0.02)
            else:
                raise HarnessError(f"simulator did not start in 20 s:\n{_tail(self._log)}")
            self.stats(timeline=False)  # answers
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)  # serve() stops cleanly on KeyboardInterrupt
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        _kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def _request(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.root + path, method=method)
        with _NO_PROXY.open(request, timeout=120) as answer:
            return json.loads(answer.read())

    def stats(self, *, timeline: bool) -> dict[str, Any]:
        return self._request("GET", f"/_simulator/stats?timeline={int(timeline)}")  # type: ignore[no-any-return]

    def reset(self) -> None:
        self._request("POST", "/_simulator/reset")

    def cpu_s(self) -> float | None:
        """The simulator's CPU seconds so far (Linux /proc), to see whether it saturates."""
        if self._proc is None:
            return None
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


def machine_busy_s() -> float | None:
    """CPU seconds spent by every process on the machine so far (Linux /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    # guest time is already counted in user/nice
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """A plan, the same calls as a bare-loop job, and the environment holding the tokens."""

    name: str
    tokens: int
    clears: int  # per token
    parallel: int
    plan: Path
    job: Path
    env: dict[str, str]

    @property
    def total(self) -> int:
        return self.tokens * self.clears


def make_workload(
    workdir: Path, name: str, tokens: int, clears: int, parallel: int, base_url: str
) -> Workload:
    """Write a plan of ``tokens`` x ``clears`` and the equivalent bare-loop job.

    Each token has its own ``token_env`` (BENCH_TOKEN_i) and distinct value; each
    campaign has its own id and lists up to 10 results (one clear each), so a
    token with more than 10 clears gets several campaigns.
    """
    nonce = secrets.token_hex(4)
    env = dict(os.environ)
    lines = [
        "version: 1",
        "settings:",
        f"  max_parallel_tokens: {parallel}",
        f'  base_url: "{base_url}"',
        "defaults:",
        f"  server: {SERVER}",
        f"  type_campaign: {TYPE_CAMPAIGN}",
        "campaigns:",
    ]
    lanes = []
    server_base = base_url.replace("{server}", SERVER).rstrip("/")
    campaign_id = 100_000
    seq = 0  # a clear's seq: its place in the plan, campaigns and results in order
    for i in range(1, tokens + 1):
        var = f"BENCH_TOKEN_{i}"
        env[var] = f"bench-{nonce}-{i:06d}"
        urls: list[str] = []
        named: list[tuple[int, str, str]] = []
        left = clears
        while left > 0:
            campaign_id += 1
            results = RESULTS[: min(left, len(RESULTS))]
            left -= len(results)
            lines += [
                f"  - campaign_id: {campaign_id}",
                f"    token_env: {var}",
                f"    results: [{', '.join(results)}]",
            ]
            urls += [
                f"{server_base}{CAMPAIGN_PATH}?api=clear_campaign&type_campaign={TYPE_CAMPAIGN}"
                f"&campaign_id={campaign_id}&result={result}"
                for result in results
            ]
            for result in results:
                seq += 1
                named.append((seq, str(campaign_id), result))
        lanes.append({"token_env": var, "urls": urls, "clears": named})
    plan = workdir / f"{name}.yaml"
    plan.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job = workdir / f"{name}.job.json"
    document = {
        "max_parallel": parallel,
        "server": SERVER,
        "type_campaign": TYPE_CAMPAIGN,
        "lanes": lanes,
    }
    job.write_text(json.dumps(document), encoding="utf-8")
    return Workload(name, tokens, clears, parallel, plan, job, env)


# ---------------------------------------------------------------------------- measuring


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Tools:
    """What this build of orchestrator offers, found from ``orchestrator run --help``."""

    state_dir: bool


def probe_tools(workdir: Path) -> Tools:
    help_text = subprocess.run(
        [*orchestrator_cmd(), "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    ).stdout
    return Tools(state_dir="--state-dir" in help_text)


def settle(max_wait_s: float) -> float:
    """Wait (at most ``max_wait_s``) until other processes leave the CPUs nearly idle.

    Returns the seconds waited. The machine is shared: a build or a test suite
    running beside a measurement would be measured too.
    """
    if max_wait_s <= 0:
        return 0.0
    started = time.monotonic()
    capacity = os.cpu_count() or 1
    while time.monotonic() - started < max_wait_s:
        before = machine_busy_s()
        time.sleep(1.0)
        after = machine_busy_s()
        if before is None or after is None or (after - before) / capacity < 0.05:
            break
    return time.monotonic() - started


def run_variant(
    variant: str,
    work: Workload,
    sim: SimulatorProcess,
    workdir: Path,
    tools: Tools,
    label: str,
    *,
    timeline: bool = True,
    timeout_s: float = 300,
    wrap: list[str] | None = None,
    under: list[str] | None = None,
) -> dict[str, Any]:
    """One measured run of ``orchestrator``, ``bare`` or ``floor`` on ``work``; its figures.

    ``wrap`` replaces orchestrator's launcher (a profiler's ``python -m ...
    orchestrator``); ``under`` runs either variant's Python under a tool (valgrind).
    """
    sim.reset()
    out = workdir / f"{label}.stdout"
    err = workdir / f"{label}.stderr"
    state_dir: Path | None = None
    if variant == "orchestrator":
        cmd = [*orchestrator_cmd(), "run", str(work.plan), "--yes", "--log-format", "json"]
        if tools.state_dir:
            # One state directory per workload, kept across its runs, as a nightly job keeps
            # its own: lock files exist after the first run and the journal holds history.
            state_dir = workdir / f"{work.name}.state"
            cmd += ["--state-dir", str(state_dir)]
        if under is not None:  # the tool needs the interpreter, not the console script
            wrap = [sys.executable, "-m", "orchestrator"]
        if wrap is not None:  # a profiler: python -m orchestrator under it
            cmd = [*wrap, *cmd[1:]]
    elif variant == "floor":
        # Its own state directory, kept across runs like orchestrator's.
        cmd = [sys.executable, str(FLOOR), str(work.job), str(workdir / f"{work.name}.floor")]
    else:
        cmd = [sys.executable, str(BARE), str(work.job)]
    if under is not None:
        cmd = [*under, *cmd]
    sim_cpu_before, busy_before = sim.cpu_s(), machine_busy_s()
    child = run_child(
        cmd,
        env=work.env,
        stdout=out,
        stderr=err,
        timeout_s=timeout_s,
        # valgrind makes the soft limit it starts with its client's hard limit.
        default_open_files=under is None,
    )
    sim_cpu_after, busy_after = sim.cpu_s(), machine_busy_s()
    if child.timed_out:
        raise HarnessError(f"{variant} run timed out after {timeout_s:.0f} s: {_tail(err)}")
    if child.exit_code != 0:
        raise HarnessError(f"{variant} run exited {child.exit_code}:\n{_tail(err)}")
    stats = sim.stats(timeline=timeline)
    expected = work.total
    problems = []
    if stats["total_calls"] != expected:
        problems.append(f"{stats['total_calls']} calls reached the simulator, expected {expected}")
    if stats["statuses"] != {"200": expected}:
        problems.append(f"answers {stats['statuses']}, expected {expected} x 200")
    if stats["max_in_flight_per_token"] > 1 or stats["simultaneous_rejections"]:
        problems.append("a token was used by two calls at once")
    log_lines, outcomes = _count_outcomes(out, variant)
    if outcomes != expected:
        problems.append(f"{outcomes} success lines on stdout, expected {expected}")
    if problems:
        raise HarnessError(f"{variant} run is not valid: " + "; ".join(problems))

    connections = list(stats["connections_per_token"].values())
    figures: dict[str, Any] = {
        "busy_window_s": stats["busy_window_s"],
        "cpu_s": child.cpu_s,
        "cpu_user_s": child.user_s,
        "cpu_sys_s": child.sys_s,
        "cpu_per_1k_clears_s": child.cpu_s / expected * 1000,
        "peak_rss_mb": child.maxrss_mb,
        "wall_s": child.wall_s,
        "connections_per_token_max": max(connections),
        "connections_per_token_mean": statistics.fmean(connections),
        "tokens_on_one_connection": sum(1 for n in connections if n == 1) / len(connections),
        "simulator_cpu_s": (
            None
            if sim_cpu_before is None or sim_cpu_after is None
            else sim_cpu_after - sim_cpu_before
        ),
        "foreign_cpu_share": _foreign_share(
            busy_before, busy_after, child, sim_cpu_before, sim_cpu_after
        ),
        "stdout_lines": log_lines,
        "stdout_bytes": out.stat().st_size,
    }
    if timeline:
        figures.update(_timeline_figures(stats["timeline"], child))
    if state_dir is not None:
        journal = state_dir / "journal.sqlite3"
        figures["journal_bytes"] = journal.stat().st_size if journal.exists() else None
    with contextlib.suppress(OSError):
        out.unlink()  # big files: keep the disk tidy; counts are kept above
    return figures


def _foreign_share(
    busy_before: float | None,
    busy_after: float | None,
    child: Child,
    sim_before: float | None,
    sim_after: float | None,
) -> float | None:
    """Share of the machine's CPU capacity used by *other* processes during the run.

    Other engineers' builds and tests share this machine: a run measured while
    they were busy says so in its figures instead of silently looking slow.
    """
    if None in (busy_before, busy_after, sim_before, sim_after) or child.wall_s <= 0:
        return None
    others = (busy_after - busy_before) - child.cpu_s - (sim_after - sim_before)  # type: ignore[operator]
    return max(0.0, others) / (child.wall_s * (os.cpu_count() or 1))


def _count_outcomes(path: Path, variant: str) -> tuple[int, int]:
    """(lines, success lines) of a run's stdout, counted without parsing every line."""
    needle = b'"event": "ok"' if variant == "bare" else b'"event": "clear.succeeded"'
    lines = outcomes = 0
    with open(path, "rb") as handle:
        for line in handle:
            lines += 1
            if needle in line:
                outcomes += 1
    return lines, outcomes


def _timeline_figures(timeline: list[dict[str, Any]], child: Child) -> dict[str, float]:
    by_token: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in timeline:
        by_token[call["token_id"]].append(call)
    gaps_ms: list[float] = []
    for calls in by_token.values():
        calls.sort(key=lambda c: c["arrived"])
        gaps_ms += [(b["arrived"] - a["departed"]) * 1000 for a, b in itertools.pairwise(calls)]
    first = min(c["arrived"] for c in timeline)
    return {
        # time.monotonic() is system-wide on Linux: the simulator's clock is ours.
        "first_request_s": first - child.spawned,
        "gap_median_ms": statistics.median(gaps_ms) if gaps_ms else math.nan,
        "gap_p99_ms": percentile(gaps_ms, 99),
        "gap_max_ms": max(gaps_ms) if gaps_ms else math.nan,
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {
        k: statistics.median(r[k] for r in runs if r.get(k) is not None)
        for k in keys
        if any(r.get(k) is not None for r in runs)
    }


# ------------------------------------------------------------------------------ targets


@dataclass
class Row:
    """One printed figure: orchestrator and bare medians, their ratio, a target and its verdict."""

    figure: str
    key: str
    unit: str
    orchestrator: float | None
    bare: float | None = None
    target: str = ""
    passed: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.orchestrator is None or not self.bare:
            return None
        return self.orchestrator / self.bare


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "%":
        return f"{value * 100:.0f} %"
    if unit == "G":
        return f"{value:.3f} G"
    return f"{value:g}"


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n== {title}")
    head = f"{'figure':<44} {'orchestrator':>14} {'bare':>12} {'ratio':>7}  {'target':<26} result"
    print(head)
    print("-" * len(head))
    for row in rows:
        ratio = f"{row.ratio:.3f}" if row.ratio is not None else "-"
        verdict = "" if row.passed is None else ("PASS" if row.passed else "MISS")
        print(
            f"{row.figure:<44} {_fmt(row.orchestrator, row.unit):>14}"
            f" {_fmt(row.bare, row.unit):>12}"
            f" {ratio:>7}  {row.target:<26} {verdict}"
        )
    sys.stdout.flush()


def run_rows(orch: dict[str, float], bare: dict[str, float], critical_path_s: float) -> list[Row]:
    """The figures every run scenario reports, without targets."""
    rows = [
        Row("critical path (C x latency)", "critical_path_s", "s", critical_path_s, None),
        Row(
            "API busy window (first in, last out)",
            "busy_window_s",
            "s",
            orch.get("busy_window_s"),
            bare.get("busy_window_s"),
        ),
        Row(
            "gap answer -> next request, median",
            "gap_median_ms",
            "ms",
            orch.get("gap_median_ms"),
            bare.get("gap_median_ms"),
        ),
        Row(
            "gap answer -> next request, p99",
            "gap_p99_ms",
            "ms",
            orch.get("gap_p99_ms"),
            bare.get("gap_p99_ms"),
        ),
        Row(
            "CPU s per 1,000 clears (user+sys)",
            "cpu_per_1k_clears_s",
            "s",
            orch.get("cpu_per_1k_clears_s"),
            bare.get("cpu_per_1k_clears_s"),
        ),
        Row(
            "peak memory (ru_maxrss)",
            "peak_rss_mb",
            "MB",
            orch.get("peak_rss_mb"),
            bare.get("peak_rss_mb"),
        ),
        Row(
            "process start -> first request",
            "first_request_s",
            "s",
            orch.get("first_request_s"),
            bare.get("first_request_s"),
        ),
        Row("process wall time", "wall_s", "s", orch.get("wall_s"), bare.get("wall_s")),
        Row(
            "connections per token, max",
            "connections_per_token_max",
            "",
            orch.get("connections_per_token_max"),
            bare.get("connections_per_token_max"),
        ),
        Row(
            "tokens that kept one connection",
            "tokens_on_one_connection",
            "%",
            orch.get("tokens_on_one_connection"),
            bare.get("tokens_on_one_connection"),
        ),
        Row(
            "simulator CPU during the run",
            "simulator_cpu_s",
            "s",
            orch.get("simulator_cpu_s"),
            bare.get("simulator_cpu_s"),
        ),
        Row(
            "other processes' share of the CPUs",
            "foreign_cpu_share",
            "%",
            orch.get("foreign_cpu_share"),
            bare.get("foreign_cpu_share"),
        ),
    ]
    return [r for r in rows if r.orchestrator is not None or r.bare is not None]


def _set_target(
    rows: list[Row], key: str, target: str, check: Callable[[float, float], bool]
) -> None:
    """Judge a row: ``check(orchestrator, bare)``; bare is NaN where there is none."""
    for row in rows:
        if row.key == key:
            row.target = target
            if row.orchestrator is not None and not math.isnan(row.orchestrator):
                bare = math.nan if row.bare is None else row.bare
                row.passed = check(row.orchestrator, bare)
            return
    raise KeyError(key)


# ---------------------------------------------------------------------------- scenarios


@dataclass
class Context:
    workdir: Path
    tools: Tools
    repeat: int
    smoke: bool
    profile: str | None
    settle_s: float = 0.0
    results: dict[str, Any] = field(default_factory=dict)
    instructions: bool = False
    #: Also run the floor (benchmarks/floor.py) in the latency and cpu scenarios.
    floor: bool = False

    def variants(self) -> tuple[str, ...]:
        """What the latency and cpu scenarios run side by side."""
        return ("orchestrator", "bare", "floor") if self.floor else ("orchestrator", "bare")


@dataclass(frozen=True)
class Shape:
    tokens: int
    clears: int
    latency_ms: float
    parallel: int


SHAPES = {
    "latency": Shape(40, 10, 50, 40),
    "cpu": Shape(500, 4, 20, 500),
    "scale": Shape(10_000, 10, 50, 2_000),
    "startup": Shape(3, 2, 20, 3),
}
SMOKE_SHAPES = {
    "latency": Shape(4, 3, 10, 4),
    "cpu": Shape(20, 4, 2, 20),
    "scale": Shape(100, 10, 5, 25),
    "startup": Shape(2, 1, 5, 2),
}


#: A run during which other processes used more than this share of the CPUs is run again...
DISTURBED_SHARE = 0.15
#: ...at most this many times; the last attempt counts whatever the load (it is recorded).
DISTURBED_RETRIES = 2


def side_by_side(
    ctx: Context,
    work: Workload,
    sim: SimulatorProcess,
    repeat: int,
    *,
    timeline: bool = True,
    timeout_s: float = 300,
    warmup: bool = True,
    variants: tuple[str, ...] = ("orchestrator", "bare"),
) -> dict[str, list[dict[str, Any]]]:
    """``repeat`` runs of each variant, rotating which goes first, after one warm-up each."""
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    for variant in (
        runs if warmup and not ctx.smoke else ()
    ):  # warm the page cache and the simulator; not counted
        run_variant(
            variant,
            work,
            sim,
            ctx.workdir,
            ctx.tools,
            f"{work.name}-warmup-{variant}",
            timeline=False,
            timeout_s=timeout_s,
        )
    for i in range(repeat):
        turn = i % len(variants)
        for variant in variants[turn:] + variants[:turn]:
            for attempt in range(1 + DISTURBED_RETRIES):
                settle(ctx.settle_s)
                figures = run_variant(
                    variant,
                    work,
                    sim,
                    ctx.workdir,
                    ctx.tools,
                    f"{work.name}-{i}-{variant}-{attempt}",
                    timeline=timeline,
                    timeout_s=timeout_s,
                )
                figures["discarded_before"] = attempt
                print(f"  run {i + 1}/{repeat} {variant:<12} " + _brief(figures), flush=True)
                share = figures.get("foreign_cpu_share")
                if ctx.smoke or share is None or share <= DISTURBED_SHARE:
                    break
                if attempt < DISTURBED_RETRIES:
                    print(
                        f"    other processes took {share:.0%} of the CPUs: run again", flush=True
                    )
            runs[variant].append(figures)
    return runs


def _brief(f: dict[str, Any]) -> str:
    parts = [
        f"busy {f['busy_window_s']:.3f} s",
        f"cpu {f['cpu_s']:.2f} s",
        f"rss {f['peak_rss_mb']:.0f} MB",
    ]
    if "gap_median_ms" in f:
        parts.append(f"gap p50 {f['gap_median_ms']:.2f} ms p99 {f['gap_p99_ms']:.2f} ms")
    parts.append(f"conns/token max {f['connections_per_token_max']}")
    if f.get("foreign_cpu_share") is not None:
        parts.append(f"others {f['foreign_cpu_share']:.0%} of CPUs")
    return ", ".join(parts)


def scenario_run(ctx: Context, name: str) -> dict[str, Any]:
    """latency and cpu: the same plan through orchestrator and the bare loop."""
    shape = (SMOKE_SHAPES if ctx.smoke else SHAPES)[name]
    title = (
        f"{name}: {shape.tokens} tokens x {shape.clears} clears x {shape.latency_ms:g} ms,"
        f" max_parallel_tokens {shape.parallel}, medians of {ctx.repeat}"
    )
    print(f"\n{title}", flush=True)
    with SimulatorProcess(shape.latency_ms, ctx.workdir, dict(os.environ)) as sim:
        work = make_workload(
            ctx.workdir, name, shape.tokens, shape.clears, shape.parallel, sim.base_url
        )
        runs = side_by_side(ctx, work, sim, ctx.repeat, variants=ctx.variants())
        fixed = fixed_cost(ctx, sim)
        if ctx.profile and name == "cpu":
            profile_run(ctx, work, sim)
        instructions = count_instructions(ctx, work, sim) if ctx.instructions else None
    orch, bare = medians(runs["orchestrator"]), medians(runs["bare"])
    critical = shape.clears * shape.latency_ms / 1000
    rows = run_rows(orch, bare, critical)
    # Split CPU into the fixed cost of a process (start-up, exit) and the cost per clear.
    at = next(i for i, r in enumerate(rows) if r.key == "cpu_per_1k_clears_s") + 1
    rows[at:at] = [
        Row(
            "CPU s of a whole 1-clear run (start-up, exit)",
            "fixed_cpu_s",
            "s",
            fixed["orchestrator"],
            fixed["bare"],
        ),
        Row(
            "  CPU s per 1,000 clears beyond that",
            "marginal_cpu_per_1k_clears_s",
            "s",
            (orch["cpu_s"] - fixed["orchestrator"]) / work.total * 1000,
            (bare["cpu_s"] - fixed["bare"]) / work.total * 1000,
        ),
    ]
    if instructions is not None:
        rows.append(
            Row(
                "instructions, user space (callgrind, 1 run)",
                "instructions",
                "G",
                instructions["orchestrator"] / 1e9,
                instructions["bare"] / 1e9,
            )
        )
    if name == "latency":
        _set_target(rows, "busy_window_s", "<= 1.03 x bare", lambda o, b: o <= 1.03 * b)
        _set_target(rows, "gap_median_ms", "<= bare + 0.5 ms", lambda o, b: o <= b + 0.5)
    else:
        _set_target(rows, "cpu_per_1k_clears_s", "<= 1.25 x bare", lambda o, b: o <= 1.25 * b)
        _set_target(rows, "busy_window_s", "<= 1.15 x bare", lambda o, b: o <= 1.15 * b)
    journal = (
        "on"
        if runs["orchestrator"][0].get("journal_bytes")
        else (
            "off (this build has no --state-dir)"
            if not ctx.tools.state_dir
            else "off (no journal file written)"
        )
    )
    print_rows(f"{title}; JSON log on, journal {journal}", rows)
    result: dict[str, Any] = {
        "shape": asdict(shape),
        "critical_path_s": critical,
        "fixed_cpu_s": fixed,
        "journal": journal,
        "runs": runs,
        "medians": {"orchestrator": orch, "bare": bare},
        "instructions": instructions,
        "rows": [_row_json(r) for r in rows],
    }
    if "floor" in runs:
        floor = result["medians"]["floor"] = medians(runs["floor"])
        figures = floor_figures(orch, bare, floor, fixed, instructions, work.total)
        print_floor(figures)
        result["floor_rows"] = figures
    return result


def floor_figures(
    orch: dict[str, float],
    bare: dict[str, float],
    floor: dict[str, float],
    fixed: dict[str, float],
    instructions: dict[str, int] | None,
    total: int,
) -> list[dict[str, Any]]:
    """The floor's figures beside the bare loop's and orchestrator's (no targets)."""

    def beyond(variant: dict[str, float], name: str) -> float:
        return (variant["cpu_s"] - fixed[name]) / total * 1000

    rows = [
        ("API busy window (first in, last out)", "s", "busy_window_s"),
        ("gap answer -> next request, median", "ms", "gap_median_ms"),
        ("CPU s per 1,000 clears (user+sys)", "s", "cpu_per_1k_clears_s"),
    ]
    figures = [
        {"figure": label, "unit": unit, **{n: v.get(key) for n, v in _named(orch, bare, floor)}}
        for label, unit, key in rows
    ]
    figures += [
        {"figure": "CPU s of a whole 1-clear run", "unit": "s", **fixed},
        {
            "figure": "  CPU s per 1,000 clears beyond that",
            "unit": "s",
            **{n: beyond(v, n) for n, v in _named(orch, bare, floor)},
        },
    ]
    if instructions is not None:
        figures.append(
            {
                "figure": "instructions, user space (callgrind, 1 run)",
                "unit": "G",
                **{n: count / 1e9 for n, count in instructions.items()},
            }
        )
    return figures


def _named(
    orch: dict[str, float], bare: dict[str, float], floor: dict[str, float]
) -> tuple[tuple[str, dict[str, float]], ...]:
    return (("orchestrator", orch), ("bare", bare), ("floor", floor))


def print_floor(figures: list[dict[str, Any]]) -> None:
    """The floor's table: what the required work alone costs, and what orchestrator adds."""
    print("\n== the floor: the bare loop plus the required work (benchmarks/floor.py), no targets")
    head = (
        f"{'figure':<44} {'floor':>10} {'bare':>10} {'floor/bare':>10}"
        f" {'orchestrator':>12} {'orch/floor':>10}"
    )
    print(head)
    print("-" * len(head))
    for f in figures:
        floor, bare, orch = f.get("floor"), f.get("bare"), f.get("orchestrator")
        print(
            f"{f['figure']:<44} {_fmt(floor, f['unit']):>10} {_fmt(bare, f['unit']):>10}"
            f" {_ratio(floor, bare):>10} {_fmt(orch, f['unit']):>12} {_ratio(orch, floor):>10}"
        )
    sys.stdout.flush()


def _ratio(top: float | None, bottom: float | None) -> str:
    if top is None or not bottom or math.isnan(top) or math.isnan(bottom):
        return "-"
    return f"{top / bottom:.3f}"


def fixed_cost(ctx: Context, sim: SimulatorProcess) -> dict[str, float]:
    """Median CPU of a 1-token x 1-clear run of each variant: what a process costs at all."""
    work = make_workload(ctx.workdir, "fixed", 1, 1, 1, sim.base_url)
    cpu: dict[str, list[float]] = {variant: [] for variant in ctx.variants()}
    for i in range(ctx.repeat):
        for variant in cpu:
            settle(ctx.settle_s)
            figures = run_variant(
                variant, work, sim, ctx.workdir, ctx.tools, f"fixed-{i}-{variant}", timeline=False
            )
            cpu[variant].append(figures["cpu_s"])
    return {variant: statistics.median(values) for variant, values in cpu.items()}


def scenario_scale(ctx: Context) -> dict[str, Any]:
    shape = (SMOKE_SHAPES if ctx.smoke else SHAPES)["scale"]
    total = shape.tokens * shape.clears
    title = (
        f"scale: {shape.tokens} tokens x {shape.clears} clears ({total} clears)"
        f" x {shape.latency_ms:g} ms,"
        f" max_parallel_tokens {shape.parallel}, medians of {ctx.repeat}"
    )
    print(f"\n{title}", flush=True)
    with SimulatorProcess(shape.latency_ms, ctx.workdir, dict(os.environ)) as sim:
        work = make_workload(
            ctx.workdir, "scale", shape.tokens, shape.clears, shape.parallel, sim.base_url
        )
        validations = []
        for i in range(
            1 if ctx.smoke else 0, ctx.repeat + 1
        ):  # 0 warms the page cache; not counted
            settle(ctx.settle_s)
            child = run_child(
                [*orchestrator_cmd(), "validate", str(work.plan)],
                env=work.env,
                stdout=ctx.workdir / "scale-validate.stdout",
                stderr=ctx.workdir / "scale-validate.stderr",
                timeout_s=120,
            )
            if child.exit_code != 0 or child.timed_out:
                raise HarnessError(
                    f"validate exited {child.exit_code}:\n"
                    + _tail(ctx.workdir / "scale-validate.stderr")
                )
            if i:
                validations.append(
                    {"wall_s": child.wall_s, "cpu_s": child.cpu_s, "peak_rss_mb": child.maxrss_mb}
                )
                print(
                    f"  validate {i}/{ctx.repeat}: {child.wall_s:.3f} s,"
                    f" cpu {child.cpu_s:.2f} s, rss {child.maxrss_mb:.0f} MB",
                    flush=True,
                )
        runs = side_by_side(ctx, work, sim, ctx.repeat, timeline=False, timeout_s=900, warmup=False)
    validate = medians(validations)
    orch, bare = medians(runs["orchestrator"]), medians(runs["bare"])
    rows = [
        Row(
            f"validate {total:,}-clear plan: start -> exit",
            "validate_wall_s",
            "s",
            validate["wall_s"],
        ),
        Row(f"validate {total:,}-clear plan: CPU", "validate_cpu_s", "s", validate["cpu_s"]),
        Row(
            f"validate {total:,}-clear plan: peak memory",
            "validate_rss_mb",
            "MB",
            validate["peak_rss_mb"],
        ),
        *run_rows(
            orch,
            bare,
            shape.clears * shape.latency_ms / 1000 * math.ceil(shape.tokens / shape.parallel),
        ),
    ]
    rows[3].figure = "critical path (C x latency x waves)"
    _set_target(rows, "validate_wall_s", "< 3 s", lambda o, b: o < 3)
    _set_target(rows, "peak_rss_mb", "< 300 MB", lambda o, b: o < 300)
    _set_target(
        rows,
        "connections_per_token_max",
        "1 (one keep-alive per lane)",
        lambda o, b: o == 1,
    )
    print_rows(title, rows)
    return {
        "shape": asdict(shape),
        "validate": validations,
        "runs": runs,
        "medians": {"validate": validate, "orchestrator": orch, "bare": bare},
        "rows": [_row_json(r) for r in rows],
    }


def scenario_startup(ctx: Context) -> dict[str, Any]:
    shape = (SMOKE_SHAPES if ctx.smoke else SHAPES)["startup"]
    print(
        f"\nstartup: validate of the example plan, and a {shape.tokens} x {shape.clears} run;"
        f" medians of {ctx.repeat}",
        flush=True,
    )
    if EXAMPLE_PLAN.exists():
        example, example_name = EXAMPLE_PLAN, "plans/example.yaml"
    else:
        example = ctx.workdir / "readme-example.yaml"
        example.write_text(README_PLAN, encoding="utf-8")
        example_name = "the README's example plan (plans/example.yaml is absent)"
    validations: list[dict[str, float]] = []
    for i in range(1 if ctx.smoke else 0, ctx.repeat + 1):  # 0 warms the page cache; not counted
        settle(ctx.settle_s)
        child = run_child(
            [*orchestrator_cmd(), "validate", str(example)],
            env=dict(os.environ),
            stdout=ctx.workdir / "startup-validate.stdout",
            stderr=ctx.workdir / "startup-validate.stderr",
            timeout_s=60,
        )
        if child.exit_code != 0 or child.timed_out:
            raise HarnessError(
                f"validate {example} exited {child.exit_code}:\n"
                + _tail(ctx.workdir / "startup-validate.stderr")
            )
        if i:
            validations.append(
                {"wall_s": child.wall_s, "cpu_s": child.cpu_s, "peak_rss_mb": child.maxrss_mb}
            )
    with SimulatorProcess(shape.latency_ms, ctx.workdir, dict(os.environ)) as sim:
        work = make_workload(
            ctx.workdir, "startup", shape.tokens, shape.clears, shape.parallel, sim.base_url
        )
        runs = side_by_side(ctx, work, sim, ctx.repeat)
    validate = medians(validations)
    orch, bare = medians(runs["orchestrator"]), medians(runs["bare"])
    rows = [
        Row(
            f"validate {'example.yaml' if EXAMPLE_PLAN.exists() else 'README plan'}: start -> exit",
            "validate_wall_s",
            "s",
            validate["wall_s"],
        ),
        Row("validate: CPU", "validate_cpu_s", "s", validate["cpu_s"]),
        Row("validate: peak memory", "validate_rss_mb", "MB", validate["peak_rss_mb"]),
        Row(
            "run: process start -> first request",
            "first_request_s",
            "s",
            orch.get("first_request_s"),
            bare.get("first_request_s"),
        ),
        Row("run: process wall time", "wall_s", "s", orch.get("wall_s"), bare.get("wall_s")),
        Row(
            "run: peak memory",
            "peak_rss_mb",
            "MB",
            orch.get("peak_rss_mb"),
            bare.get("peak_rss_mb"),
        ),
    ]
    _set_target(rows, "validate_wall_s", "<= 0.4 s", lambda o, b: o <= 0.4)
    _set_target(rows, "first_request_s", "<= 0.4 s", lambda o, b: o <= 0.4)
    print_rows(f"startup (validate: {example_name})", rows)
    return {
        "example_plan": example_name,
        "validate": validations,
        "runs": runs,
        "medians": {"validate": validate, "orchestrator": orch, "bare": bare},
        "rows": [_row_json(r) for r in rows],
    }


def _row_json(row: Row) -> dict[str, Any]:
    return {**asdict(row), "ratio": row.ratio}


# ---------------------------------------------------------------------------- profiling


def count_instructions(ctx: Context, work: Workload, sim: SimulatorProcess) -> dict[str, int]:
    """User-space instructions of one run of each variant under ``valgrind --tool=callgrind``.

    Counted, not timed: the same from run to run whatever else the machine does, so a
    change of a few percent shows where CPU seconds on a shared VM hide it. Callgrind
    runs a process about 40 times slower, so the event loop batches differently (and a
    journal's held marks reach SQLite before their clears end); the kernel's
    instructions (system calls) are not counted.
    """
    if shutil.which("valgrind") is None:
        raise HarnessError("--instructions needs valgrind (Debian: apt-get install valgrind)")
    counts: dict[str, int] = {}
    for variant in ctx.variants():
        out = ctx.workdir / f"{work.name}-{variant}.callgrind"
        print(f"  {variant}: counting instructions under callgrind (slow)", flush=True)
        run_variant(
            variant,
            work,
            sim,
            ctx.workdir,
            ctx.tools,
            f"{work.name}-callgrind-{variant}",
            timeline=False,
            timeout_s=3600,
            under=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"],
        )
        counts[variant] = callgrind_total(out)
    return counts


def callgrind_total(path: Path) -> int:
    """The instruction total a callgrind output file records (its ``summary:`` line)."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise HarnessError(f"no instruction total in {path}")


def profile_run(ctx: Context, work: Workload, sim: SimulatorProcess) -> None:
    """One more orchestrator run of the CPU-bound plan under a profiler (not counted)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if ctx.profile == "pyinstrument":
        session = ctx.workdir / "cpu.pyisession"
        wrap = [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "pyisession",
            "-o",
            str(session),
            "-m",
            "orchestrator",
        ]
        run_variant(
            "orchestrator",
            work,
            sim,
            ctx.workdir,
            ctx.tools,
            "cpu-profile",
            timeline=False,
            wrap=wrap,
        )
        for suffix, extra in (("", []), ("-all", ["--show-all"])):
            target = RESULTS_DIR / f"profile-cpu-pyinstrument{suffix}.txt"
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pyinstrument",
                    "--load",
                    str(session),
                    "-r",
                    "text",
                    "--no-color",
                    "--unicode",
                    "-o",
                    str(target),
                    *extra,
                ],
                check=True,
                timeout=120,
            )
            print(f"  profile: {target.relative_to(ROOT)}")
    else:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        raw = RESULTS_DIR / "profile-cpu-py-spy.txt"
        wrap = [
            spy,
            "record",
            "-r",
            "1000",
            "-f",
            "raw",
            "--full-filenames",
            "-o",
            str(raw),
            "--",
            sys.executable,
            "-m",
            "orchestrator",
        ]
        run_variant(
            "orchestrator",
            work,
            sim,
            ctx.workdir,
            ctx.tools,
            "cpu-profile",
            timeline=False,
            wrap=wrap,
        )
        summary = RESULTS_DIR / "profile-cpu-py-spy-summary.txt"
        summary.write_text(summarize_py_spy(raw), encoding="utf-8")
        print(f"  profile: {raw.relative_to(ROOT)}, summary {summary.relative_to(ROOT)}")


def summarize_py_spy(raw: Path, top: int = 40) -> str:
    """Self and inclusive samples per function from py-spy's collapsed stacks."""
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
            stacks.append((frames, int(count_text)))
    total = sum(n for _, n in stacks)
    importing = sum(n for frames, n in stacks if _is_import(frames))
    out = [
        f"{total} samples at 1 kHz, idle excluded;"
        f" {importing / max(total, 1):.1%} of them inside imports",
        "(module loading); 'after start-up' leaves those out.",
    ]
    for title, chosen in (
        ("whole run", stacks),
        ("after start-up", [(f, n) for f, n in stacks if not _is_import(f)]),
    ):
        own: dict[str, int] = defaultdict(int)
        inclusive: dict[str, int] = defaultdict(int)
        by_module: dict[str, int] = defaultdict(int)
        part = sum(n for _, n in chosen) or 1
        for frames, count in chosen:
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
            by_module[_module_of(frames[-1])] += count
        out += ["", f"=== {title}: {part} samples", "", "self time by package (% of this part):"]
        out += [
            f"  {n / part:6.1%}  {m}"
            for m, n in sorted(by_module.items(), key=lambda kv: -kv[1])[:top]
        ]
        out += ["", "self time by function:"]
        out += [
            f"  {n / part:6.1%}  {f}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]
        ]
        out += ["", "inclusive time, orchestrator's own functions:"]
        mine = {f: n for f, n in inclusive.items() if _module_of(f).startswith("orchestrator.")}
        out += [
            f"  {n / part:6.1%}  {f}" for f, n in sorted(mine.items(), key=lambda kv: -kv[1])[:top]
        ]
    return "\n".join(out) + "\n"


def _is_import(frames: list[str]) -> bool:
    return any("importlib._bootstrap" in f for f in frames)


def _module_of(frame: str) -> str:
    match = re.search(r"\((.*)\)$", frame)
    path = match.group(1) if match else frame
    if "/orchestrator/" in path and "site-packages" not in path:
        return "orchestrator." + Path(path).stem
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/lib/python" in path:
        return "stdlib " + path.split("/lib/python", 1)[1].split("/", 1)[1].split("/", 1)[
            0
        ].removesuffix(".py")
    return path


# --------------------------------------------------------------------------------- main


def source_digest() -> str:
    """A digest of orchestrator's source, to tie figures to the code they measured."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _git(*args: str) -> str:
    """``git`` output, or "" where there is no git or no repository (an exported tree)."""
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=ROOT, check=False, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine() -> dict[str, Any]:
    def version(module: str) -> str | None:
        from importlib import metadata

        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(module)
        return None

    rev = _git("rev-parse", "--short", "HEAD") or "?"
    dirty = bool(_git("status", "--porcelain", "--", "orchestrator"))
    return {
        "src_sha256": source_digest(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "structlog": version("structlog"),
        "git": rev + ("+dirty src" if dirty else ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenario", choices=("latency", "cpu", "scale", "startup", "all"), default="all"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measured runs of each variant (default 3); medians are quoted",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny version of every scenario, repeat 1: keeps the harness working",
    )
    parser.add_argument(
        "--profile",
        choices=("pyinstrument", "py-spy"),
        help="also profile orchestrator under the CPU-bound scenario",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measured run, wait up to S s for other processes to leave the CPUs idle",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count each variant's instructions under callgrind (latency and cpu; slow)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run benchmarks/floor.py (bare loop + required work) in latency and cpu",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (plans, logs)")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be between 1 and 50")
    repeat = 1 if args.smoke else args.repeat
    names = ["startup", "latency", "cpu", "scale"] if args.scenario == "all" else [args.scenario]

    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    failed: list[str] = []
    started = time.monotonic()
    try:
        ctx = Context(
            workdir,
            probe_tools(workdir),
            repeat,
            args.smoke,
            args.profile,
            args.settle,
            instructions=args.instructions,
            # The smoke keeps the floor working too.
            floor=args.floor or args.smoke,
        )
        info = machine()
        print(
            f"machine: {info['cpus']} CPUs, {info['platform']}, Python {info['python']},"
            f" aiohttp {info['aiohttp']}, structlog {info['structlog']};"
            f" git {info['git']}, src {info['src_sha256']}"
        )
        print(
            f"orchestrator: {' '.join(orchestrator_cmd())}; journal: "
            + (
                "on (--state-dir in a temporary directory)"
                if ctx.tools.state_dir
                else "no --state-dir in this build"
            )
        )
        compile_sources()
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        for name in names:
            try:
                if name == "scale":
                    result = scenario_scale(ctx)
                elif name == "startup":
                    result = scenario_startup(ctx)
                else:
                    result = scenario_run(ctx, name)
            except HarnessError as exc:
                print(f"\n!! {name}: harness failure: {exc}", file=sys.stderr, flush=True)
                failed.append(name)
                continue
            document = {
                "scenario": name,
                "smoke": args.smoke,
                "repeat": repeat,
                "command": " ".join(
                    [
                        ".venv/bin/python",
                        "benchmarks/bench.py",
                        *(argv if argv is not None else sys.argv[1:]),
                    ]
                ),
                "machine": info,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **result,
            }
            target = RESULTS_DIR / f"{name}{'-smoke' if args.smoke else ''}.json"
            if source_digest() != info["src_sha256"]:
                document["warning"] = "orchestrator changed while this scenario ran"
                print(f"warning: {document['warning']}", flush=True)
            target.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
            print(f"results: {target.relative_to(ROOT)}", flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\ndone in {time.monotonic() - started:.1f} s"
        + (f"; BROKEN: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
