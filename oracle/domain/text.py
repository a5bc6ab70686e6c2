"""Strings that come from the chain: whatever bytes someone put there, made safe to keep.

The ABI calls a field ``string``, but nothing makes a sender put UTF-8 there: a prompt, a
model name or a revealed output may hold any bytes, including ones Python cannot decode
and a NUL that Postgres refuses. ``chain_text`` never fails: it returns text that can be
stored and shown, and says what was wrong with the bytes, so that the request or reveal
that carried them can be declined with a reason instead of stopping the node.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChainText", "chain_text"]


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
