"""The lifecycle's pass with nothing due: its cost at 10, 1,000 and 10,000 open requests.

A node runs a lifecycle pass (``oracle.lifecycle.driver.advance_requests``) every poll
interval and whenever news arrives. A flood of requests with far deadlines must not make
every pass slower: a pass should cost what changed, not what is open.

For each size N, a scratch database (migrated to head) gets N requests with deadlines a
day away, inserted in bulk as they stand for a node that has looked at them once: half of
them declined (``skipped``: no served model), half answered and committed, waiting for the
commit deadline (``committing``, this node's answer and seat stored). One pass is run and
timed apart (every row is due once: the first look after the upgrade to 0005), then
``--passes`` passes with nothing due are timed. Per request = per pass / N. The baseline
is the same pass at the smallest size: the last line is the ratio of the largest size's
time per pass to the smallest's (the goal: flat, within 2x).

Nothing in these passes may call the chain: the chain given to the driver refuses every
call, so a pass that would ask it fails the benchmark.

Run: ``.venv/bin/python bench/lifecycle.py [--sizes 10 1000 10000] [--passes 5]``
(``--smoke``: sizes 2 and 20, two passes). The last line reads
``ratio=<time per pass at the largest size / at the smallest>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import statistics
import time
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import URL

from bench._common import (
    MINILM,
    SMOLLM,
    add_smoke_flag,
    apply_smoke,
    postgres_server,
    print_machine,
    ratio,
    scratch_database,
)
from oracle.lifecycle.context import ModelProfile, NodeContext
from oracle.lifecycle.driver import advance_requests
from oracle.store import make_engine, make_session_factory

PACKAGES = ("sqlalchemy", "psycopg")
NODE = "0x" + "a1" * 20
OTHER_NODE = "0x" + "b2" * 20
COORDINATOR = "0x" + "c0" * 20
CTX = NodeContext(
    address=NODE,
    coordinator=COORDINATOR,
    models={SMOLLM: ModelProfile(name=SMOLLM, context_tokens=4096)},
    embedding_models=[MINILM],
)


class NoChain:
    """A chain that refuses every call: with nothing due, a pass has nothing to ask it."""

    def dispute_deadline(self, request_id: int, *, as_of: Hashable = None) -> int:
        raise AssertionError(f"a pass with nothing due asked the chain (request {request_id})")

    def encode_commit(self, request_id: int, request_hash: bytes, commitment: bytes) -> bytes:
        raise AssertionError(f"a pass with nothing due decided a commit ({request_id})")

    def encode_reveal(
        self, request_id: int, output: str, model_index: int, bits: bytes, salt: bytes
    ) -> bytes:
        raise AssertionError(f"a pass with nothing due decided a reveal ({request_id})")

    def encode_dispute(self, request_id: int, request_hash: bytes, accused: str) -> bytes:
        raise AssertionError(f"a pass with nothing due decided a dispute ({request_id})")

    def encode_finalize(
        self, request_id: int, bits: list[bytes], output_hashes: list[bytes], winner_output: str
    ) -> bytes:
        raise AssertionError(f"a pass with nothing due decided a finalize ({request_id})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1_000, 10_000])
    parser.add_argument("--passes", type=int, default=5, help="timed passes per size")
    add_smoke_flag(parser)
    return apply_smoke(parser.parse_args(), sizes=[2, 20], passes=2)


def insert_open_requests(url: URL, count: int) -> None:
    """``count`` requests a day from their deadlines: half declined, half committed."""
    commit_deadline = datetime.now(UTC) + timedelta(days=1)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    """
                    INSERT INTO requests (
                        id, requester, prompt, accepted_models, temperature_milli,
                        max_tokens, quorum, max_time_ms, sec_distance_bp, sec_percentage_bp,
                        embedding_model, callback, callback_gas_limit, fee_wei,
                        commit_deadline, reveal_deadline, dispute_window_s, block_number,
                        phase, skip_reason)
                    SELECT n, :requester, 'What is the capital of France?',
                           CASE WHEN n % 2 = 0 THEN ARRAY['another-model'] ELSE ARRAY[:model]
                           END,
                           700, 16, 3, 86400000, 3500, 6000, :embedding, NULL, 0, 1000,
                           :commit_deadline, :commit_deadline + interval '1 minute', 30, n,
                           CASE WHEN n % 2 = 0 THEN 'skipped' ELSE 'committing' END,
                           CASE WHEN n % 2 = 0 THEN 'declined: no served model' END
                    FROM generate_series(1, :count) AS n
                    """
                ),
                {
                    "requester": "0x" + "e0" * 20,
                    "model": SMOLLM,
                    "embedding": MINILM,
                    "commit_deadline": commit_deadline,
                    "count": count,
                },
            )
            conn.execute(
                text(
                    """
                    INSERT INTO answers (request_id, model, model_index, output, embedding_bits,
                                         salt, seed, commitment)
                    SELECT id, :model, 0, 'Paris.', decode(repeat('ab', 48), 'hex'),
                           decode(repeat('01', 32), 'hex'), 1, decode(repeat('02', 32), 'hex')
                    FROM requests WHERE phase = 'committing'
                    """
                ),
                {"model": SMOLLM},
            )
            conn.execute(
                text(
                    """
                    INSERT INTO seats (request_id, seat_no, oracle, commitment,
                                       commit_block_number)
                    SELECT id, 0, :node, decode(repeat('02', 32), 'hex'), id + 1
                    FROM requests WHERE phase = 'committing'
                    """
                ),
                {"node": NODE},
            )
            conn.execute(text("ANALYZE requests; ANALYZE answers; ANALYZE seats"))
    finally:
        engine.dispose()


def measure(url: URL, count: int, passes: int) -> tuple[float, list[float]]:
    """Seconds of the first pass, then of each pass with nothing due."""
    insert_open_requests(url, count)
    engine = make_engine(url, pool_size=2)
    sessions = make_session_factory(engine)
    chain = NoChain()
    try:
        started = time.perf_counter()
        advance_requests(sessions, CTX, chain)
        first = time.perf_counter() - started
        times = []
        for _ in range(passes):
            started = time.perf_counter()
            advance_requests(sessions, CTX, chain)
            times.append(time.perf_counter() - started)
        return first, times
    finally:
        engine.dispose()


def main() -> None:
    args = parse_args()
    with postgres_server() as server_url:
        print_machine("bench/lifecycle.py: a lifecycle pass with nothing due", PACKAGES, server_url)
        print(
            f"open requests with deadlines a day away (half declined, half committed); "
            f"{args.passes} timed passes a size after a first look"
        )
        per_pass: dict[int, float] = {}
        for count in args.sizes:
            with scratch_database(server_url) as url:
                first, times = measure(url, count, args.passes)
            median = statistics.median(times)
            per_pass[count] = median
            print(
                f"open={count:>6}  first pass {first * 1000:9.1f} ms  "
                f"pass (median of {len(times)}) {median * 1000:9.2f} ms  "
                f"per request {median / count * 1e6:9.2f} us",
                flush=True,
            )
        smallest, largest = min(per_pass), max(per_pass)
        factor = ratio(per_pass[largest], per_pass[smallest])
        print(f"time per pass at {largest} open vs {smallest}: {factor:.2f}x (goal: within 2x)")
        print(f"ratio={factor:.2f}")


if __name__ == "__main__":
    main()
