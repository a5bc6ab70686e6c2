"""The requester's side: send an inference request and follow it to its outcome."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from oracle.chain.artifacts import UndecodableRevert, decode_revert, load_artifact
from oracle.domain.events import FAILURE_REASONS, SLASH_REASONS, SlashReason
from oracle.errors import OracleError

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
_SLASH_TEXT: dict[SlashReason, str] = {
    "never_revealed": "never revealed",
    "excluded": "excluded by disputes",
}
DEFAULT_FEE_WEI = 10**15


class RequestRejected(OracleError):
    """The coordinator refused the request"""


class RequestTimedOut(OracleError):
    """No outcome arrived in time"""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOptions:
    prompt: str
    rpc_url: str
    contract: str
    private_key: str = field(repr=False)
    models: tuple[str, ...] = ("SmolLM2-135M-Instruct-Q4_1",)
    quorum: int = 3
    max_tokens: int = 48
    temperature: float = 0.2
    max_time_ms: int = 60_000
    sec_distance: float = 0.35
    sec_percentage: float = 0.67
    embedding_model: str = "all-MiniLM-L6-v2"
    fee_wei: int = DEFAULT_FEE_WEI
    """What the nodes share (fee / quorum per member of the winning cluster, the rest back
    to the requester); at least the coordinator's minFeePerSeat * quorum."""
    callback: str = ZERO_ADDRESS
    callback_gas_limit: int = 0
    callback_gas_price: int | None = None
    """Wei per gas of the callback, prepaid with the request and paid to the finalizer;
    None: twice the current base fee (at least 1 gwei). Unused without a callback."""
    wait: bool = True
    timeout_s: float = 300.0


@dataclass(slots=True, kw_only=True)
class RequestResult:
    request_id: int
    request_tx: str
    finalized: bool = False
    failed: bool = False
    output: str | None = None
    model: str | None = None
    cluster_seats: tuple[int, ...] = ()
    reason: str | None = None
    phases: list[str] = field(default_factory=list)
    tx_hashes: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        if self.finalized:
            return f"finalized request={self.request_id} answer={self.output}"
        if self.failed:
            return f"failed request={self.request_id} reason={self.reason}"
        return f"sent request={self.request_id} tx={self.request_tx}"


def coordinator_contract(w3: Web3, address: str) -> Contract:
    return w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=load_artifact("InferenceCoordinator").abi
    )


def send_request(
    options: RequestOptions, on_event: Callable[[str], None] | None = None
) -> RequestResult:
    w3 = Web3(Web3.HTTPProvider(options.rpc_url, request_kwargs={"timeout": 30}))
    coordinator = coordinator_contract(w3, options.contract)
    account = Account.from_key(options.private_key)
    frame = (
        options.quorum,
        options.max_time_ms,
        round(options.sec_distance * 10_000),
        round(options.sec_percentage * 10_000),
        options.embedding_model,
    )
    min_fee = int(coordinator.functions.minFeePerSeat().call()) * options.quorum
    if options.fee_wei < min_fee:
        raise RequestRejected(
            f"a fee of {options.fee_wei} wei is below the coordinator's minimum for quorum "
            f"{options.quorum}: {min_fee} wei (minFeePerSeat * quorum)"
        )
    with_callback = int(options.callback, 16) != 0
    gas_price = callback_gas_price(w3, options.callback_gas_price) if with_callback else 0
    prepay = options.callback_gas_limit * gas_price if with_callback else 0
    call = coordinator.functions.requestInference(
        options.prompt,
        list(options.models),
        round(options.temperature * 1000),
        options.max_tokens,
        frame,
        Web3.to_checksum_address(options.callback),
        options.callback_gas_limit,
        gas_price,
    )
    receipt = _send(w3, account, call, options.fee_wei + prepay)
    (event,) = coordinator.events.InferenceRequested().process_receipt(receipt, errors=DISCARD)
    result = RequestResult(
        request_id=int(event["args"]["requestId"]),
        request_tx=receipt["transactionHash"].to_0x_hex(),
    )
    if options.wait:
        follow_request(w3, coordinator, result, receipt["blockNumber"], options.timeout_s, on_event)
    return result


def callback_gas_price(w3: Web3, wanted: int | None) -> int:
    """The callback's gas price: ``wanted``, or twice the latest base fee (at least 1 gwei),
    so that it is still above the base fee when the request is mined."""
    if wanted is not None:
        return wanted
    base_fee = int(w3.eth.get_block("latest").get("baseFeePerGas", 0))
    return max(2 * base_fee, 10**9)


def _send(w3: Web3, account: Any, call: Any, value: int) -> Any:
    tx_params = {"from": account.address, "value": value}
    try:
        tx = call.build_transaction(
            {**tx_params, "nonce": w3.eth.get_transaction_count(account.address, "pending")}
        )
    except ContractLogicError as exc:
        try:
            reason = decode_revert(exc.data)  # type: ignore[arg-type]
        except UndecodableRevert as bad:
            reason = str(bad)
        raise RequestRejected(reason) from exc
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)


def follow_request(
    w3: Web3,
    coordinator: Contract,
    result: RequestResult,
    from_block: int,
    timeout_s: float,
    on_event: Callable[[str], None] | None = None,
) -> None:
    """Poll the coordinator's events for one request until it is finalized or failed."""
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name in _FOLLOWED_EVENTS:
            logs = getattr(coordinator.events, name)().get_logs(
                from_block=from_block, argument_filters={"requestId": result.request_id}
            )
            for log in logs:
                key = (log["transactionHash"].to_0x_hex(), log["logIndex"])
                if key not in seen:
                    seen.add(key)
                    line = _record(result, name, log)
                    result.phases.append(line)
                    if on_event is not None:
                        on_event(line)
        if result.finalized or result.failed:
            return
        time.sleep(0.5)
    raise RequestTimedOut(f"request {result.request_id} after {timeout_s:.0f} s")


_FOLLOWED_EVENTS = (
    "Committed",
    "Revealed",
    "Disputed",
    "Slashed",
    "InferenceFinalized",
    "InferenceFailed",
)


def _record(result: RequestResult, name: str, log: Any) -> str:
    args = log["args"]
    tx = log["transactionHash"].to_0x_hex()
    result.tx_hashes.setdefault(name, []).append(tx)
    if name == "Committed":
        evicted = int(args["evicted"], 16)
        taken = f", evicting {args['evicted']}" if evicted else ""
        return f"commit   seat {args['seat']} by {args['oracle']}{taken} tx={tx}"
    if name == "Slashed":
        reason = _SLASH_TEXT[SLASH_REASONS[int(args["reason"])]]
        return f"slashed  {args['oracle']} lost {args['amount']} wei ({reason}) tx={tx}"
    if name == "Revealed":
        return f"reveal   seat {args['seat']} by {args['oracle']}: {args['output']!r}"
    if name == "Disputed":
        return f"dispute  {args['disputer']} disputes {args['accused']} tx={tx}"
    if name == "InferenceFinalized":
        result.finalized = True
        result.output = args["output"]
        result.model = args["model"]
        mask = int(args["clusterMask"])
        result.cluster_seats = tuple(i for i in range(16) if mask >> i & 1)
        return (
            f"finalize winner seat {args['winnerSeat']}, "
            f"cluster seats {list(result.cluster_seats)}, "
            f"{args['rewardPerOracle']} wei each, callback ok={args['callbackSucceeded']} tx={tx}"
        )
    result.failed = True
    result.reason = FAILURE_REASONS[int(args["reason"])].replace("_", " ")
    return f"failed   {result.reason} tx={tx}"
