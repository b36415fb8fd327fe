"""Files that readers see whole or not at all: the report and the metrics file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Readable by a collector running as another user (node_exporter); nothing secret is written.
FILE_MODE = 0o644


def write_text_atomically(
    path: str | os.PathLike[str], text: str, *, mode: int = FILE_MODE
) -> None:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a part.

    The temporary file lives in the same directory (``os.replace`` is atomic only within
    one file system) and starts with a dot, so the textfile collector, which reads only
    ``*.prom``, never picks it up. Raises :class:`OSError`.
    """
    target = Path(path)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file 0600; chmod is not subject to the umask.
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
