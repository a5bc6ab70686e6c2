"""The chain's pace as the listener times it, and the windows admission holds to it: on a
chain of slow blocks, a request whose reveal or dispute window closes before the next
block or two is declined (a last revealer could lie undisputed, or honest seats could
not reveal in time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.listener import Listener
from oracle.domain.pace import BlockPace
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.lifecycle.driver import advance_requests
from oracle.store.models import Job, Request
from tests.support.protocol import MODEL, Protocol

MINILM = "all-MiniLM-L6-v2"


@pytest.fixture
def protocol(chain: Anvil) -> Protocol:
    p = Protocol.deploy(chain.w3)
    p.register_oracles(3)
    return p


@pytest.fixture
def block_time(chain: Anvil) -> Iterator[Callable[[int], None]]:
    """Stamp every block mined from now on this many seconds after the one before."""

    def stamp(seconds: int) -> None:
        chain.rpc("anvil_setBlockTimestampInterval", seconds)

    try:
        yield stamp
    finally:
        chain.rpc("anvil_removeBlockTimestampInterval")


def listener(
    chain: Anvil, sessions: sessionmaker[Session], protocol: Protocol, **kw: Any
) -> Listener:
    binding = CoordinatorBinding(chain.w3, protocol.coordinator.address)
    return Listener(w3=chain.w3, session_factory=sessions, binding=binding, **kw)


def test_the_listener_times_the_chains_blocks(
    chain: Anvil,
    sessions: sessionmaker[Session],
    protocol: Protocol,
    block_time: Callable[[int], None],
) -> None:
    pace = BlockPace(window=8)
    reader = listener(
        chain, sessions, protocol, start_block=chain.w3.eth.block_number + 1, pace=pace
    )
    block_time(12)
    for _ in range(4):
        chain.rpc("evm_mine")
    reader.poll_once()  # one range of four blocks: three intervals
    assert pace.interval_s() == 12

    block_time(2)
    for _ in range(8):  # following the head, one block a poll: each against the last read
        chain.rpc("evm_mine")
        reader.poll_once()
    assert pace.interval_s() == 2


@pytest.mark.parametrize(
    ("block_s", "declined"),
    [
        (
            12,
            "declined: reveal window 30 s, shorter than this node reveals in (36 s: 3 blocks "
            "of 12 s on this chain, more than --min-reveal-window-s 10)",
        ),
        (2, None),  # six seconds: the protocol's windows (30 s, 10 s) hold three blocks
    ],
)
def test_windows_shorter_than_three_of_the_chains_blocks_are_declined(
    chain: Anvil,
    sessions: sessionmaker[Session],
    protocol: Protocol,
    block_time: Callable[[int], None],
    block_s: int,
    declined: str | None,
) -> None:
    start = chain.w3.eth.block_number + 1
    block_time(block_s)
    for _ in range(3):
        chain.rpc("evm_mine")
    request_id = protocol.request()
    pace = BlockPace()
    listener(chain, sessions, protocol, start_block=start, pace=pace).poll_once()
    ctx = NodeContext(
        address=protocol.oracles[0].lower(),
        coordinator=protocol.coordinator.address.lower(),
        models={MODEL: ModelProfile(name=MODEL, context_tokens=4096)},
        embedding_models=[MINILM],
        block_pace=pace,
    )
    binding = CoordinatorBinding(chain.w3, protocol.coordinator.address)
    advance_requests(sessions, ctx, binding, datetime.fromtimestamp(protocol.now(), UTC))

    with sessions() as session:
        request = session.get_one(Request, request_id)
        jobs = session.scalars(select(Job.kind).where(Job.request_id == request_id)).all()
    if declined is None:
        assert (request.phase, request.skip_reason, jobs) == ("committing", None, ["inference"])
    else:
        assert (request.phase, request.skip_reason, jobs) == ("skipped", declined, [])


def test_a_request_whose_reveals_need_other_bits_than_the_nodes_is_declined(
    chain: Anvil, sessions: sessionmaker[Session], protocol: Protocol
) -> None:
    """The owner registers the embedding model again with 512 bits: requests made after
    carry 64-byte reveals, which the node's 48 bytes can never be (the reveal reverts,
    the seat is slashed). The event tells the node, which declines them; a request made
    before keeps its 384 bits and is served."""
    start = chain.w3.eth.block_number + 1
    before = protocol.request()
    protocol.transact(
        "model", protocol.coordinator.functions.setEmbeddingModel(MINILM, 512), protocol.owner
    )
    after = protocol.request()
    listener(chain, sessions, protocol, start_block=start).poll_once()
    ctx = NodeContext(
        address=protocol.oracles[0].lower(),
        coordinator=protocol.coordinator.address.lower(),
        models={MODEL: ModelProfile(name=MODEL, context_tokens=4096)},
        embedding_models=[MINILM],
    )
    binding = CoordinatorBinding(chain.w3, protocol.coordinator.address)
    advance_requests(sessions, ctx, binding, datetime.fromtimestamp(protocol.now(), UTC))

    with sessions() as session:
        rows = {r.id: r for r in session.scalars(select(Request))}
    assert (rows[before].dim_bits, rows[before].phase) == (384, "committing")
    assert (rows[after].dim_bits, rows[after].phase) == (512, "skipped")
    assert rows[after].skip_reason == (
        "declined: reveals must carry 512 embedding bits (the coordinator's registration of "
        "'all-MiniLM-L6-v2'); this node's give 384"
    )
