"""Soak: three nodes, twenty requests, every node's RPC through its own faulty proxy.

Anvil mines a block a second; each node talks to the chain through an ``RpcProxy`` with
every fault kind switched on at random (seeded: the same seed injects the same faults
into the same sequence of calls). Midway a worker is SIGKILLed while it generates and the
nodes' Postgres restarts. At the end every request must have its honest outcome
(finalized), every node must still run, no node may have landed a second commit or reveal
for a request, and nothing may be left queued or unsent. The figures are printed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool
from web3 import Web3

from oracle.chain.anvil import Anvil, dev_private_key, start_anvil
from oracle.client import (
    RequestOptions,
    RequestResult,
    coordinator_contract,
    send_request,
)
from oracle.devnet import LocalNetwork, deploy_local
from oracle.store.db import make_engine, to_sqlalchemy_url
from tests.support.rpc_proxy import RpcProxy

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

SEED = 20_241_130
NODES = 3
REQUESTS = 20
SEND_EVERY_S = 3.0
KILL_WORKER_AFTER = 5  # requests sent
RESTART_POSTGRES_AFTER = 10
REGISTRATION_WAIT_S = 600
COUNTRIES = ("France", "Italy", "Spain", "Germany", "Japan")

# (kind, probability per HTTP request, options): each on its own, at random
FAULTS: tuple[tuple[Any, float, dict[str, Any]], ...] = (
    ("drop", 0.02, {}),
    ("delay", 0.03, {"delay_s": 1.5}),
    ("rate_limit", 0.02, {"retry_after_s": 1}),
    ("server_error", 0.02, {"status": 503}),
    ("reset_mid_body", 0.01, {}),
    ("html", 0.01, {}),
    ("rpc_rate_limit", 0.01, {}),
    ("malformed", 0.01, {}),
    ("lag", 0.05, {"blocks": 2}),
    ("duplicate", 0.05, {}),
    ("reorder", 0.10, {}),
)


@dataclasses.dataclass
class Soak:
    anvil: Anvil
    coordinator: str
    proxies: list[RpcProxy]
    networks: list[LocalNetwork]
    restart_postgres: Callable[[], None]

    def node_rows(self, index: int, sql: str) -> list[Any]:
        engine = make_engine(self.networks[index].nodes[index].database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql)))
        finally:
            engine.dispose()

    def alive(self) -> list[bool]:
        return [n.nodes[i].process.poll() is None for i, n in enumerate(self.networks)]

    def addresses(self) -> list[str]:
        return [n.nodes[i].address for i, n in enumerate(self.networks)]


@contextlib.contextmanager
def restartable_postgres(data_dir: Path) -> Iterator[tuple[URL, Callable[[], None]]]:
    """A Postgres of the soak's own (the shared test server is not restarted)."""
    with warnings.catch_warnings():  # as oracle.store.embedded: pgserver warns at import
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pgserver import get_server, pg_ctl  # type: ignore[attr-defined]

    server = get_server(data_dir, cleanup_mode="delete")

    def restart() -> None:
        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user)

    try:
        yield to_sqlalchemy_url(server.get_uri()), restart
    finally:
        server.cleanup()


@pytest.fixture
def soak(tmp_path: Path) -> Iterator[Soak]:
    anvil = start_anvil("--block-time", "1", "--accounts", "12")
    proxies: list[RpcProxy] = []
    networks: list[LocalNetwork] = []
    try:
        deployment = deploy_local(anvil)
        # not under pytest's base temp: the server runs as its own user, which cannot enter it
        pg_dir = Path(tempfile.mkdtemp(prefix="oracle-soak-pg-"))
        with restartable_postgres(pg_dir) as (server_url, restart):
            try:
                for index in range(NODES):
                    proxy = RpcProxy(anvil.url, seed=SEED + index).start()
                    proxies.append(proxy)
                    through_proxy = dataclasses.replace(anvil, url=proxy.url)
                    network = LocalNetwork(through_proxy, deployment, server_url, tmp_path)
                    networks.append(network)
                    network.start_node(index, "--llm-threads", "1")
                for network in networks:  # models load slowly on a busy machine
                    network.wait_for_registration(timeout_s=REGISTRATION_WAIT_S)
                yield Soak(anvil, deployment.coordinator, proxies, networks, restart)
            finally:
                for network in networks:
                    network.stop_all()
    finally:
        for proxy in proxies:
            proxy.stop()
        anvil.stop()
        _print_log_tails(tmp_path)


def test_three_nodes_serve_twenty_requests_through_faulty_endpoints(
    soak: Soak, tmp_path: Path
) -> None:
    for proxy in soak.proxies:
        for kind, probability, options in FAULTS:
            proxy.inject(kind, probability=probability, **options)
    start_block = soak.anvil.w3.eth.block_number
    events: list[str] = []
    sent = _send_requests(soak, events)

    following_since = time.monotonic()
    by_request = _follow_all(soak, sent, start_block)
    followed_s = time.monotonic() - following_since
    for proxy in soak.proxies:
        proxy.clear()  # the nodes settle what is left on a healthy endpoint
    idle = _wait_until_idle(soak)
    alive = soak.alive()
    landed = _node_transactions(soak, start_block)

    outcomes = Counter(by_request.values())  # read from each request's own events
    duplicates = sum(max(0, ok - 1) for (ok, _reverted) in landed.values())
    injected = sum((p.injected for p in soak.proxies), Counter[str]())
    print(f"soak seed {SEED}: {len(sent)} requests, outcomes {dict(outcomes)}")
    print(f"faults injected by kind: {dict(sorted(injected.items()))}")
    print(f"RPC requests through the proxies: {sum(len(p.calls) for p in soak.proxies)}")
    print(f"events: {events}; followed the requests for {followed_s:.0f} s")
    print(f"successful commits/reveals beyond one per node and request: {duplicates}")
    print(f"reverted commits/reveals: {sum(r for _ok, r in landed.values())}")
    print(f"nodes running: {alive}; left queued or unsent: {idle}")
    _print_request_history(
        tmp_path, [r for r, outcome in by_request.items() if outcome != "finalized"]
    )

    assert outcomes == {"finalized": REQUESTS}, by_request
    assert all(alive), "a node exited"
    assert duplicates == 0
    assert all(count == 0 for count in idle.values()), idle
    assert sum(injected.values()) > 0


def _send_requests(soak: Soak, events: list[str]) -> list[RequestResult]:
    sent = []
    for number in range(REQUESTS):
        country = COUNTRIES[number % len(COUNTRIES)]
        options = RequestOptions(
            prompt=f"What is the capital of {country}? Answer in one short sentence.",
            rpc_url=soak.anvil.url,  # the requester is not under test
            contract=soak.coordinator,
            private_key=dev_private_key(0),
            quorum=NODES,
            max_tokens=24,
            max_time_ms=120_000,
            wait=False,
        )
        sent.append(send_request(options))
        if number + 1 == KILL_WORKER_AFTER:
            events.append(_kill_a_generating_worker(soak))
        if number + 1 == RESTART_POSTGRES_AFTER:
            soak.restart_postgres()
            events.append("postgres restarted")
        time.sleep(SEND_EVERY_S)
    return sent


def _follow_all(
    soak: Soak, sent: list[RequestResult], start_block: int, wait_s: float = 300
) -> dict[int, str]:
    """Each request's outcome ("finalized" or "failed: why"); gives up once a node exited."""
    coordinator = coordinator_contract(soak.anvil.w3, soak.coordinator)
    outcomes: dict[int, str] = {}
    deadline = time.monotonic() + wait_s
    while len(outcomes) < len(sent) and all(soak.alive()) and time.monotonic() < deadline:
        time.sleep(2)
        for result in sent:
            if result.request_id in outcomes:
                continue
            only = {"requestId": result.request_id}
            finalized = coordinator.events.InferenceFinalized().get_logs(
                from_block=start_block, argument_filters=only
            )
            failed = coordinator.events.InferenceFailed().get_logs(
                from_block=start_block, argument_filters=only
            )
            if finalized:
                outcomes[result.request_id] = "finalized"
            elif failed:
                outcomes[result.request_id] = f"failed: reason {failed[0]['args']['reason']}"
    return {r.request_id: outcomes.get(r.request_id, "open") for r in sent}


def _kill_a_generating_worker(soak: Soak, wait_s: float = 60) -> str:
    """SIGKILL the worker process of a running inference job on any node."""
    query = (
        "SELECT w.pid FROM jobs j JOIN workers w ON w.worker_id = j.worker_id"
        " WHERE j.status = 'running' AND j.kind = 'inference' LIMIT 1"
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for index in range(NODES):
            if not soak.alive()[index]:
                continue
            for (pid,) in soak.node_rows(index, query):
                with contextlib.suppress(ProcessLookupError):  # it finished meanwhile
                    os.kill(int(pid), signal.SIGKILL)
                    return f"node{index} worker {pid} killed mid-generation"
        time.sleep(0.1)
    return "no generation caught running: no worker killed"


def _wait_until_idle(soak: Soak, wait_s: float = 120) -> dict[str, int]:
    """What each node still has queued, running or unsent once it has settled."""
    deadline = time.monotonic() + wait_s
    while True:
        left = {}
        for index in range(NODES):
            jobs = soak.node_rows(
                index, "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')"
            )
            txs = soak.node_rows(
                index, "SELECT count(*) FROM outgoing_txs WHERE status IN ('pending', 'sent')"
            )
            left[f"node{index}"] = int(jobs[0][0]) + int(txs[0][0])
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        time.sleep(1)


def _node_transactions(soak: Soak, start_block: int) -> dict[tuple[str, int, str], list[int]]:
    """Per (node, request, commit|reveal): how many landed and succeeded, how many reverted."""
    w3 = soak.anvil.w3
    coordinator = coordinator_contract(w3, soak.coordinator)
    nodes = {Web3.to_checksum_address(a) for a in soak.addresses()}
    landed: dict[tuple[str, int, str], list[int]] = {}
    for number in range(start_block, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]:
            sender, to = tx["from"], tx["to"]  # type: ignore[index]
            if sender not in nodes or to != coordinator.address:
                continue
            function, args = coordinator.decode_function_input(tx["input"])  # type: ignore[index]
            if function.fn_name not in ("commit", "reveal"):
                continue
            receipt = w3.eth.get_transaction_receipt(tx["hash"])  # type: ignore[index]
            key = (sender, int(args["requestId"]), function.fn_name)
            counts = landed.setdefault(key, [0, 0])
            counts[0 if receipt["status"] == 1 else 1] += 1
    return landed


def _print_request_history(directory: Path, request_ids: list[int]) -> None:
    """Every node's log lines about the requests that did not end as they should: the
    log tails rarely reach back to them."""
    for request_id in request_ids:
        mark = re.compile(rf"\brequest_id={request_id}\b")
        for log in sorted(directory.glob("node*.log")):
            lines = log.read_text(errors="replace").splitlines()
            print(f"----- {log.name}: request {request_id} -----")
            print("\n".join(line for line in lines if mark.search(line)))


def _print_log_tails(directory: Path) -> None:
    for log in sorted(directory.glob("node*.log")):
        lines = log.read_text(errors="replace").splitlines()
        print(f"----- {log.name} (last 40 lines) -----")
        print("\n".join(lines[-40:]))
