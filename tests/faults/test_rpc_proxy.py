"""The fault-injecting proxy itself, in front of the real anvil: each fault as a client sees it."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.types import Wei

from oracle.chain.anvil import Anvil
from tests.support.protocol import Protocol
from tests.support.rpc_proxy import RATE_LIMIT_ERROR, Call, RpcProxy, running_proxy


def rpc(method: str, *params: Any, ident: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": method, "params": list(params)}


def post(proxy: RpcProxy, payload: Any, timeout: float = 10) -> requests.Response:
    return requests.post(proxy.url, json=payload, timeout=timeout)


def result(proxy: RpcProxy, method: str, *params: Any) -> Any:
    answer = post(proxy, rpc(method, *params)).json()
    assert "error" not in answer, answer
    return answer["result"]


def test_without_faults_it_forwards_single_and_batch_calls(chain: Anvil, proxy: RpcProxy) -> None:
    assert int(result(proxy, "eth_chainId"), 16) == chain.chain_id
    batch = [rpc("eth_blockNumber", ident=1), rpc("eth_getBlockByNumber", "0x0", False, ident=2)]
    answers = post(proxy, batch).json()
    assert [a["id"] for a in answers] == [1, 2]
    assert int(answers[0]["result"], 16) == chain.w3.eth.block_number
    assert answers[1]["result"]["number"] == "0x0"
    assert [r.methods for r in proxy.calls] == [
        ("eth_chainId",),
        ("eth_blockNumber", "eth_getBlockByNumber"),
    ]
    assert not proxy.injected


def test_a_drop_closes_without_an_answer_after_forwarding(chain: Anvil, proxy: RpcProxy) -> None:
    before = chain.w3.eth.block_number
    proxy.inject("drop", times=1)
    with pytest.raises(requests.ConnectionError):
        post(proxy, rpc("evm_mine"))
    assert chain.w3.eth.block_number == before + 1  # it reached the chain; the answer did not
    assert proxy.injected["drop"] == 1
    assert int(result(proxy, "eth_blockNumber"), 16) == before + 1  # only once


def test_a_delay_holds_the_answer_back(proxy: RpcProxy) -> None:
    proxy.inject("delay", delay_s=0.6, times=2)
    started = time.monotonic()
    result(proxy, "eth_blockNumber")
    assert time.monotonic() - started >= 0.6
    with pytest.raises(requests.Timeout):
        post(proxy, rpc("eth_blockNumber"), timeout=0.2)
    assert proxy.injected["delay"] == 2


def test_rate_limits_answer_429_with_retry_after(proxy: RpcProxy) -> None:
    proxy.inject("rate_limit", retry_after_s=7, methods=["eth_getLogs"])
    response = post(proxy, rpc("eth_getLogs", {"fromBlock": "0x0", "toBlock": "0x0"}))
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    assert post(proxy, rpc("eth_blockNumber")).status_code == 200  # other methods pass
    assert proxy.injected == {"rate_limit": 1}


@pytest.mark.parametrize("status", [500, 503, 413])
def test_server_errors_answer_with_the_status(proxy: RpcProxy, status: int) -> None:
    proxy.inject("server_error", status=status, times=1)
    assert post(proxy, rpc("eth_blockNumber")).status_code == status
    assert post(proxy, rpc("eth_blockNumber")).status_code == 200


def test_a_reset_mid_body_cuts_the_answer_after_its_headers(proxy: RpcProxy) -> None:
    proxy.inject("reset_mid_body", times=1)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        post(proxy, rpc("eth_getBlockByNumber", "0x0", True))
    assert proxy.injected["reset_mid_body"] == 1


def test_an_html_page_comes_with_status_200(proxy: RpcProxy) -> None:
    proxy.inject("html", times=1)
    response = post(proxy, rpc("eth_blockNumber"))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(requests.exceptions.JSONDecodeError):
        response.json()


def test_a_rate_limit_error_carries_data_and_web3_reads_it_as_a_revert(
    chain: Anvil, proxy: RpcProxy
) -> None:
    proxy.inject("rpc_rate_limit", methods=["eth_call"])
    answer = post(proxy, rpc("eth_call", {"to": chain.w3.eth.accounts[0]}, "latest")).json()
    assert answer == {"jsonrpc": "2.0", "id": 1, "error": RATE_LIMIT_ERROR}
    assert isinstance(answer["error"]["data"], dict)
    # why it is a trap: web3 turns any eth_call error with a dict ``data`` into a revert
    w3 = Web3(Web3.HTTPProvider(proxy.url))
    with pytest.raises(ContractLogicError):
        w3.eth.call({"to": Web3.to_checksum_address(chain.w3.eth.accounts[0])})


def test_malformed_answers_carry_neither_result_nor_error(proxy: RpcProxy) -> None:
    proxy.inject("malformed", methods=["eth_blockNumber"])
    answers = post(proxy, [rpc("eth_chainId", ident=1), rpc("eth_blockNumber", ident=2)]).json()
    assert "result" in answers[0]
    assert answers[1] == {"jsonrpc": "2.0", "id": 2}
    assert proxy.injected["malformed"] == 1


def test_faults_follow_method_times_and_predicate(proxy: RpcProxy) -> None:
    wide = proxy.inject(
        "server_error",
        methods=["eth_getLogs"],
        when=lambda call: (call.block_span() or 0) > 10,
    )
    narrow_filter = {"fromBlock": "0x0", "toBlock": "0x9"}
    wide_filter = {"fromBlock": "0x0", "toBlock": "0xa"}
    assert post(proxy, rpc("eth_getLogs", narrow_filter)).status_code == 200
    assert post(proxy, rpc("eth_getLogs", wide_filter)).status_code == 503
    wide.cancel()
    assert post(proxy, rpc("eth_getLogs", wide_filter)).status_code == 200
    proxy.inject("html", times=2)
    kinds = [post(proxy, rpc("eth_blockNumber")).headers["Content-Type"] for _ in range(3)]
    assert [k.split(";")[0] for k in kinds] == ["text/html", "text/html", "application/json"]
    assert Call("eth_getLogs", [wide_filter]).block_span() == 11


def test_the_same_seed_gives_the_same_faults(chain: Anvil) -> None:
    def pattern(seed: int) -> list[int]:
        with running_proxy(chain.url, seed=seed) as proxy:
            proxy.inject("server_error", probability=0.5)
            return [post(proxy, rpc("eth_chainId")).status_code for _ in range(24)]

    first = pattern(11)
    assert first == pattern(11)
    assert first != pattern(12)
    assert {200, 503} == set(first)


def test_a_lagging_backend_answers_as_if_blocks_were_missing(chain: Anvil, proxy: RpcProxy) -> None:
    sender = Web3.to_checksum_address(chain.w3.eth.accounts[0])
    chain.rpc("anvil_mine", "0x6")
    tx_hash = chain.w3.eth.send_transaction({"from": sender, "to": sender, "value": Wei(1)})
    chain.rpc("anvil_mine", "0x2")
    head = chain.w3.eth.block_number
    mined_in = head - 2
    lag = proxy.lag(3)

    assert int(result(proxy, "eth_blockNumber"), 16) == head - 3
    assert result(proxy, "eth_getBlockByNumber", hex(head), False) is None
    assert result(proxy, "eth_getBlockByNumber", hex(head - 2), False) is None
    latest = result(proxy, "eth_getBlockByNumber", "latest", False)
    assert int(latest["number"], 16) == head - 3
    assert result(proxy, "eth_getBlockByNumber", hex(head - 3), False)["hash"] == latest["hash"]
    assert result(proxy, "eth_getTransactionReceipt", tx_hash.to_0x_hex()) is None
    logs_filter = {"fromBlock": hex(head - 5), "toBlock": hex(head)}
    assert result(proxy, "eth_getLogs", logs_filter) == []
    assert proxy.injected["lag"] == 6

    lag.cancel()
    receipt = result(proxy, "eth_getTransactionReceipt", tx_hash.to_0x_hex())
    assert int(receipt["blockNumber"], 16) == mined_in


def test_a_lagging_backend_clips_log_ranges(chain: Anvil, proxy: RpcProxy) -> None:
    protocol = Protocol.deploy(chain.w3)
    protocol.request(quorum=1, prompt="seen")
    protocol.request(quorum=1, prompt="not yet seen")
    chain.rpc("anvil_mine", "0x1")
    everything = {"fromBlock": "0x0", "toBlock": "latest", "address": protocol.coordinator.address}
    proxy.lag(2)
    seen = result(proxy, "eth_getLogs", everything)
    assert max(int(log["blockNumber"], 16) for log in seen) == chain.w3.eth.block_number - 2
    proxy.clear()
    assert len(result(proxy, "eth_getLogs", everything)) == len(seen) + 1
    assert proxy.injected["lag"] == 1


def test_a_lagging_backend_can_simulate_pending_calls_on_its_own_head(
    chain: Anvil, proxy: RpcProxy
) -> None:
    protocol = Protocol.deploy(chain.w3)
    protocol.request(quorum=1)  # nextRequestId 1 -> 2 in the head block
    call = {
        "to": protocol.coordinator.address,
        "data": protocol.coordinator.encode_abi("nextRequestId", args=[]),
    }
    lag = proxy.lag(1)
    assert int(result(proxy, "eth_call", call, "pending"), 16) == 2  # only "latest" lags
    lag.cancel()
    proxy.lag(1, pending=True)
    assert int(result(proxy, "eth_call", call, "pending"), 16) == 1
    assert proxy.injected["lag"] == 1


def test_batch_answers_can_be_reordered_and_duplicated(chain: Anvil, proxy: RpcProxy) -> None:
    chain.rpc("anvil_mine", "0x4")
    batch = [rpc("eth_getBlockByNumber", hex(n), False, ident=n + 1) for n in range(4)]
    proxy.inject("reorder", times=1)
    reordered = post(proxy, batch).json()
    assert sorted(a["id"] for a in reordered) == [1, 2, 3, 4]
    assert [a["id"] for a in reordered] != [1, 2, 3, 4]
    proxy.inject("duplicate", times=1)
    duplicated = post(proxy, batch).json()
    assert len(duplicated) == 5 and {a["id"] for a in duplicated} == {1, 2, 3, 4}
    proxy.inject("reorder", times=1)
    post(proxy, rpc("eth_blockNumber"))  # a single call is no batch: left alone
    assert proxy.injected == {"reorder": 1, "duplicate": 1}

    w3 = Web3(Web3.HTTPProvider(proxy.url))
    with w3.batch_requests() as requests_batch:
        for number in range(4):
            requests_batch.add(w3.eth.get_block(number))
        blocks: list[Any] = list(requests_batch.execute())
    assert [b["number"] for b in blocks] == [0, 1, 2, 3]  # web3 sorts answers by id


def test_an_action_runs_after_the_answer_and_before_delivery(chain: Anvil, proxy: RpcProxy) -> None:
    proxy.after("eth_blockNumber", lambda _call: chain.rpc("evm_mine"))
    before = chain.w3.eth.block_number
    assert int(result(proxy, "eth_blockNumber"), 16) == before  # answered before the mine
    assert chain.w3.eth.block_number == before + 1
    assert int(result(proxy, "eth_blockNumber"), 16) == before + 1  # once only
