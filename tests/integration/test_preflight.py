"""Start-up checks against a real chain: an RPC that does not answer, an address that is not
the coordinator."""

from __future__ import annotations

import logging
import socket

import pytest

from oracle.chain.anvil import Anvil
from oracle.chain.deploy import deploy_contract
from oracle.chain.endpoints import redact_url
from oracle.errors import CoordinatorMissing, RpcNotAnswering
from oracle.preflight import check_coordinator, wait_for_chain


def dead_url() -> str:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_rpc_that_does_not_answer_is_retried_then_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = dead_url()
    with caplog.at_level(logging.WARNING), pytest.raises(RpcNotAnswering) as refused:
        wait_for_chain([url], wait_s=1.5)
    assert str(refused.value).startswith(
        f"The chain's RPC endpoint does not answer: {url} gave no chain id in 1.5 s"
    )
    assert "ConnectionError" in str(refused.value)
    retries = [r for r in caplog.records if r.getMessage().startswith("RPC endpoint does not")]
    assert len(retries) >= 2  # backoff: several attempts inside the bound, each logged


def test_the_first_endpoint_that_answers_is_used(anvil: Anvil) -> None:
    w3, chain_id = wait_for_chain([dead_url(), anvil.url], wait_s=5)
    assert chain_id == 31337
    assert w3.eth.block_number >= 0


def test_a_password_in_the_url_is_not_shown() -> None:
    assert redact_url("https://user:hunter2@rpc.example/v3/KEY") == "https://rpc.example/..."
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"


def test_the_coordinator_passes(chain: Anvil) -> None:
    sender = chain.w3.eth.accounts[0]
    coordinator = deploy_contract(chain.w3, "InferenceCoordinator", 20, 3, sender=sender)
    check_coordinator(chain.w3, coordinator)


def test_an_account_is_not_a_coordinator(chain: Anvil) -> None:
    account = chain.w3.eth.accounts[3]
    with pytest.raises(CoordinatorMissing, match="holds no code"):
        check_coordinator(chain.w3, account)


def test_another_contract_is_not_a_coordinator(chain: Anvil) -> None:
    sender = chain.w3.eth.accounts[0]
    coordinator = deploy_contract(chain.w3, "InferenceCoordinator", 20, 3, sender=sender)
    consumer = deploy_contract(chain.w3, "ExampleConsumer", coordinator, sender=sender)
    with pytest.raises(CoordinatorMissing) as refused:
        check_coordinator(chain.w3, consumer)
    assert "holds a contract without the coordinator's" in str(refused.value)
    assert "check --contract" in str(refused.value)


def test_a_stop_while_waiting_ends_the_wait_without_an_error() -> None:
    asked: list[bool] = []

    def stopped() -> bool:
        asked.append(True)
        return len(asked) > 2

    assert wait_for_chain([dead_url()], wait_s=30, stopped=stopped) is None
