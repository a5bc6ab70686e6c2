"""Several RPC endpoints: calls go to the first healthy one, and every fault is classified."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError

from oracle.chain.anvil import Anvil
from oracle.chain.endpoints import FailoverProvider, redact_url
from oracle.chain.rpc import rpc_errors
from oracle.errors import RpcMalformedResponse, RpcRateLimited, RpcUnavailable
from tests.support.protocol import Protocol
from tests.support.rpc_proxy import RpcProxy, running_proxy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backup(chain: Anvil) -> Iterator[RpcProxy]:
    with running_proxy(chain.url, seed=99) as running:
        yield running


def failover(*proxies: RpcProxy, clock: Clock | None = None) -> Web3:
    provider = FailoverProvider([p.url for p in proxies], timeout_s=2, clock=clock or Clock())
    return Web3(provider)


def block_number(w3: Web3) -> int:
    with rpc_errors("eth_blockNumber"):
        return w3.eth.block_number


@pytest.mark.parametrize(
    "kind", ["drop", "server_error", "reset_mid_body", "html", "malformed", "rpc_rate_limit"]
)
def test_a_failing_endpoint_hands_the_call_to_the_next(
    chain: Anvil, proxy: RpcProxy, backup: RpcProxy, kind: str
) -> None:
    proxy.inject(kind)  # type: ignore[arg-type]
    w3 = failover(proxy, backup)
    assert block_number(w3) == chain.w3.eth.block_number
    assert proxy.injected[kind] == 1
    assert len(backup.requests_for("eth_blockNumber")) == 1


def test_a_resting_endpoint_is_asked_again_once_its_rest_is_over(
    proxy: RpcProxy, backup: RpcProxy
) -> None:
    clock = Clock()
    rule = proxy.inject("rate_limit", retry_after_s=7)
    w3 = failover(proxy, backup, clock=clock)
    block_number(w3)
    rule.cancel()
    block_number(w3)  # still resting: the backup answers, the first is not asked
    assert len(proxy.calls) == 1 and len(backup.calls) == 2
    clock.now += 7  # what its Retry-After asked for
    block_number(w3)
    assert len(proxy.calls) == 2 and len(backup.calls) == 2


def test_a_revert_is_an_answer_and_is_not_asked_elsewhere(
    chain: Anvil, proxy: RpcProxy, backup: RpcProxy
) -> None:
    protocol = Protocol.deploy(chain.w3)
    w3 = failover(proxy, backup)
    coordinator = w3.eth.contract(
        address=protocol.coordinator.address, abi=protocol.coordinator.abi
    )
    with pytest.raises(ContractLogicError), rpc_errors("eth_call"):
        coordinator.functions.finalize(12345, [], [], "").call()
    assert backup.calls == []


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("drop", RpcUnavailable),
        ("delay", RpcUnavailable),
        ("server_error", RpcUnavailable),
        ("reset_mid_body", RpcUnavailable),
        ("html", RpcMalformedResponse),
        ("malformed", RpcMalformedResponse),
        ("rate_limit", RpcRateLimited),
        ("rpc_rate_limit", RpcRateLimited),
    ],
)
def test_every_fault_of_a_lone_endpoint_becomes_a_transient_rpc_error(
    proxy: RpcProxy, kind: str, expected: type[Exception]
) -> None:
    proxy.inject(kind, delay_s=3, retry_after_s=4)  # type: ignore[arg-type]
    w3 = failover(proxy)  # timeout 2 s: the delay is a timeout
    with pytest.raises(expected) as caught:
        block_number(w3)
    if kind == "rate_limit":
        assert isinstance(caught.value, RpcRateLimited)
        assert caught.value.retry_after_s == 4


def test_a_rate_limit_error_with_data_is_not_taken_for_a_revert(
    chain: Anvil, proxy: RpcProxy
) -> None:
    """web3 reads a JSON-RPC error with a ``data`` object as a revert; it is a rate limit."""
    protocol = Protocol.deploy(chain.w3)
    proxy.inject("rpc_rate_limit", methods=["eth_call"])
    w3 = Web3(Web3.HTTPProvider(proxy.url))
    coordinator = w3.eth.contract(
        address=protocol.coordinator.address, abi=protocol.coordinator.abi
    )
    with pytest.raises(RpcRateLimited), rpc_errors("eth_call"):
        coordinator.functions.minStake().call()


def test_urls_are_logged_without_their_secrets() -> None:
    assert redact_url("https://user:pw@rpc.example/v3/KEY") == "https://rpc.example/..."
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"


def test_an_endpoint_of_another_chain_is_never_used(
    chain: Anvil, proxy: RpcProxy, backup: RpcProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A fallback pointed at another network by mistake must not feed the node its blocks."""
    w3 = Web3(FailoverProvider([proxy.url, backup.url], timeout_s=2, chain_id=1))
    with pytest.raises(RpcMalformedResponse):
        block_number(w3)  # neither endpoint is on chain 1
    assert "serves another chain" in caplog.text

    ours = Web3(FailoverProvider([proxy.url], timeout_s=2, chain_id=chain.chain_id))
    assert block_number(ours) == chain.w3.eth.block_number
    assert len(proxy.requests_for("eth_chainId")) == 2  # asked once per provider


def test_the_chain_id_is_asked_once_not_around_every_call(
    chain: Anvil, proxy: RpcProxy, protocol: Protocol
) -> None:
    """web3 checks a call's chain before and after every ``eth_call`` and
    ``eth_estimateGas``; given the node's chain id, the provider answers those itself."""
    w3 = Web3(FailoverProvider([proxy.url], timeout_s=2, chain_id=chain.chain_id))
    coordinator = w3.eth.contract(
        address=protocol.coordinator.address, abi=protocol.coordinator.abi
    )
    for _ in range(3):
        with rpc_errors("eth_call"):
            coordinator.functions.minStake().call()
        with rpc_errors("eth_estimateGas"):
            w3.eth.estimate_gas({"from": chain.w3.eth.accounts[1], "to": chain.w3.eth.accounts[2]})
    assert w3.eth.chain_id == chain.chain_id
    methods = [m for r in proxy.calls for m in r.methods]
    assert methods.count("eth_chainId") == 1  # the endpoint's check before its first use
    assert methods.count("eth_call") == 3 and methods.count("eth_estimateGas") == 3
