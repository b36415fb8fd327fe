"""Live progress goes where the operator looks: stderr on a terminal, whatever stdout is.

``orchestrator run plan.yaml --yes > run.jsonl`` on a terminal: stdout is a file
(the JSON log), stderr a pseudo-terminal, as in a shell.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from processes import WAIT_S, Cli

EXAMPLE = Path(__file__).resolve().parents[2] / "plans" / "example.yaml"
RUN = ("run", EXAMPLE, "--simulate", "--yes")


def stderr_on_a_terminal(cli: Cli, *args: object, stdout: Path) -> tuple[int, str]:
    """Run the CLI with stdout to ``stdout`` and stderr on a pty; its exit code and screen."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    try:
        with stdout.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", *map(str, args)],
                cwd=cli.cwd,
                env=cli.env | {"TERM": "xterm-256color"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=slave,
            )
        cli.children.append(proc)
        os.close(slave)
        slave = -1
        screen = b""
        deadline = time.monotonic() + WAIT_S
        while True:  # read until the child's side closes, so the pty never fills up
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the run did not end in time: {screen!r}"
            if not select.select([master], [], [], remaining)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every descriptor of the terminal's other side is closed
                break
            if not chunk:
                break
            screen += chunk
        return proc.wait(WAIT_S), screen.decode(errors="replace")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_progress_is_drawn_on_a_terminal_stderr_while_the_json_log_goes_to_a_file(
    cli: Cli, tmp_path: Path
) -> None:
    log = tmp_path / "run.jsonl"
    code, screen = stderr_on_a_terminal(cli, *RUN, stdout=log)
    assert code == 0, screen
    # The display's last frame (drawn as it stops, then erased) and the summary.
    assert "5/5 clears" in screen and "elapsed" in screen, screen
    assert "5 succeeded, 0 failed, 0 skipped" in screen
    # The file holds the JSON log and nothing of the display.
    lines = log.read_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines), lines
    assert "\x1b" not in log.read_text() and "clears ·" not in log.read_text()


def test_no_progress_is_drawn_when_stderr_is_no_terminal(cli: Cli) -> None:
    done = cli.run(*RUN)  # stdout and stderr are pipes
    assert done.code == 0, done.err
    assert "elapsed" not in done.err and "/5 clears" not in done.err
    assert "\x1b" not in done.err
    assert "5 succeeded, 0 failed, 0 skipped" in done.err
