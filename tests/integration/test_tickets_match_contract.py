"""Python's seat tickets against the contract's ``ticketOf``, bit for bit (protocol v2).

Every case goes through ``eth_call`` to a coordinator deployed once for this module on the
session's anvil (``ticketOf`` is pure). Random seeds, request ids, addresses and stakes,
with the variates' edges forced through addresses found for them (the largest and
smallest variates among many addresses); and commits on chain, in random orders, whose
``Committed`` tickets and evictions, refusals (``TicketTooWeak``) and final seats must be
what Python computes from the request's seed.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator

import pytest
from eth_utils.address import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from oracle.chain.anvil import Anvil
from oracle.chain.artifacts import load_artifact
from oracle.chain.deploy import deploy_contract
from oracle.consensus.tickets import MAX_VARIATE, Seat, seat_holders, ticket, ticket_variate
from tests.support.protocol import Protocol, random_bits, revert_reason

ZERO = "0x0000000000000000000000000000000000000000"
UINT256_MAX = (1 << 256) - 1
UINT128_MAX = (1 << 128) - 1
# eth_call latency is the network's, not the code's: no per-example deadline.
CASES = settings(max_examples=1_000, deadline=None)


@pytest.fixture(scope="module")
def coordinator(anvil: Anvil) -> Iterator[Contract]:
    """One coordinator for the module; the deployment is undone when the module is done."""
    w3 = anvil.w3
    snapshot = anvil.rpc("evm_snapshot")
    try:
        address = deploy_contract(w3, "InferenceCoordinator", 30, 10, sender=w3.eth.accounts[0])
        yield w3.eth.contract(address=address, abi=load_artifact("InferenceCoordinator").abi)
    finally:
        assert anvil.rpc("evm_revert", snapshot) is True


def contract_ticket(
    coordinator: Contract, seed: int, request_id: int, node: str, stake: int
) -> int:
    return int(coordinator.functions.ticketOf(seed, request_id, node, stake).call())


addresses = st.binary(min_size=20, max_size=20).map(to_checksum_address)
stakes = st.one_of(
    st.integers(1, UINT128_MAX),  # the registry keeps stakes in uint128
    st.integers(10**14, 10**24),  # MIN_STAKE_FLOOR to a million ether: real stakes
    st.sampled_from([1, 2, 10**14, 10**16, 10**18, UINT128_MAX, UINT256_MAX]),
)
words = st.one_of(st.integers(0, UINT256_MAX), st.sampled_from([0, 1, UINT256_MAX, 1 << 255]))


@CASES
@given(seed=words, request_id=words, node=addresses, stake=stakes)
def test_ticket_matches_the_contract(
    coordinator: Contract, seed: int, request_id: int, node: str, stake: int
) -> None:
    expected = ticket(seed, request_id, node, stake)
    assert contract_ticket(coordinator, seed, request_id, node, stake) == expected


def test_variate_edges_match_the_contract(coordinator: Contract) -> None:
    """Addresses whose variate is the largest seen, the smallest, and a power of two plus
    one (a mantissa of exactly 1 after the shift): the log2's edges through real hashes."""
    seed, request_id = 2**200 + 3, 42
    found: dict[str, tuple[int, str]] = {}
    for index in range(20_000):
        node = to_checksum_address(index.to_bytes(20, "big"))
        x = ticket_variate(seed, request_id, node)
        if "max" not in found or x > found["max"][0]:
            found["max"] = (x, node)
        if "min" not in found or x < found["min"][0]:
            found["min"] = (x, node)
    assert found["max"][0] > MAX_VARIATE - MAX_VARIATE // 1_000
    assert found["min"][0] < MAX_VARIATE // 1_000
    for _, node in found.values():
        for stake in (1, 10**18, UINT128_MAX):
            assert contract_ticket(coordinator, seed, request_id, node, stake) == ticket(
                seed, request_id, node, stake
            )


def test_zero_stake_is_refused_on_both_sides(coordinator: Contract) -> None:
    node = to_checksum_address(b"\x01" * 20)
    with pytest.raises(ContractCustomError):
        contract_ticket(coordinator, 1, 1, node, 0)


def test_commits_on_chain_seat_what_python_predicts(chain: Anvil) -> None:
    """Six nodes of different stakes commit to quorum-3 requests in random orders: each
    commit's ticket, eviction or refusal, and the seats at the end, are Python's."""
    protocol = Protocol.deploy(chain.w3)
    nodes = protocol.oracles[:6]
    for index, node in enumerate(nodes):
        stake = 10**16 * (1 + 3 * index)  # 0.01 to 0.16 ether
        protocol.transact("register", protocol.coordinator.functions.register(), node, value=stake)
    rng = random.Random(5)
    outcomes: Counter[str] = Counter()
    for _ in range(4):
        request_id = protocol.request(quorum=3)
        seed = int(protocol.terms[request_id]["seed"])
        tickets = {node: ticket(seed, request_id, node, protocol.stake(node)) for node in nodes}
        order = rng.sample(nodes, len(nodes))
        landed: list[tuple[str, int]] = []
        for node in order:
            before = seat_holders(landed, quorum=3)
            after = seat_holders([*landed, (node, tickets[node])], quorum=3)
            answer = protocol.answer(node, request_id, "Paris", random_bits(rng))
            call = protocol.commit_call(answer)
            if after == before:
                reason = revert_reason(lambda c=call, n=node: c.transact({"from": n}))
                assert reason.startswith(f"TicketTooWeak(requestId={request_id}, "), reason
                outcomes["refused"] += 1
                continue
            receipt = protocol.transact("commit", call, node)
            (event,) = protocol.events(receipt, "Committed")
            (evicted,) = {s.node for s in before} - {s.node for s in after} or {ZERO}
            assert int(event["args"]["ticket"]) == tickets[node]
            assert event["args"]["evicted"] == evicted
            assert after[event["args"]["seat"]] == Seat(node=node, ticket=tickets[node])
            landed.append((node, tickets[node]))
            outcomes["seated" if evicted == ZERO else "evicted"] += 1
        on_chain = [
            protocol.coordinator.functions.getSeat(request_id, seat_no).call()[0]
            for seat_no in range(3)
        ]
        expected = seat_holders(landed, quorum=3)
        assert [(s[0], int(s[1])) for s in on_chain] == [(s.node, s.ticket) for s in expected]
    assert min(outcomes["refused"], outcomes["evicted"], outcomes["seated"]) > 0, outcomes
