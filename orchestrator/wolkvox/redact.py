"""Masking a token in text that came from a server, however the server changed it."""

from __future__ import annotations

#: Server text is masked wherever it holds this many characters of a token in a row.
MIN_TOKEN_FRAGMENT = 8
#: What a token, or a fragment of one, is replaced by.
TOKEN_MASK = "[token]"


def _fold(text: str) -> str:
    """``text`` in lower case, one character for each (``str.lower`` lengthens a few)."""
    return "".join(ch.lower()[0] for ch in text)


def redact(text: str, token: str) -> str:
    """``text`` with ``token`` masked wherever it shows, in any letter case, even in part.

    A server may echo a token changed: upper-cased, cut short, run into other
    text. Every run of :data:`MIN_TOKEN_FRAGMENT` or more characters that also
    occurs in the token, ignoring case, is masked; a token shorter than that is
    masked wherever it occurs whole.
    """
    if not token or not text:
        return text
    size = min(MIN_TOKEN_FRAGMENT, len(token))
    folded_token = _fold(token)
    fragments = {folded_token[i : i + size] for i in range(len(token) - size + 1)}
    folded = _fold(text)
    # Every common run of ``size`` or more characters is a chain of windows of ``size``.
    hidden = [False] * len(text)
    for start in range(len(text) - size + 1):
        if folded[start : start + size] in fragments:
            hidden[start : start + size] = [True] * size
    if not any(hidden):
        return text
    kept: list[str] = []
    for i, ch in enumerate(text):
        if not hidden[i]:
            kept.append(ch)
        elif i == 0 or not hidden[i - 1]:
            kept.append(TOKEN_MASK)
    return "".join(kept)
