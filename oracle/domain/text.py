"""Strings that come from the chain: whatever bytes someone put there, made safe to keep.

The ABI calls a field ``string``, but nothing makes a sender put UTF-8 there: a prompt, a
model name or a revealed output may hold any bytes, including ones Python cannot decode
and a NUL that Postgres refuses. ``chain_text`` never fails: it returns text that can be
stored and shown, and says what was wrong with the bytes, so that the request or reveal
that carried them can be declined with a reason instead of stopping the node.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

__all__ = ["ChainText", "chain_text", "invisibly_altered", "visible_form"]


@dataclass(frozen=True, slots=True)
class ChainText:
    """A string field as it arrived, decoded for storage and display."""

    text: str
    """Valid UTF-8 without NUL: the bytes themselves when they were clean, otherwise an
    escaped form (undecodable bytes as ``\\xNN``, NUL as ``\\x00``)."""
    defect: str | None = None
    """Why the bytes are not usable as text (None when they are)."""

    @property
    def clean(self) -> bool:
        return self.defect is None


def chain_text(raw: bytes) -> ChainText:
    """Decode a chain string's bytes; never raises."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        escaped = raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")
        return ChainText(escaped, f"is not valid UTF-8 (byte {exc.start} of {len(raw)})")
    if "\x00" in text:
        at = text.index("\x00")
        return ChainText(text.replace("\x00", "\\x00"), f"holds a NUL character (at {at})")
    return ChainText(text)


_KEPT_CONTROLS = frozenset("\t\n\r")
_VARIATION_SELECTORS = (range(0xFE00, 0xFE10), range(0xE0100, 0xE01F0))


def visible_form(text: str) -> str:
    """``text`` as a reader sees it: without the characters that show nothing (format
    characters, Unicode category Cf: zero-width spaces and joiners, bidirectional
    controls, the tag characters that can spell a hidden payload; control characters
    other than tab and line breaks; variation selectors), and with every other space
    (no-break, thin, ideographic: category Zs) a plain one. The uncased embedding models
    drop or fold all of these too, so a text and its visible form get the same bits."""
    kept: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category == "Cf" or (category == "Cc" and char not in _KEPT_CONTROLS):
            continue
        if any(ord(char) in selectors for selectors in _VARIATION_SELECTORS):
            continue
        kept.append(" " if category == "Zs" else char)
    return "".join(kept)


def invisibly_altered(revealed: str, own: str) -> bool:
    """Whether ``revealed`` is ``own`` with only invisible characters added, removed or
    swapped (``visible_form``): the same to a reader and to the embedding (0 bits apart,
    so no distance check catches it), other bytes to a contract comparing them, and room
    for a hidden payload. An honest node gives a text like that only if its model
    emitted a token of nothing but such characters where another engine did not and both
    then wrote the same, which the shared seed makes all but impossible: a node that
    holds the text it computed may take the difference for an edit."""
    return revealed != own and visible_form(revealed) == visible_form(own)
