"""Chain events into Postgres: idempotent application, derived tables, and reorg rollback."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from eth_utils.crypto import keccak
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from oracle.domain.events import (
    ChainEvent,
    CommittedEvent,
    DisputedEvent,
    EventPosition,
    FailedEvent,
    FinalizedEvent,
    RequestedEvent,
    RevealedEvent,
    SlashedEvent,
)
from oracle.domain.request import RequestId
from oracle.store.chain_state import (
    ORPHANED_REASON,
    BlockRef,
    apply_event,
    disputes_against,
    load_checkpoint,
    prune_blocks,
    recent_blocks,
    record_block,
    rollback_after,
    save_checkpoint,
)
from oracle.store.models import Answer, ChainBlock, Request, Seat
from oracle.store.models import ChainEvent as ChainEventRow

ALICE = "0x" + "a1" * 20
BOB = "0x" + "b2" * 20
CAROL = "0x" + "c3" * 20
DAVE = "0x" + "d4" * 20
REQUESTER = "0x" + "99" * 20
BITS = bytes(range(48))


def block_hash(number: int, fork: str = "a") -> bytes:
    return hashlib.sha256(f"{fork}:{number}".encode()).digest()


def at(number: int, log_index: int = 0, fork: str = "a") -> EventPosition:
    return EventPosition(
        block_number=number,
        block_hash=block_hash(number, fork),
        log_index=log_index,
        tx_hash=hashlib.sha256(f"tx:{fork}:{number}:{log_index}".encode()).digest(),
    )


def requested(
    request_id: int, position: EventPosition, prompt: str = "Capital of France?", seed: int = 7
) -> RequestedEvent:
    return RequestedEvent(
        position=position,
        request_id=RequestId(request_id),
        requester=REQUESTER,
        prompt=prompt,
        accepted_models=("SmolLM2-135M-Instruct-Q4_1",),
        temperature_milli=700,
        max_tokens=64,
        quorum=3,
        max_time_ms=30_000,
        sec_distance_bp=3500,
        sec_percentage_bp=6700,
        embedding_model="all-MiniLM-L6-v2",
        callback=None,
        callback_gas_limit=0,
        fee_wei=3 * 10**15,
        commit_deadline=1_800_000_000 + position.block_number,
        reveal_deadline=1_800_000_030 + position.block_number,
        dispute_window_s=10,
        request_hash=hashlib.sha256(f"{request_id}:{prompt}:{seed}".encode()).digest(),
        seed=seed,
        expires_at=1_800_003_640 + position.block_number,
        callback_gas_price=0,
        eligible_count=4,
        slash_bps=1000,
        dim_bits=384,
    )


def committed(
    request_id: int,
    seat: int,
    oracle: str,
    position: EventPosition,
    *,
    ticket: int = 1000,
    evicted: str | None = None,
) -> CommittedEvent:
    return CommittedEvent(
        position=position,
        request_id=RequestId(request_id),
        oracle=oracle,
        seat=seat,
        commitment=hashlib.sha256(f"c:{request_id}:{oracle}".encode()).digest(),
        ticket=ticket + seat,
        evicted=evicted,
    )


def revealed(request_id: int, seat: int, oracle: str, position: EventPosition) -> RevealedEvent:
    return RevealedEvent(
        position=position,
        request_id=RequestId(request_id),
        oracle=oracle,
        seat=seat,
        output=f"Paris (seat {seat})",
        output_hash=keccak(f"Paris (seat {seat})".encode()),
        model_index=0,
        embedding_bits=BITS,
    )


def finalized(request_id: int, position: EventPosition) -> FinalizedEvent:
    return FinalizedEvent(
        position=position,
        request_id=RequestId(request_id),
        winner_seat=1,
        output="Paris (seat 1)",
        model="SmolLM2-135M-Instruct-Q4_1",
        cluster_mask=0b011,
        reward_per_oracle=10**15,
        callback_succeeded=False,
    )


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as s:
        yield s


def apply_all(session: Session, events: list[ChainEvent]) -> None:
    for event in events:
        apply_event(session, event)
    session.commit()


def a_round() -> list[ChainEvent]:
    return [
        requested(1, at(10)),
        committed(1, 0, ALICE, at(11)),
        committed(1, 1, BOB, at(11, 1)),
        revealed(1, 0, ALICE, at(12)),
        revealed(1, 1, BOB, at(13)),
    ]


def table_snapshot(session: Session) -> list[object]:
    session.expire_all()
    events = session.execute(select(ChainEventRow.block_hash, ChainEventRow.log_index)).all()
    requests = session.execute(
        select(Request.id, Request.phase, Request.outcome_reason, Request.updated_at)
    ).all()
    seats = session.execute(select(Seat.request_id, Seat.seat_no, Seat.revealed_output)).all()
    return [sorted(events), sorted(requests), sorted(seats)]


def add_answer(session: Session, request_id: int) -> None:
    session.add(
        Answer(
            request_id=request_id,
            model="SmolLM2-135M-Instruct-Q4_1",
            model_index=0,
            output="Paris",
            embedding_bits=BITS,
            salt=b"\x05" * 32,
            seed=1,
            commitment=b"\x06" * 32,
        )
    )
    session.commit()


def test_a_round_fills_requests_and_seats(session: Session) -> None:
    apply_all(session, a_round())
    request = session.get_one(Request, 1)
    assert request.phase == "requested"
    assert request.requester == REQUESTER
    assert request.accepted_models == ["SmolLM2-135M-Instruct-Q4_1"]
    assert request.commit_deadline == datetime.fromtimestamp(1_800_000_010, tz=UTC)
    assert request.dispute_window_s == 10
    assert request.callback is None
    assert (request.seed, request.eligible_count, request.slash_bps) == (7, 4, 1000)
    assert request.expires_at == datetime.fromtimestamp(1_800_003_650, tz=UTC)
    assert request.request_hash is not None and len(request.request_hash) == 32
    seats = session.scalars(select(Seat).order_by(Seat.seat_no)).all()
    assert [(s.oracle, s.ticket, s.commit_block_number, s.reveal_block_number) for s in seats] == [
        (ALICE, 1000, 11, 12),
        (BOB, 1001, 11, 13),
    ]
    assert seats[1].revealed_output == "Paris (seat 1)"
    assert seats[1].embedding_bits == BITS


def test_replaying_the_same_events_changes_nothing(session: Session) -> None:
    apply_all(session, a_round())
    before = table_snapshot(session)
    apply_all(session, a_round())
    assert table_snapshot(session) == before
    assert session.scalar(select(func.count()).select_from(ChainEventRow)) == 5


def test_events_of_unknown_requests_are_recorded_without_derived_rows(session: Session) -> None:
    apply_all(
        session,
        [
            committed(7, 0, ALICE, at(3)),
            committed(7, 0, BOB, at(3, 1), ticket=1, evicted=ALICE),
            revealed(7, 0, BOB, at(4)),
            finalized(7, at(5)),
            SlashedEvent(
                position=at(5, 1),
                request_id=RequestId(7),
                oracle=DAVE,
                amount_wei=10**15,
                reason="never_revealed",
            ),
        ],
    )
    assert session.scalar(select(func.count()).select_from(ChainEventRow)) == 5
    assert session.scalar(select(func.count()).select_from(Seat)) == 0
    assert session.get(Request, 7) is None


def test_outcomes_close_the_request_with_a_readable_reason(session: Session) -> None:
    apply_all(session, [*a_round(), requested(2, at(14)), finalized(1, at(20))])
    apply_all(
        session,
        [FailedEvent(position=at(21), request_id=RequestId(2), reason="no_consensus")],
    )
    first, second = session.get_one(Request, 1), session.get_one(Request, 2)
    assert (first.phase, first.outcome_block_number) == ("finalized", 20)
    assert first.outcome_reason == (
        "finalized: seat 1 won with 2 in its cluster (SmolLM2-135M-Instruct-Q4_1)"
    )
    assert (second.phase, second.outcome_reason) == ("failed", "no consensus")
    apply_all(
        session,
        [
            requested(3, at(22)),
            FailedEvent(position=at(40), request_id=RequestId(3), reason="expired"),
        ],
    )
    third = session.get_one(Request, 3)
    assert (third.phase, third.outcome_reason) == (
        "failed",
        "expired: nobody finalized before expiresAt",
    )


def a_full_round_with_an_eviction() -> list[ChainEvent]:
    """Quorum 3: three seats taken, then Dave's better ticket takes Bob's seat (1)."""
    return [
        requested(1, at(10)),
        committed(1, 0, ALICE, at(11)),
        committed(1, 1, BOB, at(11, 1), ticket=5000),
        committed(1, 2, CAROL, at(12)),
        committed(1, 1, DAVE, at(13), ticket=10, evicted=BOB),
    ]


def held_seats(session: Session) -> list[tuple[int, str]]:
    session.expire_all()
    query = select(Seat.seat_no, Seat.oracle).where(Seat.evicted_block_number.is_(None))
    return sorted((int(no), str(oracle)) for no, oracle in session.execute(query).all())


def test_a_better_ticket_evicts_and_the_evicted_row_stays(session: Session) -> None:
    apply_all(session, a_full_round_with_an_eviction())
    assert held_seats(session) == [(0, ALICE), (1, DAVE), (2, CAROL)]
    bob = session.get_one(Seat, (1, BOB))
    assert (bob.seat_no, bob.evicted_block_number) == (1, 13)
    assert session.scalar(select(func.count()).select_from(Seat)) == 4  # commitCount
    # a reveal by the evicted node (which the contract refuses) would change nothing
    apply_all(session, [revealed(1, 1, BOB, at(14))])
    assert session.get_one(Seat, (1, BOB)).revealed_output is None


def test_a_reorg_that_drops_the_evicting_commit_gives_the_seat_back(session: Session) -> None:
    apply_all(session, a_full_round_with_an_eviction())
    session.get_one(Request, 1).phase = "evicted"  # as Bob's node left it
    session.commit()
    rollback_after(session, 12)
    session.commit()
    assert held_seats(session) == [(0, ALICE), (1, BOB), (2, CAROL)]
    assert session.get_one(Request, 1).phase == "committing"  # Bob's node looks again
    assert session.get(Seat, (1, DAVE)) is None
    # the new chain brings another eviction, of Carol this time
    apply_all(session, [committed(1, 2, DAVE, at(13, fork="b"), ticket=1, evicted=CAROL)])
    assert held_seats(session) == [(0, ALICE), (1, BOB), (2, DAVE)]


def test_a_reorg_that_drops_the_evicted_commit_too_rewinds_the_evicted_node(
    session: Session,
) -> None:
    apply_all(session, a_full_round_with_an_eviction())
    session.get_one(Request, 1).phase = "evicted"  # as Bob's node left it
    session.commit()
    rollback_after(session, 10)  # Bob's commit (11) goes with Dave's (13)
    session.commit()
    assert held_seats(session) == []
    # Bob's commit is sent again and may land: his node must be committing to reveal it
    assert session.get_one(Request, 1).phase == "committing"


def test_an_eviction_of_a_seat_this_node_never_saw_is_recorded_without_effects(
    session: Session,
) -> None:
    apply_all(session, [requested(1, at(10)), committed(1, 0, ALICE, at(11))])
    # Bob's commit to seat 0 is not on record here: the database refuses the evictor's row
    apply_all(session, [committed(1, 0, DAVE, at(12), ticket=1, evicted=BOB)])
    assert held_seats(session) == [(0, ALICE)]
    payload = session.scalars(
        select(ChainEventRow.payload).where(ChainEventRow.block_number == 12)
    ).one()
    assert "refused" in payload


def test_slashes_are_recorded_as_events(session: Session) -> None:
    slash = SlashedEvent(
        position=at(30), request_id=RequestId(1), oracle=BOB, amount_wei=10**15, reason="excluded"
    )
    apply_all(session, [*a_round(), slash])
    payload = session.scalars(
        select(ChainEventRow.payload).where(ChainEventRow.event == "Slashed")
    ).one()
    assert payload == {
        "request_id": 1,
        "oracle": BOB,
        "amount_wei": 10**15,
        "reason": "excluded",
    }


def test_disputes_are_read_back_from_the_raw_events(session: Session) -> None:
    apply_all(
        session,
        [
            *a_round(),
            DisputedEvent(position=at(14), request_id=RequestId(1), accused=BOB, disputer=ALICE),
            DisputedEvent(position=at(14, 1), request_id=RequestId(1), accused=BOB, disputer=CAROL),
            DisputedEvent(position=at(15), request_id=RequestId(1), accused=ALICE, disputer=BOB),
        ],
    )
    assert disputes_against(session, 1) == {BOB: {ALICE, CAROL}, ALICE: {BOB}}
    assert disputes_against(session, 2) == {}


def test_rollback_undoes_what_later_blocks_brought(session: Session) -> None:
    apply_all(session, [*a_round(), requested(2, at(12, 1)), finalized(1, at(20))])
    rollback_after(session, 11)
    session.commit()

    request = session.get_one(Request, 1)
    assert (request.phase, request.outcome_reason, request.outcome_block_number) == (
        "requested",
        None,
        None,
    )
    seats = session.scalars(select(Seat).order_by(Seat.seat_no)).all()
    assert [(s.seat_no, s.revealed_output, s.reveal_block_number) for s in seats] == [
        (0, None, None),
        (1, None, None),
    ]
    assert session.get(Request, 2) is None  # announced in block 12, no answer: gone
    assert session.scalar(select(func.max(ChainEventRow.block_number))) == 11


def test_rollback_restores_the_phase_an_outcome_replaced(session: Session) -> None:
    apply_all(session, a_round())
    session.get_one(Request, 1).phase = "finalizing"
    session.commit()
    apply_all(session, [finalized(1, at(20))])
    rollback_after(session, 19)
    session.commit()
    assert session.get_one(Request, 1).phase == "finalizing"


def test_an_answered_request_is_orphaned_not_deleted_and_revives_when_re_mined(
    session: Session,
) -> None:
    apply_all(session, a_round())
    add_answer(session, 1)
    session.get_one(Request, 1).phase = "committing"
    session.commit()

    rollback_after(session, 9)
    session.commit()
    request = session.get_one(Request, 1)
    assert (request.phase, request.outcome_reason) == ("orphaned", ORPHANED_REASON)
    assert session.get(Answer, 1) is not None  # the salt survives
    assert session.scalar(select(func.count()).select_from(Seat)) == 0

    # Events for an orphaned request do not touch it ...
    apply_all(session, [committed(1, 0, ALICE, at(11, fork="b"))])
    assert session.scalar(select(func.count()).select_from(Seat)) == 0
    # ... until the new chain announces the same request again, in another block.
    apply_all(session, [requested(1, at(10, fork="b")), committed(1, 0, ALICE, at(12, fork="b"))])
    request = session.get_one(Request, 1)
    assert (request.phase, request.outcome_reason, request.block_number) == ("committing", None, 10)
    assert session.scalar(select(func.count()).select_from(Seat)) == 1


@pytest.mark.parametrize(
    "again", [{"prompt": "Something else entirely"}, {"seed": 8}], ids=["prompt", "seed"]
)
def test_an_orphaned_id_reused_for_another_request_keeps_the_old_answer(
    session: Session, again: dict[str, object]
) -> None:
    """Another prompt, or the same one with another seed (so another request hash, which
    the commitment holding our salt binds): not the request we answered."""
    apply_all(session, a_round())
    add_answer(session, 1)
    rollback_after(session, 9)
    session.commit()
    apply_all(session, [requested(1, at(10, fork="b"), **again)])  # type: ignore[arg-type]
    request = session.get_one(Request, 1)
    assert (request.phase, request.prompt, request.seed) == ("orphaned", "Capital of France?", 7)


def test_blocks_and_checkpoints(session: Session) -> None:
    assert load_checkpoint(session, "coordinator") is None
    for number in range(1, 11):
        record_block(
            session,
            BlockRef(number=number, hash=block_hash(number), parent_hash=block_hash(number - 1)),
        )
    tip = BlockRef(number=10, hash=block_hash(10), parent_hash=block_hash(9))
    save_checkpoint(session, "coordinator", tip)
    prune_blocks(session, keep=4)
    session.commit()
    assert load_checkpoint(session, "coordinator") == tip
    assert [b.number for b in recent_blocks(session, 100)] == [10, 9, 8, 7]
    # Another fork's block at a known number replaces it.
    record_block(session, BlockRef(number=9, hash=block_hash(9, "b"), parent_hash=block_hash(8)))
    session.commit()
    assert session.get_one(ChainBlock, 9).hash == block_hash(9, "b")
