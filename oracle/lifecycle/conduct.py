"""How this node answers: a policy the composition root injects into the lifecycle.

A production node is honest (``HONEST``). The end-to-end tests start nodes that misbehave
on purpose (``oracle.lifecycle.hostile``) to show that the network settles on the honest
answer anyway; those behaviours live there, not in the lifecycle's transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class Conduct(Protocol):
    """What this node makes of its own inference before it commits to it."""

    def answer_text(self, request_id: int, computed: str) -> str:
        """The text this node embeds, commits to and reveals."""
        ...

    def embedding_bits(self, request_id: int, computed: bytes) -> bytes:
        """The embedding bits this node commits to and reveals."""
        ...


@dataclass(frozen=True, slots=True)
class Honest:
    """Reveal what was computed."""

    def answer_text(self, request_id: int, computed: str) -> str:
        return computed

    def embedding_bits(self, request_id: int, computed: bytes) -> bytes:
        return computed


HONEST = Honest()
