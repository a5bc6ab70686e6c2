"""What a node reveals after committing (the Revealed event), as consensus sees it."""

from __future__ import annotations

from dataclasses import dataclass

from oracle.errors import InvalidRecord

__all__ = ["Reveal"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Reveal:
    """One node's revealed answer to a request.

    Reveals of a request are handled in seat order (the seat index each ``Committed``
    event names), so every node and the contract see the same sequence.
    """

    seat: int
    """The seat the node holds, from 0 (an evicting commit takes the evicted seat's)."""
    oracle: str
    """Address of the node that committed and revealed."""
    output: str
    model_index: int
    """Index into the request's accepted_models."""
    embedding_bits: bytes
    """Sign bits of the output's embedding, packed most significant bit first."""
    excluded: bool = False
    """True once a strict majority of the quorum disputed this reveal."""

    def __post_init__(self) -> None:
        if self.seat < 0:
            raise InvalidRecord(field="seat", value=self.seat, allowed="0 or more")
        if self.model_index < 0:
            raise InvalidRecord(field="model_index", value=self.model_index, allowed="0 or more")
