"""Lines for people and pipes: a reader that stops reading is no error.

``orchestrator runs | head -1`` closes the pipe once it has its line. The command
then stops writing, quietly, rather than die with a traceback: the reader had
what it asked for.
"""

from __future__ import annotations

import os
from typing import TextIO


def print_line(text: str, stream: TextIO) -> None:
    """Print ``text`` as a line on ``stream`` and flush it; a closed pipe drops it."""
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        drop(stream)


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
