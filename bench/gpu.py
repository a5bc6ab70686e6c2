"""The batched LLM engine through the real Postgres queue, against llama.cpp's own
server and its batched-bench ceiling, at several numbers of concurrent requests.

For each concurrency N (default 1, 64 and 256), in rounds (the figures are the last
round's; the first warms everything up):

- **ours:** one ``oracle worker --engine batched`` process (``--parallel`` = the largest
  N, ``--gpu-layers``), idle and ready; N inference jobs of ``--max-tokens`` at
  ``--temperature-milli`` (distinct story prompts and seeds) are enqueued in one
  transaction; the clock runs from that transaction to the last job's ``finished_at``;
  tokens are the jobs' ``completion_tokens`` (a job may end before max tokens);
- **engine alone:** the same N requests through :class:`BatchedLlm` in this process, no
  queue: with the engine's own split of a step (decode, sampling, the rest), this says
  where the time goes;
- **llama-server** (``--llama-bin``) ``--parallel N -fa on -ngl 99`` under N concurrent
  ``/completion`` calls of the same prompts (``ignore_eos``: exactly max tokens each);
- **llama-batched-bench** (``--llama-bin``) ``-npp 32 -ntg <max tokens> -npl 1,64,256``:
  decoding with no sampling, the ceiling.

``--variants`` names the engine settings the engine-alone runs compare, each
``CONTEXTS:SAMPLING`` (``2:host``: two contexts decoded in turn, top-k on the CPU;
``2:device``: top-k 40 on the device; ``2:host/shared``: one KV cache shared by a
context's sequences instead of a stream each; by default ``2:host/shared 2:host`` on a
GPU, ``1:host/shared 1:host`` on a CPU); ``--worker-variants`` those of the queue runs
(by default the last engine variant; a layout named there is the worker's
``--kv-layout``), where ``2:host:2`` starts two worker processes on the device, each
with half the slots and half the threads (two processes launch their graphs in
parallel, where one process's contexts take turns on one thread).

``--device cpu`` (and ``--smoke``) runs ours against the sequential engine through the
same queue instead of the llama.cpp tools. The last line reads
``ratio=<ours/baseline tokens per second at the largest N>``, the baseline being
llama-server when it ran, else the sequential worker.

Run on a GPU machine: ``python bench/gpu.py --device cuda --llama-bin DIR`` (DIR holding
``llama-server`` and ``llama-batched-bench`` from the same llama.cpp build).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# llama.cpp's libraries first: a CUDA build loaded after numpy crashed on the H200 machine
import llama_cpp  # isort: skip

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from bench._common import (
    SMOLLM,
    add_smoke_flag,
    apply_smoke,
    postgres_server,
    print_machine,
    ratio,
    scratch_database,
    wait_until,
)
from oracle.engine.batched import StepTimes
from oracle.engine.llm_options import KV_LAYOUTS, KvLayout, LlmEngineOptions
from oracle.engine.supervisor import WorkerSpec
from oracle.store import make_engine
from oracle.store.queue import PRIORITY_INFERENCE, NewJob, enqueue_jobs

SUBJECTS = ("a dragon", "a lighthouse keeper", "a lost robot", "two rival bakers", "a comet")
SERVER_PORT = 18080
PLACES = ("in Lyon", "under the sea", "on Mars", "in a small village", "in the year 3000")


@dataclass(frozen=True, slots=True)
class Rate:
    tokens: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def prompts(count: int) -> list[str]:
    return [
        f"Write a long story about {SUBJECTS[i % len(SUBJECTS)]} "
        f"{PLACES[(i // len(SUBJECTS)) % len(PLACES)]} (part {i})."
        for i in range(count)
    ]


# --- ours, through the queue --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """Batched engine settings under comparison: ``CONTEXTS:host`` or ``CONTEXTS:device``,
    for the queue runs ``:PROCESSES`` after it (worker processes sharing the device and
    the queue, the slots split among them; default 1), then ``/shared`` or ``/streams``
    (the KV cache's layout, ``--kv-layout``; default the engine's own choice for the
    device)."""

    contexts: int
    device_top_k: bool
    processes: int = 1
    kv_layout: KvLayout | None = None

    @classmethod
    def parse(cls, text_: str) -> Variant:
        settings, _, layout = text_.partition("/")
        contexts, _, rest = settings.partition(":")
        sampling, _, processes = rest.partition(":")
        if (
            not contexts.isdigit()
            or sampling not in ("host", "device")
            or not (processes or "1").isdigit()
            or (layout and layout not in KV_LAYOUTS)
        ):
            raise argparse.ArgumentTypeError(
                f"{text_!r}: CONTEXTS:host or CONTEXTS:device, then :PROCESSES or nothing, "
                "then /shared, /streams or nothing"
            )
        kv_layout = cast(KvLayout, layout) if layout else None  # one of KV_LAYOUTS: checked
        return cls(int(contexts), sampling == "device", int(processes or "1"), kv_layout)

    def __str__(self) -> str:
        processes = f":{self.processes}" if self.processes > 1 else ""
        layout = f"/{self.kv_layout}" if self.kv_layout else ""
        return f"{self.contexts}:{'device' if self.device_top_k else 'host'}{processes}{layout}"


def llama_library() -> str:
    """The libllama this process loaded (the worker preloads the same one)."""
    return str(llama_cpp.llama_cpp._lib._name)


@contextmanager
def worker_processes(
    url: URL, spec: WorkerSpec, count: int, log_dir: Path, name: str
) -> Iterator[None]:
    """``count`` copies of the worker, ready (each registered) before this yields."""
    env = {**os.environ, "ORACLE_DATABASE_URL": url.render_as_string(hide_password=False)}
    if spec.llm.gpu_layers != 0:  # numpy loads first in `oracle worker`: see the import above
        env["LD_PRELOAD"] = llama_library()
    processes, logs = [], [log_dir / f"{name}-{index}.log" for index in range(count)]
    for log_path in logs:
        with log_path.open("wb") as log:
            processes.append(
                subprocess.Popen(spec.command(), env=env, stdout=log, stderr=subprocess.STDOUT)
            )
    engine = make_engine(url)
    try:

        def ready() -> bool:
            for process, log_path in zip(processes, logs, strict=True):
                assert process.poll() is None, f"worker exited: {log_path.read_text()[-2000:]}"
            with engine.connect() as conn:
                return bool(conn.scalar(text("SELECT count(*) FROM workers")) >= count)

        wait_until(ready, timeout_s=300, interval_s=0.2, what="workers ready")
        yield
    finally:
        engine.dispose()
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def queue_round(engine: Engine, texts: Sequence[str], max_tokens: int, temperature: int) -> Rate:
    """Enqueue the jobs in one transaction; tokens and seconds until the last is done."""
    deadline = datetime(2100, 1, 1, tzinfo=UTC)
    jobs = [
        NewJob(
            kind="inference",
            model=SMOLLM,
            priority=PRIORITY_INFERENCE,
            deadline=deadline,
            payload={
                "prompt": prompt,
                "temperature_milli": temperature,
                "max_tokens": max_tokens,
                "seed": 1000 + i,
            },
        )
        for i, prompt in enumerate(texts)
    ]
    with engine.begin() as conn:
        started = float(conn.scalar(text("SELECT extract(epoch FROM now())")))
        ids = enqueue_jobs(conn, jobs)

    def done() -> Rate | None:
        with engine.connect() as conn:
            count, dead, tokens, last = conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE status = 'done'), "
                    "count(*) FILTER (WHERE status IN ('dead', 'failed', 'expired')), "
                    "sum((result->>'completion_tokens')::int), "
                    "extract(epoch FROM max(finished_at)) FROM jobs WHERE id = ANY(:ids)"
                ),
                {"ids": ids},
            ).one()
        assert not dead, f"{dead} jobs failed"
        return Rate(int(tokens), float(last) - started) if count == len(ids) else None

    result: Rate = wait_until(done, timeout_s=600, interval_s=0.02, what="inference jobs")
    return result


def run_ours(
    server_url: URL,
    spec: WorkerSpec,
    counts: Sequence[int],
    args: argparse.Namespace,
    log_name: str,
    processes: int = 1,
) -> dict[int, Rate]:
    rates: dict[int, Rate] = {}
    with (
        scratch_database(server_url) as url,
        worker_processes(url, spec, processes, args.log_dir, log_name),
    ):
        engine = make_engine(url)
        try:
            for n in counts:
                for _ in range(args.rounds):
                    rates[n] = queue_round(engine, prompts(n), args.max_tokens, args.temperature)
                print(
                    f"  {spec.llm.engine} worker x{processes}, {n} at once: "
                    f"{rates[n].per_s:,.0f} tokens/s"
                )
        finally:
            engine.dispose()
    return rates


# --- the engine alone ---------------------------------------------------------------------


def run_engine_alone(
    counts: Sequence[int], args: argparse.Namespace, variant: Variant
) -> dict[int, str]:
    from oracle.engine.batched import BatchedLlm, GenerationRequest
    from oracle.engine.models import lookup_llm

    notes: dict[int, str] = {}
    with BatchedLlm(
        lookup_llm(SMOLLM),
        parallel=max(counts),
        threads=args.threads,
        gpu_layers=args.gpu_layers,
        slot_tokens=args.slot_tokens,
        contexts=variant.contexts,
        device_top_k=variant.device_top_k,
        kv_unified=variant.kv_layout == "shared",
    ) as llm:
        for n in counts:
            for _ in range(args.rounds):
                requests = [
                    GenerationRequest(
                        key=i,
                        prompt=p,
                        temperature_milli=args.temperature,
                        max_tokens=args.max_tokens,
                        seed=1000 + i,
                    )
                    for i, p in enumerate(prompts(n))
                ]
                before = dataclasses.replace(llm.times)
                llm.step_log = []
                started = time.perf_counter()
                outcomes = llm.generate(requests)
                seconds = time.perf_counter() - started
            tokens = sum(getattr(o, "completion_tokens", 0) for o in outcomes)
            notes[n] = (
                f"{tokens / seconds:,.0f} tokens/s; "
                + describe_steps(llm.times.since(before), seconds)
                + describe_spread(llm.step_log or [])
            )
            llm.step_log = None
            print(f"  engine alone [{variant}], {n} at once: {notes[n]}", flush=True)
    return notes


def describe_steps(times: StepTimes, seconds: float) -> str:
    """Where a decode's time went, from the engine's StepTimes over a run: the owner's
    thread (its wait for the other context's read is where the collector's thread was
    longer), then the read (on the collector's thread with two contexts)."""
    ms = 1000 / times.steps
    rest = seconds - times.total_s
    return (
        f"{times.steps} decodes of {times.tokens / times.steps:.0f} sequences, per decode "
        f"{seconds * ms:.2f} ms: building the batch {times.fill_s * ms:.2f}, launch "
        f"{times.launch_s * ms:.2f}, waiting for the read {times.join_s * ms:.2f}, recording "
        f"{times.advance_s * ms:.2f}, between steps {rest * ms:.2f}; the read: handed over "
        f"after {times.handoff_s * ms:.2f}, waiting for the device {times.wait_s * ms:.2f}, "
        f"sampling {times.sample_s * ms:.2f}"
    )


def describe_spread(steps: Sequence[StepTimes]) -> str:
    """The median and 90th percentile of a step's parts, step by step (a mean over the
    run hides whether the owner waits a little on every step or a lot on a few)."""
    if len(steps) < 2:
        return ""

    def spread(values: list[float]) -> str:
        deciles = statistics.quantiles(values, n=10)
        p50, p90 = deciles[4], deciles[8]
        return f"{p50 * 1000:.2f}/{p90 * 1000:.2f}"

    return (
        "; a step, median/p90 ms: launch "
        + spread([s.launch_s for s in steps])
        + ", the read from hand-over to its end "
        + spread([s.handoff_s + s.wait_s + s.sample_s for s in steps])
        + ", waiting for the read "
        + spread([s.join_s for s in steps])
        + ", whole "
        + spread([s.total_s for s in steps])
    )


# --- llama.cpp's own tools ------------------------------------------------------------------


def run_llama_server(
    llama_bin: Path, model: Path, counts: Sequence[int], args: argparse.Namespace, log: Path
) -> dict[int, Rate]:
    rates: dict[int, Rate] = {}
    for n in counts:
        command = [
            str(llama_bin / "llama-server"), "-m", str(model), "--parallel", str(n),
            "-c", str(n * args.slot_tokens), "-ngl", "99", "-fa", "on", "--port", str(SERVER_PORT),
            "--threads", str(args.threads), "--no-webui",
        ]  # fmt: skip
        with log.open("ab") as out:
            server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(
                lambda: _http_ok(f"http://127.0.0.1:{SERVER_PORT}/health"),
                timeout_s=120,
                interval_s=0.2,
                what="llama-server",
            )
            for _ in range(args.rounds):
                rates[n] = _server_round(SERVER_PORT, prompts(n), args)
            print(f"  llama-server --parallel {n}: {rates[n].per_s:,.0f} tokens/s")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return rates


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _server_round(port: int, texts: Sequence[str], args: argparse.Namespace) -> Rate:
    def one(i_text: tuple[int, str]) -> int:
        i, prompt = i_text
        body = {
            "prompt": f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n",
            "n_predict": args.max_tokens,
            "temperature": args.temperature / 1000,
            "seed": 1000 + i,
            "ignore_eos": True,
            "cache_prompt": False,
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            return int(json.loads(response.read())["tokens_predicted"])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        tokens = sum(pool.map(one, enumerate(texts)))
    return Rate(tokens, time.perf_counter() - started)


def run_batched_bench(
    llama_bin: Path, model: Path, counts: Sequence[int], args: argparse.Namespace
) -> dict[int, float]:
    """Generation tokens/s (S_TG) for each number of parallel sequences."""
    command = [
        str(llama_bin / "llama-batched-bench"), "-m", str(model), "-c", "32768", "-b", "2048",
        "-ub", "512", "-npp", "32", "-ntg", str(args.max_tokens),
        "-npl", ",".join(map(str, counts)), "-ngl", "99", "-fa", "on",
    ]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rates: dict[int, float] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and re.fullmatch(r"\d+", cells[2] or ""):
            rates[int(cells[2])] = float(cells[7])
    print(f"  llama-batched-bench generation: {rates}")
    return rates


# --- report -------------------------------------------------------------------------------


def describe_gpu() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none"
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    return subprocess.run(query, capture_output=True, text=True).stdout.strip() or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=int, default=700, help="thousandths")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--slot-tokens", type=int, default=256)
    parser.add_argument("--llama-bin", type=Path, default=None)
    parser.add_argument("--variants", type=Variant.parse, nargs="+", default=None)
    parser.add_argument("--worker-variants", type=Variant.parse, nargs="+", default=None)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    add_smoke_flag(parser)
    args = apply_smoke(
        parser.parse_args(), device="cpu", concurrency=[1, 3], max_tokens=4, rounds=1, threads=2
    )
    args.gpu_layers = -1 if args.device == "cuda" else 0
    counts = sorted(set(args.concurrency))
    # by default the engine alone in both KV layouts, the device's own last
    contexts = 2 if args.device == "cuda" else 1
    default = [Variant(contexts, False, kv_layout="shared"), Variant(contexts, False)]
    variants = args.variants or default
    worker_variants = args.worker_variants or [dataclasses.replace(variants[-1], kv_layout=None)]
    if any(variant.processes != 1 for variant in variants):
        parser.error("--variants run the engine in this process: no :PROCESSES there")

    with postgres_server() as server_url:
        print_machine("LLM engines on one device", ["sqlalchemy", "psycopg"], server_url)
        print(f"llama-cpp-python {llama_cpp.__version__}; GPU: {describe_gpu()}")
        print(
            f"{args.max_tokens} tokens a request at temperature {args.temperature / 1000}, "
            f"{args.rounds} rounds (the last counts), {args.threads} threads\n",
            flush=True,
        )
        ours: dict[Variant, dict[int, Rate]] = {}
        for variant in worker_variants:
            options = LlmEngineOptions(
                engine="batched",
                parallel=-(-max(counts) // variant.processes),
                gpu_layers=args.gpu_layers,
                slot_tokens=args.slot_tokens,
                contexts=variant.contexts,
                device_top_k=variant.device_top_k,
                kv_layout=variant.kv_layout,
            )
            threads = max(1, args.threads // variant.processes)
            spec = WorkerSpec(role="llm", model=SMOLLM, threads=threads, llm=options)
            name = f"gpu-bench-worker-{str(variant).replace(':', '-').replace('/', '-')}"
            print(f"worker [{variant}]:", flush=True)
            ours[variant] = run_ours(server_url, spec, counts, args, name, variant.processes)
    notes = {variant: run_engine_alone(counts, args, variant) for variant in variants}
    baseline_name, baseline, ceiling = "sequential worker", {}, {}
    if args.llama_bin is not None:
        from oracle.engine.models import resolve_llm

        model = resolve_llm(SMOLLM)
        baseline_name = "llama-server"
        server_log = args.log_dir / "gpu-bench-server.log"
        served = run_llama_server(args.llama_bin, model, counts, args, server_log)
        baseline = {n: r.per_s for n, r in served.items()}
        ceiling = run_batched_bench(args.llama_bin, model, counts, args)
    else:
        with postgres_server() as server_url:
            sequential = WorkerSpec(role="llm", model=SMOLLM, threads=args.threads)
            one_by_one = run_ours(server_url, sequential, counts, args, "gpu-bench-sequential")
            baseline = {n: r.per_s for n, r in one_by_one.items()}
    print(
        f"\n| worker | at once | ours tokens/s | {baseline_name} | batched-bench "
        "| ours/baseline | ours/ceiling |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant, rates in ours.items():
        for n in counts:
            ceiling_n = ceiling.get(n, float("nan"))
            print(
                f"| {variant} | {n} | {rates[n].per_s:,.0f} | "
                f"{baseline.get(n, float('nan')):,.0f} | {ceiling_n:,.0f} | "
                f"{ratio(rates[n].per_s, baseline.get(n, 0)):.2f} | "
                f"{ratio(rates[n].per_s, ceiling_n):.2f} |"
            )
    for variant, by_count in notes.items():
        for n in counts:
            print(f"engine alone [{variant}] at {n}: {by_count[n]}")
    top, last = counts[-1], ours[worker_variants[-1]]
    print(f"ratio={ratio(last[top].per_s, baseline.get(top, 0)):.2f}")


if __name__ == "__main__":
    main()
