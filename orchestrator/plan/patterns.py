"""The regular expressions a plan's values must match, as the schema writes them.

Each is written ``^(?:...)$`` in the common subset of ECMA-262 (what JSON Schema
specifies) and Python regular expressions, so editors and orchestrator agree.
"""

from __future__ import annotations

from typing import Final

#: Characters the loader refuses in a URL: controls, spaces.
_NOT_URL = r"\x00-\x20\x7f-\x9f\s"
#: One character of a host name (no user info, port, brackets or placeholder braces).
_HOST_CHAR = rf"[^{_NOT_URL}/?#@{{}}:\[\]]"
_IPV6_LITERAL = r"\[[0-9A-Fa-f:.]+\]"
#: An optional port, 0 to 65535 (leading zeros allowed, as urllib reads it).
_PORT = (
    r"(?::0*(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])?)?"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"


def _anycase(word: str) -> str:
    """``word`` matched in any letter case (URL schemes and ``localhost`` are)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)


def _whole(pattern: str) -> str:
    """A pattern that must match the whole text."""
    return f"^(?:{pattern})$"


_LOOPBACK = (
    f"(?:{_anycase('localhost')}|127(?:\\.{_OCTET}){{3}}"
    r"|\[::1\]|\[(?:0{1,4}:){7}0{0,3}1\])"
)

CAMPAIGN_ID_PATTERN: Final = _whole("[0-9]{1,20}")
SERVER_PATTERN: Final = _whole("[A-Za-z0-9]{1,32}")
ENV_NAME_PATTERN: Final = _whole("[A-Za-z_][A-Za-z0-9_]*")
FILE_PATH_PATTERN: Final = _whole(r"[^\x00]*")
#: Whole numbers as written: 1 to 20 digits (leading zeros allowed), then the range.
MAX_PARALLEL_PATTERN: Final = _whole("(?=[0-9]{1,20}$)0*(?:[1-9][0-9]{0,3}|10000)")
RETRIES_PATTERN: Final = _whole("(?=[0-9]{1,20}$)0*(?:[0-9]|10)")
#: Seconds as written: digits, optionally a dot and digits, at most 3600.
_SECONDS = (
    r"(?=[0-9]{1,20}(?:\.[0-9]{1,20})?$)0*"
    r"(?:(?:[0-9]{1,3}|[12][0-9]{3}|3[0-5][0-9]{2})(?:\.[0-9]+)?|3600(?:\.0+)?)"
)
COOLDOWN_PATTERN: Final = _whole(_SECONDS)
#: Seconds as written, at most 86400.
MAINTENANCE_WAIT_PATTERN: Final = _whole(
    r"(?=[0-9]{1,20}(?:\.[0-9]{1,20})?$)0*"
    r"(?:(?:[0-9]{1,4}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2})(?:\.[0-9]+)?|86400(?:\.0+)?)"
)
TIMEOUT_PATTERN: Final = _whole(r"(?![0.]*$)" + _SECONDS)
_HTTPS_HOST = f"(?:(?:{_HOST_CHAR}|\\{{server\\}})+|{_IPV6_LITERAL})"
BASE_URL_PATTERN: Final = _whole(
    f"(?:{_anycase('https')}://{_HTTPS_HOST}|{_anycase('http')}://{_LOOPBACK})"
    f"{_PORT}(?:/(?:[^{_NOT_URL}?#{{}}]|\\{{server\\}})*)?"
)
LOCK_URL_PATTERN: Final = _whole(
    f"{_anycase('redis')}[Ss]?://(?:[^{_NOT_URL}/?#\\[\\]]*@)?"
    f"(?:[^{_NOT_URL}/?#@:\\[\\]]+|{_IPV6_LITERAL}){_PORT}(?:[/?#][^{_NOT_URL}]*)?"
)
