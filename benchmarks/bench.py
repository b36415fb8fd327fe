"""Measure orchestrator as a user runs it, side by side with the bare aiohttp loop.

    .venv/bin/python benchmarks/bench.py [--scenario latency|cpu|scale|pool|all] [--repeat N]
                                         [--compare PATH] [--smoke] [--keep]

latency and cpu start ``orchestrator simulate`` in its own process on a loopback
port, write a plan of L tokens x C clears (and the same calls as a job for
``benchmarks/bare.py``), then run ``orchestrator run PLAN --yes --log-format json``
and the bare loop in turn, ``--repeat`` times each after one unmeasured warm-up,
and quote medians. The simulator's stats give the busy window and, per token, when
each request arrived and each answer left; ``os.wait4`` gives each child's CPU and
peak memory. scale runs ``orchestrator validate`` on a plan of 100,000 clears.
pool runs a pool of 4 tokens serving 16 campaigns of 2 clears, the two written last
ten times heavier (the simulator's ``--slow``), twice on one state directory: the
first run has no history and starts in plan order, the second starts the longest
first from the journal's durations. Each busy window is set against the lower bound
max(longest campaign chain, total work / 4), from the calls' own service times.
``--compare`` adds another checkout's ``orchestrator`` to the same interleaved runs.
See docs/performance.md.

Exit status: 0 when every scenario was measured (missed targets included), 1 when
the harness or a measured run broke, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
#: The ``results`` a campaign can list, one clear each.
RESULTS: tuple[str, ...] = ("no-answer", "answer-machine", "abandon", "busy", "congestion")
RESULTS += ("unknown", "failed", "do-not-call", "chanunavail", "answer")
SERVER, TYPE_CAMPAIGN = "0014", "predictive"


@dataclass(frozen=True)
class Shape:
    tokens: int
    clears: int  # per token
    latency_ms: float = 0.0


#: pool: ``tokens`` in the pool, ``clears`` campaigns of 2 clears, light clears' latency.
SHAPES = {
    "latency": Shape(40, 10, 50),
    "cpu": Shape(500, 4, 20),
    "scale": Shape(10_000, 10),
    "pool": Shape(4, 16, 100),
}
SMOKE = {
    "latency": Shape(4, 3, 10),
    "cpu": Shape(20, 4, 2),
    "scale": Shape(100, 10),
    "pool": Shape(4, 16, 20),
}
#: pool: how many times heavier the campaigns written last are, and how many there are.
HEAVY_FACTOR, HEAVY_CAMPAIGNS = 10, 2

Check = Callable[[float, float], bool]  # (variant's median, bare loop's median) -> met
#: Per scenario: (figure, key, unit, target as printed, check or None for a figure only).
ROWS: dict[str, list[tuple[str, str, str, str, Check | None]]] = {
    "latency": [
        ("busy window", "busy_window_s", "s", "<= 1.03 x bare", lambda o, b: o <= 1.03 * b),
        (
            "gap answer -> next request, median",
            "gap_ms",
            "ms",
            "<= bare + 2 ms",
            lambda o, b: o <= b + 2,
        ),
        ("first request after start", "first_request_s", "s", "<= 0.5 s", lambda o, b: o <= 0.5),
        ("CPU, user + sys", "cpu_s", "s", "", None),
        ("peak memory", "rss_mb", "MB", "", None),
    ],
    "cpu": [
        # A budget against regressions, re-based for the per-clear safety work: see
        # docs/performance.md, "Where the CPU goes".
        ("CPU, user + sys", "cpu_s", "s", "<= 4.0 x bare", lambda o, b: o <= 4.0 * b),
        ("busy window", "busy_window_s", "s", "<= 4.5 x bare", lambda o, b: o <= 4.5 * b),
        ("peak memory", "rss_mb", "MB", "", None),
    ],
    "scale": [
        ("validate: start -> exit", "wall_s", "s", "< 3 s", lambda o, b: o < 3),
        ("validate: peak memory", "rss_mb", "MB", "< 300 MB", lambda o, b: o < 300),
        ("validate: CPU, user + sys", "cpu_s", "s", "", None),
    ],
    "pool": [
        (
            "2nd run (longest first) / bound",
            "longest_first_ratio",
            "x",
            "<= 1.10 x bound",
            lambda o, b: o <= 1.10,
        ),
        ("1st run (plan order) / bound", "plan_order_ratio", "x", "", None),
        ("2nd run busy window", "longest_first_s", "s", "", None),
        ("1st run busy window", "plan_order_s", "s", "", None),
        ("lower bound", "bound_s", "s", "", None),
    ],
}


class HarnessError(Exception):
    """The harness, or a run it measures, broke: its figures cannot be trusted."""


@dataclass(frozen=True)
class Child:
    spawned: float  # time.monotonic() just before the spawn, the simulator's clock too
    wall_s: float
    cpu_s: float
    rss_mb: float


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a cron job: bytecode written once, stdout buffered as Python chooses."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")
    }
    return env | (extra or {})


def default_open_files() -> None:
    """In the child before exec: the 1,024 open files most systems give a process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def run_child(cmd: list[str], env: dict[str, str], out: Path, timeout_s: float = 300) -> Child:
    """Run ``cmd`` to its end in a session of its own and reap it with ``os.wait4`` (rusage)."""
    with open(out, "wb") as stdout, open(out.with_suffix(".stderr"), "wb") as stderr:
        spawned = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=default_open_files,
        )
        # A blocking wait4 (rusage included); the timer kills a child that hangs.
        timer = threading.Timer(timeout_s, os.killpg, (proc.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            timer.cancel()
    wall = time.monotonic() - spawned
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = out.with_suffix(".stderr").read_text(errors="replace")[-2000:]
        raise HarnessError(f"{' '.join(cmd[:3])} exited {proc.returncode}:\n{tail}")
    return Child(spawned, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


class Simulator:
    """``orchestrator simulate`` in its own process on a free loopback port."""

    def __init__(self, latency_ms: float, workdir: Path, *options: str) -> None:
        self._log = workdir / "simulator.log"
        cmd = [sys.executable, "-m", "orchestrator", "simulate", "--host", "127.0.0.1"]
        cmd += ["--port", "0", "--latency-ms", f"{latency_ms:g}", *options]
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                env=child_env(),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 30
        try:
            while not (
                match := re.search(r"(http://127\.0\.0\.1:\d+)(\S*)", self._log.read_text())
            ):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise HarnessError(f"the simulator did not start:\n{self._log.read_text()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self.root, self.base_url = match.group(1), match.group(1) + match.group(2)

    def request(self, method: str, path: str) -> Any:
        with self._opener.open(urllib.request.Request(self.root + path, method=method)) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()


def write_plan(
    workdir: Path, shape: Shape, base_url: str | None
) -> tuple[Path, Path, dict[str, str]]:
    """A plan of ``tokens`` x ``clears`` (a campaign per 10), its bare-loop job and tokens."""
    nonce = secrets.token_hex(4)
    env: dict[str, str] = {}
    lines = ["version: 1", "settings:", f"  max_parallel_tokens: {min(shape.tokens, 2000)}"]
    lines += [f'  base_url: "{base_url}"'] if base_url else []
    lines += ["defaults:", f"  server: {SERVER}", f"  type_campaign: {TYPE_CAMPAIGN}", "campaigns:"]
    lanes = []
    api = f"{(base_url or '').replace('{server}', SERVER)}/api/v2/campaign.php?api=clear_campaign"
    campaign = 100_000
    for token in range(1, shape.tokens + 1):
        var = f"BENCH_TOKEN_{token}"
        env[var] = f"bench-{nonce}-{token:06d}"
        urls: list[str] = []
        for first in range(0, shape.clears, len(RESULTS)):
            campaign += 1
            results = RESULTS[: min(len(RESULTS), shape.clears - first)]
            lines += [
                f"  - campaign_id: {campaign}",
                f"    token_env: {var}",
                f"    results: [{', '.join(results)}]",
            ]
            urls += [
                f"{api}&type_campaign={TYPE_CAMPAIGN}&campaign_id={campaign}&result={r}"
                for r in results
            ]
        lanes.append({"token_env": var, "urls": urls})
    plan, job = workdir / "plan.yaml", workdir / "job.json"
    plan.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job.write_text(
        json.dumps({"max_parallel": min(shape.tokens, 2000), "lanes": lanes}), encoding="utf-8"
    )
    return plan, job, env


def one_run(
    name: str, cmd: list[str], env: dict[str, str], sim: Simulator, out: Path, expected: int
) -> dict[str, float]:
    """One run of a variant; its figures once the simulator and its stdout prove it right."""
    sim.request("POST", "/_simulator/reset")
    child = run_child(cmd, env, out)
    stats = sim.request("GET", "/_simulator/stats?timeline=1")
    succeeded = 0
    for line in out.read_bytes().splitlines():
        try:
            event = json.loads(line).get("event")
        except (ValueError, AttributeError):
            continue
        succeeded += event in ("clear.succeeded", "ok")
    if stats["statuses"] != {"200": expected} or succeeded != expected:
        raise HarnessError(
            f"{name}: answers {stats['statuses']} and {succeeded} successes"
            f" logged, expected {expected} of each"
        )
    if stats["max_in_flight_per_token"] > 1:
        raise HarnessError(f"{name} sent two calls at once on one token")
    by_token: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for call in stats["timeline"]:
        by_token[call["token_id"]].append(call)
    gaps = [
        (b["arrived"] - a["departed"]) * 1000
        for calls in by_token.values()
        for a, b in pairwise(sorted(calls, key=lambda c: c["arrived"]))
    ]
    return {
        "busy_window_s": stats["busy_window_s"],
        "gap_ms": statistics.median(gaps) if gaps else 0.0,
        "first_request_s": min(c["arrived"] for c in stats["timeline"]) - child.spawned,
        "cpu_s": child.cpu_s,
        "rss_mb": child.rss_mb,
    }


def in_turn(variants: list[str], i: int) -> list[str]:
    """The order of the ``i``-th round: each variant goes first in turn (the machine drifts)."""
    return variants[i % len(variants) :] + variants[: i % len(variants)]


def scenario_run(
    name: str,
    shape: Shape,
    variants: dict[str, list[str]],
    repeat: int,
    warmup: bool,
    workdir: Path,
) -> dict[str, list[dict[str, float]]]:
    """latency and cpu: each variant ``repeat`` times, taking turns at going first."""
    sim = Simulator(shape.latency_ms, workdir)
    try:
        plan, job, tokens = write_plan(workdir, shape, sim.base_url)
        env = child_env(tokens)
        run = ["run", str(plan), "--yes", "--log-format", "json", "--state-dir"]
        cmds = {v: [*cmd, *run, str(workdir / f"{v}.state")] for v, cmd in variants.items()}
        cmds["bare"] = [sys.executable, str(ROOT / "benchmarks" / "bare.py"), str(job)]
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in cmds}
        for i in range(-1 if warmup else 0, repeat):
            for variant in in_turn(list(cmds), i):
                out = workdir / f"{name}-{variant}-{i}.out"
                figures = one_run(
                    variant, cmds[variant], env, sim, out, shape.tokens * shape.clears
                )
                if i >= 0:
                    runs[variant].append(figures)
                    print(
                        f"  {i + 1}/{repeat} {variant:<12} "
                        + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()),
                        flush=True,
                    )
        return runs
    finally:
        sim.stop()


def scenario_scale(
    shape: Shape, variants: dict[str, list[str]], repeat: int, warmup: bool, workdir: Path
) -> dict[str, list[dict[str, float]]]:
    """``orchestrator validate`` of a plan of tokens x clears (no simulator, no tokens read)."""
    plan, _, tokens = write_plan(workdir, shape, None)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for i in range(-1 if warmup else 0, repeat):
        for variant in in_turn(list(variants), i):
            child = run_child(
                [*variants[variant], "validate", str(plan)],
                child_env(tokens),
                workdir / f"validate-{variant}.out",
            )
            if i >= 0:
                runs[variant].append(
                    {"wall_s": child.wall_s, "cpu_s": child.cpu_s, "rss_mb": child.rss_mb}
                )
                print(
                    f"  {i + 1}/{repeat} {variant:<12} validate {child.wall_s:.3f} s,"
                    f" cpu {child.cpu_s:.3f} s, rss {child.rss_mb:.1f} MB",
                    flush=True,
                )
    return runs


def write_pool_plan(workdir: Path, shape: Shape, base_url: str) -> tuple[Path, dict[str, str]]:
    """A pool of ``shape.tokens`` serving ``shape.clears`` campaigns of 2 clears each."""
    nonce = secrets.token_hex(4)
    names = [f"BENCH_POOL_{n}" for n in range(1, shape.tokens + 1)]
    lines = ["version: 1", "settings:", f'  base_url: "{base_url}"', "defaults:"]
    lines += [f"  server: {SERVER}", f"  type_campaign: {TYPE_CAMPAIGN}"]
    lines += [f"  token_env: [{', '.join(names)}]", f"  results: [{RESULTS[0]}, {RESULTS[3]}]"]
    lines += ["campaigns:", *(f"  - campaign_id: {c}" for c in pool_campaigns(shape))]
    plan = workdir / "plan.yaml"
    plan.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return plan, {name: f"bench-{nonce}-{name}" for name in names}


def pool_campaigns(shape: Shape) -> list[int]:
    return [200_001 + n for n in range(shape.clears)]


def pool_figures(stats: dict[str, Any], tokens: int) -> tuple[float, float]:
    """The busy window and the lower bound max(longest chain, total work / tokens)."""
    chains: dict[str, float] = defaultdict(float)
    for call in stats["timeline"]:
        chains[call["campaign_id"]] += call["departed"] - call["arrived"]
    bound = max(max(chains.values()), sum(chains.values()) / tokens)
    return stats["busy_window_s"], bound


def scenario_pool(
    shape: Shape, variants: dict[str, list[str]], repeat: int, warmup: bool, workdir: Path
) -> dict[str, list[dict[str, float]]]:
    """pool: per round, a fresh state directory, then a first and a second run on it."""
    heavy = pool_campaigns(shape)[-HEAVY_CAMPAIGNS:]
    slow = [f"--slow=campaign={c}" for c in heavy]
    slow_s = shape.latency_ms * HEAVY_FACTOR / 1000
    sim = Simulator(shape.latency_ms, workdir, *slow, "--slow-s", f"{slow_s:g}")
    try:
        plan, tokens = write_pool_plan(workdir, shape, sim.base_url)
        env = child_env(tokens)
        expected = shape.clears * 2
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for i in range(-1 if warmup else 0, repeat):
            for variant in in_turn(list(variants), i):
                state = workdir / f"{variant}-{i}.state"
                cmd = [*variants[variant], "run", str(plan), "--yes", "--log-format", "json"]
                cmd += ["--state-dir", str(state)]
                figures: dict[str, float] = {}
                for which in ("plan_order", "longest_first"):
                    out = workdir / f"pool-{variant}-{i}-{which}.out"
                    one_run(variant, cmd, env, sim, out, expected)
                    stats = sim.request("GET", "/_simulator/stats?timeline=1")
                    window, bound = pool_figures(stats, shape.tokens)
                    figures[f"{which}_s"], figures[f"{which}_ratio"] = window, window / bound
                    figures["bound_s"] = bound
                    if which == "longest_first":
                        first = min(stats["timeline"], key=lambda c: c["arrived"])
                        started = sorted(stats["timeline"], key=lambda c: c["arrived"])
                        early = {int(c["campaign_id"]) for c in started[: shape.tokens]}
                        if not set(heavy) <= early:
                            raise HarnessError(
                                f"{variant}: the second run did not start the heavy campaigns"
                                f" first (first call: campaign {first['campaign_id']})"
                            )
                if i >= 0:
                    runs[variant].append(figures)
                    print(
                        f"  {i + 1}/{repeat} {variant:<12} "
                        + ", ".join(f"{k} {v:.4g}" for k, v in figures.items()),
                        flush=True,
                    )
        return runs
    finally:
        sim.stop()


def judge(name: str, runs: dict[str, list[dict[str, float]]], judged: bool) -> list[dict[str, Any]]:
    """Medians per figure and variant, and (if ``judged``) each non-bare variant's verdicts."""
    medians = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    rows = []
    for figure, key, unit, target, check in ROWS[name]:
        values = {v: m[key] for v, m in medians.items()}
        bare = values.get("bare", float("nan"))
        verdicts: dict[str, bool] = {}
        if check is not None and judged:
            verdicts = {v: check(x, bare) for v, x in values.items() if v != "bare"}
        rows.append(
            {
                "figure": figure,
                "key": key,
                "unit": unit,
                "target": target,
                "medians": values,
                "passed": verdicts,
            }
        )
    return rows


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Medians side by side; each variant's distance from the bare loop and its verdict."""
    variants = list(rows[0]["medians"])
    others = [v for v in variants if v != "bare"]
    head = f"{'figure':<36}" + "".join(f"{v:>14}" for v in variants)
    head += "".join(f"{v[:4] + ' vs bare':>14}" for v in others if "bare" in variants)
    print(f"\n== {title}\n{head}  {'target':<16} result\n" + "-" * (len(head) + 24))
    for row in rows:
        values, unit = row["medians"], row["unit"]
        digits = {"s": 3, "ms": 2, "x": 2}.get(unit, 1)
        line = f"{row['figure']:<36}"
        line += "".join(f"{values[v]:>11.{digits}f} {unit:<2}" for v in variants)
        for v in others if "bare" in variants else ():
            # Relative targets read as a ratio; the gap's, in milliseconds, as a difference.
            gap = unit == "ms"
            diff = values[v] - values["bare"] if gap else values[v] / values["bare"]
            line += f"{diff:>+11.2f} ms" if gap else f"{diff:>13.3f}x"
        verdicts = ", ".join(
            ("PASS" if ok else "FAIL") + (f" ({v[:4]})" if len(others) > 1 else "")
            for v, ok in row["passed"].items()
        )
        print(f"{line}  {row['target']:<16} {verdicts}")


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario", choices=("latency", "cpu", "scale", "pool", "all"), default="all"
    )
    parser.add_argument("--repeat", type=int, default=5, help="measured runs per variant (5)")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="PATH",
        help="another checkout's orchestrator script, run in turn with this one",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one run: CI")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if not 1 <= args.repeat <= 50:
        parser.error("--repeat must be between 1 and 50")
    if args.compare and not os.access(args.compare, os.X_OK):
        parser.error(f"--compare {args.compare}: not an executable")
    repeat = 1 if args.smoke else args.repeat
    script = Path(sys.executable).parent / "orchestrator"
    variants = {"orchestrator": [str(script) if script.exists() else sys.executable]}
    if not script.exists():
        variants["orchestrator"] += ["-m", "orchestrator"]
    if args.compare:
        variants["compare"] = [str(args.compare.resolve())]
    # The last commit that changed the package: what the figures belong to, whatever else moved.
    revision = git("log", "-1", "--format=%h", "--", "orchestrator") + (
        "+dirty" if git("status", "--porcelain", "--", "orchestrator") else ""
    )
    print(
        f"orchestrator/ at {revision}, Python {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" load average {os.getloadavg()[0]:.2f}"
    )
    names = ["latency", "cpu", "scale", "pool"] if args.scenario == "all" else [args.scenario]
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    broken = []
    try:
        for name in names:
            shape = (SMOKE if args.smoke else SHAPES)[name]
            title = f"{name}: {shape.tokens:,} tokens x {shape.clears} clears"
            title += f" x {shape.latency_ms:g} ms" if name != "scale" else " (validate)"
            if name == "pool":
                title = (
                    f"pool: {shape.tokens} tokens, {shape.clears} campaigns x 2 clears x "
                    f"{shape.latency_ms:g} ms, the last {HEAVY_CAMPAIGNS} x {HEAVY_FACTOR}"
                )
            print(f"\n{title}, medians of {repeat}", flush=True)
            scratch = workdir / name
            scratch.mkdir()
            load = os.getloadavg()[0]
            try:
                if name == "scale":
                    runs = scenario_scale(shape, variants, repeat, not args.smoke, scratch)
                elif name == "pool":
                    runs = scenario_pool(shape, variants, repeat, not args.smoke, scratch)
                else:
                    runs = scenario_run(name, shape, variants, repeat, not args.smoke, scratch)
            except HarnessError as exc:
                print(f"!! {name}: {exc}", file=sys.stderr, flush=True)
                broken.append(name)
                continue
            rows = judge(name, runs, judged=not args.smoke)
            print_table(
                f"{title}, {'smoke: not judged' if args.smoke else f'medians of {repeat}'}", rows
            )
            document = {
                "scenario": name,
                "shape": asdict(shape),
                "smoke": args.smoke,
                "repeat": repeat,
                "command": " ".join(["benchmarks/bench.py", *(argv or sys.argv[1:])]),
                "revision": revision,
                "compare": str(args.compare or ""),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_average": [load, os.getloadavg()[0]],
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "rows": rows,
                "runs": runs,
            }
            target = RESULTS_DIR / f"{name}{'-smoke' if args.smoke else ''}.json"
            target.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    finally:
        if args.keep:
            print(f"\nwork directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'BROKEN: ' + ', '.join(broken) if broken else 'every scenario measured'}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
