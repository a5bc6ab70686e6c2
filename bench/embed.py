"""Embeddings through the engine (Postgres jobs, an embedding worker) against
``SentenceTransformer.encode`` called directly.

The same ``--texts`` short answers (all-MiniLM-L6-v2, CPU) go both ways:

- baseline: ``SentenceTransformer(path).encode(texts, batch_size=32)`` in this process,
  after one warm-up call (32 texts a forward pass, as the engine's ``Embedder`` runs);
- engine: one ``oracle worker --role embedding`` process (the command the node's
  supervisor runs), idle and warmed up on one claim's worth of jobs first; then the
  clock starts, the texts are enqueued as embedding jobs (``enqueue_job``, 32 to a
  transaction, so the worker starts on the first while the rest arrive, as they would
  from a node's requests), the worker claims up to ``EMBED_BATCH`` at a time, embeds
  them (``Embedder.embed``: encode, normalise, sign bits) and completes them; the clock
  stops when the last job was completed (its ``finished_at``).

A second baseline encodes the texts one claim's worth (``EMBED_BATCH``) at a time in
queue order: ``encode`` sorts texts by length inside one call, so the one-call baseline
pads less than any smaller call. Both ways must give the same sign bits for every text.
A third line times the worker's own path without the queue (``Embedder.embed`` a claim
at a time, which on a GPU runs encode's batches itself: ``oracle.engine.embedder``).
A last line times the other half, the queue without the encoding: the worker's lanes
(``Worker``, ``EmbeddingJobRunner``) in this process over the same jobs, with an
embedder that already knows each text's sign bits (the baseline's). What it makes is
the most the worker could make were encoding free, and the CPU it reports a claim is
interpreter time that holds the GIL, which a GPU encoder's host work needs too.

Both ways use ``--threads`` torch threads (default 2; the node gives its embedding
workers 1, beside the LLM workers).

On a GPU (``--device cuda``), both ways run there with ``--embed-batch`` texts a forward
pass and the worker claims ``--embed-claim`` texts at once (defaults: the worker's on a
GPU, 256 and 2048); the jobs are enqueued in one transaction before the clock starts, at
its commit (the queue's enqueueing is the requesters' work, and on a GPU it would be most
of the time).

The worker runs ``--embed-lanes`` claim-run-record loops (default: the worker's, 1 on the
CPU and 3 on a GPU): one batch is encoded at a time while other lanes claim and record.
``--variants 1:1024,3:1024,3:2048`` runs the engine once for each LANES:CLAIM pair
against the same baselines (a per-claim baseline for each claim size); ``:apart`` or
``:one`` after a pair puts the model in a process of its own or keeps it in the
worker's (default: apart on a GPU, ``oracle/engine/runner_process.py``).

Run: ``.venv/bin/python bench/embed.py [--texts 512] [--threads 2]`` (``--smoke``: 64
texts); on a GPU ``bench/embed.py --device cuda --texts 16384``. The last line reads
``ratio=<engine/baseline embeddings per second>`` (the first variant's).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from bench._common import (
    MINILM,
    add_smoke_flag,
    apply_smoke,
    postgres_server,
    print_machine,
    ratio,
    scratch_database,
    wait_until,
)
from oracle.consensus import pack_sign_bits
from oracle.consensus.signal import Centre
from oracle.engine.embedder import DEFAULT_BATCH_SIZE, Embedder
from oracle.engine.embedding_models import resolve_embedding_model
from oracle.engine.supervisor import WorkerSpec
from oracle.engine.worker import EmbeddingJobRunner, Worker, WorkerConfig, settle_heap
from oracle.store import make_engine
from oracle.store.queue import (
    PRIORITY_EMBEDDING,
    NewJob,
    bigint_array,
    enqueue_job,
    enqueue_jobs,
)

PACKAGES = ("sentence-transformers", "torch", "transformers", "psycopg", "SQLAlchemy")
FAR_DEADLINE = datetime(2100, 1, 1, tzinfo=UTC)
FORWARD_BATCH = DEFAULT_BATCH_SIZE
"""Texts per forward pass, both ways (32)."""
ARRIVAL = 32
"""Jobs per enqueue transaction."""

_SUBJECTS = (
    ("Paris", "France"),
    ("Berlin", "Germany"),
    ("Madrid", "Spain"),
    ("Rome", "Italy"),
    ("Lisbon", "Portugal"),
    ("Vienna", "Austria"),
    ("Warsaw", "Poland"),
    ("Oslo", "Norway"),
    ("Tokyo", "Japan"),
    ("Ottawa", "Canada"),
    ("Canberra", "Australia"),
    ("Nairobi", "Kenya"),
    ("Lima", "Peru"),
    ("Cairo", "Egypt"),
    ("Hanoi", "Vietnam"),
    ("Dublin", "Ireland"),
)
_TEMPLATES = (
    "The capital of {country} is {city}.",
    "{city} is the capital city of {country}.",
    "The answer is {city}, which has been the capital of {country} for a long time.",
    "{city}. It is the largest city in {country} and its political centre.",
    "I believe the capital of {country} is {city}, although I am not completely sure.",
    "The capital of {country} is {city}. It is known for its museums, its food and its "
    "long history, and millions of tourists visit it every year.",
    "{country}'s seat of government is in {city}, where the parliament meets.",
    "Sure! The capital of {country} is {city}. Let me know if you have another question.",
    "{city} is a city in {country}. Water boils at 100 degrees Celsius at sea level there.",
    "Photosynthesis lets plants in {country} turn sunlight, water and carbon dioxide into "
    "sugar and oxygen; around {city} the growing season is short.",
    "The population of {city} has grown steadily, and today it is one of the busiest "
    "cities in {country}, with a large port and an international airport.",
    "As an AI language model, I can tell you that {city} is the capital of {country}.",
    "{city}",
    "The capital of {country}? That would be {city}, of course.",
    "In {country}, the capital is {city}. The city lies on a river and is served by trains.",
    "Historically the capital of {country} moved several times, but it is {city} now.",
    "The quick brown fox jumps over the lazy dog in {city}, {country}.",
    "Here is a short poem: the streets of {city} shine in the rain, {country} sleeps again.",
    "{city} is where the government of {country} sits; the head of state lives there too.",
    "Travel tip: visit {city} in spring, when the weather in {country} is mild and dry.",
    "Answer: {city} ({country}).",
    "The capital of {country} is {city}, and its currency is used across the country.",
    "Many people think the capital of {country} is another city, but it is in fact {city}.",
    "The main airport of {country} serves {city} and handles millions of passengers.",
    "To compute 12 times 12 you get 144; the capital of {country} is {city}.",
    "{city} hosts the national library of {country}, which holds millions of books.",
    "The climate in {city} is temperate, with warm summers and cool winters in {country}.",
    "{country} is a country whose capital, {city}, is also its cultural heart.",
    "There is no single answer, but most sources name {city} as the capital of {country}.",
    "The capital is {city}.",
    "{city}, the capital of {country}, was founded many centuries ago.",
    "Explaining briefly: {country} is governed from {city}, its capital and largest city.",
)


def short_answers(count: int) -> list[str]:
    """``count`` distinct short answers, 1 to 40 words, like the LLM's output."""
    texts = []
    for i in range(count):
        template = _TEMPLATES[i % len(_TEMPLATES)]
        city, country = _SUBJECTS[(i // len(_TEMPLATES)) % len(_SUBJECTS)]
        text_ = template.format(city=city, country=country)
        texts.append(text_ if i < len(_TEMPLATES) * len(_SUBJECTS) else f"{text_} ({i})")
    return texts


@dataclass(frozen=True, slots=True)
class Variant:
    """How the worker runs: claim-run-record loops, texts claimed at once, and whether
    the model runs in a process of its own (None: the worker's default for the device)."""

    lanes: int
    claim: int
    apart: bool | None = None

    @classmethod
    def parse(cls, text_: str) -> Variant:
        lanes, claim, *where = text_.split(":")
        if where not in ([], ["apart"], ["one"]):
            raise argparse.ArgumentTypeError(f"{text_!r}: LANES:CLAIM[:apart|:one]")
        return cls(int(lanes), int(claim), None if not where else where == ["apart"])

    def __str__(self) -> str:
        where = {None: "", True: ", model apart", False: ", one process"}[self.apart]
        return f"{self.lanes} lane(s), claims of {self.claim}{where}"


# --- baseline -----------------------------------------------------------------------------


def encode_directly(
    texts: Sequence[str], threads: int, device: str, forward: int, claims: Sequence[int]
) -> tuple[float, dict[int, float], list[bytes]]:
    """Seconds for one encode call, for one call per claim's worth of texts (by claim
    size), and the bits."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    torch.set_num_threads(threads)

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    model = SentenceTransformer(
        str(resolve_embedding_model(MINILM)), device=device, local_files_only=True
    )
    model.encode(list(texts[: max(claims)]), batch_size=forward)  # warm-up
    started = time.perf_counter()
    vectors = model.encode(list(texts), batch_size=forward)
    one_call_s = time.perf_counter() - started
    chunked_s = {}
    for claim in sorted(set(claims)):
        started = time.perf_counter()
        for start in range(0, len(texts), claim):
            model.encode(list(texts[start : start + claim]), batch_size=forward)
        chunked_s[claim] = time.perf_counter() - started
    normalised = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return one_call_s, chunked_s, [pack_sign_bits(row) for row in normalised]


def embed_per_claim(
    texts: Sequence[str], args: argparse.Namespace, claim: int, expected: Sequence[bytes]
) -> tuple[float, int]:
    """Seconds for the worker's own path (``Embedder.embed``, which on a GPU runs encode's
    batches itself) a claim at a time, in this process; texts whose bits match."""
    from oracle.engine.embedder import Embedder

    embedder = Embedder(MINILM, device=args.device, batch_size=args.embed_batch)
    embedder.embed(list(texts[:claim]))  # warm-up
    bits: list[bytes] = []
    started = time.perf_counter()
    for start in range(0, len(texts), claim):
        bits += embedder.embed(list(texts[start : start + claim]))
    seconds = time.perf_counter() - started
    return seconds, sum(a == b for a, b in zip(bits, expected, strict=True))


# --- engine -------------------------------------------------------------------------------


@contextmanager
def embedding_worker(
    url: URL, args: argparse.Namespace, variant: Variant
) -> Iterator[subprocess.Popen[bytes]]:
    """``oracle worker --role embedding`` on the scratch database, stopped on exit."""
    command = WorkerSpec(
        role="embedding",
        model=MINILM,
        threads=args.threads,
        device=args.device,
        embed_claim=variant.claim,
        embed_batch=args.embed_batch,
        embed_lanes=variant.lanes,
        embed_process=variant.apart,
    ).command()
    env = {**os.environ, "ORACLE_DATABASE_URL": url.render_as_string(hide_password=False)}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield process
        except Exception:
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-20:]
            print("  the worker's last lines:", *tail, sep="\n    ", flush=True)
            raise
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:  # measured already; a slow stop is not this figure
                print("  note: the worker had not stopped 30 s after SIGTERM; killed", flush=True)
                process.kill()
                process.wait()


def enqueue(engine: Engine, texts: Sequence[str], per_transaction: int) -> list[int]:
    ids = []
    for start in range(0, len(texts), per_transaction):
        with engine.begin() as conn:
            ids += [
                enqueue_job(
                    conn,
                    kind="embedding",
                    model=MINILM,
                    priority=PRIORITY_EMBEDDING,
                    deadline=FAR_DEADLINE,
                    payload={"text": t},
                )
                for t in texts[start : start + per_transaction]
            ]
    return ids


def enqueue_at_once(engine: Engine, texts: Sequence[str]) -> list[int]:
    jobs = [
        NewJob(
            kind="embedding",
            model=MINILM,
            priority=PRIORITY_EMBEDDING,
            deadline=FAR_DEADLINE,
            payload={"text": t},
        )
        for t in texts
    ]
    with engine.begin() as conn:
        return enqueue_jobs(conn, jobs)


def wait_for_completions(engine: Engine, ids: list[int], timeout_s: float) -> float:
    """Wait until every job is done; when the last one finished (epoch seconds, the
    database's clock, which is this machine's). Polled: the finish times come from rows."""

    # written once: through psycopg's list dumper, each poll of 16,384 ids would hold the
    # GIL that the queue-alone lanes need for a tenth of a second
    id_array = bigint_array(ids)

    def finished() -> float | None:
        with engine.connect() as conn:
            done, last = conn.execute(
                text(
                    "SELECT count(*), extract(epoch FROM max(finished_at)) FROM jobs "
                    "WHERE id = ANY(CAST(:ids AS bigint[])) AND status = 'done'"
                ),
                {"ids": id_array},
            ).one()
        return float(last) if done == len(ids) else None

    return float(wait_until(finished, timeout_s=timeout_s, interval_s=0.2, what="embedding jobs"))


def read_results(engine: Engine, ids: Sequence[int]) -> dict[int, Any]:
    """The jobs' rows by id: ``result``, and ``at``, when it was recorded (epoch seconds,
    the recording transaction's start: one value a batch)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, result, extract(epoch FROM finished_at) AS at"
                " FROM jobs WHERE id = ANY(CAST(:ids AS bigint[]))"
            ),
            {"ids": bigint_array(ids)},
        ).all()
    return {row.id: row for row in rows}


@dataclass(frozen=True, slots=True)
class EngineRun:
    enqueue_s: float
    done_s: float
    """From the clock's start to the last completion."""
    bits: list[bytes]
    claims: str
    """The claim sizes: ``8 x 2048``."""
    runner_s: float
    """The worker's runner, summed over its batches (each result's ``elapsed_s``)."""
    recorded_at: list[float]
    """When each batch was recorded (its transaction's start), seconds after the clock's."""


def embed_through_engine(
    url: URL, texts: Sequence[str], args: argparse.Namespace, variant: Variant
) -> EngineRun:
    engine = make_engine(url)
    with embedding_worker(url, args, variant) as worker:
        warm_up = enqueue(engine, texts[: variant.claim], variant.claim)  # loads the model
        wait_for_completions(engine, warm_up, timeout_s=180)
        if worker.poll() is not None:
            raise RuntimeError(f"the embedding worker exited with {worker.returncode}")
        started = time.time()
        if args.at_once:
            ids = enqueue_at_once(engine, texts)
            enqueue_s = time.time() - started
            started = time.time()  # the clock starts at the commit
        else:
            ids = enqueue(engine, texts, ARRIVAL)
            enqueue_s = time.time() - started
        done_s = wait_for_completions(engine, ids, timeout_s=600) - started
    rows = read_results(engine, ids)
    engine.dispose()
    claims: dict[int, int] = {}
    runner_s: dict[float, float] = {}  # a batch's runner time, by when it was recorded
    for row in rows.values():
        claims[row.result["batch"]] = claims.get(row.result["batch"], 0) + 1
        runner_s[float(row.at)] = float(row.result["elapsed_s"])
    return EngineRun(
        enqueue_s=enqueue_s,
        done_s=done_s,
        bits=[bytes.fromhex(rows[i].result["bits"]) for i in ids],
        claims=", ".join(
            f"{n // size} x {size}" for size, n in sorted(claims.items(), reverse=True)
        ),
        runner_s=sum(runner_s.values()),
        recorded_at=[at - started for at in sorted(runner_s)],
    )


class KnownBits(Embedder):
    """The worker's embedder with the encoding done already: the sign bits of the texts
    it was given, looked up (others, such as the runner's warm-up, it encodes)."""

    def __init__(
        self, texts: Sequence[str], bits: Sequence[bytes], device: str, batch_size: int
    ) -> None:
        super().__init__(MINILM, device=device, batch_size=batch_size)
        self._bits = dict(zip(texts, bits, strict=True))

    def embed(self, texts: Sequence[str], centre: Centre | None = None) -> list[bytes]:
        missing = [t for t in texts if t not in self._bits]
        if missing:
            self._bits.update(zip(missing, super().embed(missing, centre), strict=True))
        return [self._bits[t] for t in texts]


def queue_alone(
    url: URL,
    texts: Sequence[str],
    args: argparse.Namespace,
    variant: Variant,
    bits: Sequence[bytes],
) -> tuple[float, float, list[bytes]]:
    """Seconds until the last completion, this process's CPU seconds meanwhile (the
    lanes' interpreter work; the database's is another process's), and the bits, for
    the worker's lanes in this process, warmed up on a claim's worth of jobs, over jobs
    enqueued in one transaction before the clock, with encoding already done."""
    config = WorkerConfig(
        database_url=url.render_as_string(hide_password=False),
        role="embedding",
        model=MINILM,
        device=args.device,
        embed_claim=variant.claim,
        embed_batch=args.embed_batch,
        embed_lanes=variant.lanes,
        poll_interval_s=0.01,
    )
    known = KnownBits(texts, bits, args.device, args.embed_batch)
    runner = EmbeddingJobRunner(
        MINILM, args.device, args.threads, claim=config.claim, embedder=known
    )
    engine = make_engine(url, pool_size=config.lanes + 1)
    try:
        worker = Worker(config, runner, engine)
        lanes = threading.Thread(target=worker.run, args=(time.sleep,), name="queue-alone")
        settle_heap()  # as a worker does before it serves
        lanes.start()
        try:  # a claim's worth first: the lanes connect and warm up off the clock
            wait_for_completions(engine, enqueue_at_once(engine, texts[: variant.claim]), 60)
            ids = enqueue_at_once(engine, texts)
            started, cpu_started = time.time(), time.process_time()  # at the commit
            done_s = wait_for_completions(engine, ids, timeout_s=600) - started
            cpu_s = time.process_time() - cpu_started
        finally:
            worker.stopping.set()
            lanes.join()
        results = read_results(engine, ids)
    finally:
        engine.dispose()
    return done_s, cpu_s, [bytes.fromhex(results[i].result["bits"]) for i in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both ways")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--embed-batch", type=int, default=None, help="texts a forward pass")
    parser.add_argument("--embed-claim", type=int, default=None, help="texts a claim")
    parser.add_argument("--embed-lanes", type=int, default=None, help="the worker's lanes")
    parser.add_argument(
        "--variants",
        default=None,
        help="LANES:CLAIM[:apart|:one],... engine runs against the same baselines",
    )
    add_smoke_flag(parser)
    args = apply_smoke(parser.parse_args(), texts=64)
    gpu = args.device == "cuda"
    worker = WorkerConfig(database_url="", role="embedding", model=MINILM, device=args.device)
    args.embed_batch = args.embed_batch or worker.forward_batch or FORWARD_BATCH
    args.embed_claim = args.embed_claim or worker.claim
    default = Variant(args.embed_lanes or worker.lanes, args.embed_claim)
    variants = [Variant.parse(v) for v in args.variants.split(",")] if args.variants else [default]
    args.at_once = gpu
    texts = short_answers(args.texts)

    with postgres_server() as server_url, scratch_database(server_url) as url:
        title = "bench/embed.py: engine path vs SentenceTransformer.encode"
        print_machine(title, PACKAGES, server_url)
        words = [len(t.split()) for t in texts]
        print(
            f"{len(texts)} short answers, {min(words)}-{max(words)} words, {MINILM} on "
            f"{args.device}, {args.threads} torch threads both ways, forward passes of "
            f"{args.embed_batch} texts both ways",
            flush=True,
        )
        forward = args.embed_batch
        one_call_s, chunked_s, direct_bits = encode_directly(
            texts, args.threads, args.device, forward, [v.claim for v in variants]
        )
        n = len(texts)
        baseline = n / one_call_s
        print(f"baseline, encode(all, batch_size={forward}): {baseline:6.1f} embeddings/s")
        for claim, seconds in chunked_s.items():
            print(f"baseline, encode per {claim} in queue order: {n / seconds:6.1f} embeddings/s")
        claim = variants[0].claim
        embed_s, same = embed_per_claim(texts, args, claim, direct_bits)
        print(
            f"the worker's Embedder.embed per {claim}, no queue: {n / embed_s:6.1f} "
            f"embeddings/s ({ratio(n / embed_s, baseline):.3f} of one encode call; "
            f"sign bits identical for {same} of {n})",
            flush=True,
        )
        ratios = []
        for variant in variants:
            try:
                run = embed_through_engine(url, texts, args, variant)
            except Exception as exc:  # one variant failing leaves the others' figures
                print(f"engine, {variant}: failed: {type(exc).__name__}: {exc}", flush=True)
                ratios.append(float("nan"))
                continue
            engine_rate = n / run.done_s
            same = sum(a == b for a, b in zip(direct_bits, run.bits, strict=True))
            overlap = "before the clock" if args.at_once else "overlapped"
            print(
                f"engine, {variant}: {engine_rate:7.1f} embeddings/s ({run.done_s:.2f} s; "
                f"enqueueing {run.enqueue_s:.2f} s, {overlap}); claims: {run.claims}; "
                f"sign bits identical for {same} of {n}; "
                f"engine/per-{variant.claim} baseline "
                f"{ratio(engine_rate, n / chunked_s[variant.claim]):.3f}; "
                f"engine/one call {ratio(engine_rate, baseline):.3f}\n"
                f"  the runner's own time {run.runner_s:.2f} s of the {run.done_s:.2f}; "
                f"batches recorded at {', '.join(f'{t:.2f}' for t in run.recorded_at)} s",
                flush=True,
            )
            ratios.append(ratio(engine_rate, baseline))
        alone_s, alone_cpu_s, alone_bits = queue_alone(url, texts, args, variants[0], direct_bits)
        same = sum(a == b for a, b in zip(direct_bits, alone_bits, strict=True))
        per_claim_ms = 1000 * alone_cpu_s * variants[0].claim / n
        print(
            f"the queue alone (encoding done), {variants[0]}: {n / alone_s:7.1f} "
            f"embeddings/s ({alone_s:.2f} s; the lanes' CPU {per_claim_ms:.1f} ms a claim "
            f"of {variants[0].claim}; sign bits identical for {same} of {n}); "
            f"queue alone/one call {ratio(n / alone_s, baseline):.3f}",
            flush=True,
        )
    print(f"ratio={ratios[0]:.3f}")


if __name__ == "__main__":
    main()
