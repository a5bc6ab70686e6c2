"""Property: whatever bytes a log's strings carry, decoding and storing them never fails.

Logs are built with the coordinator's own ABI (strings given as raw bytes, as a hostile
sender would), decoded by ``CoordinatorBinding`` and applied to a real Postgres.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_utils.abi import collapse_if_tuple, event_abi_to_log_topic
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.domain.events import RequestedEvent, RevealedEvent
from oracle.domain.text import chain_text
from oracle.store.chain_state import apply_event
from oracle.store.models import Request, Seat

COORDINATOR = "0x" + "c0" * 20
ORACLE = "0x" + "0a" * 20
_ids = itertools.count(1)

hostile_bytes = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(
        st.sampled_from(["\x00", "\u202e", "\u2066", "\x1b[2J", "\r\n", "\ufeff", "é", "a"])
    ).map(lambda parts: "".join(parts).encode()),
    st.integers(min_value=10_000, max_value=300_000).map(lambda n: b"\xff" * n),
)


@pytest.fixture
def binding(chain: Anvil) -> CoordinatorBinding:
    return CoordinatorBinding(chain.w3, COORDINATOR)


def _log(binding: CoordinatorBinding, name: str, indexed: list[Any], data: list[Any]) -> Any:
    event = getattr(binding._contract.events, name)().abi
    types = [collapse_if_tuple(dict(i)).replace("string", "bytes") for i in event["inputs"]]
    indexed_types = [t for t, i in zip(types, event["inputs"], strict=True) if i.get("indexed")]
    data_types = [t for t, i in zip(types, event["inputs"], strict=True) if not i.get("indexed")]
    topics = [HexBytes(event_abi_to_log_topic(event))]
    topics += [HexBytes(encode([t], [v])) for t, v in zip(indexed_types, indexed, strict=True)]
    number = next(_ids)
    return {
        "address": COORDINATOR,
        "topics": topics,
        "data": HexBytes(encode(data_types, data)),
        "blockNumber": number,
        "blockHash": HexBytes(number.to_bytes(32, "big")),
        "logIndex": 0,
        "transactionHash": HexBytes(keccak(number.to_bytes(8, "big"))),
        "removed": False,
    }


def _requested(
    binding: CoordinatorBinding, request_id: int, prompt: bytes, model: bytes
) -> RequestedEvent:
    frame = (1, 30_000, 3500, 6700, b"all-MiniLM-L6-v2")
    terms = (keccak(prompt + model), 7, 3_800, 0, 1, 1000, 384)
    data = [prompt, [model], 700, 64, frame, "0x" + "00" * 20, 0, 10**15, 100, 130, 10, terms]
    (event,) = binding.decode_logs(
        [_log(binding, "InferenceRequested", [request_id, "0x" + "0b" * 20], data)]
    )
    assert isinstance(event, RequestedEvent)
    return event


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(prompt=hostile_bytes, model=hostile_bytes, output=hostile_bytes)
def test_any_bytes_decode_store_and_say_what_was_wrong(
    binding: CoordinatorBinding,
    sessions: sessionmaker[Session],
    prompt: bytes,
    model: bytes,
    output: bytes,
) -> None:
    request_id = next(_ids)
    requested = _requested(binding, request_id, prompt, model)
    committed_log = _log(
        binding, "Committed", [request_id, ORACLE], [0, b"\x01" * 32, 5, "0x" + "00" * 20]
    )
    revealed_log = _log(binding, "Revealed", [request_id, ORACLE], [0, output, 0, b"\x02" * 48])
    committed, revealed = binding.decode_logs([committed_log, revealed_log])
    assert isinstance(revealed, RevealedEvent)
    with sessions.begin() as session:
        for event in (requested, committed, revealed):
            apply_event(session, event)

    clean = chain_text(prompt).clean and chain_text(model).clean
    with sessions() as session:
        row = session.get_one(Request, request_id)
        if clean:
            assert row.phase == "requested"
            assert row.prompt == prompt.decode() and row.accepted_models == [model.decode()]
        else:
            assert row.phase == "skipped"
            assert row.skip_reason is not None and row.skip_reason.startswith("declined: ")
        seat = session.scalars(select(Seat).where(Seat.request_id == request_id)).one()
        assert seat.output_hash == keccak(output)
        assert (seat.reveal_defect is None) == chain_text(output).clean
        if seat.reveal_defect is None:
            assert seat.revealed_output == output.decode()
