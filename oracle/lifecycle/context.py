"""What the request lifecycle needs to know about this node, and what it asks of the chain."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from oracle.consensus import DEFAULT_READ_BACK_MARGIN
from oracle.domain.pace import BlockPace
from oracle.lifecycle.conduct import HONEST, Conduct

DEFAULT_MAX_COMMIT_WINDOW_S = 3600.0
"""An hour: a requester's ``maxTimeMs`` may set the commit deadline weeks ahead."""


DEFAULT_MIN_REVEAL_WINDOW_S = 10.0
DEFAULT_MIN_DISPUTE_WINDOW_S = 5.0
"""Above a reveal's verification; the chain's block time is added by ``window_blocks``."""
DEFAULT_WINDOW_BLOCKS = 3
"""A reveal or dispute answers a block: that block seen, the transaction sent, mined in
the next one or the one after. So a window must hold three of the chain's blocks (plus
the confirmations the node waits for)."""
DEFAULT_MAX_SLASH_BPS = 2000
"""20 %: twice the coordinator's default."""
DEFAULT_MIN_EXPIRY_GRACE_S = 30.0
"""After the dispute window, how long a request with a silent seat stays open to be
finalized: shorter, and anyone may ``expire`` it first, refunding a requester who has
read the revealed answers while the nodes that gave them go unpaid."""


@dataclass(frozen=True, slots=True)
class AcceptedTerms:
    """The coordinator's per-request terms this node commits under.

    The owner sets them (``setWindows``, ``setSlashBps``, ``setExpiryGrace``) and a
    request keeps the ones of its day: a reveal window too short to land a reveal in, a
    dispute window shorter than a block and a verification, or an expiry grace too short
    to finalize in, leaves honest seats slashed, a lie undisputed or the work unpaid
    (docs/security.md, open risks 7 and 8), so such a request is declined.
    """

    min_reveal_window_s: float = DEFAULT_MIN_REVEAL_WINDOW_S
    min_dispute_window_s: float = DEFAULT_MIN_DISPUTE_WINDOW_S
    max_slash_bps: int = DEFAULT_MAX_SLASH_BPS
    min_expiry_grace_s: float = DEFAULT_MIN_EXPIRY_GRACE_S
    window_blocks: int = DEFAULT_WINDOW_BLOCKS
    """The reveal and dispute windows must also hold this many blocks, timed by the
    chain's pace as the listener sees it (``NodeContext.block_pace``)."""


class Calldata(Protocol):
    """The coordinator's calldata the lifecycle's transitions build; no RPC behind it."""

    def encode_commit(self, request_id: int, request_hash: bytes, commitment: bytes) -> bytes: ...

    def encode_reveal(
        self, request_id: int, output: str, model_index: int, bits: bytes, salt: bytes
    ) -> bytes: ...

    def encode_dispute(self, request_id: int, request_hash: bytes, accused: str) -> bytes: ...

    def encode_finalize(
        self,
        request_id: int,
        bits: list[bytes],
        output_hashes: list[bytes],
        winner_output: str,
    ) -> bytes: ...

    def encode_expire(self, request_id: int) -> bytes: ...


class ChainCalls(Calldata, Protocol):
    """Calldata and the one read the lifecycle needs (CoordinatorBinding); the driver reads
    before it locks a request's row, never while it holds it."""

    def dispute_deadline(self, request_id: int, *, as_of: Hashable = None) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelProfile:
    """What admission knows of a served model before anything has been measured."""

    name: str
    context_tokens: int
    """The context one job gets, prompt and maxTokens together (a batched worker's slot)."""
    workers: int = 1
    prior_tokens_per_s: float = 30.0
    """Tokens (prompt and completion) per second of one worker, all its jobs together,
    until measured."""
    slots: int = 1
    """Jobs one worker runs at once (a batched worker's ``--parallel``), until its workers
    announce theirs."""
    price_per_token_wei: int = 0
    """The operator's price per token of work (read or written) of this model; admission
    declines a request whose fee per seat is below it times the request's prompt tokens
    plus maxTokens (``oracle.config``: the node's prices)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeContext:
    address: str
    """This node's address, lowercase."""
    coordinator: str
    """The coordinator's address, lowercase."""
    models: Mapping[str, ModelProfile]
    embedding_models: Sequence[str]
    verify_tolerance_bits: int | None = None
    """None: the consensus module's default for the embedding's size."""
    read_back_margin: float | None = DEFAULT_READ_BACK_MARGIN
    """Dispute another seat's answer, unlike ours, that no way of writing it comes below
    this many logits from what the named model writes with the request's seed
    (oracle.consensus.read_back_fault); None: answers are not read back."""
    commit_margin_s: float = 3.0
    """Time kept free after the embedding for the commit transaction to land."""
    embed_estimate_s: float = 0.5
    finalize_stagger_s: float = 2.0
    """Non-winning nodes wait this much per rank before finalizing themselves."""
    outsider_delay_s: float = 20.0
    """Nodes without a seat wait this much longer before settling a forgotten request."""
    max_commit_window_s: float = DEFAULT_MAX_COMMIT_WINDOW_S
    """Requests whose commit deadline lies further ahead are declined: a commit locks the
    stake until the request expires, and a seat must stay online to reveal."""
    accepts: AcceptedTerms = AcceptedTerms()
    """The reveal and dispute windows, slash rate and expiry grace a request must have to
    be served."""
    block_pace: BlockPace | None = None
    """The chain's time between blocks, recorded by the listener; None: the windows are
    held to the configured seconds only."""
    conduct: Conduct = HONEST
    """What this node makes of its own inference; the composition root may inject another."""
