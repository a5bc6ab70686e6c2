"""Continuous batching on llama.cpp's low-level API: many requests decoded together.

One :class:`BatchedLlm` holds one model and ``slots`` KV-cache sequences of up to
``slot_tokens`` cells each. Requests are admitted into free slots at any time; every
:meth:`BatchedLlm.step` builds one ``llama_batch`` of the next token of each decoding
sequence plus prompt tokens of newly admitted ones, decodes it with one
``llama_decode``, samples every sequence that produced logits, and retires the sequences
that ended (an end-of-generation token, or ``max_tokens`` tokens: exactly that many,
never one more) at once, freeing their slots for the next admissions.

**Same answers as the sequential runner.** Each token is chosen by coupled sampling
(:mod:`oracle.engine.sampling`: top-k 40, top-p 0.95, min-p 0.05, then the Gumbel-max
draw of the request's seed, step and token id; greedy at temperature 0), as the
sequential runner chooses it; the prompt is the same tokens (the model's chat template,
rendered by the same formatter), and the text is the same bytes (``token_to_piece``
without special tokens, invalid UTF-8 dropped). Where the logits are the same, the text
is too; batched arithmetic may change the logits slightly on some back ends (GPU kernels
chosen by batch size), and coupled sampling makes such changes matter only where the
two best candidates nearly tie.

**Sampling off the GIL.** Sampling is plain CPU work per sequence (the top 40 of the
vocabulary's logits, the filters, the draw), done with numpy over a block of sequences
at once; numpy's partition releases the GIL, so the blocks of one step are sampled by a
pool of threads. The main thread reads the logits once first (which synchronises the
device and reorders the outputs); the blocks only read them. With a few threads (a
CPU's), a row's top 40 are looked for among the logits above a threshold read off a
sample of the row, a quarter of the work; with many (a GPU machine's), each block's rows
are partitioned whole, in one call that releases the GIL throughout, since the
threshold's many small calls make the threads queue (``_WHOLE_ROWS_THREADS``).

**Two contexts in turn (``contexts=2``, for GPUs).** ``llama_decode`` returns once the
device has the work; the results are waited for when they are read. With the slots
split over two llama.cpp contexts (the model's weights are shared; each context has its
own KV cache, batch and output buffers), a step launches one context's decode while a
collector thread waits for the other's results and samples them: building one half's
graph, sampling the other half and the device's work on both overlap. The calls on the
two threads are on different contexts (and CUDA streams); the owner's bookkeeping runs
after both. On a CPU, decoding is itself CPU work and one context is right. (Launching
the contexts together instead, each waited for and sampled on a thread of its own, was
slower on an H200: 8,807 tokens/s against 9,716 at 256 requests; each context then
waits on its own results and shares the sampling threads with the other.)

**One busy context on a GPU launches ahead.** When only one context has work (a
request decoded alone, say), a step reads the decode launched the step before, records
it and launches the next before returning, so the device decodes while the caller does
its own work between steps (a worker's claims, deadlines, leases, results). What is
left between two decodes is reading the logits, sampling and building the batch; a row
decoded alone is sampled without arrays of rows (``oracle.engine.sampling.choose_token``),
since each numpy call costs microseconds there. On an H200 this took a worker's one
request from a median 0.84 of llama-server's tokens/s (0.77-0.99, six runs) to 0.97
(0.91-1.10, seven runs; ``README.md``). The
price is that requests admitted between two steps join one decode later. On a CPU the
decode is done when ``llama_decode`` returns, so there is nothing to overlap: a step
launches the context's decode and reads it, and new requests join the next decode.

**The KV cache: a stream a sequence, packed on a GPU.** With a stream of its own, a
sequence's attention reads only its own cells, and its logits do not depend on the other
sequences' tokens. But a multi-stream cache puts only consecutive sequence ids with equal
token counts into one micro-batch, each launched as a graph of its own. On a GPU the
engine therefore packs the streams (``pack_streams``): a free slot between busy ones
reads a placeholder token, and prompts admitted together take their slots longest first,
so that what is left of them after each micro-batch is again a run of consecutive ids.
Packed, a step of decoding has one shape from one step to the next, and llama.cpp's CUDA
back end replays the graph it captured instead of launching every kernel: on an H200, a
decode of 122 sequences launched in a median 1.7-1.9 ms. Prompts are read in large
micro-batches for the same reason (``oracle.engine.llm_options.GPU_BATCH_TOKENS``). One
cache shared by a context's sequences (``kv_unified``, ``--kv-layout shared``; each
sequence's attention masked to its own cells, which add exact zeros, so that the others
change its answer only in the last bits, through how many cells they hold) fills a mask
over all its cells on the CPU at every decode and changes shape as it grows (launch
10.8 ms a decode, median): the worker made 10,074 tokens/s at 256 requests with it
against 12,056 with packed streams in the same run. It wants flash
attention (a GPU context takes it where the device has it): without it, a micro-batch's
attention scores span the whole shared cache, and llama.cpp reserves for them (128 slots
of 512 tokens: a 1,286 MiB compute buffer against 98 MiB with flash attention or with
streams, measured on the CPU). So where llama.cpp does not report flash attention on for
a GPU context asked for a shared cache (its log says so when it resolves it), the engine
gives every sequence a stream of its own instead, and says so in a warning.

**On a CPU, streams are not packed.** Packing measured nothing there (SmolLM2, 8
requests on 2 cores: 64 and 60 tokens/s packed, 63 and 59 not), and it changes how
prompts are cut into micro-batches. That matters to exactness: a prompt token read in a
micro-batch that holds one token of its sequence takes llama.cpp's one-token path, whose
rounding differs from a longer micro-batch's (seen with SmolLM2: a prompt fed a token at
a time gives another answer; any chunk of two or more gives the same). Which cuts a
prompt gets depends on the prompts admitted with it, so a CPU engine's answer to a
request can depend on its company in the last bits, as a GPU's does through its kernels.

**Top-k on the device (``device_top_k``).** Each slot's context is created with a
backend sampler (llama.cpp's experimental backend sampling) that keeps the 40 highest
logits on the device: only those 40 candidates of each sequence come back instead of
the whole vocabulary, and coupled sampling then runs on them on the CPU (its top-k 40
keeps all of them, so the rules and the draw are the same). Every slot's top-k runs at
every decode, busy or not, so it pays when most slots are busy.

Not for use from several threads: one owner calls admit, step and cancel.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from oracle.engine.llm import (
    MAX_SEED,
    Generation,
    InvalidGenerationRequest,
    ModelHasNoChatTemplate,
    ModelLoadFailed,
    PromptTooLong,
    TokenPieces,
)
from oracle.engine.llm_options import (
    MIN_MICRO_BATCH,
    gpu_batch_tokens,
    gpu_micro_batch_tokens,
    padded_to_kv_cells,
    slots_for_budget,
)
from oracle.engine.models import LlmSpec
from oracle.engine.sampling import TOP_K, choose_among, choose_token, top_candidates
from oracle.errors import OracleError

__all__ = [
    "BatchedLlm",
    "DecodeFailed",
    "Finished",
    "GenerationRequest",
    "NoFreeSlot",
    "StepTimes",
]

logger = logging.getLogger(__name__)

_CHAT_TEMPLATE_KEY = b"tokenizer.chat_template"
_KV_BYTES_PER_VALUE = 2  # f16 cache
_FLASH_ATTN_AUTO = -1
_FLASH_ATTN_OFF = 0
_FLASH_ATTN_ON = b"Flash Attention enabled"
"""What llama.cpp logs when it resolves automatic flash attention to on."""
_GPU_DECODE_THREADS = 4
_CPU_BATCH_TOKENS = 2048
"""Tokens one decode takes on a CPU, in llama.cpp's default micro-batches
(``MIN_MICRO_BATCH``): how a prompt is cut decides the last bits of its keys (the
module's notes). A GPU's: ``gpu_batch_tokens``."""
_PLACEHOLDER_TOKEN = 0
"""What a free slot between busy ones reads in packed streams (any token will do: it has
no logits, and its cell is removed before the next step)."""
_ROWS_PER_TASK = 8
"""Sequences one sampling task takes over the whole vocabulary (about 65 us each on a
core of the 2-core development machine, 160-220 us before candidates were found by a
sampled threshold); fewer than two tasks' worth are sampled on the calling thread, since
a pool round trip costs more."""
_LOGITS_VIEWS = 1024
"""At most this many views of a context's logits are kept (one for each number of rows)."""
_ROWS_PER_TASK_TOP_K = 64
"""The same over the 40 candidates of device top-k (a few microseconds each)."""
_WHOLE_ROWS_THREADS = 8
"""From this many sampler threads, a block's rows are partitioned whole (``top_candidates``'s
``whole_rows``). The sampled threshold does a quarter of the work, but its many small numpy
calls hold the GIL between them, and 16 threads queue: on an H200 machine's 16 cores the
engine at 256 requests sampled 122 rows a decode in 11 ms that way against 4.4-5.0 whole
(random logits, 128 rows in blocks of 8: 7.0-10.2 ms against 3.0-3.4 on 16 threads, and
9.7-10.7 against 41-49 on one)."""


class DecodeFailed(OracleError):
    """llama_decode failed; the sequences of the batch were dropped."""


class NoFreeSlot(OracleError):
    """Every sequence slot is taken; admit only up to free_slots requests."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationRequest:
    """One request to answer; ``key`` is the caller's (a job id)."""

    key: int
    prompt: str
    temperature_milli: int
    max_tokens: int
    seed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Finished:
    """A request that left the batch: its answer, or why there is none."""

    key: int
    outcome: Generation | OracleError
    elapsed_s: float
    """From admission to retirement."""


@dataclass(slots=True)
class StepTimes:
    """Where the steps' time went, summed since the engine started (for benchmarks).

    The owner's thread builds a batch (``fill_s``), launches it (``launch_s``), waits for
    the other context's results to be read and sampled (``join_s``; with one context it
    reads them itself) and records them (``advance_s``). Reading is waiting for the
    device (``wait_s``) and sampling (``sample_s``), on the collector's thread when there
    are several contexts, so that it overlaps the owner's fill and launch.
    """

    steps: int = 0
    """Decode calls (with two contexts, each step launches one and reads the other's)."""
    tokens: int = 0
    """Tokens sampled."""
    fill_s: float = 0.0
    launch_s: float = 0.0
    """In llama_decode: building and launching the graph."""
    join_s: float = 0.0
    handoff_s: float = 0.0
    """From handing a read to the collector's thread to its start."""
    wait_s: float = 0.0
    sample_s: float = 0.0
    advance_s: float = 0.0
    total_s: float = 0.0
    """Whole steps."""

    def since(self, before: StepTimes) -> StepTimes:
        """What was added to these times since ``before`` was copied from them."""
        return StepTimes(
            *(now - then for now, then in zip(astuple(self), astuple(before), strict=True))
        )


@dataclass(slots=True, eq=False)
class _Part:
    """One llama.cpp context and the slots it holds (its sequence ids are 0..capacity-1)."""

    ctx: Any  # llama_context_p
    memory: Any
    batch: Any
    views: _BatchViews
    capacity: int
    free: list[int]
    """A heap: the lowest free sequence id first."""
    backend_chains: list[Any]
    """Device top-k samplers, one a slot; freed after the context."""
    sequences: dict[int, _Sequence] = field(default_factory=dict)
    in_flight: list[tuple[_Sequence, int]] | None = None
    """Launched and not read yet: the sequences that will have logits, and their index."""
    placeholders: list[int] = field(default_factory=list)
    """Free sequence ids that read a placeholder token in the last step (packed streams)."""
    dropped: set[int] = field(default_factory=set)
    """``id`` of each in-flight sequence cancelled since its launch: its logits stay in
    their row (the rows are the launched outputs, in order) and its token is not used."""
    _logits: dict[tuple[int, int], npt.NDArray[np.float32]] = field(default_factory=dict)

    def logits_rows(self, rows: int, width: int) -> npt.NDArray[np.float32]:
        """The last decode's logits, a row an output in batch order, as a numpy view.

        Views are kept by the buffer's address and the number of rows, since making one
        costs tens of microseconds right after a decode, on every token of a request
        decoded alone; llama.cpp moves the buffer only when it needs a larger one.
        """
        pointer = llama_cpp.llama_get_logits(self.ctx)
        key = (ctypes.cast(pointer, ctypes.c_void_p).value or 0, rows)
        view = self._logits.get(key)
        if view is None:
            if len(self._logits) > _LOGITS_VIEWS:  # a moved buffer's views are dead
                self._logits.clear()
            view = self._logits[key] = np.ctypeslib.as_array(pointer, shape=(rows, width))
        return view


@dataclass(frozen=True, slots=True)
class _Read:
    """A context's results, sampled: a token for each output, and the time it took."""

    outputs: list[tuple[_Sequence, int]]
    tokens: list[int]
    started: float
    """When the read began (``time.perf_counter``)."""
    wait_s: float
    sample_s: float


@dataclass(slots=True, eq=False)
class _Sequence:
    """A request in a slot: what is still to be read, what was generated."""

    request: GenerationRequest
    part: _Part
    seq_id: int
    pending: list[int]
    """Prompt tokens not decoded yet."""
    prompt_tokens: int
    admitted_at: float
    n_past: int = 0
    next_token: int = -1
    """The last sampled token, decoded in the next step."""
    tokens: list[int] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)


class BatchedLlm:
    """One GGUF model decoding up to ``slots`` requests together."""

    def __init__(
        self,
        spec: LlmSpec,
        *,
        parallel: int,
        threads: int,
        gpu_layers: int = 0,
        kv_budget_mib: float | None = None,
        slot_tokens: int | None = None,
        batch_tokens: int | None = None,
        contexts: int = 1,
        device_top_k: bool = False,
        kv_unified: bool = False,
        pack_streams: bool | None = None,
        launch_ahead: bool | None = None,
        model_path: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        """Load ``spec``'s model and make room for the slots the KV budget allows.

        ``slot_tokens`` (prompt plus max_tokens of one request; default the model's
        context) is rounded up to a multiple of 256. ``threads`` serve both llama.cpp's
        CPU work and sampling. ``batch_tokens`` is the most tokens one decode takes
        (default: on a GPU ``gpu_batch_tokens``, on a CPU 2,048). ``contexts`` (at most
        one a slot) share the slots; ``kv_unified`` gives each context one KV cache for
        all its sequences instead of a stream each; ``pack_streams`` (default: on a GPU)
        keeps a step over streams one micro-batch; ``launch_ahead`` (default: on a GPU)
        has a step with one busy context launch the next decode before it returns; see
        the module's notes for these and ``device_top_k``.
        Raises ModelNotInstalled, ModelLoadFailed, ModelHasNoChatTemplate or
        KvBudgetTooSmall.
        """
        if threads < 1:
            raise InvalidGenerationRequest(field="threads", value=threads, allowed=">= 1")
        if contexts < 1:
            raise InvalidGenerationRequest(field="contexts", value=contexts, allowed=">= 1")
        self.spec = spec
        self.model_path = model_path or spec.resolve(cache_dir=cache_dir)
        self.device_top_k = device_top_k
        self.kv_unified = kv_unified
        self.pack_streams = gpu_layers != 0 if pack_streams is None else pack_streams
        self._launch_ahead = gpu_layers != 0 if launch_ahead is None else launch_ahead
        self._parts: list[_Part] = []
        self._by_key: dict[int, _Sequence] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._collector: ThreadPoolExecutor | None = None
        self._model: Any = None
        started = time.perf_counter()
        _quiet_llama_logs()
        llama_cpp.llama_backend_init()
        self._model = _load_model(spec.name, self.model_path, gpu_layers)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        wanted_slot = padded_to_kv_cells(slot_tokens or spec.context_tokens)
        try:
            self.slots = slots_for_budget(
                parallel=parallel,
                kv_budget_mib=kv_budget_mib,
                slot_tokens=wanted_slot,
                kv_bytes_per_token=kv_bytes_per_token(self._model),
            )
            if batch_tokens is None and gpu_layers != 0:
                batch_tokens = gpu_batch_tokens(self.slots, wanted_slot)
            self.batch_tokens = max(batch_tokens or _CPU_BATCH_TOKENS, self.slots + 1)
            self.micro_batch_tokens = (
                gpu_micro_batch_tokens(self.batch_tokens, self._n_vocab)
                if gpu_layers != 0
                else min(MIN_MICRO_BATCH, self.batch_tokens)
            )
            count = min(contexts, self.slots)
            for index in range(count):
                capacity = self.slots // count + (1 if index < self.slots % count else 0)
                self._parts.append(self._new_part(capacity, wanted_slot, threads, gpu_layers))
        except OracleError:
            self.close()
            raise
        self.slot_tokens = wanted_slot
        self._turn = 0
        self._piece = TokenPieces(self._vocab)
        self._end_of_generation: dict[int, bool] = {}
        self.times = StepTimes()
        self.step_log: list[StepTimes] | None = None
        """A list to append each step's own times to (for benchmarks); None: not kept."""
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sampler")
        self._collector = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="collector")
            if len(self._parts) > 1
            else None
        )
        self._threads = threads
        self._rows_per_task = _ROWS_PER_TASK_TOP_K if device_top_k else _ROWS_PER_TASK
        self._whole_rows = threads >= _WHOLE_ROWS_THREADS
        self._formatter = self._chat_formatter() if spec.prompt_style == "chat" else None
        self.load_seconds = time.perf_counter() - started
        logger.info(
            "loaded model for batched decoding",
            extra={
                "model": spec.name,
                "path": str(self.model_path),
                "slots": self.slots,
                "slot_tokens": self.slot_tokens,
                "contexts": len(self._parts),
                "device_top_k": device_top_k,
                "kv_unified": self.kv_unified,
                "gpu_layers": gpu_layers,
                "threads": threads,
                "load_seconds": round(self.load_seconds, 3),
            },
        )

    # --- what callers see -------------------------------------------------------------

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def contexts(self) -> int:
        return len(self._parts)

    @property
    def free_slots(self) -> int:
        return sum(len(part.free) for part in self._parts)

    @property
    def active(self) -> int:
        """Requests in the batch (decoding or still reading their prompt)."""
        return len(self._by_key)

    def active_keys(self) -> list[int]:
        return list(self._by_key)

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The tokens the model reads for a prompt (chat template and BOS included), as
        :class:`oracle.engine.llm.LlmRunner` builds them."""
        if self._formatter is None:
            return self._tokenize(prompt.encode("utf-8"), add_bos=True)
        rendered = self._formatter(messages=[{"role": "user", "content": prompt}])
        return self._tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special)

    def admit(self, request: GenerationRequest) -> None:
        """Take a request into a free slot; it starts with the next step.

        The slot is in the context with the most free slots, so that the contexts decode
        halves of the same size. Raises InvalidGenerationRequest or PromptTooLong (before
        taking a slot), or NoFreeSlot.
        """
        tokens = self._checked_prompt(request)
        part = max(self._parts, key=lambda p: len(p.free))
        if not part.free:
            raise NoFreeSlot(f"{self.slots} slots busy")
        if request.key in self._by_key:
            raise InvalidGenerationRequest(
                field="key", value=request.key, allowed="not in the batch"
            )
        seq_id = heapq.heappop(part.free)
        sequence = _Sequence(
            request=request,
            part=part,
            seq_id=seq_id,
            pending=tokens,
            prompt_tokens=len(tokens),
            admitted_at=time.perf_counter(),
        )
        part.sequences[seq_id] = sequence
        self._by_key[request.key] = sequence

    def cancel(self, key: int) -> bool:
        """Drop a request from the batch and free its slot; False when it is not there."""
        sequence = self._by_key.get(key)
        if sequence is None:
            return False
        part = sequence.part
        if part.in_flight is not None:  # its cells are being written: wait, then forget it
            llama_cpp.llama_synchronize(part.ctx)
            part.dropped.add(id(sequence))
        self._retire(sequence)
        return True

    def step(self) -> list[Finished]:
        """Decode and sample; the requests that ended in this step.

        With one busy context: decode every sequence, then sample them; launching ahead
        (on a GPU), read and sample the decode launched a step before instead, then
        launch the next, which is still on the device when this returns. With several:
        launch the next context's decode, then read and sample the one launched a step
        before.
        """
        if not self._by_key:
            return []
        before = None if self.step_log is None else replace(self.times)
        started = time.perf_counter()
        parts, index = self._parts, self._turn
        self._turn = (index + 1) % len(parts)
        busy = [part for part in parts if part.sequences or part.in_flight is not None]
        if len(busy) == 1:
            # one context: read the decode launched ahead a step before, or launch one
            # now and read it; launching ahead, the next is launched at once, so that the
            # device decodes while the caller works between steps
            part = busy[0]
            finished = self._launch(part) if part.in_flight is None else []
            finished += self._advance_all(self._read(part))
            if self._launch_ahead:
                finished += self._launch(part)
        else:
            # the context launched a step before is read and sampled on the collector
            # thread while this one builds and launches the next context's graph
            assert self._collector is not None
            handed = time.perf_counter()
            reading = self._collector.submit(self._read, parts[index - 1])
            finished = self._launch(parts[index])
            joining = time.perf_counter()
            read = reading.result()
            self.times.join_s += time.perf_counter() - joining
            if read is not None:
                self.times.handoff_s += read.started - handed
            finished += self._advance_all(read)
        self.times.total_s += time.perf_counter() - started
        if self.step_log is not None and before is not None:
            self.step_log.append(self.times.since(before))
        return finished

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation | OracleError]:
        """Answer requests, admitting each as a slot frees up; in the order given."""
        waiting = list(reversed(requests))
        outcomes: dict[int, Generation | OracleError] = {}
        while waiting or self._by_key:
            while waiting and self.free_slots:
                request = waiting.pop()
                try:
                    self.admit(request)
                except OracleError as exc:
                    outcomes[request.key] = exc
            for done in self.step():
                outcomes[done.key] = done.outcome
        return [outcomes[r.key] for r in requests]

    def close(self) -> None:
        """Free the model, the contexts and their device samplers now."""
        for key in list(self._by_key):
            self.cancel(key)
        for executor in (self._collector, self._pool):
            if executor is not None:
                executor.shutdown(wait=True)
        self._pool = self._collector = None
        for part in self._parts:
            llama_cpp.llama_synchronize(part.ctx)
            llama_cpp.llama_batch_free(part.batch)
            llama_cpp.llama_free(part.ctx)
            for chain in part.backend_chains:  # the context used them until now
                llama_cpp.llama_sampler_free(chain)
        self._parts = []
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> BatchedLlm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- one step -----------------------------------------------------------------------

    def _launch(self, part: _Part) -> list[Finished]:
        """Build and launch one context's batch (the device works on after this returns);
        the requests that failed with it."""
        if not part.sequences or part.in_flight is not None:
            return []
        filling = time.perf_counter()
        outputs = self._fill_batch(part)
        launching = time.perf_counter()
        code = llama_cpp.llama_decode(part.ctx, part.batch)
        times = self.times
        times.fill_s += launching - filling
        times.launch_s += time.perf_counter() - launching
        times.steps += 1
        if code != 0:
            return self._fail_part(part, DecodeFailed(f"llama_decode returned {code}"))
        part.in_flight = outputs
        return []

    def _read(self, part: _Part) -> _Read | None:
        """Wait for a launched context's results and sample them (no bookkeeping: this
        may run on the collector thread, beside the owner's launch of another context)."""
        outputs = part.in_flight
        if outputs is None:
            return None
        part.in_flight = None
        waiting = time.perf_counter()
        llama_cpp.llama_get_logits(part.ctx)  # synchronise and reorder once, here
        sampling = time.perf_counter()
        sampled = self._sample(part, outputs)
        if part.dropped:  # sampled in their rows with the others, then left out
            kept = [
                k for k, (sequence, _i) in enumerate(outputs) if id(sequence) not in part.dropped
            ]
            outputs, sampled = [outputs[k] for k in kept], [sampled[k] for k in kept]
            part.dropped.clear()
        return _Read(outputs, sampled, waiting, sampling - waiting, time.perf_counter() - sampling)

    def _advance_all(self, read: _Read | None) -> list[Finished]:
        """Record a context's sampled tokens; the requests that ended with them."""
        if read is None:
            return []
        advancing = time.perf_counter()
        finished = []
        for (sequence, _index), token in zip(read.outputs, read.tokens, strict=True):
            done = self._advance(sequence, token)
            if done is not None:
                finished.append(done)
        times = self.times
        times.tokens += len(read.tokens)
        times.wait_s += read.wait_s
        times.sample_s += read.sample_s
        times.advance_s += time.perf_counter() - advancing
        return finished

    def _fill_batch(self, part: _Part) -> list[tuple[_Sequence, int]]:
        """The next token of every decoding sequence, and prompt tokens while room is
        left; returns the sequences that will have logits, with their batch index.

        Tokens go in sequence-id order. With a KV stream a sequence, llama.cpp puts only
        consecutive sequence ids with equal token counts into one micro-batch, and every
        micro-batch is a graph of its own; so, packing streams, a free slot between busy
        ones reads a placeholder token (no logits, removed before the next step), and the
        prompts that start together take their ids longest first
        (:meth:`_order_new_prompts`). A shared cache takes any order.
        """
        packed = self.pack_streams and not self.kv_unified
        if packed:
            self._order_new_prompts(part)
            for seq_id in part.placeholders:
                llama_cpp.llama_memory_seq_rm(part.memory, seq_id, -1, -1)
            part.placeholders.clear()
        ids = sorted(part.sequences)
        holes = ids[-1] + 1 - len(ids) if packed else 0
        if not holes and not any(part.sequences[seq_id].pending for seq_id in ids):
            ordered = [part.sequences[seq_id] for seq_id in ids]  # the usual step
            positions = [sequence.n_past for sequence in ordered]
            for sequence in ordered:
                sequence.n_past += 1
            part.views.fill(
                [sequence.next_token for sequence in ordered],
                positions,
                ids,
                range(len(ordered)),
            )
            part.batch.n_tokens = len(ordered)
            return [(sequence, index) for index, sequence in enumerate(ordered)]
        decoding = sum(1 for seq_id in ids if not part.sequences[seq_id].pending)
        room = self.batch_tokens - decoding - holes
        tokens: list[int] = []
        positions = []
        seq_ids: list[int] = []
        outputs: list[tuple[_Sequence, int]] = []
        for seq_id in range(ids[-1] + 1) if packed else ids:
            if seq_id not in part.sequences:  # a free slot between busy ones: a placeholder
                tokens.append(_PLACEHOLDER_TOKEN)
                positions.append(0)
                seq_ids.append(seq_id)
                part.placeholders.append(seq_id)
                continue
            sequence = part.sequences[seq_id]
            if sequence.pending:
                if room <= 0:
                    continue
                chunk = sequence.pending[:room]
                del sequence.pending[:room]
                room -= len(chunk)
            else:
                chunk = [sequence.next_token]
            tokens.extend(chunk)
            positions.extend(range(sequence.n_past, sequence.n_past + len(chunk)))
            seq_ids.extend([seq_id] * len(chunk))
            sequence.n_past += len(chunk)
            if not sequence.pending:
                outputs.append((sequence, len(tokens) - 1))
        part.views.fill(tokens, positions, seq_ids, [index for _s, index in outputs])
        part.batch.n_tokens = len(tokens)
        return outputs

    @staticmethod
    def _order_new_prompts(part: _Part) -> None:
        """Give the prompts admitted since the last step (none of them read yet) their
        slots again, longest first, lowest id first.

        A micro-batch takes as many tokens of each of its sequences as the shortest has
        left; with the longest prompts on the lowest ids, the prompts still unread after
        it are again consecutive ids and go on in one micro-batch, where prompts in
        admission order would leave gaps and part into a micro-batch per run of ids.
        """
        new = [s for s in part.sequences.values() if s.n_past == 0]
        if len(new) < 2:
            return
        ids = sorted(sequence.seq_id for sequence in new)
        new.sort(key=lambda sequence: (-len(sequence.pending), sequence.seq_id))
        for sequence, seq_id in zip(new, ids, strict=True):
            sequence.seq_id = seq_id
            part.sequences[seq_id] = sequence

    def _sample(self, part: _Part, outputs: Sequence[tuple[_Sequence, int]]) -> list[int]:
        """The token of each output, by coupled sampling: its logits (the vocabulary's,
        or the 40 candidates top-k on the device kept), its request's seed and
        temperature, and the tokens it generated so far."""
        if not outputs:
            return []
        if self.device_top_k:
            logits, ids = _device_candidates(part.ctx, [index for _s, index in outputs])
        else:
            logits, ids = part.logits_rows(len(outputs), self._n_vocab), None
            if len(outputs) == 1:  # a request decoded alone: every numpy call counts
                sequence, _index = outputs[0]
                return [
                    choose_token(
                        logits[0],
                        seed=sequence.request.seed,
                        step=len(sequence.tokens),
                        temperature_milli=sequence.request.temperature_milli,
                    )
                ]
        tasks = min(self._threads * 2, len(outputs) // self._rows_per_task)
        if tasks < 2 or self._pool is None:
            values, tokens = top_candidates(logits, ids)
        else:  # the partitions on the pool's threads, the rest once for every row
            size = -(-len(outputs) // tasks)
            starts = range(0, len(outputs), size)
            blocks = list(
                self._pool.map(
                    lambda start: top_candidates(
                        logits[start : start + size],
                        None if ids is None else ids[start : start + size],
                        whole_rows=self._whole_rows,
                    ),
                    starts,
                )
            )
            values = np.concatenate([b[0] for b in blocks])
            tokens = np.concatenate([b[1] for b in blocks])
        return choose_among(
            values,
            tokens,
            seeds=[sequence.request.seed for sequence, _i in outputs],
            steps=[len(sequence.tokens) for sequence, _i in outputs],
            temperatures_milli=[sequence.request.temperature_milli for sequence, _i in outputs],
        )

    def _advance(self, sequence: _Sequence, token: int) -> Finished | None:
        """Record a sampled token; the request's result when it ended with it."""
        if self._is_end_of_generation(token):
            return self._finish(sequence, "stop")
        sequence.tokens.append(token)
        sequence.text += self._piece(token)
        if len(sequence.tokens) >= sequence.request.max_tokens:
            return self._finish(sequence, "length")
        sequence.next_token = token
        return None

    def _finish(self, sequence: _Sequence, reason: str) -> Finished:
        self._retire(sequence)
        request = sequence.request
        text = bytes(sequence.text)
        if sequence.tokens and sequence.tokens[0] == llama_cpp.llama_vocab_bos(self._vocab):
            text = text.removeprefix(b" ")  # as llama-cpp-python's detokenize does
        generation = Generation(
            text=text.decode("utf-8", errors="ignore"),
            completion_tokens=len(sequence.tokens),
            prompt_tokens=sequence.prompt_tokens,
            finish_reason="stop" if reason == "stop" else "length",
            seed=request.seed,
            model=self.spec.name,
        )
        return Finished(
            key=request.key,
            outcome=generation,
            elapsed_s=time.perf_counter() - sequence.admitted_at,
        )

    def _fail_part(self, part: _Part, error: OracleError) -> list[Finished]:
        """Drop every request of one context (its decode failed)."""
        now = time.perf_counter()
        dropped = list(part.sequences.values())
        for sequence in dropped:
            self._retire(sequence)
        logger.error("batch dropped", extra={"error": str(error), "requests": len(dropped)})
        return [
            Finished(key=s.request.key, outcome=error, elapsed_s=now - s.admitted_at)
            for s in dropped
        ]

    def _retire(self, sequence: _Sequence) -> None:
        part = sequence.part
        llama_cpp.llama_memory_seq_rm(part.memory, sequence.seq_id, -1, -1)
        del part.sequences[sequence.seq_id]
        del self._by_key[sequence.request.key]
        heapq.heappush(part.free, sequence.seq_id)

    # --- set-up and helpers -----------------------------------------------------------

    def _checked_prompt(self, request: GenerationRequest) -> list[int]:
        if request.temperature_milli < 0:
            raise InvalidGenerationRequest(
                field="temperature_milli", value=request.temperature_milli, allowed=">= 0"
            )
        if request.max_tokens < 1:
            raise InvalidGenerationRequest(
                field="max_tokens", value=request.max_tokens, allowed=">= 1"
            )
        if not 0 <= request.seed <= MAX_SEED:
            raise InvalidGenerationRequest(
                field="seed", value=request.seed, allowed=f"0..{MAX_SEED}"
            )
        tokens = self.prompt_tokens(request.prompt)
        if not tokens:
            raise InvalidGenerationRequest(field="prompt", value="", allowed="at least one token")
        # the last generated token is never decoded, so prompt + max_tokens - 1 cells suffice
        if len(tokens) + request.max_tokens > self.slot_tokens:
            raise PromptTooLong(
                model=self.spec.name,
                prompt_tokens=len(tokens),
                max_tokens=request.max_tokens,
                context_tokens=self.slot_tokens,
            )
        return tokens

    def _new_part(self, capacity: int, slot_tokens: int, threads: int, gpu_layers: int) -> _Part:
        """A context for ``capacity`` sequences, its batch and, with device top-k, the
        per-slot backend samplers."""
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = slot_tokens * capacity
        params.n_seq_max = capacity
        params.kv_unified = self.kv_unified  # see the module's notes
        params.n_batch = self.batch_tokens
        params.n_ubatch = self.micro_batch_tokens
        # with the layers on a GPU, llama.cpp's CPU threads only start each graph, and more
        # of them cost time (H200, 256 sequences: 6.2 ms a decode call with 16, 3.4 with 4)
        decode_threads = threads if gpu_layers == 0 else min(threads, _GPU_DECODE_THREADS)
        params.n_threads = decode_threads
        params.n_threads_batch = decode_threads
        params.no_perf = True
        # llama-cpp-python's Llama leaves flash attention off and pins these YaRN values;
        # on the CPU the same settings give the sequential runner's logits. On a GPU,
        # flash attention is what makes many sequences fast.
        flash_auto = gpu_layers != 0
        params.flash_attn_type = _FLASH_ATTN_AUTO if flash_auto else _FLASH_ATTN_OFF
        params.yarn_attn_factor = 1.0
        params.yarn_beta_fast = 32.0
        params.yarn_beta_slow = 1.0
        chains = [_top_k_chain() for _ in range(capacity)] if self.device_top_k else []
        if chains:
            configs = (llama_cpp.llama_sampler_seq_config * capacity)()
            for seq_id, chain in enumerate(chains):
                configs[seq_id].seq_id = seq_id
                configs[seq_id].sampler = ctypes.cast(chain, ctypes.c_void_p)
            config_p = ctypes.POINTER(llama_cpp.llama_sampler_seq_config)
            params.samplers = ctypes.cast(configs, config_p)
            params.n_samplers = capacity
        with _llama_log_lines() as lines:
            context = llama_cpp.llama_init_from_model(self._model, params)
        if (
            context is not None
            and self.kv_unified
            and flash_auto
            and not any(_FLASH_ATTN_ON in line for line in lines)
        ):
            # a shared cache without flash attention would reserve attention scores over
            # every cell of it (see the module's notes): a stream a sequence instead
            llama_cpp.llama_free(context)
            logger.warning(
                "no flash attention for this model on this device: a KV stream a sequence",
                extra={"model": self.spec.name},
            )
            self.kv_unified = params.kv_unified = False
            context = llama_cpp.llama_init_from_model(self._model, params)
        if context is None:
            for chain in chains:
                llama_cpp.llama_sampler_free(chain)
            raise ModelLoadFailed(
                model=self.spec.name,
                path=self.model_path,
                reason=f"no context for {capacity} sequences of {slot_tokens} tokens",
            )
        batch = llama_cpp.llama_batch_init(self.batch_tokens, 0, 1)
        return _Part(
            ctx=context,
            memory=llama_cpp.llama_get_memory(context),
            batch=batch,
            views=_BatchViews(batch, self.batch_tokens),
            capacity=capacity,
            free=list(range(capacity)),
            backend_chains=chains,
        )

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        template = _meta_value(self._model, _CHAT_TEMPLATE_KEY)
        if not template:
            self.close()
            raise ModelHasNoChatTemplate(model=self.spec.name)
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
            bos_token=self._token_text(llama_cpp.llama_vocab_bos(self._vocab)),
        )

    def _token_text(self, token: int) -> str:
        if token == -1:
            return ""
        return bytes(llama_cpp.llama_vocab_get_text(self._vocab, token)).decode("utf-8")

    def _tokenize(self, text: bytes, *, add_bos: bool) -> list[int]:
        capacity = len(text) + 8
        while True:
            buffer = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(
                self._vocab, text, len(text), buffer, capacity, add_bos, True
            )
            if count >= 0:
                return list(buffer[:count])
            capacity = -count

    def _is_end_of_generation(self, token: int) -> bool:
        ends = self._end_of_generation.get(token)
        if ends is None:
            ends = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
            self._end_of_generation[token] = ends
        return ends


def _device_candidates(
    ctx: Any, indices: Sequence[int]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """The candidates top-k on the device kept for each output: logits and token ids."""
    logits = np.empty((len(indices), TOP_K), dtype=np.float32)
    ids = np.empty((len(indices), TOP_K), dtype=np.int32)
    for row, index in enumerate(indices):
        count = int(llama_cpp.llama_get_sampled_logits_count_ith(ctx, index))
        if count != TOP_K:
            raise DecodeFailed(f"the device kept {count} candidates, not {TOP_K}")
        logits[row] = np.ctypeslib.as_array(
            llama_cpp.llama_get_sampled_logits_ith(ctx, index), shape=(count,)
        )
        ids[row] = np.ctypeslib.as_array(
            llama_cpp.llama_get_sampled_candidates_ith(ctx, index), shape=(count,)
        )
    return logits, ids


class _BatchViews:
    """numpy views of a llama_batch's arrays, so one step fills them in a few calls."""

    def __init__(self, batch: Any, capacity: int) -> None:
        self.token = np.ctypeslib.as_array(batch.token, shape=(capacity,))
        self.pos = np.ctypeslib.as_array(batch.pos, shape=(capacity,))
        self.logits = np.ctypeslib.as_array(batch.logits, shape=(capacity,))
        n_seq_id = np.ctypeslib.as_array(batch.n_seq_id, shape=(capacity,))
        n_seq_id[:] = 1
        self._seq_ids = [batch.seq_id[i] for i in range(capacity)]
        self._written_seq = [-1] * capacity

    def fill(
        self,
        tokens: Sequence[int],
        positions: Sequence[int],
        seq_ids: Sequence[int],
        outputs: Sequence[int],
    ) -> None:
        count = len(tokens)
        self.token[:count] = tokens
        self.pos[:count] = positions
        self.logits[:count] = 0
        self.logits[list(outputs)] = 1
        written = self._written_seq
        for i, seq_id in enumerate(seq_ids):
            if written[i] != seq_id:  # most steps repeat the last step's layout
                self._seq_ids[i][0] = seq_id
                written[i] = seq_id


# --- llama.cpp helpers --------------------------------------------------------------------


@contextmanager
def _llama_log_lines() -> Iterator[list[bytes]]:
    """llama.cpp's log lines while the block runs, each also passed on to
    llama-cpp-python's own handler (which prints errors only: see below)."""
    from llama_cpp import _logger  # llama-cpp-python's handler, restored after

    lines: list[bytes] = []

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text)
        _logger.llama_log_callback(level, text, user_data)

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _quiet_llama_logs() -> None:
    """llama.cpp's own log lines go through llama-cpp-python's logger: errors only."""
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def _load_model(name: str, path: Path, gpu_layers: int) -> Any:
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = gpu_layers
    # No repacked CPU weights (AMX, REPACK): llama-cpp-python 0.3.36's AMX matmul crashes
    # on batches of more than one token on Sapphire Rapids (seen on a 2-core VM); the
    # weights a GPU holds are not affected.
    params.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), params)
    if model is None:
        raise ModelLoadFailed(model=name, path=path, reason="llama.cpp could not load it")
    return model


def kv_bytes_per_token(model: Any) -> int:
    """KV-cache bytes one token takes in every layer (f16 keys and values).

    Head sizes come from the GGUF metadata when it has them (Gemma's head is not
    n_embd / n_head), else from n_embd / n_head.
    """
    layers = int(llama_cpp.llama_model_n_layer(model))
    heads = max(1, int(llama_cpp.llama_model_n_head(model)))
    kv_heads = int(llama_cpp.llama_model_n_head_kv(model))
    default_head = int(llama_cpp.llama_model_n_embd(model)) // heads
    arch = _meta_value(model, b"general.architecture")
    key_size = _meta_int(model, f"{arch}.attention.key_length", default_head)
    value_size = _meta_int(model, f"{arch}.attention.value_length", default_head)
    return layers * kv_heads * (key_size + value_size) * _KV_BYTES_PER_VALUE


def _meta_value(model: Any, key: bytes) -> str:
    size = 256
    while True:
        buffer = ctypes.create_string_buffer(size)
        length = int(llama_cpp.llama_model_meta_val_str(model, key, buffer, size))
        if length < 0:
            return ""
        if length < size:
            return buffer.value.decode("utf-8")
        size = length + 1


def _meta_int(model: Any, key: str, default: int) -> int:
    value = _meta_value(model, key.encode("utf-8"))
    return int(value) if value.isdigit() else default


def _top_k_chain() -> Any:
    """A slot's device sampler: the 40 highest logits and their tokens, nothing drawn."""
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(params)
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(TOP_K))
    return chain
