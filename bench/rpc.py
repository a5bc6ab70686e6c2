"""RPC calls one node makes: following a chain with nothing to do, and serving requests.

Operators pay their provider per call, and rate limits count HTTP requests. One node on
a fresh anvil mining a block every ``--block-time`` seconds talks to it through a
counting JSON-RPC proxy (``tests/support/rpc_proxy.py``, no faults switched on). Once it
has registered and settled: ``--idle-s`` seconds with nothing to do, then
``--requests`` requests at quorum 1, one after another, each followed to its outcome.
Printed: calls by method, calls per idle block (following the chain costs at least one
header a block: the baseline) and per idle minute, calls per request. The contracts are
deployed with windows of at least four of the chain's blocks: a node declines windows
shorter than three.

Run: ``.venv/bin/python bench/rpc.py [--block-time 12] [--idle-s 120] [--requests 3]``
(``--smoke``: 1 s blocks, 5 s idle, one request). Calls are counted, not timed: the
figures do not depend on the machine, but on the block time, the poll interval (0.5 s)
and how long a request takes to answer. The last line reads
``calls_per_idle_block=<x> calls_per_request=<x>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import dataclasses
import tempfile
import time
from collections import Counter
from collections.abc import Sequence

from bench._common import add_smoke_flag, apply_smoke, postgres_server, print_machine
from oracle.chain.anvil import dev_private_key, start_anvil
from oracle.client import RequestOptions, send_request
from oracle.devnet import LocalNetwork, deploy_local
from tests.support.rpc_proxy import Recorded, RpcProxy

PACKAGES = ("web3", "llama-cpp-python", "sentence-transformers")
SETTLE_S = 10.0
"""After registration: the node's start-up reads are over before counting starts."""


def tally(calls: Sequence[Recorded], since: float) -> tuple[int, Counter[str]]:
    """HTTP requests since ``since`` (monotonic), and the calls they carried by method."""
    recorded = [r for r in calls if r.at >= since]
    methods: Counter[str] = Counter()
    for record in recorded:
        methods.update(record.methods)
    return len(recorded), methods


def show(what: str, requests: int, methods: Counter[str]) -> None:
    calls = sum(methods.values())
    listed = ", ".join(f"{name} {count}" for name, count in methods.most_common())
    print(f"{what}: {calls} calls in {requests} HTTP requests ({listed})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--block-time", type=int, default=12)
    parser.add_argument("--idle-s", type=float, default=120.0)
    parser.add_argument("--requests", type=int, default=3)
    add_smoke_flag(parser)
    args = apply_smoke(parser.parse_args(), block_time=1, idle_s=5.0, requests=1)
    window_s = max(20, 4 * args.block_time)
    with postgres_server() as server_url, tempfile.TemporaryDirectory() as data_dir:
        print_machine(
            f"bench/rpc.py: one node on anvil ({args.block_time} s blocks)", PACKAGES, server_url
        )
        anvil = start_anvil("--block-time", str(args.block_time), "--accounts", "4")
        proxy = RpcProxy(anvil.url).start()
        try:
            deployment = deploy_local(anvil, reveal_window_s=window_s, dispute_window_s=window_s)
            counted = dataclasses.replace(anvil, url=proxy.url)  # the node's view of the chain
            with LocalNetwork(counted, deployment, server_url, Path(data_dir)) as network:
                network.start_node(0, "--llm-threads", "1")
                network.wait_for_registration(timeout_s=600)
                time.sleep(SETTLE_S)
                first_block, started = anvil.w3.eth.block_number, time.monotonic()
                time.sleep(args.idle_s)
                idle_blocks = max(1, anvil.w3.eth.block_number - first_block)
                idle_s = time.monotonic() - started
                requests, methods = tally(proxy.calls, started)
                show(f"idle, {idle_s:.0f} s, {idle_blocks} blocks", requests, methods)
                per_idle_block = sum(methods.values()) / idle_blocks
                print(f"  per idle minute: {sum(methods.values()) * 60 / idle_s:.0f} calls")

                started = time.monotonic()
                for index in range(args.requests):
                    result = send_request(
                        RequestOptions(
                            prompt=f"What is the capital of France? ({index}) One sentence.",
                            rpc_url=anvil.url,
                            contract=deployment.coordinator,
                            private_key=dev_private_key(0),
                            quorum=1,
                            max_time_ms=max(30_000, 3_000 * args.block_time),
                            timeout_s=600,
                        )
                    )
                    if not result.finalized:
                        raise SystemExit(
                            f"request {index} ended without an answer: {result.reason}"
                        )
                requests, methods = tally(proxy.calls, started)
                seconds = time.monotonic() - started
                show(f"{args.requests} requests, {seconds:.0f} s", requests, methods)
                per_request = sum(methods.values()) / args.requests
        finally:
            proxy.stop()
            anvil.stop()
    print(f"calls_per_idle_block={per_idle_block:.1f} calls_per_request={per_request:.0f}")


if __name__ == "__main__":
    main()
