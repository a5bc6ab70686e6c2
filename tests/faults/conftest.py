"""Fixtures of the fault tier: the node's chain-facing parts behind a fault-injecting proxy."""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from web3 import Web3

from oracle.chain.anvil import Anvil
from oracle.chain.commitment import commitment_hash, new_salt
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.endpoints import FailoverProvider
from oracle.chain.listener import Listener
from oracle.chain.sender import TxSender
from oracle.errors import OracleError
from oracle.store.models import OutgoingTx, Request, TxKind
from oracle.store.outbox import enqueue_tx, find_tx
from tests.support.protocol import DIM_BYTES, Protocol, random_bits
from tests.support.rpc_proxy import RpcProxy, running_proxy

ORACLE_KEY = 2  # anvil's third account: Protocol's first oracle


def node_web3(url: str, *, timeout_s: float = 30) -> Web3:
    """A client built the way ``oracle run`` builds its own (``build_node``)."""
    return Web3(FailoverProvider([url], timeout_s=timeout_s))


@pytest.fixture
def proxy(chain: Anvil, request: pytest.FixtureRequest) -> Iterator[RpcProxy]:
    """A proxy in front of the test's chain, seeded from the test's name."""
    with running_proxy(chain.url, seed=_seed(request.node.name)) as running:
        yield running


@pytest.fixture
def protocol(chain: Anvil) -> Protocol:
    return Protocol.deploy(chain.w3)


def make_listener(
    w3: Web3, sessions: sessionmaker[Session], protocol: Protocol, **options: Any
) -> Listener:
    binding = CoordinatorBinding(w3, protocol.coordinator.address)
    return Listener(w3=w3, session_factory=sessions, binding=binding, **options)


def make_sender(
    w3: Web3, chain: Anvil, sessions: sessionmaker[Session], **options: Any
) -> TxSender:
    account = Account.from_key(chain.private_keys[ORACLE_KEY])
    options.setdefault("lost_after_s", 1.0)  # short, so that lost broadcasts go again soon
    return TxSender(
        w3=w3, session_factory=sessions, account=account, chain_id=chain.chain_id, **options
    )


def request_ids(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(Request.id).order_by(Request.id)))


class Outbox:
    """Enqueues an oracle's commit and reveal the way the request lifecycle does."""

    def __init__(self, sessions: sessionmaker[Session], address: str, coordinator: str) -> None:
        self.sessions = sessions
        self.address = address
        self.binding_address = coordinator
        self.rng = random.Random(7)

    def add(self, kind: TxKind, request_id: int | None, data: bytes) -> None:
        with self.sessions.begin() as session:
            assert enqueue_tx(
                session,
                kind=kind,
                request_id=request_id,
                from_address=self.address,
                to_address=self.binding_address,
                data=data,
            )

    def commit_and_reveal(self, binding: CoordinatorBinding, request_id: int) -> None:
        reveal = self.commit(binding, request_id)
        self.add("reveal", request_id, reveal)

    def commit(self, binding: CoordinatorBinding, request_id: int) -> bytes:
        """Enqueue the commit; the reveal's calldata is returned, not enqueued."""
        output, bits, salt = "Paris", random_bits(self.rng, DIM_BYTES), new_salt()
        request_hash = binding.request_hash(request_id)
        commitment = commitment_hash(
            request_id=request_id,
            request_hash=request_hash,
            oracle=self.address,
            output=output,
            model_index=0,
            embedding_bits=bits,
            salt=salt,
        )
        self.add("commit", request_id, binding.encode_commit(request_id, request_hash, commitment))
        return binding.encode_reveal(request_id, output, 0, bits, salt)

    def row(self, kind: TxKind, request_id: int | None) -> OutgoingTx:
        with self.sessions() as session:
            found = find_tx(session, kind=kind, request_id=request_id)
            assert found is not None
            return found


def attempt(step: Callable[[], object]) -> OracleError | None:
    """Run one public step; an ``OracleError`` it raises (an outage) is returned, not raised.

    Anything else propagates: a part's own step may fail, but only with the node's errors.
    """
    try:
        step()
    except OracleError as exc:
        return exc
    return None


async def run_until(
    part: Callable[[asyncio.Event], Any],
    done: Callable[[], bool],
    *,
    give_up_s: float = 60,
) -> None:
    """Run a part's ``run`` loop until ``done()``; fail if the loop ends on its own first."""
    stop = asyncio.Event()
    task = asyncio.ensure_future(part(stop))
    try:
        deadline = time.monotonic() + give_up_s
        while not done():
            if task.done():
                task.result()  # raises what ended it
                raise AssertionError("the run loop returned before it was asked to stop")
            assert time.monotonic() < deadline, "the outcome never came"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
    await asyncio.wait_for(task, timeout=30)


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")
