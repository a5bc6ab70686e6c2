"""The listener on a real anvil and Postgres: rounds, replays, reorgs, ranges, confirmations."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from typing import Any, cast

import pytest
import requests
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker
from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint, RPCResponse

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.listener import Listener
from oracle.store.models import ChainBlock, ChainCheckpoint, ChainEvent, Request, Seat
from tests.support.protocol import Protocol, random_bits


class FaultyProvider(HTTPProvider):
    """The real anvil behind a thin layer that refuses what a public endpoint would.

    ``max_log_range``: eth_getLogs over more blocks than this answers like Infura's
    "too many results"; ``rate_limited``: that many next calls get HTTP 429;
    ``unreachable``: that many next calls fail to connect.
    """

    def __init__(self, url: str) -> None:
        super().__init__(url, request_kwargs={"timeout": 30}, exception_retry_configuration=None)
        self.max_log_range: int | None = None
        self.rate_limited = 0
        self.unreachable = 0
        self.log_ranges: list[tuple[int, int, bool]] = []

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        if self.unreachable:
            self.unreachable -= 1
            raise requests.ConnectionError("connection refused (injected)")
        if self.rate_limited:
            self.rate_limited -= 1
            response = requests.Response()
            response.status_code = 429
            response.headers["Retry-After"] = "0"
            raise requests.HTTPError("429 Too Many Requests (injected)", response=response)
        if method == "eth_getLogs":
            first, last = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            refused = self.max_log_range is not None and last - first + 1 > self.max_log_range
            self.log_ranges.append((first, last, refused))
            if refused:
                message = "query returned more than 10000 results"
                return cast(
                    RPCResponse,
                    {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": message}},
                )
        return super().make_request(method, params)


@pytest.fixture
def protocol(chain: Anvil) -> Protocol:
    p = Protocol.deploy(chain.w3)
    p.register_oracles(3)
    return p


def make_listener(
    w3: Web3, sessions: sessionmaker[Session], protocol: Protocol, **options: Any
) -> Listener:
    binding = CoordinatorBinding(w3, protocol.coordinator.address)
    return Listener(w3=w3, session_factory=sessions, binding=binding, **options)


def snapshot(sessions: sessionmaker[Session]) -> list[Any]:
    with sessions() as session:
        return [
            sorted(session.execute(select(ChainEvent.block_hash, ChainEvent.log_index)).all()),
            sorted(session.execute(select(Request.id, Request.phase, Request.updated_at)).all()),
            sorted(
                session.execute(
                    select(Seat.request_id, Seat.seat_no, Seat.oracle, Seat.revealed_output)
                ).all()
            ),
        ]


def seats(sessions: sessionmaker[Session]) -> list[tuple[int, int, str, str | None]]:
    with sessions() as session:
        rows = session.execute(
            select(Seat.request_id, Seat.seat_no, Seat.oracle, Seat.revealed_output).order_by(
                Seat.request_id, Seat.seat_no
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def request_ids(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(Request.id).order_by(Request.id)))


def test_a_round_lands_in_requests_and_seats(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    rng = random.Random(3)
    request_id = protocol.request(quorum=2)
    first, second = protocol.oracles[:2]
    protocol.run_round(
        request_id, [(first, "Paris", random_bits(rng)), (second, "Paris.", random_bits(rng))]
    )
    listener = make_listener(chain.w3, sessions, protocol)

    assert listener.poll_once() == 5  # requested, 2 commits, 2 reveals
    assert listener.poll_once() == 0

    with sessions() as session:
        request = session.get_one(Request, request_id)
        assert (request.phase, request.quorum, request.requester) == (
            "requested",
            2,
            protocol.requester.lower(),
        )
        checkpoint = session.get_one(ChainCheckpoint, "coordinator")
        assert checkpoint.block_number == chain.w3.eth.block_number
    assert seats(sessions) == [
        (request_id, 0, first.lower(), "Paris"),
        (request_id, 1, second.lower(), "Paris."),
    ]


def test_reading_the_same_logs_again_changes_nothing(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    rng = random.Random(4)
    request_id = protocol.request(quorum=1)
    protocol.run_round(request_id, [(protocol.oracles[0], "Paris", random_bits(rng))])
    listener = make_listener(chain.w3, sessions, protocol)
    listener.poll_once()
    before = snapshot(sessions)

    with sessions.begin() as session:  # forget the checkpoint: every log is read again
        session.execute(delete(ChainCheckpoint))
        session.execute(delete(ChainBlock))
    assert listener.poll_once() == 3
    assert snapshot(sessions) == before


def test_a_reorg_is_rolled_back_and_the_new_chain_applied(
    chain: Anvil,
    protocol: Protocol,
    sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(5)
    first, second = protocol.oracles[:2]
    request_id = protocol.request(quorum=2)
    listener = make_listener(chain.w3, sessions, protocol)
    listener.poll_once()
    fork_point = chain.rpc("evm_snapshot")

    # Fork A: the first oracle commits and another request arrives.
    protocol.commit(first, request_id, "Paris", random_bits(rng))
    orphan_id = protocol.request(quorum=1, prompt="Only on fork A")
    chain.rpc("anvil_mine", "0x3")
    listener.poll_once()
    assert request_ids(sessions) == [request_id, orphan_id]
    assert [s[2] for s in seats(sessions)] == [first.lower()]

    # Fork B, longer: the second oracle commits instead, and nobody asks anything else.
    assert chain.rpc("evm_revert", fork_point) is True
    chain.rpc("evm_increaseTime", "0x7")  # new timestamps: every block hash differs
    protocol.commit(second, request_id, "Paris!", random_bits(rng))
    chain.rpc("anvil_mine", "0x6")

    with caplog.at_level(logging.WARNING, logger="oracle.chain.listener"):
        assert listener.poll_once() == 1
    (warning,) = [r for r in caplog.records if r.getMessage().startswith("reorg detected")]
    assert warning.depth >= 4  # type: ignore[attr-defined]

    assert request_ids(sessions) == [request_id]
    assert seats(sessions) == [(request_id, 0, second.lower(), None)]
    with sessions() as session:
        hashes = set(session.scalars(select(ChainEvent.block_hash)))
        latest = chain.w3.eth.block_number
        canonical = {bytes(chain.w3.eth.get_block(n)["hash"]) for n in range(latest + 1)}
        assert hashes <= canonical
        checkpoint = session.get_one(ChainCheckpoint, "coordinator")
        assert checkpoint.block_hash == bytes(chain.w3.eth.get_block("latest")["hash"])


def test_ranges_shrink_when_the_endpoint_refuses_them_and_no_block_is_skipped(
    chain: Anvil,
    protocol: Protocol,
    sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected = []
    for gap in (0, 37, 120, 3, 250, 61):
        chain.rpc("anvil_mine", hex(gap))
        expected.append(protocol.request(quorum=1, prompt=f"after {gap} empty blocks"))
    provider = FaultyProvider(chain.url)
    provider.max_log_range = 40
    w3 = Web3(provider)
    listener = make_listener(
        w3, sessions, protocol, initial_range=500, max_range=5000, progress_interval_s=0
    )

    with caplog.at_level(logging.INFO, logger="oracle.chain.listener"):
        assert listener.poll_once() == len(expected)
    assert any(r.getMessage() == "catching up with the chain" for r in caplog.records)

    assert request_ids(sessions) == expected
    assert any(refused for _first, _last, refused in provider.log_ranges)
    accepted = sorted((first, last) for first, last, refused in provider.log_ranges if not refused)
    assert all(last - first + 1 <= 40 for first, last in accepted)
    # The accepted ranges tile the chain from block 0 without a gap.
    assert accepted[0][0] == 0 and accepted[-1][1] == chain.w3.eth.block_number
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(accepted))


def test_rate_limits_are_waited_out(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    request_id = protocol.request(quorum=1)
    provider = FaultyProvider(chain.url)
    listener = make_listener(Web3(provider), sessions, protocol)
    provider.rate_limited = 2
    assert listener.poll_once() == 1
    assert request_ids(sessions) == [request_id]


def test_confirmations_hold_back_young_blocks(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    listener = make_listener(chain.w3, sessions, protocol, confirmations=3)
    listener.poll_once()
    request_id = protocol.request(quorum=1)

    assert listener.poll_once() == 0
    chain.rpc("anvil_mine", "0x2")
    assert listener.poll_once() == 0
    assert listener.blocks_behind == 0
    chain.rpc("evm_mine")
    assert listener.poll_once() == 1
    assert request_ids(sessions) == [request_id]
    with sessions() as session:
        checkpoint = session.get_one(ChainCheckpoint, "coordinator")
        assert checkpoint.block_number == chain.w3.eth.block_number - 3


def test_run_survives_an_unreachable_endpoint_and_stops_when_asked(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    request_id = protocol.request(quorum=1)
    provider = FaultyProvider(chain.url)
    listener = make_listener(Web3(provider), sessions, protocol)
    provider.unreachable = 3

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop, poll_interval=0.02))
        for _ in range(200):
            if request_ids(sessions):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert request_ids(sessions) == [request_id]
    assert provider.unreachable == 0


def test_events_before_the_start_block_are_not_read(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    protocol.request(quorum=1)
    start = chain.w3.eth.block_number + 1
    later = protocol.request(quorum=1)
    listener = make_listener(chain.w3, sessions, protocol, start_block=start)
    assert listener.poll_once() == 1
    assert request_ids(sessions) == [later]
    with sessions() as session:
        assert session.scalar(select(func.min(ChainEvent.block_number))) == start


def test_a_reorg_deeper_than_the_remembered_blocks_reads_everything_again(
    chain: Anvil,
    protocol: Protocol,
    sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    start = chain.w3.eth.block_number + 1
    kept = protocol.request(quorum=1, prompt="before the fork")
    listener = make_listener(
        chain.w3, sessions, protocol, start_block=start, retained_blocks=1, max_lag_s=0
    )
    listener.poll_once()
    fork_point = chain.rpc("evm_snapshot")
    protocol.request(quorum=1, prompt="fork A")
    chain.rpc("anvil_mine", "0x5")
    listener.poll_once()

    assert chain.rpc("evm_revert", fork_point) is True  # fork B is shorter
    chain.rpc("evm_increaseTime", "0x3")
    chain.rpc("evm_mine")
    with caplog.at_level(logging.ERROR, logger="oracle.chain.listener"):
        assert listener.poll_once() == 1  # everything from the start block, read again
    assert any("deeper than every remembered block" in r.getMessage() for r in caplog.records)
    assert request_ids(sessions) == [kept]
    with sessions() as session:
        checkpoint = session.get_one(ChainCheckpoint, "coordinator")
        assert checkpoint.block_hash == bytes(chain.w3.eth.get_block("latest")["hash"])


def test_a_head_below_the_checkpoint_is_waited_out_before_it_counts_as_a_reorg(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session]
) -> None:
    """A backend that lags answers with an older head; nothing is rolled back on its word."""
    start = chain.w3.eth.block_number + 1
    protocol.request(quorum=1, prompt="before")
    fork_point = chain.rpc("evm_snapshot")
    protocol.request(quorum=1, prompt="seen by the node")
    chain.rpc("anvil_mine", "0x3")
    listener = make_listener(chain.w3, sessions, protocol, start_block=start, max_lag_s=3600)
    assert listener.poll_once() == 2
    before = snapshot(sessions)

    assert chain.rpc("evm_revert", fork_point) is True  # the head is now below the checkpoint
    assert listener.poll_once() == 0
    assert listener.lagging_polls == 1
    assert snapshot(sessions) == before  # no request deleted, none to admit again

    listener.max_lag_s = 0  # the head stays behind: now it is a reorg
    listener.poll_once()
    assert len(request_ids(sessions)) == 1
