"""Gas of every protocol step per quorum, measured on a fresh anvil.

Run with ``make bench`` or ``.venv/bin/python bench/gas.py`` (``--smoke``: quorums 1 and 5
only). The last line reads
``finalize_q5_gas=<n> protocol_q5_gas=<n>``. "protocol" is one request, every commit,
every reveal (100-byte outputs) and the finalize, without a consumer callback and
without disputes (a dispute is a rare extra, priced separately; the finalize measured
follows one dispute that excludes nobody).

Protocol v2 extras, priced apart: a commit whose better ticket evicts a seat
(``commit_evict``), a finalize that slashes one seat that never revealed
(``finalize_slash``, the others in consensus), and ``expire`` with every seat committed and
none revealed (each slashed).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that tests.support imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import platform
import random
from typing import Any

from bench._common import add_smoke_flag
from oracle.chain.anvil import start_anvil
from tests.support.protocol import DIM_BYTES, STAKE, Protocol, flip_bits, random_bits

QUORUMS = (1, 3, 5, 9, 16)
SMOKE_QUORUMS = (1, 5)  # 5: the last line reports it
SHORT_OUTPUT = "P" * 100
LONG_OUTPUT = "L" * 1000


def measure_quorum(chain: Any, quorum: int, rng: random.Random) -> dict[str, int]:
    snapshot = chain.rpc("evm_snapshot")
    try:
        protocol = Protocol.deploy(chain.w3)
        protocol.register_oracles(quorum)
        request_id = protocol.request(fee=10**15, quorum=quorum, secPercentage=6000)
        bits = close_bits(rng, quorum)
        rows = list(zip(protocol.oracles[:quorum], [SHORT_OUTPUT] * quorum, bits, strict=True))
        protocol.run_round(request_id, rows)
        if quorum > 1:
            protocol.dispute(protocol.oracles[1], request_id, protocol.oracles[0])
        protocol.close_disputes(request_id)
        protocol.finalize(request_id, bits, SHORT_OUTPUT)
        used = dict(protocol.gas_used)
        long_reveal = measure_long_reveal(protocol, rng)
        extras = measure_extras(protocol, quorum, rng)
    finally:
        chain.rpc("evm_revert", snapshot)
    protocol_total = (
        used["request"][0] + sum(used["commit"]) + sum(used["reveal"]) + used["finalize"][0]
    )
    return {
        "request": used["request"][0],
        "commit": max(used["commit"]),
        "reveal_100b": max(used["reveal"]),
        "reveal_1000b": long_reveal,
        "dispute": used["dispute"][0] if "dispute" in used else 0,
        "finalize": used["finalize"][0],
        "protocol": protocol_total,
        **extras,
    }


def close_bits(rng: random.Random, count: int) -> list[bytes]:
    base = random_bits(rng)
    return [flip_bits(base, rng.sample(range(DIM_BYTES * 8), 8)) for _ in range(count)]


def measure_long_reveal(protocol: Protocol, rng: random.Random) -> int:
    """A quorum-1 reveal of a 1000-byte output (the reveal's cost barely depends on quorum)."""
    protocol.gas_used = {}
    request_id = protocol.request(fee=10**15, quorum=1, max_tokens=64)
    answer = protocol.commit(protocol.oracles[0], request_id, LONG_OUTPUT, random_bits(rng))
    protocol.close_commits(request_id)
    return int(protocol.reveal(answer)["gasUsed"])


def measure_extras(protocol: Protocol, quorum: int, rng: random.Random) -> dict[str, int]:
    """What the v2 rules add beside the honest round: eviction, slashing, expiry."""
    extra = protocol.oracles[quorum]  # registered now: eligible for the requests below
    protocol.transact("register", protocol.coordinator.functions.register(), extra, value=STAKE)
    nodes = protocol.oracles[:quorum]

    protocol.gas_used = {}
    evicting = protocol.request(fee=10**15, quorum=quorum)
    tickets = {n: protocol.ticket(evicting, n) for n in [*nodes, extra]}
    # the worst tickets first, so that the last committer evicts the worst seat
    order = sorted(tickets, key=lambda n: tickets[n], reverse=True)
    for node in order:
        protocol.commit(node, evicting, SHORT_OUTPUT, random_bits(rng))
    commit_evict = protocol.gas_used["commit"][-1]

    protocol.gas_used = {}
    slashing = protocol.request(fee=10**15, quorum=quorum, secPercentage=1)
    bits = close_bits(rng, quorum)
    answers = [
        protocol.commit(n, slashing, SHORT_OUTPUT, b) for n, b in zip(nodes, bits, strict=True)
    ]
    protocol.close_commits(slashing)
    for answer in answers[1:]:
        protocol.reveal(answer)
    protocol.close_disputes(slashing)
    if quorum > 1:
        receipt = protocol.finalize(slashing, [b"", *bits[1:]], SHORT_OUTPUT)
    else:
        receipt = protocol.finalize(slashing, [b""], "")
    finalize_slash = int(receipt["gasUsed"])

    protocol.gas_used = {}
    expiring = protocol.request(fee=10**15, quorum=quorum)
    for node in nodes:
        protocol.commit(node, expiring, SHORT_OUTPUT, random_bits(rng))
    protocol.advance(protocol.stored_request(expiring)["expiresAt"] - protocol.now() + 1)
    expire = protocol.transact(
        "expire", protocol.coordinator.functions.expire(expiring), protocol.requester
    )
    return {
        "commit_evict": commit_evict,
        "finalize_slash": finalize_slash,
        "expire": int(expire["gasUsed"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_smoke_flag(parser)
    quorums = SMOKE_QUORUMS if parser.parse_args().smoke else QUORUMS
    chain = start_anvil("--accounts", "20")
    rng = random.Random(1)
    try:
        results = {q: measure_quorum(chain, q, rng) for q in quorums}
    finally:
        chain.stop()
    columns = [
        "request",
        "commit",
        "reveal_100b",
        "reveal_1000b",
        "dispute",
        "finalize",
        "protocol",
        "commit_evict",
        "finalize_slash",
        "expire",
    ]
    print(f"machine: {platform.machine()} {platform.system()}, anvil (gas is machine-independent)")
    print("gas per step (commit and reveal: the costliest seat; protocol: request + all commits")
    print("+ all reveals + finalize, no callback, no dispute)")
    print("| quorum | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for quorum, row in results.items():
        print(f"| {quorum} | " + " | ".join(f"{row[c]:,}" for c in columns) + " |")
    q5 = results[5]
    print(f"finalize_q5_gas={q5['finalize']} protocol_q5_gas={q5['protocol']}")


if __name__ == "__main__":
    main()
