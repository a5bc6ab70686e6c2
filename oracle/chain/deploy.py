"""Deploying the coordinator (and the example consumer) to a chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_typing import ChecksumAddress
from web3 import Web3

from oracle.chain.artifacts import load_artifact
from oracle.consensus.signal import SIGNALS

DEFAULT_REVEAL_WINDOW_S = 30
DEFAULT_DISPUTE_WINDOW_S = 60
"""Several block times and a verification: once every seat has revealed, disputes close
this long after the last reveal, and a window shorter than a block leaves the last
revealer undisputable (docs/security.md, open risk 7). Was 10 s."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    coordinator: ChecksumAddress
    consumer: ChecksumAddress


def deploy_contract(w3: Web3, name: str, *args: Any, sender: ChecksumAddress) -> ChecksumAddress:
    """Deploy from an account the node (anvil) holds unlocked and wait for the receipt."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx_hash = factory.constructor(*args).transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise RuntimeError(f"deploying {name} failed in {tx_hash.hex()}")
    return Web3.to_checksum_address(receipt["contractAddress"])


def deploy_all(
    w3: Web3,
    *,
    sender: ChecksumAddress,
    reveal_window_s: int = DEFAULT_REVEAL_WINDOW_S,
    dispute_window_s: int = DEFAULT_DISPUTE_WINDOW_S,
    expiry_grace_s: int | None = None,
    unbonding_period_s: int | None = None,
) -> Deployment:
    """The coordinator and the example consumer; ``expiry_grace_s`` and
    ``unbonding_period_s`` replace the contract's defaults (1 hour, 1 day) when given.
    Every signal nodes know (``oracle.consensus.signal.SIGNALS``) is registered as an
    embedding model besides the contract's own all-MiniLM-L6-v2, so that requests can
    name it."""
    coordinator = deploy_contract(
        w3, "InferenceCoordinator", reveal_window_s, dispute_window_s, sender=sender
    )
    contract = w3.eth.contract(address=coordinator, abi=load_artifact("InferenceCoordinator").abi)
    for signal in SIGNALS.values():
        if signal.name != signal.model:
            _transact(
                w3, contract.functions.setEmbeddingModel(signal.name, signal.dimensions), sender
            )
    if expiry_grace_s is not None:
        _transact(w3, contract.functions.setExpiryGrace(expiry_grace_s), sender)
    if unbonding_period_s is not None:
        _transact(w3, contract.functions.setUnbondingPeriod(unbonding_period_s), sender)
    consumer = deploy_contract(w3, "ExampleConsumer", coordinator, sender=sender)
    return Deployment(coordinator=coordinator, consumer=consumer)


def _transact(w3: Web3, call: Any, sender: ChecksumAddress) -> None:
    tx_hash = call.transact({"from": sender})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1:
        raise RuntimeError(f"{call.fn_name} failed in {tx_hash.hex()}")
