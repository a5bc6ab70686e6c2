"""The coordinator's events as the node sees them: one frozen record per event.

``ChainEvent`` is a discriminated union: ``match`` on the class (or ``isinstance``)
and every field is typed, no casts. Each record carries where its log sits on the
chain (``EventPosition``), which is what makes a replayed log recognisable and lets
a reorg roll back exactly what the orphaned blocks brought. Addresses are lowercase
0x-hex strings. Nothing here talks to the chain: ``oracle.chain.coordinator`` builds
these records from logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from oracle.domain.request import InferenceRequest, RequestId, SecurityFrame, utc_from_unix

__all__ = [
    "FAILURE_REASONS",
    "SLASH_REASONS",
    "ChainEvent",
    "CommittedEvent",
    "DisputedEvent",
    "EventPosition",
    "FailedEvent",
    "FailureReason",
    "FinalizedEvent",
    "RequestedEvent",
    "RevealedEvent",
    "SlashReason",
    "SlashedEvent",
]

FailureReason = Literal["no_commits", "no_reveals", "no_consensus", "expired"]
FAILURE_REASONS: tuple[FailureReason, ...] = (
    "no_commits",
    "no_reveals",
    "no_consensus",
    "expired",
)
"""In the order of the contract's ``FailureReason`` enum."""

SlashReason = Literal["never_revealed", "excluded"]
SLASH_REASONS: tuple[SlashReason, ...] = ("never_revealed", "excluded")
"""In the order of the contract's ``Slashed.reason`` codes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventPosition:
    """Where a log sits: ``(block_hash, log_index)`` names it uniquely."""

    block_number: int
    block_hash: bytes
    log_index: int
    tx_hash: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestedEvent:
    """``InferenceRequested``: a contract asked for an inference."""

    event_name: ClassVar[str] = "InferenceRequested"

    position: EventPosition
    request_id: RequestId
    requester: str
    prompt: str
    accepted_models: tuple[str, ...]
    temperature_milli: int
    max_tokens: int
    quorum: int
    max_time_ms: int
    sec_distance_bp: int
    sec_percentage_bp: int
    embedding_model: str
    callback: str | None
    """None when the request has no consumer contract (the zero address on chain)."""
    callback_gas_limit: int
    fee_wei: int
    commit_deadline: int
    """Unix seconds, chain time."""
    reveal_deadline: int
    """Unix seconds, chain time."""
    dispute_window_s: int
    request_hash: bytes
    """What every commitment to this request binds (a hash of its fields and seed)."""
    seed: int
    """``block.prevrandao`` when the request was made: the seats' tickets come from it."""
    expires_at: int
    """Unix seconds, chain time: after this finalize reverts and anyone may ``expire``."""
    callback_gas_price: int
    """Wei per gas of the prepaid callback (paid to the finalizer)."""
    eligible_count: int
    """Nodes that could commit (registered before the request): commits close early
    once this many have committed."""
    slash_bps: int
    """Share of a seat's stake slashed for not revealing or an excluded reveal."""
    dim_bits: int
    """The embedding bits every reveal must carry: the embedding model's registration on
    the coordinator when the request was made (the owner may change it)."""
    defects: tuple[str, ...] = ()
    """Why string fields are unusable (bytes that are not UTF-8, a NUL), one sentence
    each; those fields then hold an escaped form (``oracle.domain.text``). A request
    with defects is declined, never served."""

    def to_request(self) -> InferenceRequest:
        """The request as the rest of the node handles it (validated, aware datetimes)."""
        return InferenceRequest(
            request_id=self.request_id,
            requester=self.requester,
            prompt=self.prompt,
            accepted_models=self.accepted_models,
            temperature_milli=self.temperature_milli,
            max_tokens=self.max_tokens,
            frame=SecurityFrame(
                quorum=self.quorum,
                max_time_ms=self.max_time_ms,
                sec_distance_bp=self.sec_distance_bp,
                sec_percentage_bp=self.sec_percentage_bp,
                embedding_model=self.embedding_model,
            ),
            callback=self.callback,
            callback_gas_limit=self.callback_gas_limit,
            fee_wei=self.fee_wei,
            commit_deadline=utc_from_unix(self.commit_deadline),
            reveal_deadline=utc_from_unix(self.reveal_deadline),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CommittedEvent:
    """``Committed``: a node took seat ``seat`` with a hidden commitment."""

    event_name: ClassVar[str] = "Committed"

    position: EventPosition
    request_id: RequestId
    oracle: str
    seat: int
    commitment: bytes
    ticket: int
    """The committer's stake-weighted ticket: smaller is better."""
    evicted: str | None = None
    """The node whose seat this commit took (its worse ticket), None when none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealedEvent:
    """``Revealed``: a seat opened its commitment."""

    event_name: ClassVar[str] = "Revealed"

    position: EventPosition
    request_id: RequestId
    oracle: str
    seat: int
    output: str
    """The revealed text; an escaped form when ``output_defect`` is set."""
    output_hash: bytes
    """keccak256 of the output's bytes exactly as revealed (what the commitment holds)."""
    model_index: int
    embedding_bits: bytes
    output_defect: str | None = None
    """Why the revealed bytes are not usable text (None when they are)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DisputedEvent:
    """``Disputed``: ``disputer`` says ``accused``'s embedding does not match its text."""

    event_name: ClassVar[str] = "Disputed"

    position: EventPosition
    request_id: RequestId
    accused: str
    disputer: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalizedEvent:
    """``InferenceFinalized``: consensus held and ``output`` was delivered."""

    event_name: ClassVar[str] = "InferenceFinalized"

    position: EventPosition
    request_id: RequestId
    winner_seat: int
    output: str
    model: str
    cluster_mask: int
    """Bit i set when seat i sits in the winning cluster (and was paid)."""
    reward_per_oracle: int
    callback_succeeded: bool

    @property
    def cluster_size(self) -> int:
        return self.cluster_mask.bit_count()


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedEvent:
    """``InferenceFailed``: the request closed without an answer (or expired unsettled);
    the fee and the callback prepayment were refunded."""

    event_name: ClassVar[str] = "InferenceFailed"

    position: EventPosition
    request_id: RequestId
    reason: FailureReason


@dataclass(frozen=True, slots=True, kw_only=True)
class SlashedEvent:
    """``Slashed``: at settlement, ``oracle`` lost ``amount`` wei of its stake (burnt)."""

    event_name: ClassVar[str] = "Slashed"

    position: EventPosition
    request_id: RequestId
    oracle: str
    amount_wei: int
    reason: SlashReason


ChainEvent = (
    RequestedEvent
    | CommittedEvent
    | RevealedEvent
    | DisputedEvent
    | FinalizedEvent
    | FailedEvent
    | SlashedEvent
)
