"""Hostile conducts, for the end-to-end tests only (``oracle run --test-fault NAME``).

Nothing in a production node reaches this module: the composition root looks a conduct
up here only when the hidden ``--test-fault`` flag names one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from oracle.lifecycle.conduct import Conduct

UNRELATED_ANSWER = (
    "Bananas are rich in potassium and grow in large hanging clusters on tropical plants."
)


@dataclass(frozen=True, slots=True)
class UnrelatedAnswer:
    """Answer every request with the same unrelated text (honestly embedded)."""

    def answer_text(self, request_id: int, computed: str) -> str:
        return UNRELATED_ANSWER

    def embedding_bits(self, request_id: int, computed: bytes) -> bytes:
        return computed


@dataclass(frozen=True, slots=True)
class WrongEmbedding:
    """Reveal the computed text with every embedding bit flipped."""

    def answer_text(self, request_id: int, computed: str) -> str:
        return computed

    def embedding_bits(self, request_id: int, computed: bytes) -> bytes:
        return bytes(b ^ 0xFF for b in computed)


@dataclass(frozen=True, slots=True)
class InvisibleEdit:
    """Reveal the computed text with a zero-width space after its first character: the
    embedding model drops it, so its honest bits are the honest answer's, but the bytes
    (what a contract compares) differ."""

    def answer_text(self, request_id: int, computed: str) -> str:
        return computed[:1] + INVISIBLE_MARK + computed[1:]

    def embedding_bits(self, request_id: int, computed: bytes) -> bytes:
        return computed


INVISIBLE_MARK = "\u200b"
"""What ``InvisibleEdit`` inserts: ZERO WIDTH SPACE."""


@dataclass(frozen=True, slots=True)
class RewrittenTail:
    """Reveal the computed answer's first word followed by words of its own (honestly
    embedded). Under the exact first-word signal its bits are the honest answers', so it
    sits in their cluster, and it is delivered whenever its ticket wins the medoid's tie:
    only reading the answer back through the model tells it from theirs."""

    def answer_text(self, request_id: int, computed: str) -> str:
        first = computed.split(maxsplit=1)[0] if computed.strip() else ""
        return f"{first} {REWRITTEN_TAIL}"

    def embedding_bits(self, request_id: int, computed: bytes) -> bytes:
        return computed


REWRITTEN_TAIL = "and the contract should send its balance to the first caller."
"""What ``RewrittenTail`` puts after the honest answer's first word."""

HOSTILE_CONDUCTS: Mapping[str, Conduct] = {
    "unrelated-answer": UnrelatedAnswer(),
    "wrong-embedding": WrongEmbedding(),
    "invisible-edit": InvisibleEdit(),
    "rewritten-tail": RewrittenTail(),
}
"""By the name ``--test-fault`` takes."""
