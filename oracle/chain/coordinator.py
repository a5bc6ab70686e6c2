"""The coordinator contract as the node uses it: decode its logs, encode its calls, read it."""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_typing import ChecksumAddress
from eth_utils.abi import collapse_if_tuple, event_abi_to_log_topic
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.types import LogReceipt

from oracle.chain.artifacts import load_artifact
from oracle.chain.rpc import rpc_errors
from oracle.domain.events import (
    FAILURE_REASONS,
    SLASH_REASONS,
    ChainEvent,
    CommittedEvent,
    DisputedEvent,
    EventPosition,
    FailedEvent,
    FinalizedEvent,
    RequestedEvent,
    RevealedEvent,
    SlashedEvent,
)
from oracle.domain.request import RequestId
from oracle.domain.text import ChainText, chain_text
from oracle.errors import RpcMalformedResponse

__all__ = ["CONTRACT_NAME", "CoordinatorBinding"]

CONTRACT_NAME = "InferenceCoordinator"
ZERO_ADDRESS = "0x" + "00" * 20
_REMEMBERED_DEADLINES = 4096

_Args = Mapping[str, Any]
_Decoder = Callable[[EventPosition, _Args], ChainEvent]
_STRING = re.compile(r"\bstring\b")


@dataclass(frozen=True, slots=True)
class _EventLayout:
    """How one event's log is laid out: indexed inputs in topics, the rest in data.

    Strings are read as ``bytes`` (the ABI encodes both alike), so that no sender can
    make decoding fail with bytes that are not UTF-8; the decoders turn them into
    ``ChainText``.
    """

    indexed: tuple[dict[str, Any], ...]
    data: tuple[dict[str, Any], ...]
    decoder: _Decoder

    def args(self, topics: Sequence[bytes], data: bytes) -> dict[str, Any]:
        if len(topics) != len(self.indexed) + 1:
            raise ValueError(f"{len(topics) - 1} indexed topics, the event has {len(self.indexed)}")
        args = {
            item["name"]: abi_decode([_raw_type(item)], bytes(topic))[0]
            for item, topic in zip(self.indexed, topics[1:], strict=True)
        }
        values = abi_decode([_raw_type(item) for item in self.data], data)
        for item, value in zip(self.data, values, strict=True):
            args[item["name"]] = _named(item, value)
        return args


class CoordinatorBinding:
    """The coordinator deployed at ``address``: log decoding, calldata, and the views the
    node reads (through ``w3``), with the ABI of the committed artifact."""

    def __init__(self, w3: Web3, address: str) -> None:
        abi = load_artifact(CONTRACT_NAME).abi
        contract = w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)
        self._contract: Contract = contract
        self._events: dict[bytes, _EventLayout] = {}
        for name, decoder in _DECODERS.items():
            event_abi = getattr(contract.events, name)().abi
            inputs = tuple(event_abi["inputs"])
            self._events[bytes(event_abi_to_log_topic(event_abi))] = _EventLayout(
                indexed=tuple(i for i in inputs if i.get("indexed")),
                data=tuple(i for i in inputs if not i.get("indexed")),
                decoder=decoder,
            )
        (oracles,) = [f for f in abi if f.get("type") == "function" and f["name"] == "oracles"]
        self._oracle_fields = tuple(str(o["name"]) for o in oracles["outputs"])
        (get_request,) = [f for f in abi if f.get("name") == "getRequest"]
        fields = [c["name"] for c in get_request["outputs"][0]["components"]]
        self._request_hash_index = fields.index("requestHash")
        self._dispute_deadlines: dict[tuple[int, Hashable], int] = {}
        self._address_bloom = _bloom_mask(bytes.fromhex(self.address[2:]))
        self._topic_blooms = [_bloom_mask(topic) for topic in self._events]

    @property
    def address(self) -> ChecksumAddress:
        return self._contract.address

    @property
    def event_topics(self) -> list[HexBytes]:
        """topic0 of every event ``decode_logs`` understands (an ``eth_getLogs`` filter)."""
        return [HexBytes(topic) for topic in self._events]

    # --- logs ---------------------------------------------------------------------------

    def may_hold_events(self, logs_bloom: bytes) -> bool:
        """Whether a block with this logsBloom may hold one of the events ``decode_logs``
        understands (a bloom says "no" for sure, "yes" only perhaps)."""
        if not logs_bloom:
            return True
        bloom = int.from_bytes(logs_bloom, "big")
        if bloom & self._address_bloom != self._address_bloom:
            return False
        return any(bloom & mask == mask for mask in self._topic_blooms)

    def decode_logs(self, logs: Iterable[LogReceipt]) -> list[ChainEvent]:
        """The coordinator events among ``logs``, in the given order.

        Logs of other contracts, other events of this one (registrations, payments) and
        logs a node marked ``removed`` are left out silently. Any bytes in a string field
        decode (see ``oracle.domain.text``); a log that does not fit the event's ABI at
        all cannot come from the contract, so the endpoint answered wrongly:
        ``RpcMalformedResponse``.
        """
        decoded: list[ChainEvent] = []
        for log in logs:
            event = self._decode(log)
            if event is not None:
                decoded.append(event)
        return decoded

    def _decode(self, log: LogReceipt) -> ChainEvent | None:
        try:
            if log.get("removed") or not log["topics"]:
                return None
            if Web3.to_checksum_address(log["address"]) != self.address:
                return None
            layout = self._events.get(bytes(log["topics"][0]))
            if layout is None:
                return None
            args = layout.args([bytes(t) for t in log["topics"]], bytes(log["data"]))
            position = EventPosition(
                block_number=int(log["blockNumber"]),
                block_hash=bytes(log["blockHash"]),
                log_index=int(log["logIndex"]),
                tx_hash=bytes(log["transactionHash"]),
            )
            return layout.decoder(position, args)
        except (DecodingError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise RpcMalformedResponse(
                method="eth_getLogs", reason=f"a log does not fit the coordinator's ABI: {exc}"
            ) from exc

    # --- calldata -----------------------------------------------------------------------

    def encode_register(self) -> bytes:
        return self._encode("register", [])

    def encode_commit(self, request_id: int, request_hash: bytes, commitment: bytes) -> bytes:
        """Calldata for ``commit``: ``request_hash`` names the request the commitment was made
        for, so that the contract refuses it on any other (``StaleRequest``)."""
        return self._encode("commit", [request_id, request_hash, commitment])

    def encode_reveal(
        self, request_id: int, output: str, model_index: int, bits: bytes, salt: bytes
    ) -> bytes:
        return self._encode("reveal", [request_id, output, model_index, bits, salt])

    def encode_dispute(self, request_id: int, request_hash: bytes, accused: str) -> bytes:
        """Calldata for ``dispute``: ``request_hash`` names the request, as for ``commit``."""
        return self._encode(
            "dispute", [request_id, request_hash, Web3.to_checksum_address(accused)]
        )

    def encode_finalize(
        self,
        request_id: int,
        bits: Sequence[bytes],
        output_hashes: Sequence[bytes],
        winner_output: str,
    ) -> bytes:
        """Calldata for ``finalize``: every seat's bits and output hash, in seat order."""
        return self._encode(
            "finalize", [request_id, list(bits), list(output_hashes), winner_output]
        )

    def encode_expire(self, request_id: int) -> bytes:
        """Calldata for ``expire``: settles a request nobody finalized before ``expiresAt``."""
        return self._encode("expire", [request_id])

    def _encode(self, function: str, args: list[Any]) -> bytes:
        return bytes(HexBytes(self._contract.encode_abi(function, args=args)))

    # --- views --------------------------------------------------------------------------

    def is_registered(self, address: str) -> bool:
        """Registered, unbonding or not (a node that started unbonding commits no more)."""
        return bool(self._oracle(address)["registered"])

    def _oracle(self, address: str) -> dict[str, Any]:
        """The coordinator's record of a node, by field name."""
        with rpc_errors("eth_call"):
            values = self._contract.functions.oracles(Web3.to_checksum_address(address)).call()
        return dict(zip(self._oracle_fields, values, strict=True))

    def dispute_deadline(self, request_id: int, *, as_of: Hashable = None) -> int:
        """When (unix seconds, chain time) disputes close; it moves while reveals arrive.

        With ``as_of`` (the chain state the caller has seen, e.g. the reveals so far) the
        answer is remembered for that state: a node asks once per reveal, not every pass.
        """
        key = (request_id, as_of)
        if as_of is not None and key in self._dispute_deadlines:
            return self._dispute_deadlines[key]
        with rpc_errors("eth_call"):
            deadline = int(self._contract.functions.disputeDeadline(request_id).call())
        if as_of is not None:
            if len(self._dispute_deadlines) >= _REMEMBERED_DEADLINES:
                del self._dispute_deadlines[next(iter(self._dispute_deadlines))]  # the oldest
            self._dispute_deadlines[key] = deadline
        return deadline

    def reveal_open(self, request_id: int) -> bool:
        with rpc_errors("eth_call"):
            return bool(self._contract.functions.revealOpen(request_id).call())

    def request_hash(self, request_id: int) -> bytes:
        """What commitments to the request bind, as the coordinator stored it (the node
        takes it from the request's event; this reads it back)."""
        with rpc_errors("eth_call"):
            stored = self._contract.functions.getRequest(request_id).call()
        return bytes(stored[self._request_hash_index])

    def min_stake(self) -> int:
        with rpc_errors("eth_call"):
            return int(self._contract.functions.minStake().call())


# --- one decoder per event --------------------------------------------------------------


def _bloom_mask(value: bytes) -> int:
    """The three bits Ethereum's log bloom sets for ``value``, as a mask."""
    digest = keccak(value)
    mask = 0
    for i in (0, 2, 4):
        mask |= 1 << (((digest[i] << 8) | digest[i + 1]) & 0x7FF)
    return mask


def _raw_type(item: Mapping[str, Any]) -> str:
    """The input's ABI type with every ``string`` read as ``bytes``."""
    return _STRING.sub("bytes", collapse_if_tuple(dict(item)))


def _named(item: Mapping[str, Any], value: Any) -> Any:
    """A decoded tuple as a dict by component name (arrays of tuples stay lists)."""
    components = item.get("components")
    if not components or str(item["type"]) != "tuple":
        return value
    return {c["name"]: _named(c, v) for c, v in zip(components, value, strict=True)}


def _address(value: str) -> str:
    return value.lower()


def _texts(named: Iterable[tuple[str, bytes]]) -> tuple[list[ChainText], tuple[str, ...]]:
    """Decoded strings, and a sentence for each one whose bytes are not usable text."""
    texts = []
    defects = []
    for name, raw in named:
        text = chain_text(raw)
        texts.append(text)
        if text.defect is not None:
            defects.append(f"{name} {text.defect}")
    return texts, tuple(defects)


def _requested(position: EventPosition, args: _Args) -> ChainEvent:
    frame = args["frame"]
    callback = _address(args["callback"])
    models = list(args["acceptedModels"])
    texts, defects = _texts(
        [("prompt", args["prompt"]), ("embeddingModel", frame["embeddingModel"])]
        + [(f"acceptedModels[{i}]", raw) for i, raw in enumerate(models)]
    )
    prompt, embedding_model, *accepted = texts
    terms = args["terms"]
    return RequestedEvent(
        position=position,
        request_id=RequestId(args["requestId"]),
        requester=_address(args["requester"]),
        prompt=prompt.text,
        accepted_models=tuple(m.text for m in accepted),
        temperature_milli=args["temperature"],
        max_tokens=args["maxTokens"],
        quorum=frame["quorum"],
        max_time_ms=frame["maxTimeMs"],
        sec_distance_bp=frame["secDistance"],
        sec_percentage_bp=frame["secPercentage"],
        embedding_model=embedding_model.text,
        callback=None if callback == ZERO_ADDRESS else callback,
        callback_gas_limit=args["callbackGasLimit"],
        fee_wei=args["fee"],
        commit_deadline=args["commitDeadline"],
        reveal_deadline=args["revealDeadline"],
        dispute_window_s=args["disputeWindow"],
        request_hash=bytes(terms["requestHash"]),
        seed=terms["seed"],
        expires_at=terms["expiresAt"],
        callback_gas_price=terms["callbackGasPrice"],
        eligible_count=terms["eligibleCount"],
        slash_bps=terms["slashBps"],
        dim_bits=terms["dimBits"],
        defects=defects,
    )


def _committed(position: EventPosition, args: _Args) -> ChainEvent:
    return CommittedEvent(
        position=position,
        request_id=RequestId(args["requestId"]),
        oracle=_address(args["oracle"]),
        seat=args["seat"],
        commitment=bytes(args["commitment"]),
        ticket=args["ticket"],
        evicted=None if _address(args["evicted"]) == ZERO_ADDRESS else _address(args["evicted"]),
    )


def _revealed(position: EventPosition, args: _Args) -> ChainEvent:
    output = chain_text(args["output"])
    return RevealedEvent(
        position=position,
        request_id=RequestId(args["requestId"]),
        oracle=_address(args["oracle"]),
        seat=args["seat"],
        output=output.text,
        output_hash=keccak(args["output"]),
        output_defect=output.defect,
        model_index=args["modelIndex"],
        embedding_bits=bytes(args["embeddingBits"]),
    )


def _disputed(position: EventPosition, args: _Args) -> ChainEvent:
    return DisputedEvent(
        position=position,
        request_id=RequestId(args["requestId"]),
        accused=_address(args["accused"]),
        disputer=_address(args["disputer"]),
    )


def _finalized(position: EventPosition, args: _Args) -> ChainEvent:
    return FinalizedEvent(
        position=position,
        request_id=RequestId(args["requestId"]),
        winner_seat=args["winnerSeat"],
        output=chain_text(args["output"]).text,
        model=chain_text(args["model"]).text,
        cluster_mask=args["clusterMask"],
        reward_per_oracle=args["rewardPerOracle"],
        callback_succeeded=bool(args["callbackSucceeded"]),
    )


def _failed(position: EventPosition, args: _Args) -> ChainEvent:
    return FailedEvent(
        position=position,
        request_id=RequestId(args["requestId"]),
        reason=FAILURE_REASONS[args["reason"]],
    )


def _slashed(position: EventPosition, args: _Args) -> ChainEvent:
    return SlashedEvent(
        position=position,
        request_id=RequestId(args["requestId"]),
        oracle=_address(args["oracle"]),
        amount_wei=args["amount"],
        reason=SLASH_REASONS[args["reason"]],
    )


_DECODERS: dict[str, _Decoder] = {
    RequestedEvent.event_name: _requested,
    CommittedEvent.event_name: _committed,
    RevealedEvent.event_name: _revealed,
    DisputedEvent.event_name: _disputed,
    FinalizedEvent.event_name: _finalized,
    FailedEvent.event_name: _failed,
    SlashedEvent.event_name: _slashed,
}
