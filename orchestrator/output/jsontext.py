"""JSON text for the per-clear paths: log lines and journal tail lines.

``json.dumps`` costs several microseconds per call, most of it in Python around
its C encoder; the log and the journal write a few values per clear, nearly all
``None``, ints and strings, which are rendered here directly, exactly as
``json.dumps`` renders them.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii


def json_value(value: object) -> str:
    """``value`` as ``json.dumps`` renders it; the common types without its overhead."""
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is str:
        return encode_basestring_ascii(value)
    return json.dumps(value)
