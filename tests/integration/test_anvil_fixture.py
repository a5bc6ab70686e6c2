"""The chain fixture gives each test the same starting state, whatever earlier tests sent."""

from __future__ import annotations

from eth_account import Account
from web3 import Web3

from oracle.chain.anvil import CHAIN_ID, DEV_PRIVATE_KEYS, Anvil

RECIPIENT = Web3.to_checksum_address("0x" + "42" * 20)
AMOUNT = Web3.to_wei(1, "ether")


def send_ether(chain: Anvil) -> None:
    sender = chain.w3.eth.accounts[0]
    tx_hash = chain.w3.eth.send_transaction({"from": sender, "to": RECIPIENT, "value": AMOUNT})
    receipt = chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
    assert receipt["status"] == 1


def test_anvil_runs_the_dev_chain(chain: Anvil) -> None:
    assert chain.w3.eth.chain_id == CHAIN_ID
    derived = [Account.from_key(key).address for key in DEV_PRIVATE_KEYS]
    assert chain.w3.eth.accounts[: len(derived)] == derived


# The two tests below run in file order; whichever runs second sees the first one undone.
def test_a_transfer_changes_state(chain: Anvil) -> None:
    block_before = chain.w3.eth.block_number
    assert chain.w3.eth.get_balance(RECIPIENT) == 0
    send_ether(chain)
    assert chain.w3.eth.get_balance(RECIPIENT) == AMOUNT
    assert chain.w3.eth.block_number == block_before + 1  # automine: one block per tx


def test_b_the_transfer_was_reverted(chain: Anvil, anvil: Anvil) -> None:
    assert chain.w3.eth.get_balance(RECIPIENT) == 0
    assert chain.w3.eth.get_transaction_count(chain.w3.eth.accounts[0]) == 0
    send_ether(chain)  # again possible, and again undone afterwards
    assert anvil.w3.eth.get_balance(RECIPIENT) == AMOUNT
