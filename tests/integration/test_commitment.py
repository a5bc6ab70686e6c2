"""The node's hashes against the deployed coordinator: the request hash it would compute
from an event's fields, and the commitment the contract checks at reveal."""

from __future__ import annotations

import random

from eth_utils.crypto import keccak

from oracle.chain.anvil import Anvil
from oracle.chain.commitment import commitment_hash, request_hash
from oracle.chain.coordinator import CoordinatorBinding
from oracle.domain.events import RequestedEvent
from tests.support.protocol import Protocol, random_bits


def test_the_request_hash_and_the_commitment_match_the_contract(chain: Anvil) -> None:
    protocol = Protocol.deploy(chain.w3)
    node, _other = protocol.register_oracles(2)
    consumer = protocol.deploy_helper("ExampleConsumer", protocol.coordinator.address)
    rid = protocol.request(
        prompt="Capital of France? ünïcode",
        models=("SmolLM2-135M-Instruct-Q4_1", "gemma-3-270m-Q4_K_M"),
        callback=consumer.address,
        callback_gas=200_000,
        quorum=2,
    )
    logs = chain.w3.eth.get_logs(
        {"address": protocol.coordinator.address, "fromBlock": 0, "toBlock": "latest"}
    )
    binding = CoordinatorBinding(chain.w3, protocol.coordinator.address)
    (event,) = [e for e in binding.decode_logs(logs) if isinstance(e, RequestedEvent)]
    assert event.request_hash == protocol.request_hash(rid) == binding.request_hash(rid)
    assert event.seed == protocol.terms[rid]["seed"] and event.eligible_count == 2
    assert event.callback_gas_price == protocol.terms[rid]["callbackGasPrice"] > 0
    recomputed = request_hash(**_fields(event, rid))  # type: ignore[arg-type]
    assert recomputed == event.request_hash
    other_prompt = request_hash(
        **{**_fields(event, rid), "prompt": "Capital of Spain? ünïcode"}  # type: ignore[arg-type]
    )
    assert other_prompt != event.request_hash
    for term in ("slash_bps", "dim_bits", "reveal_window_s", "dispute_window_s"):
        other_terms = request_hash(**{**_fields(event, rid), term: 1})  # type: ignore[arg-type]
        assert other_terms != event.request_hash, term

    # the commitment the node stores is the one the contract accepts at reveal
    answer = protocol.answer(node, rid, "Paris.", random_bits(random.Random(5)))
    ours = commitment_hash(
        request_id=rid,
        request_hash=event.request_hash,
        oracle=node,
        output=answer.output,
        model_index=answer.model_index,
        embedding_bits=answer.bits,
        salt=answer.salt,
    )
    assert ours == protocol.commitment(answer)
    protocol.transact("commit", protocol.raw_commit_call(rid, ours), node)
    protocol.close_commits(rid)
    protocol.reveal(answer)  # would revert with CommitmentMismatch otherwise
    assert keccak(b"Paris.") == protocol.output_hashes(rid, 1)[0]


def _fields(event: RequestedEvent, rid: int) -> dict[str, object]:
    return {
        "request_id": rid,
        "requester": event.requester,
        "prompt": event.prompt,
        "accepted_models": event.accepted_models,
        "temperature_milli": event.temperature_milli,
        "max_tokens": event.max_tokens,
        "quorum": event.quorum,
        "max_time_ms": event.max_time_ms,
        "sec_distance_bp": event.sec_distance_bp,
        "sec_percentage_bp": event.sec_percentage_bp,
        "embedding_model": event.embedding_model,
        "callback": event.callback,
        "callback_gas_limit": event.callback_gas_limit,
        "callback_gas_price": event.callback_gas_price,
        "fee_wei": event.fee_wei,
        "seed": event.seed,
        "slash_bps": event.slash_bps,
        "dim_bits": event.dim_bits,
        "reveal_window_s": event.reveal_deadline - event.commit_deadline,
        "dispute_window_s": event.dispute_window_s,
        "expiry_grace_s": event.expires_at - event.reveal_deadline - event.dispute_window_s,
    }
