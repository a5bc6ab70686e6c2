"""Drives the coordinator contract from tests: requests, commits, reveals, disputes, finalize."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_abi.abi import encode as abi_encode
from eth_typing import ChecksumAddress
from eth_utils.abi import collapse_if_tuple, function_abi_to_4byte_selector
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from oracle.chain.artifacts import decode_revert, load_artifact
from oracle.chain.commitment import new_salt, output_hash
from oracle.chain.deploy import deploy_contract

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MODEL = "SmolLM2-135M-Instruct-Q4_1"
DIM_BYTES = 48
REVEAL_WINDOW_S = 30
DISPUTE_WINDOW_S = 10
STAKE = 10**16  # the contract's default minStake (0.01 ether)
CALLBACK_GAS_PRICE = 10 * 10**9  # 10 gwei: above anvil's base fee
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    request_id: int
    request_hash: bytes
    oracle: ChecksumAddress
    output: str
    model_index: int
    bits: bytes
    salt: bytes


def random_bits(rng: Any, length: int = DIM_BYTES) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(length))


def flip_bits(bits: bytes, positions: Sequence[int]) -> bytes:
    value = int.from_bytes(bits, "big")
    for p in positions:
        value ^= 1 << p
    return value.to_bytes(len(bits), "big")


def frame(**overrides: Any) -> tuple[Any, ...]:
    values = {
        "quorum": 3,
        "maxTimeMs": 30_000,
        "secDistance": 3500,
        "secPercentage": 6700,
        "embeddingModel": EMBEDDING_MODEL,
    }
    values.update(overrides)
    return (
        values["quorum"],
        values["maxTimeMs"],
        values["secDistance"],
        values["secPercentage"],
        values["embeddingModel"],
    )


def revert_reason(call: Callable[[], Any], contract: str = "InferenceCoordinator") -> str:
    """Run a contract call expected to revert and return its decoded reason (the custom
    errors named after ``contract``'s artifact)."""
    with pytest.raises(ContractLogicError) as caught:
        call()
    return decode_revert(caught.value.data, contract)  # type: ignore[arg-type]


def call_reverts(
    call: Any, sender: str, value: int = 0, contract: str = "InferenceCoordinator"
) -> str:
    """``eth_call`` a contract function expected to revert; its decoded reason."""
    return revert_reason(lambda: call.call({"from": sender, "value": value}), contract)


@dataclass(kw_only=True)
class Protocol:
    w3: Web3
    coordinator: Contract
    owner: ChecksumAddress
    requester: ChecksumAddress
    oracles: list[ChecksumAddress]
    gas_used: dict[str, list[int]] = field(default_factory=dict)
    revealed: dict[tuple[int, str], Answer] = field(default_factory=dict)
    terms: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Each request's ``RequestTerms`` (requestHash, seed, ...) as its event gave them."""
    spent: dict[str, int] = field(default_factory=dict)
    """Wei each sender paid for gas in the transactions sent through ``transact``."""

    @classmethod
    def deploy(cls, w3: Web3) -> Protocol:
        accounts = [Web3.to_checksum_address(a) for a in w3.eth.accounts]
        owner, requester, oracles = accounts[0], accounts[1], accounts[2:]
        address = deploy_contract(
            w3, "InferenceCoordinator", REVEAL_WINDOW_S, DISPUTE_WINDOW_S, sender=owner
        )
        coordinator = w3.eth.contract(
            address=address, abi=load_artifact("InferenceCoordinator").abi
        )
        return cls(
            w3=w3, coordinator=coordinator, owner=owner, requester=requester, oracles=oracles
        )

    def deploy_helper(self, name: str, *args: Any) -> Contract:
        address = deploy_contract(self.w3, name, *args, sender=self.owner)
        return self.w3.eth.contract(address=address, abi=load_artifact(name).abi)

    def transact(self, label: str, call: Any, sender: ChecksumAddress, **tx: Any) -> Any:
        tx_hash = call.transact({"from": sender, **tx})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1, f"{label} failed"
        self.gas_used.setdefault(label, []).append(receipt["gasUsed"])
        cost = receipt["gasUsed"] * receipt["effectiveGasPrice"]
        self.spent[sender] = self.spent.get(sender, 0) + cost
        return receipt

    def transact_raw(
        self, function: str, args: Sequence[Any], sender: ChecksumAddress, **tx: Any
    ) -> Any:
        """Call ``function`` with its ``string`` arguments given as raw bytes (any bytes at
        all, as a hostile sender would): the ABI encodes both alike."""
        (abi,) = [f for f in self.coordinator.abi if f.get("name") == function]
        types = [re.sub(r"\bstring\b", "bytes", collapse_if_tuple(dict(i))) for i in abi["inputs"]]
        selector = function_abi_to_4byte_selector(abi)
        data = selector + abi_encode(types, list(args))
        tx_hash = self.w3.eth.send_transaction(
            {"from": sender, "to": self.coordinator.address, "data": HexBytes(data), **tx}
        )
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1, f"{function} with raw strings failed"
        return receipt

    def events(self, receipt: Any, name: str) -> tuple[Any, ...]:
        """The coordinator's events of one kind in a receipt (other contracts' logs skipped)."""
        event = getattr(self.coordinator.events, name)()
        return tuple(event.process_receipt(receipt, errors=DISCARD))

    # --- time ---------------------------------------------------------------

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def advance(self, seconds: int) -> None:
        self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    # --- protocol steps -----------------------------------------------------

    def register_oracles(self, count: int, stake: int = STAKE) -> list[ChecksumAddress]:
        chosen = self.oracles[:count]
        for oracle in chosen:
            self.transact("register", self.coordinator.functions.register(), oracle, value=stake)
        return chosen

    def fresh_account(self, balance: int = 10**21) -> ChecksumAddress:
        """A new address with ``balance`` wei that anvil signs for (impersonated)."""
        address = Web3.to_checksum_address(new_salt()[:20])
        self.w3.provider.make_request("anvil_setBalance", [address, hex(balance)])  # type: ignore[arg-type]
        self.w3.provider.make_request("anvil_impersonateAccount", [address])  # type: ignore[arg-type]
        return address

    def request_call(
        self,
        *,
        prompt: str = "What is the capital of France?",
        models: Sequence[str] = (MODEL,),
        temperature: int = 700,
        max_tokens: int = 64,
        callback: str = ZERO_ADDRESS,
        callback_gas: int = 0,
        callback_gas_price: int = CALLBACK_GAS_PRICE,
        **frame_overrides: Any,
    ) -> Any:
        return self.coordinator.functions.requestInference(
            prompt,
            list(models),
            temperature,
            max_tokens,
            frame(**frame_overrides),
            callback,
            callback_gas,
            callback_gas_price,
        )

    def request(
        self, *, fee: int = 10**15, sender: ChecksumAddress | None = None, **kwargs: Any
    ) -> int:
        """Send a request paying ``fee`` to the nodes, plus the callback prepayment if any."""
        prepay = 0
        if kwargs.get("callback", ZERO_ADDRESS) != ZERO_ADDRESS:
            prepay = kwargs.get("callback_gas", 0) * kwargs.get(
                "callback_gas_price", CALLBACK_GAS_PRICE
            )
        receipt = self.transact(
            "request", self.request_call(**kwargs), sender or self.requester, value=fee + prepay
        )
        return self.record_request(receipt)

    def record_request(self, receipt: Any) -> int:
        """Remember the terms of the request a receipt made; returns its id."""
        (event,) = self.events(receipt, "InferenceRequested")
        request_id = int(event["args"]["requestId"])
        self.terms[request_id] = dict(event["args"]["terms"])
        return request_id

    def request_hash(self, request_id: int) -> bytes:
        return bytes(self.terms[request_id]["requestHash"])

    def ticket(self, request_id: int, oracle: str, stake: int | None = None) -> int:
        """The oracle's ticket for the request, from the contract's own ``ticketOf``."""
        if stake is None:
            stake = self.stake(oracle)
        seed = self.terms[request_id]["seed"]
        return int(
            self.coordinator.functions.ticketOf(
                seed, request_id, Web3.to_checksum_address(oracle), stake
            ).call()
        )

    def stake(self, oracle: str) -> int:
        return int(self.oracle_state(oracle)["stake"])

    def oracle_state(self, oracle: str) -> dict[str, Any]:
        """The coordinator's ``Oracle`` record by field name."""
        (abi,) = [f for f in self.coordinator.abi if f.get("name") == "oracles"]
        names = [o["name"] for o in abi["outputs"]]
        values = self.coordinator.functions.oracles(Web3.to_checksum_address(oracle)).call()
        return dict(zip(names, values, strict=True))

    def commit(
        self,
        oracle: ChecksumAddress,
        request_id: int,
        output: str,
        bits: bytes,
        model_index: int = 0,
    ) -> Answer:
        answer = self.answer(oracle, request_id, output, bits, model_index)
        self.transact("commit", self.commit_call(answer), oracle)
        return answer

    def commit_call(self, answer: Answer) -> Any:
        """``commit`` of ``answer``, bound to the request it was made for."""
        return self.coordinator.functions.commit(
            answer.request_id, answer.request_hash, self.commitment(answer)
        )

    def raw_commit_call(
        self, request_id: int, commitment: bytes, request_hash: bytes | None = None
    ) -> Any:
        """``commit`` of any 32 bytes, bound to the request as its event described it (or
        to ``request_hash``): for the checks that come before the commitment's."""
        if request_hash is None:
            request_hash = self.request_hash(request_id)
        return self.coordinator.functions.commit(request_id, request_hash, commitment)

    def answer(
        self,
        oracle: ChecksumAddress,
        request_id: int,
        output: str,
        bits: bytes,
        model_index: int = 0,
    ) -> Answer:
        """An answer with a fresh salt, bound to the request as its event described it."""
        return Answer(
            request_id=request_id,
            request_hash=self.request_hash(request_id),
            oracle=oracle,
            output=output,
            model_index=model_index,
            bits=bits,
            salt=new_salt(),
        )

    @staticmethod
    def commitment(answer: Answer) -> bytes:
        """keccak256(abi.encode(id, requestHash, node, keccak256(output), modelIndex, bits, salt)),
        written out here as the contract states it (a check on the node's own version)."""
        return keccak(
            abi_encode(
                ["uint256", "bytes32", "address", "bytes32", "uint8", "bytes", "bytes32"],
                [
                    answer.request_id,
                    answer.request_hash,
                    Web3.to_checksum_address(answer.oracle),
                    output_hash(answer.output),
                    answer.model_index,
                    answer.bits,
                    answer.salt,
                ],
            )
        )

    def reveal_call(self, answer: Answer) -> Any:
        return self.coordinator.functions.reveal(
            answer.request_id, answer.output, answer.model_index, answer.bits, answer.salt
        )

    def reveal(self, answer: Answer) -> Any:
        receipt = self.transact("reveal", self.reveal_call(answer), answer.oracle)
        self.revealed[(answer.request_id, answer.oracle)] = answer
        return receipt

    def dispute_call(self, request_id: int, accused: str, request_hash: bytes | None = None) -> Any:
        """``dispute`` naming the request's hash (or ``request_hash``)."""
        named = self.request_hash(request_id) if request_hash is None else request_hash
        return self.coordinator.functions.dispute(request_id, named, accused)

    def dispute(self, disputer: ChecksumAddress, request_id: int, accused: ChecksumAddress) -> Any:
        return self.transact("dispute", self.dispute_call(request_id, accused), disputer)

    def close_disputes(self, request_id: int) -> None:
        closes_at = self.coordinator.functions.disputeDeadline(request_id).call()
        self.advance(max(0, closes_at - self.now()) + 1)

    def output_hashes(self, request_id: int, seats: int) -> list[bytes]:
        """keccak256 of each seat's revealed output, zero for seats that did not reveal."""
        hashes = []
        for seat_no in range(seats):
            oracle = self.coordinator.functions.getSeat(request_id, seat_no).call()[0][0]
            answer = self.revealed.get((request_id, oracle))
            hashes.append(output_hash(answer.output) if answer else bytes(32))
        return hashes

    def finalize_call(
        self,
        request_id: int,
        seat_bits: Sequence[bytes],
        winner_output: str,
        output_hashes: Sequence[bytes] | None = None,
    ) -> Any:
        if output_hashes is None:
            output_hashes = self.output_hashes(request_id, len(seat_bits))
        return self.coordinator.functions.finalize(
            request_id, list(seat_bits), list(output_hashes), winner_output
        )

    def finalize(
        self,
        request_id: int,
        seat_bits: Sequence[bytes],
        winner_output: str,
        sender: ChecksumAddress | None = None,
        **tx: Any,
    ) -> Any:
        call = self.finalize_call(request_id, seat_bits, winner_output)
        return self.transact("finalize", call, sender or self.owner, **tx)

    def seat_bits(self, request_id: int) -> list[bytes]:
        """Every seat's revealed bits in seat order (empty for seats that did not reveal)."""
        bits = []
        for seat_no in range(self.stored_request(request_id)["seatCount"]):
            oracle = self.coordinator.functions.getSeat(request_id, seat_no).call()[0][0]
            answer = self.revealed.get((request_id, oracle))
            bits.append(answer.bits if answer else b"")
        return bits

    def seated(self, request_id: int) -> list[ChecksumAddress]:
        """The oracles holding the seats, in seat order."""
        count = self.stored_request(request_id)["seatCount"]
        return [
            Web3.to_checksum_address(
                self.coordinator.functions.getSeat(request_id, seat_no).call()[0][0]
            )
            for seat_no in range(count)
        ]

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(Web3.to_checksum_address(address)))

    def worth(self, address: str) -> int:
        """Balance plus the gas it paid through ``transact``: what it gained or lost apart
        from gas, when compared before and after."""
        return self.balance(address) + self.spent.get(Web3.to_checksum_address(address), 0)

    def run_round(
        self, request_id: int, answers: Sequence[tuple[ChecksumAddress, str, bytes]]
    ) -> list[Answer]:
        """Commit every (oracle, output, bits) in order, wait for commits to close, reveal them
        all; returns the answers in commit order (the seat order while no seat was evicted)."""
        committed = [self.commit(o, request_id, out, bits) for o, out, bits in answers]
        self.close_commits(request_id)
        for answer in committed:
            self.reveal(answer)
        return committed

    def close_commits(self, request_id: int) -> None:
        """Move past the commit deadline unless commits already closed."""
        if not self.coordinator.functions.commitsClosed(request_id).call():
            self.advance(self.commit_time_left(request_id) + 1)

    def commit_time_left(self, request_id: int) -> int:
        return max(0, int(self.stored_request(request_id)["commitDeadline"]) - self.now())

    def stored_request(self, request_id: int) -> dict[str, Any]:
        """The coordinator's ``Request`` struct by field name."""
        (abi,) = [f for f in self.coordinator.abi if f.get("name") == "getRequest"]
        names = [c["name"] for c in abi["outputs"][0]["components"]]
        values = self.coordinator.functions.getRequest(request_id).call()
        return dict(zip(names, values, strict=True))
