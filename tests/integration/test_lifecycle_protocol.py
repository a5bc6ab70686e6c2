"""The lifecycle under protocol v2's rules, step by step on a real Postgres: commitments
bind the request hash, reveals wait for commits to close and for a seat, an evicted node
stops, a weak ticket is a recorded outcome, over-long reveals are disputed, the winner is
the medoid with exclusion by the quorum, and an unsettled request is expired.

Calldata is the real coordinator ABI's; no transaction is sent (the outbox is read)."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.commitment import commitment_hash
from oracle.chain.coordinator import CoordinatorBinding
from oracle.consensus import DEFAULT_READ_BACK_MARGIN
from oracle.domain.events import ChainEvent, DisputedEvent, RequestedEvent
from oracle.domain.request import RequestId
from oracle.engine.llm import request_seed
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.lifecycle.driver import advance_requests
from oracle.lifecycle.transitions import OUTSIDER_FINALIZE_MAX_BYTES
from oracle.store.chain_state import apply_event, rollback_after
from oracle.store.models import Answer, Job, OutgoingTx, Request
from oracle.store.outbox import mark_failed
from oracle.store.queue import PRIORITY_VERIFICATION, claim_jobs, complete_job
from oracle.store.wakes import wake_requests
from tests.integration.test_chain_state import (
    ALICE,
    BITS,
    BOB,
    CAROL,
    DAVE,
    at,
    committed,
    requested,
    revealed,
)
from tests.integration.test_lifecycle_driver import MINILM, SMOL, _admitted_request, _answered

EVE = "0x" + "e5" * 20
COORDINATOR = "0x" + "c0" * 20
CTX = NodeContext(
    address=ALICE,
    coordinator=COORDINATOR,
    models={SMOL: ModelProfile(name=SMOL, context_tokens=4096)},
    embedding_models=[MINILM],
)
DISPUTES_CLOSE = 1_800_000_100
"""Where the stub chain says disputes close (unix seconds)."""


class StubChain(CoordinatorBinding):
    """The real calldata; the one read the lifecycle makes answered without a contract."""

    def dispute_deadline(self, request_id: int, *, as_of: Hashable = None) -> int:
        return DISPUTES_CLOSE


@pytest.fixture
def stub(chain: Anvil) -> StubChain:
    return StubChain(chain.w3, COORDINATOR)


def news(sessions: sessionmaker[Session], *events: ChainEvent) -> None:
    """Store events as the listener does: with a wake for each request they concern."""
    with sessions.begin() as session:
        for event in events:
            apply_event(session, event)
        wake_requests(session.connection(), [e.request_id for e in events], "chain event")


def txs(sessions: sessionmaker[Session], kind: str) -> list[OutgoingTx]:
    with sessions() as session:
        rows = session.scalars(
            select(OutgoingTx).where(OutgoingTx.kind == kind).order_by(OutgoingTx.id)
        ).all()
        session.expunge_all()
        return list(rows)


def request_row(sessions: sessionmaker[Session], request_id: int = 1) -> Request:
    with sessions() as session:
        row = session.get_one(Request, request_id)
        session.expunge(row)
        return row


def finish_job(engine: Engine, kind: str, result: dict[str, object]) -> Job:
    model = SMOL if kind in ("inference", "readback") else MINILM
    with engine.begin() as conn:
        (job,) = claim_jobs(conn, worker_id="w1", kinds=[kind], models=[model])  # type: ignore[list-item]
    with engine.begin() as conn:
        complete_job(conn, job_id=job.id, worker_id="w1", result=result)
    with Session(engine) as session:
        done = session.get_one(Job, job.id)
        session.expunge(done)
        return done


# --- commit ------------------------------------------------------------------------------


def test_the_answer_is_cut_to_fit_and_the_commitment_binds_the_request_hash(
    db_engine: Engine, sessions: sessionmaker[Session], stub: StubChain
) -> None:
    _admitted_request(sessions, request_id=1)
    finish_job(db_engine, "inference", {"text": "Paris. And then a long tail", "model": SMOL})
    advance_requests(sessions, CTX, stub)
    embedding = finish_job(db_engine, "embedding", {"bits": "ab" * 48, "text": "Paris."})
    assert embedding.payload["fit"] == {"max_tokens": 64, "model": SMOL}
    assert embedding.payload["text"] == "Paris. And then a long tail"
    advance_requests(sessions, CTX, stub)

    row = request_row(sessions)
    assert row.request_hash is not None
    with sessions() as session:
        answer = session.get_one(Answer, 1)
    assert answer.output == "Paris."  # what the embedder read: the text committed
    assert answer.commitment == commitment_hash(
        request_id=1,
        request_hash=row.request_hash,
        oracle=ALICE,
        output="Paris.",
        model_index=0,
        embedding_bits=bytes.fromhex("ab" * 48),
        salt=answer.salt,
    )
    (commit,) = txs(sessions, "commit")
    assert commit.data == stub.encode_commit(1, row.request_hash, answer.commitment)


def test_a_commit_refused_for_a_weak_ticket_is_recorded_once(
    sessions: sessionmaker[Session], stub: StubChain
) -> None:
    _admitted_request(sessions, request_id=1)
    _answered(sessions, request_id=1)
    with sessions.begin() as session:
        stub_data = stub.encode_commit(1, bytes(32), bytes(32))
        session.add(
            OutgoingTx(kind="commit", request_id=1, from_address=ALICE, to_address=COORDINATOR,
                       data=stub_data)
        )  # fmt: skip
    assert advance_requests(sessions, CTX, stub) == 0  # waiting for the commit
    (commit,) = txs(sessions, "commit")
    with sessions.begin() as session:  # as the sender records the simulation's revert
        mark_failed(session, commit.id, reason="TicketTooWeak(requestId=1, ticket=9, worst=5)")
    assert advance_requests(sessions, CTX, stub) == 1  # the failure woke it at once
    row = request_row(sessions)
    assert (row.phase, row.skip_reason) == (
        "skipped",
        "our ticket is too weak for a seat: TicketTooWeak(requestId=1, ticket=9, worst=5)",
    )
    assert advance_requests(sessions, CTX, stub) == 0  # no loop: nothing more to look at


# --- seats and reveals ----------------------------------------------------------------------


def test_a_seated_node_reveals_once_every_eligible_node_has_committed(
    sessions: sessionmaker[Session], stub: StubChain
) -> None:
    _admitted_request(sessions, request_id=1)  # quorum 3, eligibleCount 4
    _answered(sessions, request_id=1)
    news(sessions, committed(1, 0, ALICE, at(11)), committed(1, 1, BOB, at(11, 1), ticket=9000))
    advance_requests(sessions, CTX, stub)
    assert txs(sessions, "reveal") == []  # two of four have committed: a better ticket may come
    news(sessions, committed(1, 2, CAROL, at(12)))
    advance_requests(sessions, CTX, stub)
    assert txs(sessions, "reveal") == []  # every seat taken is not enough any more
    news(sessions, committed(1, 1, DAVE, at(13), ticket=1, evicted=BOB))
    advance_requests(sessions, CTX, stub)  # four of four: commits closed before the deadline
    (reveal,) = txs(sessions, "reveal")
    with sessions() as session:
        answer = session.get_one(Answer, 1)
    assert reveal.data == stub.encode_reveal(
        1, answer.output, answer.model_index, answer.embedding_bits, answer.salt
    )
    assert request_row(sessions).phase == "revealing"


def test_a_seated_node_reveals_at_the_commit_deadline(
    sessions: sessionmaker[Session], stub: StubChain
) -> None:
    _admitted_request(sessions, request_id=1)
    _answered(sessions, request_id=1)
    news(sessions, committed(1, 0, ALICE, at(11)))
    advance_requests(sessions, CTX, stub)
    row = request_row(sessions)
    assert row.next_check_at == row.commit_deadline and txs(sessions, "reveal") == []
    advance_requests(sessions, CTX, stub, row.commit_deadline + timedelta(seconds=1))
    assert len(txs(sessions, "reveal")) == 1


def test_an_evicted_node_does_nothing_more(
    sessions: sessionmaker[Session], stub: StubChain
) -> None:
    _admitted_request(sessions, request_id=1)
    _answered(sessions, request_id=1)
    news(
        sessions,
        committed(1, 0, ALICE, at(11), ticket=9000),
        committed(1, 1, BOB, at(11, 1)),
        committed(1, 2, CAROL, at(12)),
    )
    advance_requests(sessions, CTX, stub)
    news(sessions, committed(1, 0, DAVE, at(13), ticket=1, evicted=ALICE))
    advance_requests(sessions, CTX, stub)
    row = request_row(sessions)
    assert (row.phase, row.skip_reason, row.next_check_at) == (
        "evicted",
        "a better ticket took seat 0 in block 13",
        None,
    )
    late = row.reveal_deadline + timedelta(hours=2)
    news(sessions, revealed(1, 1, BOB, at(14)), revealed(1, 2, CAROL, at(14, 1)))
    advance_requests(sessions, CTX, stub, late)
    assert [t.kind for t in txs(sessions, "reveal") + txs(sessions, "dispute")] == []
    assert txs(sessions, "finalize") + txs(sessions, "expire") == []
    with sessions() as session:
        assert session.scalars(select(Job.kind).where(Job.kind == "verification")).all() == []


# --- verification --------------------------------------------------------------------------


def revealing_round(sessions: sessionmaker[Session], request: RequestedEvent) -> None:
    """Alice (this node) and Bob, Carol hold the seats and have revealed."""
    news(sessions, request)
    with sessions.begin() as session:
        session.get_one(Request, request.request_id).phase = "revealing"
    rid = request.request_id
    seats = [(0, ALICE), (1, BOB), (2, CAROL)]
    news(sessions, *(committed(rid, s, o, at(11, s)) for s, o in seats))
    news(sessions, *(revealed(rid, s, o, at(12, s)) for s, o in seats))


@pytest.mark.parametrize(
    ("counts", "disputed"),
    [
        ({"embedder_tokens": 256, "model_tokens": 64}, False),
        ({"embedder_tokens": 257, "model_tokens": 10}, True),  # a tail the embedder never read
        ({"embedder_tokens": 100, "model_tokens": 65}, True),  # over maxTokens of the model
        ({"embedder_tokens": 100, "model_tokens": None}, False),  # model not here: not counted
    ],
)
def test_reveals_longer_than_can_be_checked_are_disputed(
    db_engine: Engine,
    sessions: sessionmaker[Session],
    stub: StubChain,
    counts: dict[str, object],
    disputed: bool,
) -> None:
    revealing_round(sessions, requested(1, at(10)))
    advance_requests(sessions, CTX, stub)
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.kind == "verification")).all()
        assert sorted(j.payload["oracle"] for j in jobs) == [BOB, CAROL]
        assert {j.payload["count_model"] for j in jobs} == {SMOL}
    bits = bytes(range(48)).hex()  # what the seats revealed: the embeddings match
    for _ in range(2):
        finish_job(db_engine, "verification", {"bits": bits, "embedder_window": 256, **counts})
    advance_requests(sessions, CTX, stub)
    accused = sorted(t.dedupe_key for t in txs(sessions, "dispute"))
    assert accused == ([BOB, CAROL] if disputed else [])


def test_a_verification_is_of_the_reveal_now_in_the_seat_not_of_one_a_reorg_dropped(
    db_engine: Engine, sessions: sessionmaker[Session], stub: StubChain
) -> None:
    revealing_round(sessions, requested(1, at(10)))
    advance_requests(sessions, CTX, stub)
    for _ in range(2):  # Bob's and Carol's reveals verify
        finish_job(db_engine, "verification", {"bits": BITS.hex()})
    # a reorg drops the seats; on the new chain Dave holds seat 1 and reveals other text
    with sessions.begin() as session:
        rollback_after(session, 10)
    seats = [(0, ALICE), (1, DAVE), (2, CAROL)]
    news(sessions, *(committed(1, s, o, at(11, s, fork="b")) for s, o in seats))
    lyon = dataclasses.replace(
        revealed(1, 1, DAVE, at(12, 1, fork="b")),
        output="Lyon",
        output_hash=_hash("Lyon"),
        embedding_bits=flip(BITS, range(100)),
    )
    news(sessions, revealed(1, 0, ALICE, at(12, fork="b")), lyon)
    news(sessions, revealed(1, 2, CAROL, at(12, 2, fork="b")))
    advance_requests(sessions, CTX, stub)
    assert txs(sessions, "dispute") == []  # Bob's verification says nothing about Dave
    with sessions() as session:
        jobs = session.scalars(
            select(Job).where(Job.kind == "verification", Job.status == "queued")
        ).all()
        assert [(j.payload["oracle"], j.payload["text"]) for j in jobs] == [(DAVE, "Lyon")]


def _our_answer_is(sessions: sessionmaker[Session], output: str) -> None:
    _answered(sessions, request_id=1)
    with sessions.begin() as session:
        session.get_one(Answer, 1).output = output


@pytest.mark.parametrize(
    ("result", "disputed"),
    [
        ({"max_margin": 0.0, "worst_token": 0}, False),  # what the model writes
        ({"max_margin": 3.9, "worst_token": 4}, False),  # another engine's near tie
        ({"max_margin": 8.0, "worst_token": 4}, True),  # at the margin
        ({"max_margin": None, "worst_token": 1}, True),  # no way of writing it comes close
    ],
)
def test_answers_unlike_ours_are_read_back_and_disputed_from_the_margin(
    db_engine: Engine,
    sessions: sessionmaker[Session],
    stub: StubChain,
    caplog: pytest.LogCaptureFixture,
    result: dict[str, object],
    disputed: bool,
) -> None:
    revealing_round(sessions, requested(1, at(10)))
    _our_answer_is(sessions, "Paris (seat 0)")  # what Alice revealed; Bob and Carol differ
    advance_requests(sessions, CTX, stub)
    with sessions() as session:
        reads = session.scalars(select(Job).where(Job.kind == "readback")).all()
        assert sorted(j.payload["oracle"] for j in reads) == [BOB, CAROL]
        assert {(j.model, j.priority) for j in reads} == {(SMOL, PRIORITY_VERIFICATION)}
        bob = next(j for j in reads if j.payload["oracle"] == BOB)
        assert bob.payload == {
            "text": "Paris (seat 1)",
            "seat": 1,
            "oracle": BOB,
            "prompt": "Capital of France?",
            "temperature_milli": 700,
            "max_tokens": 64,
            "seed": request_seed(1, COORDINATOR),  # the seed every node sampled with
            "limit": DEFAULT_READ_BACK_MARGIN,
        }
    for _ in range(2):
        finish_job(db_engine, "readback", {**result, "tokens": 6, "read_s": 0.3})
    advance_requests(sessions, CTX, stub)
    accused = sorted(t.dedupe_key for t in txs(sessions, "dispute"))
    assert accused == ([BOB, CAROL] if disputed else [])
    reasons = {getattr(r, "why", None) for r in caplog.records} - {None}
    if disputed:
        (why,) = reasons
        assert why.startswith(f"revealed output is not what {SMOL} writes for this request's")
    else:
        assert reasons == set()


@pytest.mark.parametrize(
    ("ours", "ctx"),
    [
        ("Paris (seat 1)", CTX),  # Bob's text is ours: we wrote it (Carol's is still read)
        ("Paris (seat 0)", dataclasses.replace(CTX, read_back_margin=None)),  # reading off
        ("Paris (seat 0)", dataclasses.replace(CTX, models={})),  # the model is not served
    ],
)
def test_no_reading_back_of_our_own_text_with_it_off_or_without_the_model(
    sessions: sessionmaker[Session], stub: StubChain, ours: str, ctx: NodeContext
) -> None:
    revealing_round(sessions, requested(1, at(10)))
    _our_answer_is(sessions, ours)
    advance_requests(sessions, ctx, stub)
    with sessions() as session:
        read = session.scalars(select(Job.payload["oracle"].astext).where(Job.kind == "readback"))
        expected = [CAROL] if ctx is CTX else []
        assert sorted(read.all()) == expected
        # the embeddings are checked either way
        verified = session.scalars(select(Job.id).where(Job.kind == "verification")).all()
        assert len(verified) == 2


def test_checks_no_worker_took_before_disputes_closed_are_expired_and_said_once(
    db_engine: Engine,
    sessions: sessionmaker[Session],
    stub: StubChain,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Disputes can close a window after the last reveal, before the checks' own deadline:
    a check still queued then would only run ahead of inference for nothing."""
    revealing_round(sessions, requested(1, at(10)))
    _our_answer_is(sessions, "Paris (seat 0)")
    advance_requests(sessions, CTX, stub)  # Bob's and Carol's reveals: embeddings and reads
    with db_engine.begin() as conn:  # a worker has taken one read; it runs on
        (taken,) = claim_jobs(conn, worker_id="w1", kinds=["readback"], models=[SMOL], limit=1)
    with sessions.begin() as session:
        session.get_one(Request, 1).phase = "finalizing"
    after_close = datetime.fromtimestamp(DISPUTES_CLOSE, tz=UTC) + timedelta(minutes=5)
    for minutes in (0, 1):  # a second pass finds nothing left to drop
        with sessions.begin() as session:
            wake_requests(session.connection(), [1], "test")
        advance_requests(sessions, CTX, stub, after_close + timedelta(minutes=minutes))
    with sessions() as session:
        checks = session.scalars(select(Job).where(Job.kind.in_(("verification", "readback"))))
        states = {(j.kind, j.payload["seat"]): (j.status, j.last_error) for j in checks}
    dropped = ("expired", "disputes closed before a worker took it")
    taken_key = ("readback", taken.payload["seat"])
    assert states == {
        (kind, seat): ("running", None) if (kind, seat) == taken_key else dropped
        for kind in ("verification", "readback")
        for seat in (1, 2)
    }
    (warning,) = [r for r in caplog.records if hasattr(r, "unchecked")]
    assert warning.levelname == "WARNING"
    assert warning.unchecked == sorted(
        f"{kind} of seat {seat}" for (kind, seat), state in states.items() if state == dropped
    )
    assert txs(sessions, "dispute") == []


# --- finalize and expire ---------------------------------------------------------------------


def flip(bits: bytes, positions: range) -> bytes:
    value = int.from_bytes(bits, "big")
    for p in positions:
        value ^= 1 << p
    return value.to_bytes(len(bits), "big")


def test_finalize_delivers_the_medoid_with_exclusion_by_the_quorum(
    sessions: sessionmaker[Session], stub: StubChain
) -> None:
    """Quorum 5. Seat 0 reveals an in-cluster lie at the cluster's edge; seat 4 is the
    centre. Two nodes dispute seat 3: no strict majority of five, so it stays in."""
    base = bytes(48)
    reveals = {
        ALICE: (0, flip(base, range(100)), "Lyon, probably."),
        BOB: (1, flip(base, range(100, 110)), "Paris."),
        CAROL: (2, flip(base, range(110, 120)), "It is Paris."),
        DAVE: (3, flip(base, range(120, 130)), "Paris, France."),
        EVE: (4, base, "The capital of France is Paris."),
    }
    news(sessions, dataclasses.replace(requested(1, at(10)), quorum=5, eligible_count=5))
    for oracle, (seat, bits, output) in reveals.items():
        event = revealed(1, seat, oracle, at(12, seat))
        news(
            sessions,
            committed(1, seat, oracle, at(11, seat), ticket=0 if oracle == ALICE else 50),
            dataclasses.replace(
                event, output=output, embedding_bits=bits, output_hash=_hash(output)
            ),
        )
    news(
        sessions,
        *(
            DisputedEvent(position=at(13, i), request_id=RequestId(1), accused=DAVE, disputer=d)
            for i, d in enumerate((BOB, CAROL))
        ),
    )
    with sessions.begin() as session:
        session.get_one(Request, 1).phase = "finalizing"
    after_close = datetime.fromtimestamp(DISPUTES_CLOSE, tz=UTC) + timedelta(minutes=5)
    advance_requests(sessions, CTX, stub, after_close)
    (finalize,) = txs(sessions, "finalize")
    ordered = sorted(reveals.values())
    assert finalize.data == stub.encode_finalize(
        1,
        [bits for _, bits, _ in ordered],
        [_hash(output) for _, _, output in ordered],
        "The capital of France is Paris.",
    )


def test_an_unsettled_request_is_expired_after_expires_at(
    sessions: sessionmaker[Session], stub: StubChain
) -> None:
    revealing_round(sessions, requested(1, at(10)))
    with sessions.begin() as session:
        session.get_one(Request, 1).phase = "finalizing"
    expires_at = request_row(sessions).expires_at
    assert expires_at is not None
    advance_requests(sessions, CTX, stub, expires_at - timedelta(seconds=1))
    assert len(txs(sessions, "finalize")) == 1  # before expiresAt: finalize
    advance_requests(sessions, CTX, stub, expires_at + timedelta(seconds=1))
    (expire,) = txs(sessions, "expire")  # it did not land in time: expire
    assert expire.data == stub.encode_expire(1)


@pytest.mark.parametrize(
    ("output_bytes", "finalized"),
    [(OUTSIDER_FINALIZE_MAX_BYTES, True), (OUTSIDER_FINALIZE_MAX_BYTES + 1, False)],
)
def test_a_node_without_a_seat_finalizes_no_output_longer_than_its_cap(
    sessions: sessionmaker[Session], stub: StubChain, output_bytes: int, finalized: bool
) -> None:
    """Quorum 1, the requester's own node holds the only seat, reveals a long output and
    never finalizes: an honest outsider would pay the output's calldata for nothing.
    Past the cap it waits for ``expiresAt`` and settles the request with ``expire``."""
    news(sessions, dataclasses.replace(requested(1, at(10)), quorum=1, eligible_count=1))
    output = "x" * output_bytes
    event = revealed(1, 0, BOB, at(12))
    news(
        sessions,
        committed(1, 0, BOB, at(11)),
        dataclasses.replace(event, output=output, output_hash=_hash(output)),
    )
    with sessions.begin() as session:
        session.get_one(Request, 1).phase = "skipped"
    expires_at = request_row(sessions).expires_at
    assert expires_at is not None
    advance_requests(sessions, CTX, stub, expires_at - timedelta(seconds=1))
    assert len(txs(sessions, "finalize")) == (1 if finalized else 0)
    advance_requests(sessions, CTX, stub, expires_at + timedelta(minutes=5))
    (expire,) = txs(sessions, "expire")  # either way nothing landed here: expire settles it
    assert expire.data == stub.encode_expire(1)


def _hash(output: str) -> bytes:
    from eth_utils.crypto import keccak

    return keccak(output.encode())
