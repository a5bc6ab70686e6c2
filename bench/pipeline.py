"""Generated tokens per second through the whole on-chain pipeline against a plain
llama-cpp-python loop over the same prompts and seeds.

Pipeline: anvil (1 s blocks), the coordinator, one ``oracle run`` node (its defaults:
one LLM worker of SmolLM2-135M-Instruct-Q4_1 with ``--llm-threads`` threads, one
embedding worker, the autoscaler, which has no reason to add workers here; its own
Postgres database), quorum 1. After one warm-up request has been finalized, ``--requests``
requests (``--max-tokens`` each, temperature 0.7) are sent together so that they land
in one block. The clock starts when that block is announced and stops when the node
has stored its last answer: inference done, answer embedded, commitment decided (the
``answers`` row, written in the same transaction as the commit is queued). The commit
transactions landing on chain (the next block) are reported as well, not counted.
Tokens are the ``completion_tokens`` the node's inference jobs report.

Baseline: after the network has stopped, ``Llama(model_path, n_threads=2, n_ctx=<the
node's>)`` and ``create_chat_completion`` over the same prompts, with the seeds the node
used, the sampling settings the node pins and its coupled sampling (a logits
processor), one after another, after a warm-up call.
It reports how many texts equal the node's: the loop keeps the
prompt's KV cache between calls where the node starts each request afresh, and with
SmolLM2 that difference in arithmetic changes some answers (8 of 32 in one run).

Everything shares the machine's cores: anvil, Postgres, the node's own process and its
embedding worker run beside the LLM worker during the pipeline run; nothing runs beside
the baseline. To tell the two costs apart, the same jobs also run through one ``oracle
worker --role llm`` alone on a scratch Postgres queue (enqueue -> last ``finished_at``).

Run: ``.venv/bin/python bench/pipeline.py [--requests 32] [--max-tokens 64]`` (``--smoke``:
2 requests x 8 tokens). The last
line reads ``ratio=<pipeline/baseline tokens per second>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import itertools
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llama_cpp import LogitsProcessorList
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

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
    print_cpu_use,
    print_machine,
    ratio,
    scratch_database,
    wait_until,
)
from oracle.engine.llm import CoupledChoice
from oracle.engine.llm_options import DEFAULT_PARALLEL, ENGINES, LlmEngineOptions
from oracle.engine.supervisor import WorkerSpec
from oracle.store import make_engine
from oracle.store.queue import PRIORITY_INFERENCE, enqueue_job

PACKAGES = ("llama-cpp-python", "sentence-transformers", "torch", "web3", "psycopg")
TEMPERATURE_MILLI = 700
MAX_TIME_MS = 600_000  # generous: admission must not refuse the last requests of the burst

PROMPTS = (
    "Explain how a bicycle stays upright when it moves.",
    "Describe the water cycle in a few sentences.",
    "Why is the sky blue? Explain it to a child.",
    "Write a short story about a lighthouse keeper.",
    "What are the main causes of the French Revolution?",
    "Explain what a blockchain is to someone who has never heard of it.",
    "Give three tips for learning a new language and explain each.",
    "Describe how bread is made, from flour to loaf.",
    "What is photosynthesis and why does it matter?",
    "Explain the difference between weather and climate.",
    "Write a short poem about the sea at night.",
    "How does a refrigerator keep food cold?",
    "Describe a typical day in the life of a honeybee.",
    "What is the theory of evolution? Explain it simply.",
    "Explain how vaccines train the immune system.",
    "Describe the city of Paris to someone who has never been there.",
    "Why do we have seasons on Earth?",
    "Explain what inflation is and how it affects savings.",
    "Write a letter to a friend describing your last holiday.",
    "How do airplanes fly? Explain lift in simple words.",
    "Describe the rules of chess for a beginner.",
    "What happens in the body when we sleep?",
    "Explain how a computer stores information.",
    "Give advice to someone starting their first job.",
    "Describe the life cycle of a butterfly.",
    "Why is exercise good for mental health?",
    "Explain how rain forms in clouds.",
    "Write a short dialogue between a cat and a dog.",
    "What is the Pythagorean theorem and how is it used?",
    "Describe how a volcano erupts.",
    "Explain why recycling is important.",
    "How do electric cars work compared with petrol cars?",
)
WARM_UP_PROMPT = "Explain what a library is for."


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeInference:
    request_id: int
    prompt: str
    seed: int
    text: str
    tokens: int
    queued_at: float
    claimed_at: float
    """finished_at - elapsed_s: when generation started."""
    finished_at: float
    worker_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineRun:
    inferences: list[NodeInference]
    mined_at: float
    recorded_at: list[float]
    answers_at: list[float]
    commits_mined_at: list[float]
    cpu: tuple[dict[str, float], dict[str, float], float]
    """CPU seconds per part before and after, and the seconds between."""

    @property
    def tokens(self) -> int:
        return sum(i.tokens for i in self.inferences)


# --- the pipeline -------------------------------------------------------------------------


def run_pipeline(net: OneNodeNetwork, prompts: Sequence[str], max_tokens: int) -> PipelineRun:
    warm_up = net.send_requests(
        [WARM_UP_PROMPT],
        max_tokens=max_tokens,
        temperature_milli=TEMPERATURE_MILLI,
        max_time_ms=MAX_TIME_MS,
        one_per_block=True,
    )
    wait_for_events(net, "InferenceFinalized", warm_up, timeout_s=240)
    cpu_before, clock_before = net.cpu_seconds(), time.time()
    sent = net.send_requests(
        prompts,
        max_tokens=max_tokens,
        temperature_milli=TEMPERATURE_MILLI,
        max_time_ms=MAX_TIME_MS,
        one_per_block=False,
    )
    blocks = sorted({s.block_number for s in sent})
    print(f"{len(sent)} requests mined in block(s) {blocks}", flush=True)
    ids = [s.request_id for s in sent]
    wait_until(
        lambda: len(answer_times(net, ids)) == len(ids),
        timeout_s=900,
        interval_s=0.5,
        what="answers stored by the node",
    )
    cpu_after, clock_after = net.cpu_seconds(), time.time()
    committed = wait_for_events(net, "Committed", sent, timeout_s=120)
    return PipelineRun(
        inferences=node_inferences(net, sent),
        mined_at=net.clock.mined_at(blocks[0]),
        recorded_at=sorted(request_recorded_times(net, ids).values()),
        answers_at=sorted(answer_times(net, ids).values()),
        commits_mined_at=sorted(net.clock.mined_at(b) for b in committed.values()),
        cpu=(cpu_before, cpu_after, clock_after - clock_before),
    )


def wait_for_events(
    net: OneNodeNetwork, event: str, sent: Sequence[SentRequest], timeout_s: float
) -> dict[int, int]:
    """Wait until every request has had ``event``; request id -> block number."""
    first = min(s.block_number for s in sent)
    wanted = {s.request_id for s in sent}

    def arrived() -> dict[int, int] | None:
        blocks = net.event_blocks(event, first)
        return blocks if wanted <= blocks.keys() else None

    blocks = wait_until(arrived, timeout_s=timeout_s, interval_s=1.0, what=event)
    return {i: b for i, b in blocks.items() if i in wanted}


def answer_times(net: OneNodeNetwork, ids: list[int]) -> dict[int, float]:
    rows = net.node_rows(
        "SELECT request_id, extract(epoch FROM created_at) FROM answers "
        "WHERE request_id = ANY(:ids)",
        ids=ids,
    )
    return {int(r[0]): float(r[1]) for r in rows}


def request_recorded_times(net: OneNodeNetwork, ids: list[int]) -> dict[int, float]:
    rows = net.node_rows(
        "SELECT request_id, extract(epoch FROM min(created_at)) FROM chain_events "
        "WHERE event = 'InferenceRequested' AND request_id = ANY(:ids) GROUP BY request_id",
        ids=ids,
    )
    return {int(r[0]): float(r[1]) for r in rows}


def node_inferences(net: OneNodeNetwork, sent: Sequence[SentRequest]) -> list[NodeInference]:
    rows = net.node_rows(
        """
        SELECT request_id, worker_id, payload, result,
               extract(epoch FROM created_at) AS queued_at,
               extract(epoch FROM finished_at) AS finished_at
        FROM jobs WHERE kind = 'inference' AND status = 'done' AND request_id = ANY(:ids)
        """,
        ids=[s.request_id for s in sent],
    )
    prompts = {s.request_id: s.prompt for s in sent}
    inferences = [
        NodeInference(
            request_id=int(r.request_id),
            prompt=prompts[int(r.request_id)],
            seed=int(r.payload["seed"]),
            text=str(r.result["text"]),
            tokens=int(r.result["completion_tokens"]),
            queued_at=float(r.queued_at),
            claimed_at=float(r.finished_at) - float(r.result["elapsed_s"]),
            finished_at=float(r.finished_at),
            worker_id=str(r.worker_id),
        )
        for r in rows
    ]
    return sorted(inferences, key=lambda i: i.claimed_at)


# --- the LLM worker alone ------------------------------------------------------------------


def run_worker_alone(
    server_url: URL,
    inferences: Sequence[NodeInference],
    max_tokens: int,
    threads: int,
    llm: LlmEngineOptions,
) -> tuple[int, float]:
    """Tokens and seconds of one ``oracle worker --role llm`` on a scratch queue, nothing
    else running: the same jobs (prompts, seeds), enqueued together after a warm-up job;
    from the enqueue to the last job's ``finished_at``."""
    with scratch_database(server_url) as url:
        engine = make_engine(url)
        command = WorkerSpec(role="llm", model=SMOLLM, threads=threads, llm=llm).command()
        env = {**os.environ, "ORACLE_DATABASE_URL": url.render_as_string(hide_password=False)}
        worker = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            warm_up = [(WARM_UP_PROMPT, 1)]
            wait_for_jobs(engine, enqueue_inferences(engine, warm_up, max_tokens))
            jobs = [(i.prompt, i.seed) for i in inferences]
            started = time.time()
            tokens, finished = wait_for_jobs(engine, enqueue_inferences(engine, jobs, max_tokens))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            engine.dispose()
    return tokens, finished - started


def enqueue_inferences(
    engine: Engine, jobs: Sequence[tuple[str, int]], max_tokens: int
) -> list[int]:
    """Inference jobs of (prompt, seed), as the node's admission queues them."""
    payload = {"temperature_milli": TEMPERATURE_MILLI, "max_tokens": max_tokens, "model_index": 0}
    with engine.begin() as conn:
        return [
            enqueue_job(
                conn,
                kind="inference",
                model=SMOLLM,
                priority=PRIORITY_INFERENCE,
                deadline=datetime(2100, 1, 1, tzinfo=UTC),
                payload={**payload, "prompt": prompt, "seed": seed},
            )
            for prompt, seed in jobs
        ]


def wait_for_jobs(engine: Engine, ids: list[int]) -> tuple[int, float]:
    """Tokens generated and when the last job finished (epoch seconds), once all are done."""

    def done() -> tuple[int, float] | None:
        with engine.connect() as conn:
            count, tokens, last = conn.execute(
                text(
                    "SELECT count(*), sum((result->>'completion_tokens')::int), "
                    "extract(epoch FROM max(finished_at)) "
                    "FROM jobs WHERE id = ANY(:ids) AND status = 'done'"
                ),
                {"ids": ids},
            ).one()
        return (int(tokens), float(last)) if count == len(ids) else None

    result: tuple[int, float] = wait_until(done, timeout_s=600, interval_s=0.5, what="LLM jobs")
    return result


# --- the baseline -------------------------------------------------------------------------


def run_plain_loop(
    inferences: Sequence[NodeInference], max_tokens: int, threads: int
) -> tuple[int, float, int]:
    """Tokens, seconds, and how many texts equal the node's, for the same prompts and seeds."""
    llm = plain_llama(threads)
    sampling: dict[str, Any] = {
        "temperature": TEMPERATURE_MILLI / 1000,
        "max_tokens": max_tokens,
        **SAMPLING,
    }
    llm.create_chat_completion(
        messages=[{"role": "user", "content": WARM_UP_PROMPT}], seed=1, **sampling
    )
    tokens = same = 0
    started = time.perf_counter()
    for inference in inferences:
        response: Any = llm.create_chat_completion(
            messages=[{"role": "user", "content": inference.prompt}],
            seed=inference.seed,
            logits_processor=LogitsProcessorList(
                [CoupledChoice(inference.seed, TEMPERATURE_MILLI)]
            ),
            **sampling,
        )
        tokens += int(response["usage"]["completion_tokens"])
        same += response["choices"][0]["message"]["content"] == inference.text
    elapsed = time.perf_counter() - started
    llm.close()
    return tokens, elapsed, same


# --- report -------------------------------------------------------------------------------


def _merged(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of time spans, as disjoint spans in order."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def report(
    run: PipelineRun, alone: tuple[int, float], base_tokens: int, base_s: float, same: int
) -> None:
    first = run.inferences[0]
    last_token_at = max(i.finished_at for i in run.inferences)
    to_last_token = last_token_at - run.mined_at
    to_last_answer = run.answers_at[-1] - run.mined_at
    to_last_commit = run.commits_mined_at[-1] - run.mined_at
    # the spans in which the worker held a job (a batched worker holds several at once)
    held = _merged([(i.claimed_at, i.finished_at) for i in run.inferences])
    held_s = sum(end - start for start, end in held)
    busy_span = last_token_at - first.claimed_at
    baseline = base_tokens / base_s
    pipeline = run.tokens / to_last_answer
    n = len(run.inferences)
    print()
    workers = len({i.worker_id for i in run.inferences})
    print(f"pipeline: {run.tokens} tokens in {n} answers, from {workers} LLM worker(s)")
    print(
        f"  block mined -> last token generated   {to_last_token:6.2f} s  "
        f"{run.tokens / to_last_token:6.1f} tokens/s"
    )
    print(
        f"  block mined -> last answer stored     {to_last_answer:6.2f} s  "
        f"{pipeline:6.1f} tokens/s   <- measured"
    )
    print(
        f"  block mined -> last commit mined      {to_last_commit:6.2f} s  "
        f"{run.tokens / to_last_commit:6.1f} tokens/s"
    )
    print(
        f"  worker holding jobs (generating)      {held_s:6.2f} s  "
        f"{run.tokens / held_s:6.1f} tokens/s"
    )
    print("  where the rest went:")
    print(
        f"    block mined -> first request recorded by the listener "
        f"{run.recorded_at[0] - run.mined_at:5.2f} s"
    )
    print(
        f"    recorded -> first inference queued (admission tick)   "
        f"{first.queued_at - run.recorded_at[0]:5.2f} s"
    )
    print(
        f"    first inference queued -> claimed by the worker       "
        f"{first.claimed_at - first.queued_at:5.2f} s"
    )
    print(
        f"    worker holding no job (busy span - holding time)      "
        f"{busy_span - held_s:5.2f} s over {len(held) - 1} gaps"
    )
    print(
        f"    last token -> last answer stored (embedding, ticks)   "
        f"{run.answers_at[-1] - last_token_at:5.2f} s"
    )
    gaps = [b[0] - a[1] for a, b in itertools.pairwise(held)]
    if gaps:
        print(
            f"    gap between jobs: median {percentile(gaps, 50) * 1000:.0f} ms, "
            f"max {max(gaps) * 1000:.0f} ms"
        )
    print_cpu_use(*run.cpu)
    alone_rate = alone[0] / alone[1]
    print(
        f"the LLM worker alone on a Postgres queue (same jobs, nothing else running): "
        f"{alone[0]} tokens in {alone[1]:.2f} s, {alone_rate:.1f} tokens/s"
    )
    print(
        f"baseline (plain llama-cpp-python loop): {base_tokens} tokens in {base_s:.2f} s, "
        f"{baseline:.1f} tokens/s; texts equal to the node's: {same} of {n}"
    )
    print(
        f"worker holding jobs / baseline {ratio(run.tokens / held_s, baseline):.3f}; "
        f"to last commit mined / baseline {ratio(run.tokens / to_last_commit, baseline):.3f}"
    )
    print(
        f"worker alone / baseline {ratio(alone_rate, baseline):.3f} (the queue and the worker); "
        f"pipeline / worker alone {ratio(pipeline, alone_rate):.3f} (sharing the cores with "
        "the rest of the network)"
    )
    print(f"pipeline {pipeline:.1f} tokens/s, baseline {baseline:.1f} tokens/s")
    print(f"ratio={ratio(pipeline, baseline):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=len(PROMPTS))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--llm-threads", type=int, default=2, help="both ways")
    parser.add_argument(
        "--engine", choices=ENGINES, default="sequential", help="the node's LLM engine"
    )
    parser.add_argument(
        "--parallel", type=int, default=DEFAULT_PARALLEL, help="sequences (--engine batched)"
    )
    add_smoke_flag(parser)
    args = apply_smoke(parser.parse_args(), requests=2, max_tokens=8)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]

    with postgres_server() as server_url:
        title = "bench/pipeline.py: on-chain pipeline vs plain llama-cpp-python"
        print_machine(title, PACKAGES, server_url)
        print(
            f"{len(prompts)} requests x {args.max_tokens} tokens, {SMOLLM}, temperature "
            f"{TEMPERATURE_MILLI / 1000}, quorum 1, {args.llm_threads} LLM threads both ways, "
            f"the node's {args.engine} engine"
            + (f" ({args.parallel} sequences)" if args.engine == "batched" else ""),
            flush=True,
        )
        llm = LlmEngineOptions(engine=args.engine, parallel=args.parallel)
        node_args = ["--llm-threads", str(args.llm_threads), "--engine", args.engine]
        node_args += ["--parallel", str(args.parallel)]
        with one_node_network(server_url, *node_args) as net:
            run = run_pipeline(net, prompts, args.max_tokens)
        alone = run_worker_alone(server_url, run.inferences, args.max_tokens, args.llm_threads, llm)
    base_tokens, base_s, same = run_plain_loop(run.inferences, args.max_tokens, args.llm_threads)
    report(run, alone, base_tokens, base_s, same)


if __name__ == "__main__":
    main()
