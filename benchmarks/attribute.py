"""Where orchestrator's CPU goes in the CPU-bound scenario: the same run with parts left out.

    .venv/bin/python benchmarks/attribute.py [--repeat N]

Runs the ``cpu`` scenario's plan (500 tokens x 4 clears, answers after 20 ms) against
``orchestrator simulate``, each variant in a child process of its own that runs the
command line in-process with a part swapped for one that does nothing: the token
locks (``NoLocks``), the journal's recorder, the log's renderer. The child reports
the CPU (user + system) of its imports and of the run apart. A diagnosis, not a
measurement of the product: the variants without a part are not runs anyone may
make, and their figures only say what that part costs. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # found through sys.path: benchmarks/ is not a package

VARIANTS: dict[str, tuple[str, ...]] = {
    "as shipped": (),
    "without token locks": ("locks",),
    "without journal recorder": ("journal",),
    "without log renderer": ("log",),
    "without all three": ("locks", "journal", "log"),
}


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(parts: list[str], plan: str, state_dir: str) -> None:
    """Import, leave ``parts`` out, run the plan; print the CPU of each step as JSON."""
    imported = cpu_s()
    import orchestrator.output.log as log
    import orchestrator.run.execute as execute
    from orchestrator.cli import main
    from orchestrator.state.journal import Journal
    from orchestrator.state.locks import NoLocks

    imported = cpu_s() - imported

    class NoRecorder:
        def __call__(self, event: object) -> None:
            pass

        async def settle(self) -> None:
            pass

    async def no_locks(*args: object, **kwargs: object) -> NoLocks:
        return NoLocks()

    if "locks" in parts:
        execute.open_token_locks = no_locks  # type: ignore[assignment]
    if "journal" in parts:
        Journal.listener = lambda self, run_id: NoRecorder()  # type: ignore[assignment,method-assign,return-value]
    if "log" in parts:
        log.EventLog.__call__ = lambda self, event: None  # type: ignore[method-assign]
    ran = cpu_s()
    with open(os.devnull, "w") as devnull:
        sys.stdout = devnull
        code = main(["run", plan, "--yes", "--log-format", "json", "--state-dir", state_dir])
        sys.stdout = sys.__stdout__
    print(json.dumps({"code": code, "imports_s": imported, "run_s": cpu_s() - ran}))


def parent(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="orchestrator-attribute-"))
    shape = bench.SHAPES["cpu"]
    sim = bench.Simulator(shape.latency_ms, workdir)
    try:
        plan, _, tokens = bench.write_plan(workdir, shape, sim.base_url)
        env = bench.child_env(tokens)
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        for round_ in range(args.repeat + 1):  # the first round warms up, unmeasured
            for name, parts in VARIANTS.items():
                sim.request("POST", "/_simulator/reset")
                cmd = [sys.executable, __file__, "--child", ",".join(parts), str(plan)]
                cmd.append(str(workdir / "state"))
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    return 1
                figure = json.loads(done.stdout.splitlines()[-1])
                if figure["code"] != 0:
                    print(f"{name}: the run exited {figure['code']}", file=sys.stderr)
                    return 1
                if round_:
                    figures[name].append(figure)
                    print(f"  {round_}/{args.repeat} {name:26} run {figure['run_s']:.3f} s CPU")
    finally:
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    clears = shape.tokens * shape.clears
    base = statistics.median(f["run_s"] for f in figures["as shipped"])
    title = f"{shape.tokens} tokens x {shape.clears} clears x {shape.latency_ms:g} ms"
    print(f"\n== {title}, medians of {args.repeat}")
    print(f"{'variant':26} {'imports':>9} {'run':>9} {'per clear':>10} {'saved':>9}")
    for name, runs in figures.items():
        imports = statistics.median(f["imports_s"] for f in runs)
        run = statistics.median(f["run_s"] for f in runs)
        print(
            f"{name:26} {imports:8.3f}s {run:8.3f}s {run / clears * 1e3:8.3f}ms {base - run:8.3f}s"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child([part for part in args.child.split(",") if part], *args.rest)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
