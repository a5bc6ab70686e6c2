"""Checking other nodes' reveals: embedding verification, output lengths, reading an answer
back through the model, dispute majorities."""

from __future__ import annotations

from oracle.consensus.bits import hamming
from oracle.errors import InvalidConsensusParameters

__all__ = [
    "DEFAULT_READ_BACK_MARGIN",
    "default_verify_tolerance_bits",
    "dispute_excludes",
    "length_fault",
    "read_back_fault",
    "verify_embedding",
]

DEFAULT_READ_BACK_MARGIN = 8.0
"""In logits: a node disputes a revealed answer that no way of writing it comes below this
from what the named model writes with the request's seed (``read_back_fault``).

Twice the largest honest margin measured: every one of 840 answers that other engines
wrote for SmolLM2 (this project's 2-core CPU through the batched engine, an H200's GPU and
its 16-core CPU) lay within 4 logits when read back on a 2-core CPU, 98-100 % of each
task type within 2, and all 224 of gemma-3-270m's (the H200's two engines) within 2
(docs/consensus.md, "The dispute rule"). At 8, replayed summaries and free text are
disputed 89-99 % of the time, factual sentences 56 %; labels and numbers that the model
itself nearly writes mostly pass, and no margin could tell those from honest ones."""


def default_verify_tolerance_bits(dim_bits: int) -> int:
    """How many sign bits a recomputed embedding may differ by before a node disputes.

    max(1, dim_bits // 32): 12 of 384 bits. Measured with all-MiniLM-L6-v2 on CPU
    (docs/consensus.md): re-embedding the same text in float32 gave identical bits every
    time (single against batch, batch sizes 1-64, 1 or 2 threads, any order); float16
    weights changed up to 3 bits and bfloat16 up to 5, three of the 384 components being
    zero up to rounding (their sign is noise). Twice the worst of those covers other
    hardware and library versions; it stays far below the distance between two different
    answers (15 bits at the least measured, usually over 60), so the slack lets no one
    reveal bits that belong to another text.
    """
    if dim_bits <= 0:
        raise InvalidConsensusParameters(field="dim_bits", value=dim_bits, allowed="1 or more")
    return max(1, dim_bits // 32)


def verify_embedding(revealed_bits: bytes, recomputed_bits: bytes, tolerance_bits: int) -> bool:
    """Whether revealed bits match the embedding recomputed from the revealed output.

    Bits of the wrong length never match: the reveal did not use the request's model.
    """
    if tolerance_bits < 0:
        raise InvalidConsensusParameters(
            field="tolerance_bits", value=tolerance_bits, allowed="0 or more"
        )
    if len(revealed_bits) != len(recomputed_bits):
        return False
    return hamming(revealed_bits, recomputed_bits) <= tolerance_bits


def dispute_excludes(disputes_against: int, quorum: int) -> bool:
    """Whether a reveal is excluded: disputed by a strict majority of the quorum.

    disputes * 2 > quorum, in integers, as the contract does. Measured against the
    quorum, not the revealers: a few revealers can never exclude the others (at quorum
    2 one node cannot exclude the other; at quorum 5 it takes three).
    """
    if quorum < 1:
        raise InvalidConsensusParameters(field="quorum", value=quorum, allowed="1 or more")
    if not 0 <= disputes_against <= quorum - 1:
        raise InvalidConsensusParameters(
            field="disputes_against",
            value=disputes_against,
            allowed=f"0..{quorum - 1} (only the other seats dispute)",
        )
    return disputes_against * 2 > quorum


def length_fault(
    *,
    embedder_tokens: int,
    embedder_window: int,
    model_tokens: int | None,
    max_tokens: int,
) -> str | None:
    """Why a revealed output is longer than a reveal may be, or None when it is not.

    ``embedder_tokens``: the output's tokens for the embedding model, its special tokens
    included, counted without truncation; ``embedder_window``: how many the model reads
    (its max_seq_length). Past the window the model reads nothing, so a tail there would
    ride along unchecked: an honest node cuts its own answer to fit before it embeds.
    ``model_tokens``: the output's tokens for the named model (None when this node does
    not have that model: that check is left to nodes that do).
    """
    if embedder_window < 1:
        raise InvalidConsensusParameters(
            field="embedder_window", value=embedder_window, allowed="1 or more"
        )
    if embedder_tokens > embedder_window:
        return (
            f"the output is {embedder_tokens} tokens for the embedding model, "
            f"which reads {embedder_window}"
        )
    if model_tokens is not None and model_tokens > max_tokens:
        return f"the output is {model_tokens} tokens of the named model, maxTokens {max_tokens}"
    return None


def read_back_fault(
    *, model: str, max_margin: float | None, worst_token: int | None, limit: float
) -> str | None:
    """Why a revealed answer is not what ``model`` writes for the request, or None when it
    may be.

    ``max_margin``: the largest margin, in logits, of the way of writing the answer whose
    largest margin is smallest (``LlmRunner.choice_margins``); None when no way of writing
    it comes below ``limit`` (the reader stops looking there). ``worst_token``: where
    that margin lies, for the reason. A margin of ``limit`` or more is a fault.
    """
    if not limit > 0:
        raise InvalidConsensusParameters(field="limit", value=limit, allowed="more than 0")
    if max_margin is not None and max_margin < limit:
        return None
    where = "" if worst_token is None else f" at token {worst_token}"
    far = "at least" if max_margin is None else f"{max_margin:.2f}, at least"
    return (
        f"revealed output is not what {model} writes for this request's seed: "
        f"{far} {limit:g} logits from its pick{where}"
    )
