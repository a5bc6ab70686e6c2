"""Whatever bytes a requester or a revealer puts in a string, the node records it and
moves on: the request is declined with a reason, the reveal is kept with its exact hash."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.crypto import keccak
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.listener import Listener
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.lifecycle.steps import Step, advance
from oracle.store.models import ChainEvent, OutgoingTx, Request, Seat
from tests.support.protocol import EMBEDDING_MODEL, MODEL, Protocol, random_bits

EVIL_BYTES = b"\xff\xfe not UTF-8 \xc3"


@pytest.fixture
def protocol(chain: Anvil) -> Protocol:
    return Protocol.deploy(chain.w3)


def listener_for(chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]) -> Listener:
    binding = CoordinatorBinding(chain.w3, protocol.coordinator.address)
    return Listener(w3=chain.w3, session_factory=sessions, binding=binding)


def request_raw(
    protocol: Protocol,
    *,
    prompt: bytes = b"What is the capital of France?",
    models: tuple[bytes, ...] = (MODEL.encode(),),
) -> None:
    frame = (1, 30_000, 3500, 6700, EMBEDDING_MODEL.encode())
    args: list[Any] = [prompt, list(models), 700, 64, frame, "0x" + "00" * 20, 0, 0]
    protocol.transact_raw("requestInference", args, protocol.requester, value=10**15)


def requests_by_id(sessions: sessionmaker[Session]) -> dict[int, Request]:
    with sessions() as session:
        rows = session.scalars(select(Request).order_by(Request.id)).all()
        session.expunge_all()
    return {r.id: r for r in rows}


def test_strings_that_are_not_text_decline_the_request_and_the_listener_moves_on(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    start = chain.w3.eth.block_number + 1
    request_raw(protocol, prompt=b"capital of " + EVIL_BYTES)
    request_raw(protocol, prompt=b"a NUL \x00 inside")
    request_raw(protocol, models=(MODEL.encode(), b"model\x00"))
    request_raw(protocol, prompt="bidi \u202e and control \x1b[31m are text".encode())
    honest = protocol.request(quorum=1)

    listener = listener_for(chain, protocol, sessions)
    listener.start_block = start
    assert listener.poll_once() == 5

    rows = requests_by_id(sessions)
    declined = {i: r.skip_reason for i, r in rows.items() if r.phase == "skipped"}
    assert declined == {
        honest - 4: "declined: prompt is not valid UTF-8 (byte 11 of 25)",
        honest - 3: "declined: prompt holds a NUL character (at 6)",
        honest - 2: "declined: acceptedModels[1] holds a NUL character (at 5)",
    }
    assert rows[honest - 4].prompt == "capital of \\xff\\xfe not UTF-8 \\xc3"
    assert rows[honest - 3].prompt == "a NUL \\x00 inside"
    assert rows[honest - 2].accepted_models == [MODEL, "model\\x00"]
    assert rows[honest - 1].phase == "requested"  # odd but valid text is served
    assert rows[honest - 1].prompt == "bidi \u202e and control \x1b[31m are text"
    assert rows[honest].phase == "requested"

    # a restart reads nothing twice and stops at nothing
    again = listener_for(chain, protocol, sessions)
    again.start_block = start
    assert again.poll_once() == 0
    with sessions() as session:
        assert len(session.scalars(select(ChainEvent.id)).all()) == 5


def test_a_reveal_that_is_not_text_is_kept_with_its_exact_hash_and_disputed(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    import random

    honest_node, hostile = protocol.register_oracles(2)
    start = chain.w3.eth.block_number + 1
    request_id = protocol.request(quorum=2)
    bits = random_bits(random.Random(7))
    honest = protocol.commit(honest_node, request_id, "Paris.", bits)
    salt = bytes(range(32))
    commitment = keccak(
        encode(
            ["uint256", "bytes32", "address", "bytes32", "uint8", "bytes", "bytes32"],
            [
                request_id,
                protocol.request_hash(request_id),
                hostile,
                keccak(EVIL_BYTES),
                0,
                bits,
                salt,
            ],
        )
    )
    commit = protocol.raw_commit_call(request_id, commitment)
    protocol.transact("commit", commit, hostile)
    protocol.reveal(honest)
    protocol.transact_raw("reveal", [request_id, EVIL_BYTES, 0, bits, salt], hostile)

    listener = listener_for(chain, protocol, sessions)
    listener.start_block = start
    assert listener.poll_once() == 5
    with sessions() as session:
        seat = session.scalars(select(Seat).where(Seat.oracle == hostile.lower())).one()
        assert seat.output_hash == keccak(EVIL_BYTES)
        assert seat.reveal_defect == "is not valid UTF-8 (byte 0 of 14)"
        assert seat.revealed_output == "\\xff\\xfe not UTF-8 \\xc3"

    # the honest node cannot embed those bytes, so it disputes the reveal outright
    ctx = NodeContext(
        address=honest_node.lower(),
        coordinator=protocol.coordinator.address.lower(),
        models={MODEL: ModelProfile(name=MODEL, context_tokens=4096)},
        embedding_models=[EMBEDDING_MODEL],
    )
    binding = CoordinatorBinding(chain.w3, protocol.coordinator.address)
    with sessions.begin() as session:
        request = session.get_one(Request, request_id)
        request.phase = "revealing"  # as if this node had committed and revealed itself
        advance(Step(session, request, ctx, binding, datetime.now(UTC)))
    with sessions() as session:
        disputes = session.scalars(
            select(OutgoingTx.dedupe_key).where(OutgoingTx.kind == "dispute")
        ).all()
    assert disputes == [hostile.lower()]
