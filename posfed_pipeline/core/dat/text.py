"""Text that fits the target encoding: encodable characters and transliteration."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from functools import cache, lru_cache

from posfed_pipeline.core.dat.vocabulary import _FALLBACK, ENCODINGS, DatRenderError


@cache
def _charset(encoding: str) -> frozenset[str]:
    """The printable characters that ``encoding`` writes as one byte each."""
    chars = set()
    for byte in range(256):
        try:
            ch = bytes([byte]).decode(encoding)
        except UnicodeDecodeError:
            continue
        if ch.isprintable():
            chars.add(ch)
    return frozenset(chars)


def _cleaner(encoding: str, transliterate: bool, name: str) -> Callable[[str], str]:
    """str -> only printable characters of ``encoding`` (one byte each).

    Control characters and line breaks become a space, invisible format characters vanish,
    other whitespace becomes a space. Anything else the encoding lacks is transliterated
    (``transliterate: true``) or refused with an error naming the field.
    """
    charset = _charset(encoding)

    def clean(text: str) -> str:
        out = []
        for ch in unicodedata.normalize("NFC", text):
            if ch in charset:
                out.append(ch)
                continue
            category = unicodedata.category(ch)
            if category in ("Cc", "Zl", "Zp", "Zs"):
                out.append(" ")
            elif category == "Cf" or unicodedata.combining(ch):
                continue
            elif transliterate:
                out.append(_transliterate_char(ch, encoding))
            else:
                raise DatRenderError(
                    f"field {name}: character {ch!r} (U+{ord(ch):04X}) cannot be written in "
                    f"{encoding} and this spec version does not transliterate"
                )
        return "".join(out)

    return clean


@lru_cache(maxsize=8192)
def _transliterate_char(ch: str, encoding: str) -> str:
    if ch in _FALLBACK:
        return _FALLBACK[ch]
    charset = _charset(encoding)
    out = []
    for part in unicodedata.normalize("NFKD", ch):
        if unicodedata.combining(part):
            continue
        if part in charset:
            out.append(part)
        elif part in _FALLBACK:
            out.append(_FALLBACK[part])
        elif unicodedata.category(part) == "Zs":
            out.append(" ")
        else:
            out.append("?")
    return "".join(out) or "?"


def transliterate(text: str, encoding: str) -> str:
    """``text`` in printable characters of ``encoding``: accents stripped, '?' for the rest."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r}")
    return _cleaner(encoding, True, "text")(text)
