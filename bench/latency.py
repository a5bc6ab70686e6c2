"""Latency of a one-node network on anvil: request -> first token, reveal -> finalize.

anvil mines a block every second; one ``oracle run`` node (SmolLM2-135M-Instruct-Q4_1,
2 LLM threads, one embedding worker) serves quorum-1 requests of ``--max-tokens``
tokens, sent one per block after a warm-up request. Per request:

- request -> first token: from the moment the block carrying ``InferenceRequested`` was
  announced (anvil's ``newHeads`` subscription; block timestamps have 1 s resolution) to
  the first generated token. The node records when a job's generation ended and how long
  it took (``finished_at``, ``elapsed_s``), so generation began at their difference. The
  node does not stream, so where the first token fell inside the generation is taken
  from a replay: after the network has stopped, each request is generated again with the
  same model, prompt, seed and settings, streamed, and the share of its time spent
  before the first chunk is applied to the node's own ``elapsed_s``. The stages are
  printed too: listener, admission, claim, prompt.
- reveal -> finalize: from the block with the (last) ``Revealed`` event to the block with
  ``InferenceFinalized``. It includes the coordinator's dispute window (that of ``oracle
  dev``), which no node can shorten.

The baseline for the first figure is the replay's time to the first chunk: what a caller
of llama-cpp-python alone waits for the first token.

Run: ``.venv/bin/python bench/latency.py [--requests 20] [--max-tokens 8]`` (``--smoke``:
2 requests x 4 tokens). The last two
lines read ``reveal_finalize_p50_ms=<n> reveal_finalize_p95_ms=<n>`` and
``p50_ms=<n> p95_ms=<n>`` (request -> first token).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench._common import (
    SAMPLING,
    SMOLLM,
    OneNodeNetwork,
    SentRequest,
    add_smoke_flag,
    apply_smoke,
    one_node_network,
    percentile,
    plain_llama,
    postgres_server,
    print_machine,
    wait_until,
)
from oracle.devnet import DISPUTE_WINDOW_S

PACKAGES = ("llama-cpp-python", "web3", "psycopg", "SQLAlchemy", "APScheduler")
LLM_THREADS = 2
TEMPERATURE_MILLI = 700
MAX_TIME_MS = 60_000

PROMPTS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Name a planet in our solar system.",
    "What is 7 times 8?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Which ocean is the largest?",
    "What language is spoken in Brazil?",
    "What is the chemical symbol for gold?",
    "How many days are in a leap year?",
    "What is the largest mammal?",
    "Which gas do plants absorb from the air?",
    "What is the capital of Japan?",
    "How many continents are there?",
    "What is the square root of 81?",
    "Who painted the Mona Lisa?",
    "What is the freezing point of water in Fahrenheit?",
    "Which metal is liquid at room temperature?",
    "What is the fastest land animal?",
)
WARM_UP_PROMPT = "What is the capital of Italy?"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestTimes:
    request_id: int
    prompt: str
    seed: int
    mined_at: float
    recorded_at: float
    queued_at: float
    claimed_at: float
    """When generation began: finished_at - elapsed_s."""
    generation_s: float
    revealed_at: float
    finalized_at: float


def run_requests(net: OneNodeNetwork, count: int, max_tokens: int) -> list[RequestTimes]:
    options: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature_milli": TEMPERATURE_MILLI,
        "max_time_ms": MAX_TIME_MS,
        "one_per_block": True,
    }
    warm_up = net.send_requests([WARM_UP_PROMPT], **options)
    wait_for_outcomes(net, warm_up)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    sent = net.send_requests(prompts, **options)
    print(f"{len(sent)} requests mined in blocks {sent[0].block_number}-{sent[-1].block_number}")
    finalized = wait_for_outcomes(net, sent)
    revealed = net.event_blocks("Revealed", sent[0].block_number)
    return [
        times for s in sent if (times := request_times(net, s, revealed, finalized)) is not None
    ]


def wait_for_outcomes(net: OneNodeNetwork, sent: Sequence[SentRequest]) -> dict[int, int]:
    """Wait until every request is finalized or failed; finalized request id -> block."""
    first = min(s.block_number for s in sent)
    wanted = {s.request_id for s in sent}

    def settled() -> dict[int, int] | None:
        finalized = net.event_blocks("InferenceFinalized", first)
        failed = net.event_blocks("InferenceFailed", first)
        return finalized if wanted <= finalized.keys() | failed.keys() else None

    finalized: dict[int, int] = wait_until(settled, timeout_s=300, interval_s=1.0, what="outcomes")
    if missing := wanted - finalized.keys():
        print(f"not finalized (failed): {sorted(missing)}")
    return finalized


def request_times(
    net: OneNodeNetwork, sent: SentRequest, revealed: dict[int, int], finalized: dict[int, int]
) -> RequestTimes | None:
    if sent.request_id not in finalized:
        return None
    (job,) = net.node_rows(
        """
        SELECT j.payload, j.result, extract(epoch FROM j.created_at) AS queued_at,
               extract(epoch FROM j.finished_at) AS finished_at,
               (SELECT extract(epoch FROM min(e.created_at)) FROM chain_events e
                WHERE e.event = 'InferenceRequested' AND e.request_id = j.request_id)
               AS recorded_at
        FROM jobs j WHERE j.kind = 'inference' AND j.status = 'done' AND j.request_id = :id
        """,
        id=sent.request_id,
    )
    clock = net.clock
    return RequestTimes(
        request_id=sent.request_id,
        prompt=sent.prompt,
        seed=int(job.payload["seed"]),
        mined_at=clock.mined_at(sent.block_number),
        recorded_at=float(job.recorded_at),
        queued_at=float(job.queued_at),
        claimed_at=float(job.finished_at) - float(job.result["elapsed_s"]),
        generation_s=float(job.result["elapsed_s"]),
        revealed_at=clock.mined_at(revealed[sent.request_id]),
        finalized_at=clock.mined_at(finalized[sent.request_id]),
    )


def replay(requests: Sequence[RequestTimes], max_tokens: int) -> dict[int, tuple[float, float]]:
    """Per request, seconds to the first streamed chunk and to the end, generated again
    with a fresh context as the node's runner does (the network has stopped by now)."""
    llm = plain_llama(LLM_THREADS)
    sampling: dict[str, Any] = {
        "temperature": TEMPERATURE_MILLI / 1000,
        "max_tokens": max_tokens,
        **SAMPLING,
    }
    times = {}
    for request in [requests[0], *requests]:  # the first one twice: a warm-up
        llm.reset()  # type: ignore[no-untyped-call]
        started = time.perf_counter()
        stream = iter(
            llm.create_chat_completion(
                messages=[{"role": "user", "content": request.prompt}],
                seed=request.seed,
                stream=True,
                **sampling,
            )
        )
        next(stream)
        first = time.perf_counter() - started
        for _ in stream:
            pass
        times[request.request_id] = (first, time.perf_counter() - started)
    llm.close()
    return times


def summary(label: str, values: Sequence[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"  {label:48s} mean {sum(ms) / len(ms):6.0f} ms  p50 {percentile(ms, 50):6.0f} ms  "
        f"p95 {percentile(ms, 95):6.0f} ms  max {max(ms):6.0f} ms"
    )


def report(requests: Sequence[RequestTimes], replayed: dict[int, tuple[float, float]]) -> None:
    to_first = {
        r.request_id: r.generation_s * first / total
        for r in requests
        for first, total in [replayed[r.request_id]]
    }
    first_token = [r.claimed_at + to_first[r.request_id] - r.mined_at for r in requests]
    reveal_finalize = [r.finalized_at - r.revealed_at for r in requests]
    stages = {
        "block announced -> listener recorded the event": [
            r.recorded_at - r.mined_at for r in requests
        ],
        "recorded -> inference job queued (admission)": [
            r.queued_at - r.recorded_at for r in requests
        ],
        "queued -> claimed by the LLM worker": [r.claimed_at - r.queued_at for r in requests],
        "claimed -> first token (prompt read)": list(to_first.values()),
        "request -> first token": first_token,
        "reveal -> finalize (blocks announced)": reveal_finalize,
    }
    print()
    print(f"{len(requests)} finalized requests; stages per request (the means add up):")
    for label, values in stages.items():
        print(summary(label, values))
    alone = [first for first, _total in replayed.values()]
    print(
        "baseline: llama-cpp-python alone reaches the first token in "
        f"p50 {percentile(alone, 50) * 1000:.0f} ms, p95 {percentile(alone, 95) * 1000:.0f} ms"
    )
    floor = DISPUTE_WINDOW_S + 1
    over = [v - floor for v in reveal_finalize]
    print(
        f"reveal -> finalize floor: the dispute window ({DISPUTE_WINDOW_S} s) and one 1 s block "
        f"(finalize is accepted once block.timestamp > last reveal + window); above it "
        f"p50 {percentile(over, 50) * 1000:.0f} ms, p95 {percentile(over, 95) * 1000:.0f} ms"
    )
    print(
        f"reveal_finalize_p50_ms={percentile(reveal_finalize, 50) * 1000:.0f} "
        f"reveal_finalize_p95_ms={percentile(reveal_finalize, 95) * 1000:.0f}"
    )
    print(
        f"p50_ms={percentile(first_token, 50) * 1000:.0f} "
        f"p95_ms={percentile(first_token, 95) * 1000:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=8)
    add_smoke_flag(parser)
    args = apply_smoke(parser.parse_args(), requests=2, max_tokens=4)

    with postgres_server() as server_url:
        print_machine("bench/latency.py: one node on anvil (1 s blocks)", PACKAGES, server_url)
        print(
            f"{args.requests} requests x {args.max_tokens} tokens, {SMOLLM}, quorum 1, "
            f"one per block, {LLM_THREADS} LLM threads",
            flush=True,
        )
        with one_node_network(server_url, "--llm-threads", str(LLM_THREADS)) as net:
            requests = run_requests(net, args.requests, args.max_tokens)
        print(f"dispute window {DISPUTE_WINDOW_S} s, listener and scheduler every 0.5 s")
    report(requests, replay(requests, args.max_tokens))


if __name__ == "__main__":
    main()
