"""The bare loop: the least any tool could do to send a plan's clears with aiohttp.

Run by ``benchmarks/bench.py`` as its own process, beside ``orchestrator run``,
against the same simulator and the same calls::

    python benchmarks/bare.py JOB.json

``JOB.json`` (written by bench.py) holds ``max_parallel`` and one entry per
token: the name of the environment variable holding the token and the full
URLs of its clears, in plan order. One ``aiohttp.ClientSession`` with the
connector limits orchestrator uses (``limit`` = lanes running at once, no
per-host limit, no cookie jar); one task per token while there are no more
tokens than ``max_parallel`` (otherwise ``max_parallel`` tasks, each taking
the next token when its lane ends); each token's calls strictly in order; the
body is parsed and judged (code 200-299, empty error); one JSON line is
printed per outcome. No retries, no journal, no plan parsing: a baseline, not a
tool. :func:`run_lanes` (the session and the tasks) is shared with ``floor.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO, TypeVar

import aiohttp
from yarl import URL

TOKEN_HEADER = "wolkvox-token"

_Lane = TypeVar("_Lane")


def judge(status: int, body: bytes) -> tuple[bool, object, str | None]:
    """(succeeded, code, msg) of an answer: status and code 200-299, no error."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return False, None, None
    code = data.get("code")
    ok = (
        200 <= status <= 299
        and isinstance(code, int)
        and 200 <= code <= 299
        and not data.get("error")
    )
    msg = data.get("msg")
    return ok, code, msg if isinstance(msg, str) else None


async def _lane(
    session: aiohttp.ClientSession, token: str, index: int, urls: list[str], out: TextIO
) -> bool:
    headers = {TOKEN_HEADER: token}
    for seq, url in enumerate(urls, 1):
        async with session.delete(
            URL(url, encoded=True), headers=headers, allow_redirects=False
        ) as resp:
            status = resp.status
            body = await resp.read()
        ok, code, _ = judge(status, body)
        out.write(
            json.dumps(
                {
                    "event": "ok" if ok else "failed",
                    "lane": index,
                    "seq": seq,
                    "status": status,
                    "code": code,
                }
            )
            + "\n"
        )
        if not ok:  # on_failure: stop
            return False
    return True


async def _worker(
    session: aiohttp.ClientSession,
    lanes: Iterator[_Lane],
    run_lane: Callable[[aiohttp.ClientSession, _Lane], Awaitable[bool]],
) -> int:
    failed = 0
    for lane in lanes:
        if not await run_lane(session, lane):
            failed += 1
    return failed


async def run_lanes(
    lanes: list[_Lane],
    max_parallel: int,
    run_lane: Callable[[aiohttp.ClientSession, _Lane], Awaitable[bool]],
) -> int:
    """Run ``run_lane`` on every lane, at most ``max_parallel`` at once; 1 if any failed.

    One session with orchestrator's connector limits; each task takes the next lane
    when its own ends, as orchestrator's workers do.
    """
    running = max(1, min(max_parallel, len(lanes)))
    connector = aiohttp.TCPConnector(limit=running, limit_per_host=0)
    async with aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=90),
    ) as session:
        shared = iter(lanes)
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_worker(session, shared, run_lane)) for _ in range(running)]
    return 1 if any(t.result() for t in tasks) else 0


def allow_open_files() -> None:
    """Raise the soft limit of open files to the hard one: a connection per lane running
    outgrows the 1,024 many systems give (the least any tool with 2,000 lanes must do)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(job: dict[str, Any]) -> int:
    out = sys.stdout

    async def run_lane(session: aiohttp.ClientSession, item: tuple[int, dict[str, Any]]) -> bool:
        index, lane = item
        return await _lane(session, os.environ[lane["token_env"]], index, lane["urls"], out)

    code = await run_lanes(list(enumerate(job["lanes"], 1)), int(job["max_parallel"]), run_lane)
    out.flush()
    return code


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print("usage: bare.py JOB.json", file=sys.stderr)
        sys.exit(2)
    allow_open_files()
    with open(sys.argv[1], encoding="utf-8") as handle:
        sys.exit(asyncio.run(main(json.load(handle))))
