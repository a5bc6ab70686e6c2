"""A backend that answers eth_getLogs from an older head loses no event."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from tests.faults.conftest import make_listener, node_web3, request_ids
from tests.support.protocol import Protocol
from tests.support.rpc_proxy import RpcProxy


def test_logs_a_lagging_backend_left_out_are_read_by_block_hash(
    chain: Anvil, protocol: Protocol, sessions: sessionmaker[Session], proxy: RpcProxy
) -> None:
    first = chain.w3.eth.block_number + 1
    expected = [protocol.request(quorum=1, prompt=f"request {n}") for n in range(3)]
    # the head and the headers are current; only the log answer comes from 2 blocks back
    proxy.inject("lag", methods=["eth_getLogs"], blocks=2)
    listener = make_listener(node_web3(proxy.url), sessions, protocol, start_block=first)

    listener.poll_once()

    assert proxy.injected["lag"] > 0
    assert request_ids(sessions) == expected
