"""Lines for people and pipes: a reader that stops reading is no error.

``orchestrator runs | head -1`` closes the pipe once it has its line. The command
then stops writing, quietly, rather than die with a traceback: the reader had
what it asked for.
"""

from __future__ import annotations

import io
import os
from typing import TextIO

from rich.console import Console
from rich.text import Text


def print_line(text: str, stream: TextIO) -> None:
    """Print ``text`` as a line on ``stream`` and flush it; a closed pipe drops it."""
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        drop(stream)


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal; a closed or odd stream is none."""
    try:
        return stream.isatty()
    except (ValueError, OSError):
        return False


def flush(stream: TextIO) -> None:
    """Flush ``stream``; a closed pipe drops what is left."""
    try:
        stream.flush()
    except BrokenPipeError:
        drop(stream)


def drop(stream: TextIO) -> None:
    """Point ``stream``'s descriptor at /dev/null, so that later writes cannot fail."""
    # What is still buffered, and the interpreter's last flush at exit, go nowhere
    # rather than fail again with a traceback.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


class ConsoleLines(io.TextIOBase):
    """A text stream that prints whole lines through a rich console (above a live display)."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console
        self._partial = ""

    def writable(self) -> bool:
        """Always writable."""
        return True

    def isatty(self) -> bool:
        """The console's answer, so a console log keeps its colours."""
        return bool(self._console.is_terminal)

    @property  # typeshed calls it an attribute; on io.TextIOBase it is read-only
    def encoding(self) -> str:  # type: ignore[override]
        """The console's encoding, so a console log knows which marks it can show."""
        return self._console.encoding

    def write(self, text: str) -> int:
        """Print every complete line of ``text``; keep the rest for the next write."""
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._print(line)
        return len(text)

    def flush(self) -> None:
        """Print a pending partial line."""
        if self._partial:
            line, self._partial = self._partial, ""
            self._print(line)

    def _print(self, line: str) -> None:
        # A console log line carries ANSI colours; rich must know them to measure the line.
        self._console.print(Text.from_ansi(line), soft_wrap=True)
