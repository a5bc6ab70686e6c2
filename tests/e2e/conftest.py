"""End-to-end fixtures: a chain with real block times, the contracts, node processes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool
from web3 import Web3

from oracle.chain.anvil import Anvil, dev_private_key, start_anvil
from oracle.chain.artifacts import load_artifact
from oracle.chain.deploy import Deployment
from oracle.client import RequestOptions, RequestResult, coordinator_contract, send_request
from oracle.devnet import LocalNetwork, deploy_local
from oracle.store.db import make_engine
from tests.support.postgres import drop_database


@pytest.fixture(scope="session")
def timed_anvil() -> Iterator[Anvil]:
    """A chain that mines a block every second, as a real one does (not on every tx)."""
    node = start_anvil("--block-time", "1", "--accounts", "12")
    try:
        yield node
    finally:
        node.stop()


@dataclass
class Network:
    """A fresh deployment and the node processes serving it."""

    anvil: Anvil
    deployment: Deployment
    local: LocalNetwork

    @property
    def w3(self) -> Web3:
        return self.anvil.w3

    def start(self, count: int, *extra_args: str) -> None:
        # one LLM thread each: several nodes share this machine's cores
        for index in range(len(self.local.nodes), len(self.local.nodes) + count):
            self.local.start_node(index, "--llm-threads", "1", *extra_args)

    def ask(self, prompt: str, **options: Any) -> RequestResult:
        defaults: dict[str, Any] = {
            "rpc_url": self.anvil.url,
            "contract": self.deployment.coordinator,
            "private_key": dev_private_key(0),
            "callback": self.deployment.consumer,
            "callback_gas_limit": 300_000,
            "timeout_s": 240,
            "max_tokens": 32,
        }
        return send_request(RequestOptions(prompt=prompt, **{**defaults, **options}))

    def coordinator(self) -> Any:
        return coordinator_contract(self.w3, self.deployment.coordinator)

    def consumer(self) -> Any:
        return self.w3.eth.contract(
            address=Web3.to_checksum_address(self.deployment.consumer),
            abi=load_artifact("ExampleConsumer").abi,
        )

    def node_rows(self, index: int, sql: str, **params: Any) -> list[Any]:
        engine = make_engine(self.local.nodes[index].database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        finally:
            engine.dispose()

    def net_received(self, address: str, from_block: int) -> int:
        """Wei the address gained since ``from_block`` before paying for its own gas."""
        spent = 0
        for number in range(from_block, self.w3.eth.block_number + 1):
            block = self.w3.eth.get_block(number, full_transactions=True)
            for tx in block["transactions"]:
                if tx["from"] == address:  # type: ignore[index]
                    receipt = self.w3.eth.get_transaction_receipt(tx["hash"])  # type: ignore[index]
                    spent += receipt["gasUsed"] * receipt["effectiveGasPrice"]
        before = self.w3.eth.get_balance(address, block_identifier=from_block - 1)
        return int(self.w3.eth.get_balance(address)) - int(before) + spent

    def events(self, name: str, request_id: int) -> list[Any]:
        """The coordinator's events of one kind for one request, in chain order."""
        event = getattr(self.coordinator().events, name)()
        return list(event.get_logs(from_block=0, argument_filters={"requestId": request_id}))

    def request_block(self, request_id: int) -> int:
        (log,) = self.events("InferenceRequested", request_id)
        return int(log["blockNumber"])

    def finalizer_pay(self, request_id: int) -> tuple[str, int]:
        """Who sent the finalize, and the callback prepayment it earned for that."""
        (requested,) = self.events("InferenceRequested", request_id)
        (finalized,) = self.events("InferenceFinalized", request_id)
        sender = self.w3.eth.get_transaction(finalized["transactionHash"])["from"]
        terms = requested["args"]["terms"]
        prepay = requested["args"]["callbackGasLimit"] * terms["callbackGasPrice"]
        return str(sender), int(prepay)

    def txs_to_coordinator(self, address: str, from_block: int) -> list[str]:
        """Function names of the address's transactions to the coordinator since ``from_block``."""
        return [name for name, _ in self.calls_to_coordinator(address, from_block)]

    def calls_to_coordinator(self, address: str, from_block: int) -> list[tuple[str, bool]]:
        """The address's mined transactions to the coordinator since ``from_block``: each
        one's function name and whether it succeeded."""
        coordinator = self.coordinator()
        calls = []
        for number in range(from_block, self.w3.eth.block_number + 1):
            for tx in self.w3.eth.get_block(number, full_transactions=True)["transactions"]:
                if tx["from"] == address and tx["to"] == coordinator.address:  # type: ignore[index]
                    function, _ = coordinator.decode_function_input(tx["input"])  # type: ignore[index]
                    receipt = self.w3.eth.get_transaction_receipt(tx["hash"])  # type: ignore[index]
                    calls.append((function.fn_name, receipt["status"] == 1))
        return calls


@pytest.fixture
def network(timed_anvil: Anvil, postgres_server_url: URL, tmp_path: Path) -> Iterator[Network]:
    deployment = deploy_local(timed_anvil)
    local = LocalNetwork(timed_anvil, deployment, postgres_server_url, tmp_path)
    try:
        yield Network(anvil=timed_anvil, deployment=deployment, local=local)
    finally:
        local.stop_all()
        for node in local.nodes.values():
            drop_database(postgres_server_url, node.database_url.rsplit("/", 1)[1])
        _attach_logs(tmp_path)


def _attach_logs(directory: Path) -> None:
    """Print the tail of every node log so a failing test shows what the nodes did."""
    for log in sorted(directory.glob("node*.log")):
        lines = log.read_text(errors="replace").splitlines()
        print(f"----- {log.name} (last 60 lines) -----")
        print("\n".join(lines[-60:]))
