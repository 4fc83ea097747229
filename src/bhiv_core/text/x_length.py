"""A post's length as X counts it: twitter-text v3's weighted length, in linear time.

The text is NFC-normalised (a CRLF counts once). Code points in the Latin and general-punctuation
ranges (U+0000–U+10FF, U+2000–U+200D, U+2010–U+201F, U+2032–U+2037) weigh 1, every other one 2
(CJK, most symbols); an emoji sequence (skin tones, ZWJ families, flags, keycaps) weighs 2 as a
whole; a URL weighs 23 whatever its length (X wraps every link in t.co). The limit is 280.

URLs are found as twitter-text finds them: ``http(s)://`` and a host with a known top-level
domain, or a bare ASCII domain name ending in one (:mod:`bhiv_core.text._tlds`), not preceded by a
letter, digit, ``@``, ``$``, ``#``, ``-``, ``_`` or ``/``; trailing punctuation is not part of the
link. twitter-text's own URL pattern backtracks quadratically on strings such as ``a.a.a.…`` (3 s
for 1,600 characters, measured with the ``twitter-text-parser`` port); here each white-space
delimited token is scanned once.

Known difference: a symbol that is not an emoji but is followed by the emoji presentation
selector (U+FE0F) counts 2 here and 4 at X; never more here than at X otherwise.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from bhiv_core.text._tlds import TLDS

__all__ = ["MAX_WEIGHTED_LENGTH", "URL_LENGTH", "segments", "url_spans", "weighted_length"]

MAX_WEIGHTED_LENGTH = 280
URL_LENGTH = 23

_LIGHT = ((0, 4351), (8192, 8205), (8208, 8223), (8242, 8247))
_BMP_EMOJI = (
    (0xA9, 0xA9), (0xAE, 0xAE), (0x203C, 0x203C), (0x2049, 0x2049), (0x2122, 0x2122), (0x2139, 0x2139),
    (0x2194, 0x21AA), (0x231A, 0x23FF), (0x24C2, 0x24C2), (0x25AA, 0x25FE), (0x2600, 0x27BF),
    (0x2934, 0x2935), (0x2B05, 0x2B55), (0x3030, 0x3030), (0x303D, 0x303D), (0x3297, 0x3299),
)  # fmt: skip
_ZWJ = 0x200D
_TOKEN = re.compile(r"\S+")
_SCHEME = re.compile(r"https?://", re.IGNORECASE)
_ASCII_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]*")
_HOST = re.compile(r"[\w.\-]+")
_PORT = re.compile(r":\d{1,5}")
_PATH = re.compile(r"[A-Za-z0-9!*';:=+,.$/%#\[\]\-_~&|@?()\u00c0-\u024f\u0400-\u04ff]*")
_NOT_BEFORE = frozenset("@$#-_/.")
_TRAILING = frozenset(".,!?:;'\"»”’)]}>…")


def _is_emoji_base(cp: int) -> bool:
    if cp >= 0x1F000:
        return cp <= 0x1FAFF
    return any(low <= cp <= high for low, high in _BMP_EMOJI)


def _emoji_end(text: str, i: int) -> int:
    """The end of the emoji sequence starting at ``i``.

    A sequence is a base, one presentation selector or skin tone, a keycap mark, tag characters,
    then ``ZWJ`` and the next base, again.
    """
    n = len(text)
    while True:
        i += 1
        # X's emoji table has "symbol + U+FE0F" for text-default symbols only: after a picture
        # emoji the selector counts on its own (2), so it is not absorbed here either.
        if i < n and (
            (text[i] == "\ufe0f" and ord(text[i - 1]) < 0x1F000) or 0x1F3FB <= ord(text[i]) <= 0x1F3FF
        ):
            i += 1
        if i < n and text[i] == "\u20e3":
            i += 1
        while i < n and 0xE0020 <= ord(text[i]) <= 0xE007F:
            i += 1
        if i + 1 < n and ord(text[i]) == _ZWJ and _is_emoji_base(ord(text[i + 1])):
            i += 1
            continue
        return i


def _char_weight(cp: int) -> int:
    return 1 if any(low <= cp <= high for low, high in _LIGHT) else 2


def _plain_weight(text: str) -> int:
    """The weight of text holding no URL: per code point, an emoji sequence counting 2."""
    total = 0
    i, n = 0, len(text)
    while i < n:
        cp = ord(text[i])
        if 0x1F1E6 <= cp <= 0x1F1FF and i + 1 < n and 0x1F1E6 <= ord(text[i + 1]) <= 0x1F1FF:
            total += 2  # a flag: two regional indicators
            i += 2
            continue
        keycap = text[i] in "0123456789#*" and (
            text[i + 1 : i + 3] == "\ufe0f\u20e3" or text[i + 1 : i + 2] == "\u20e3"
        )
        if keycap or _is_emoji_base(cp):
            i = _emoji_end(text, i)
            total += 2
            continue
        total += _char_weight(cp)
        i += 1
    return total


def _valid_host(host: str, *, ascii_only: bool) -> bool:
    labels = host.split(".")
    if len(labels) < 2 or any(not label or label[0] == "-" or label[-1] == "-" for label in labels):
        return False
    if any("_" in label for label in labels) or (ascii_only and not host.isascii()):
        return False
    return labels[-1].lower() in TLDS


def _url_end(token: str, host_end: int) -> int:
    """Where a URL whose host ends at ``host_end`` ends: port, path, without trailing punctuation."""
    end = host_end
    port = _PORT.match(token, end)
    if port:
        end = port.end()
    if end < len(token) and token[end] in "/?#":
        end = _PATH.match(token, end).end()  # type: ignore[union-attr]  # matches empty
        while end > host_end and token[end - 1] in _TRAILING:
            if token[end - 1] == ")" and token.count("(", host_end, end) >= token.count(")", host_end, end):
                break
            end -= 1
    return end


def _token_urls(token: str) -> Iterator[tuple[int, int]]:
    position = 0
    while position < len(token):
        scheme = _SCHEME.search(token, position)
        run = _ASCII_RUN.search(token, position)
        if scheme and (run is None or scheme.start() <= run.start()):
            host = _HOST.match(token, scheme.end())
            if host:
                name = host.group().rstrip(".-")
                if _valid_host(name, ascii_only=False):
                    end = _url_end(token, scheme.end() + len(name))
                    yield scheme.start(), end
                    position = end
                    continue
            position = scheme.end()
            continue
        if run is None:
            return
        name = run.group().rstrip(".-")
        before = token[run.start() - 1] if run.start() else ""
        if before and (before in _NOT_BEFORE or before.isalnum()):
            position = run.end()
            continue
        if _valid_host(name, ascii_only=True):
            end = _url_end(token, run.start() + len(name))
            yield run.start(), end
            position = end
            continue
        position = run.end()


def url_spans(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` spans of ``text`` that X treats as links."""
    spans: list[tuple[int, int]] = []
    for token in _TOKEN.finditer(text):
        spans.extend((token.start() + s, token.start() + e) for s, e in _token_urls(token.group()))
    return spans


def segments(text: str) -> list[tuple[str, bool]]:
    """``text`` as pieces ``(piece, is_url)`` whose concatenation is ``text``."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    for start, end in url_spans(text):
        if start > position:
            pieces.append((text[position:start], False))
        pieces.append((text[start:end], True))
        position = end
    if position < len(text):
        pieces.append((text[position:], False))
    return pieces


def weighted_length(text: str) -> int:
    """The length X gives ``text`` (a post is valid up to :data:`MAX_WEIGHTED_LENGTH`)."""
    normalized = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return sum(URL_LENGTH if is_url else _plain_weight(piece) for piece, is_url in segments(normalized))
