"""The continuous-batching engine on the CPU with the real SmolLM2 model.

On the CPU, llama.cpp computes each sequence's logits the same way whatever else is in
the batch, with one exception: a prompt token read alone in its micro-batch (one token
of its sequence) takes a one-token path that rounds differently (the notes of
``oracle.engine.batched``). These tests compare batched answers with the same request
decoded alone, and with the sequential runner, in compositions whose prompts were not
cut that way when the tests were written; a change in how prompts are cut into
micro-batches can make one of them fail without any error in the engine's bookkeeping.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import pytest

from oracle.engine import batched
from oracle.engine.batched import BatchedLlm, DecodeFailed, GenerationRequest, NoFreeSlot
from oracle.engine.llm import Generation, LlmRunner, PromptTooLong
from oracle.engine.llm_options import KvBudgetTooSmall
from oracle.engine.models import lookup_llm
from oracle.errors import OracleError

pytestmark = pytest.mark.slow

SMOLLM = lookup_llm("SmolLM2-135M-Instruct-Q4_1")
SLOT_TOKENS = 256
LONG = "Write a long story about a dragon who learns to bake bread."


@pytest.fixture(scope="module")
def llm() -> Iterator[BatchedLlm]:
    with BatchedLlm(SMOLLM, parallel=4, threads=2, slot_tokens=SLOT_TOKENS) as engine:
        yield engine


@pytest.fixture(scope="module")
def split_llm() -> Iterator[BatchedLlm]:
    """Two contexts decoded in turn, each slot's top-k by llama.cpp's backend samplers (on
    the CPU here: the same code paths as on a GPU)."""
    with BatchedLlm(
        SMOLLM, parallel=4, threads=2, slot_tokens=SLOT_TOKENS, contexts=2, device_top_k=True
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
def split_host_llm() -> Iterator[BatchedLlm]:
    """Two contexts decoded in turn, top-k on the CPU (a GPU worker's default)."""
    with BatchedLlm(SMOLLM, parallel=4, threads=2, slot_tokens=SLOT_TOKENS, contexts=2) as engine:
        yield engine


@pytest.fixture(scope="module")
def unified_llm() -> Iterator[BatchedLlm]:
    """One KV cache shared by every sequence, as on a GPU (here on the CPU)."""
    with BatchedLlm(
        SMOLLM, parallel=4, threads=2, slot_tokens=SLOT_TOKENS, kv_unified=True
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
def packed_llm() -> Iterator[BatchedLlm]:
    """A KV stream a sequence, packed into one micro-batch a step, as on a GPU without
    flash attention (here on the CPU)."""
    with BatchedLlm(
        SMOLLM, parallel=4, threads=2, slot_tokens=SLOT_TOKENS, pack_streams=True
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
def ahead_llm() -> Iterator[BatchedLlm]:
    """A step that launches the next decode before it returns, as on a GPU (here on the
    CPU, where the decode is done by then)."""
    with BatchedLlm(
        SMOLLM, parallel=4, threads=2, slot_tokens=SLOT_TOKENS, launch_ahead=True
    ) as engine:
        yield engine


@pytest.fixture(params=["streams", "shared", "ahead"])
def engine(request: pytest.FixtureRequest) -> BatchedLlm:
    """The engine with a KV stream a sequence (a CPU's), with one shared cache, and
    launching ahead."""
    names = {"streams": "llm", "shared": "unified_llm", "ahead": "ahead_llm"}
    chosen: BatchedLlm = request.getfixturevalue(names[request.param])
    return chosen


def request(
    key: int,
    prompt: str = LONG,
    *,
    temperature_milli: int = 700,
    max_tokens: int = 12,
    seed: int = 1,
) -> GenerationRequest:
    return GenerationRequest(
        key=key,
        prompt=prompt,
        temperature_milli=temperature_milli,
        max_tokens=max_tokens,
        seed=seed,
    )


def answer(outcome: Generation | OracleError) -> Generation:
    assert isinstance(outcome, Generation), outcome
    return outcome


def alone(llm: BatchedLlm, req: GenerationRequest) -> Generation:
    (outcome,) = llm.generate([req])
    return answer(outcome)


def test_max_tokens_is_honoured_exactly(engine: BatchedLlm) -> None:
    limits = [1, 2, 7, 16, 23]
    reqs = [request(i, temperature_milli=1000, max_tokens=n, seed=i) for i, n in enumerate(limits)]
    answers = [answer(o) for o in engine.generate(reqs)]
    for limit, generation in zip(limits, answers, strict=True):
        assert generation.completion_tokens <= limit
        if generation.finish_reason == "length":
            assert generation.completion_tokens == limit
    # a story prompt does not end within a few tokens
    assert [a.completion_tokens for a in answers[:3]] == limits[:3]
    assert all(a.finish_reason == "length" for a in answers[:3])
    assert engine.free_slots == engine.slots


def test_a_seed_gives_the_same_answer_twice(llm: BatchedLlm) -> None:
    req = request(1, temperature_milli=1200, max_tokens=20, seed=42)
    first, second = alone(llm, req), alone(llm, req)
    assert first == second
    others = {
        alone(llm, request(1, temperature_milli=1200, max_tokens=20, seed=s)).text
        for s in (1, 2, 3)
    }
    assert len(others | {first.text}) > 1, "different seeds should not all agree at temperature 1.2"


def test_concurrent_sequences_answer_as_they_would_alone(llm: BatchedLlm) -> None:
    reqs = [
        request(1, "What is the capital of France?", temperature_milli=0, max_tokens=16),
        request(2, "Write a haiku about the sea.", temperature_milli=700, max_tokens=20, seed=7),
        request(3, "Name three colours.", temperature_milli=1200, max_tokens=14, seed=123),
        request(4, LONG, temperature_milli=300, max_tokens=18, seed=5),
        request(5, "Tell me a joke.", temperature_milli=900, max_tokens=10, seed=9),  # waits
    ]
    together = [answer(o) for o in llm.generate(reqs)]
    assert together == [alone(llm, r) for r in reqs]


def test_two_contexts_with_device_top_k_answer_as_one_context(
    llm: BatchedLlm, split_llm: BatchedLlm
) -> None:
    assert split_llm.contexts == 2 and split_llm.slots == 4
    reqs = [
        request(1, "What is the capital of France?", temperature_milli=0, max_tokens=10),
        request(2, "Write a haiku about the sea.", temperature_milli=700, max_tokens=14, seed=7),
        request(3, "Name three colours.", temperature_milli=1200, max_tokens=8, seed=123),
        request(4, LONG, temperature_milli=300, max_tokens=12, seed=5),
        request(5, "Tell me a joke.", temperature_milli=900, max_tokens=6, seed=9),  # waits
    ]
    split = [answer(o) for o in split_llm.generate(reqs)]
    assert split == [answer(o) for o in llm.generate(reqs)]
    assert split_llm.free_slots == 4


def test_a_context_whose_decode_fails_fails_only_its_own_requests(
    llm: BatchedLlm, split_host_llm: BatchedLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama_decode failing for one of two contexts (injected: the engine never overfills
    a cache) ends that context's requests with DecodeFailed and frees their slots; the
    other context's requests answer as they would alone."""
    for key in range(1, 5):  # the slots alternate between the contexts: 1 and 3 share one
        split_host_llm.admit(request(key, max_tokens=6, seed=key))
    doomed = split_host_llm._by_key[1].part.ctx
    decode = batched.llama_cpp.llama_decode
    monkeypatch.setattr(
        batched.llama_cpp,
        "llama_decode",
        lambda ctx, batch: 1 if ctx is doomed else decode(ctx, batch),
    )
    done = []
    while split_host_llm.active:
        done += split_host_llm.step()
    monkeypatch.undo()
    outcomes = {d.key: d.outcome for d in done}
    assert sorted(outcomes) == [1, 2, 3, 4]
    assert all(isinstance(outcomes[k], DecodeFailed) for k in (1, 3))
    for key in (2, 4):
        assert outcomes[key] == alone(llm, request(key, max_tokens=6, seed=key))
    assert split_host_llm.free_slots == 4


@pytest.fixture(params=["host", "device"])
def split(request: pytest.FixtureRequest) -> BatchedLlm:
    """Two contexts in turn, top-k on the CPU, then on the device."""
    chosen: BatchedLlm = request.getfixturevalue(
        "split_host_llm" if request.param == "host" else "split_llm"
    )
    return chosen


def test_a_request_cancelled_while_its_context_decodes_frees_its_slot(
    llm: BatchedLlm, split: BatchedLlm
) -> None:
    """The cancelled request's row stays among the launched outputs: the request after
    it in the same context samples its own logits, not its neighbour's."""
    prompts = {1: "Name three colours.", 3: "Write a haiku about the sea."}
    for key in range(1, 5):  # the slots alternate between the contexts: 1 and 3 share one
        split.admit(request(key, prompts.get(key, LONG), max_tokens=10, seed=key))
    split.step()  # the first context's decode is launched, not read yet
    assert split.cancel(1)
    split.admit(request(99, max_tokens=4))
    done = []
    while split.active:
        done += split.step()
    assert sorted(d.key for d in done) == [2, 3, 4, 99]
    outcomes = {d.key: answer(d.outcome) for d in done}
    assert outcomes[3] == alone(llm, request(3, prompts[3], max_tokens=10, seed=3))
    assert split.free_slots == 4


def test_a_request_joining_a_running_batch_changes_nothing(llm: BatchedLlm) -> None:
    first = request(1, temperature_milli=700, max_tokens=24, seed=11)
    joiner = request(2, "Count to ten.", temperature_milli=700, max_tokens=8, seed=12)
    llm.admit(first)
    finished = []
    for _ in range(5):
        finished += llm.step()
    assert not finished and llm.active == 1
    llm.admit(joiner)  # mid-run: the first request is decoding, the joiner reads its prompt
    while llm.active:
        finished += llm.step()
    outcomes = {done.key: answer(done.outcome) for done in finished}
    assert outcomes[1] == alone(llm, first)
    assert outcomes[2] == alone(llm, joiner)


def test_launching_ahead_answers_as_launching_each_step(
    llm: BatchedLlm, ahead_llm: BatchedLlm
) -> None:
    """The same decodes in the same batches, launched a step earlier: the same answers,
    for requests admitted together, for one that joins a running batch and for one
    cancelled while the decode launched ahead holds its row."""
    together = [request(i, temperature_milli=900, max_tokens=9 + i, seed=i) for i in range(3)]
    assert ahead_llm.generate(together) == llm.generate(together)
    first = request(1, temperature_milli=700, max_tokens=24, seed=11)
    joiner = request(2, "Count to ten.", temperature_milli=700, max_tokens=8, seed=12)
    doomed = request(3, "Name three colours.", max_tokens=30, seed=13)
    ahead_llm.admit(first)
    ahead_llm.admit(doomed)
    finished = ahead_llm.step() + ahead_llm.step()
    assert not finished and ahead_llm.active == 2
    assert ahead_llm.cancel(3)  # its token's decode is in flight
    ahead_llm.admit(joiner)
    while ahead_llm.active:
        finished += ahead_llm.step()
    outcomes = {done.key: answer(done.outcome) for done in finished}
    assert sorted(outcomes) == [1, 2]
    assert outcomes[1] == alone(llm, first)
    assert outcomes[2] == alone(llm, joiner)
    assert ahead_llm.free_slots == ahead_llm.slots


def test_a_free_slot_between_busy_ones_reads_a_placeholder_and_changes_nothing(
    packed_llm: BatchedLlm,
) -> None:
    """With a KV stream a sequence, a step stays one micro-batch only over consecutive
    sequence ids: a free slot between busy ones reads a placeholder token, whose cell is
    gone before a prompt takes the slot."""
    reqs = [
        request(1, max_tokens=20, seed=1),
        request(2, "Name three colours.", max_tokens=2, seed=2),
        request(3, "Write a haiku about the sea.", max_tokens=20, seed=3),
    ]
    finished = []
    for req in reqs:  # one at a time: slots 0, 1 and 2 in admission order
        packed_llm.admit(req)
        finished += packed_llm.step()
    part = packed_llm._by_key[1].part
    assert [packed_llm._by_key[key].seq_id for key in (1, 3)] == [0, 2]
    while not finished:
        finished += packed_llm.step()
    assert [done.key for done in finished] == [2]  # slot 1 is free, slots 0 and 2 decode
    finished += packed_llm.step()
    assert part.placeholders == [1]
    joiner = request(4, "Count to ten.", max_tokens=8, seed=4)
    packed_llm.admit(joiner)  # into slot 1, which held the placeholder
    assert packed_llm._by_key[4].seq_id == 1
    while packed_llm.active:
        finished += packed_llm.step()
    outcomes = {done.key: answer(done.outcome) for done in finished}
    for req in [*reqs, joiner]:
        assert outcomes[req.key] == alone(packed_llm, req)
    assert packed_llm.free_slots == packed_llm.slots


def test_prompts_admitted_together_take_their_slots_longest_first(
    packed_llm: BatchedLlm, llm: BatchedLlm
) -> None:
    """A micro-batch takes from each sequence as many tokens as the shortest has left;
    longest first, the prompts left unread after it are consecutive ids again. A CPU
    engine does not pack by default (it measured no faster)."""
    assert packed_llm.pack_streams and not llm.pack_streams
    reqs = [
        request(1, "Hi.", max_tokens=6, seed=1),
        request(2, LONG, max_tokens=6, seed=2),
        request(3, "Name three colours.", max_tokens=6, seed=3),
    ]
    for req in reqs:
        packed_llm.admit(req)
    assert [packed_llm._by_key[r.key].seq_id for r in reqs] == [0, 1, 2]  # until the first step
    finished = packed_llm.step()
    lengths = {r.key: len(packed_llm.prompt_tokens(r.prompt)) for r in reqs}
    # distinct lengths, none one apart: a prompt token read alone in its micro-batch
    # takes llama.cpp's one-token path and may change the answer (the module's notes)
    ordered_lengths = sorted(lengths.values())
    assert all(b - a > 1 for a, b in itertools.pairwise(ordered_lengths))
    by_slot = sorted(lengths, key=lambda key: packed_llm._by_key[key].seq_id)
    assert by_slot == sorted(lengths, key=lambda key: -lengths[key])
    while packed_llm.active:
        finished += packed_llm.step()
    outcomes = {done.key: answer(done.outcome) for done in finished}
    assert [outcomes[r.key] for r in reqs] == [alone(packed_llm, r) for r in reqs]


def test_a_cancelled_request_frees_its_slot(engine: BatchedLlm) -> None:
    for key in range(1, engine.slots + 1):
        engine.admit(request(key, max_tokens=40, seed=key))
    engine.step()
    with pytest.raises(NoFreeSlot):
        engine.admit(request(99))
    assert engine.cancel(2) and not engine.cancel(2)
    assert engine.free_slots == 1
    engine.admit(request(99, max_tokens=5))
    done = []
    while engine.active:
        done += engine.step()
    assert sorted(d.key for d in done) == sorted({*range(1, engine.slots + 1), 99} - {2})
    assert engine.free_slots == engine.slots


def test_a_prompt_that_cannot_fit_is_refused_without_a_slot(engine: BatchedLlm) -> None:
    with pytest.raises(PromptTooLong):
        engine.admit(request(1, "word " * SLOT_TOKENS, max_tokens=4))
    with pytest.raises(PromptTooLong):
        engine.admit(request(2, "Hi", max_tokens=SLOT_TOKENS))
    assert engine.free_slots == engine.slots and engine.active == 0


def test_answers_equal_the_sequential_runners(llm: BatchedLlm) -> None:
    """Same prompt tokens, same sampler chain: the same answers.

    Logits of a sequence decoded in a batch of several may differ from its logits decoded
    alone in the last bits (other matrix shapes, other kernels); at temperature 1 over
    two dozen tokens that can pick another word. So the sampled long answer is held to
    the same length, finish and opening, the others to the same text.
    """
    reqs = [
        request(1, "What is the capital of France?", temperature_milli=0, max_tokens=20),
        request(2, "Write a haiku about the sea.", temperature_milli=700, max_tokens=24, seed=7),
        request(3, LONG, temperature_milli=1000, max_tokens=24, seed=3),
    ]
    batched = [answer(o) for o in llm.generate(reqs)]
    with LlmRunner(SMOLLM, n_threads=2) as runner:
        sequential = [
            runner.generate(
                prompt=r.prompt,
                temperature_milli=r.temperature_milli,
                max_tokens=r.max_tokens,
                seed=r.seed,
            )
            for r in reqs
        ]
    assert batched[:2] == sequential[:2]
    long_batched, long_sequential = batched[2], sequential[2]
    assert (long_batched.prompt_tokens, long_batched.completion_tokens) == (
        long_sequential.prompt_tokens,
        long_sequential.completion_tokens,
    )
    assert long_batched.finish_reason == long_sequential.finish_reason
    assert long_batched.text[:40] == long_sequential.text[:40]


def test_in_one_shared_cache_an_answer_does_not_depend_on_the_others(
    llm: BatchedLlm, unified_llm: BatchedLlm
) -> None:
    """The shared cache masks every other sequence's cells out of a sequence's attention.

    Alone against in company, the cache's shape differs and with it the arithmetic; with
    companions of the same lengths saying other things, the shapes are the same, so any
    difference in the target's answer would be the others' cells leaking in.
    """
    assert unified_llm.kv_unified and not llm.kv_unified  # a CPU decodes one stream a slot
    target = request(1, LONG, temperature_milli=700, max_tokens=24, seed=11)
    runs = []
    for animals in (("cat", "dog"), ("fox", "pig")):
        companions = [
            request(key, f"Write a long story about a {animal}.", max_tokens=16, seed=key)
            for key, animal in enumerate(animals, start=2)
        ]
        runs.append([answer(o) for o in unified_llm.generate([target, *companions])])
    (target_a, *others_a), (target_b, *others_b) = runs
    # the premise: same lengths, different words
    for a, b in zip(others_a, others_b, strict=True):
        assert (a.prompt_tokens, a.completion_tokens) == (b.prompt_tokens, b.completion_tokens)
        assert a.finish_reason == b.finish_reason == "length"
        assert a.text != b.text
    assert target_a == target_b
    assert target_a.completion_tokens == 24
    assert unified_llm.free_slots == unified_llm.slots


def test_device_top_k_in_shared_caches_answers_as_host_top_k() -> None:
    """A GPU worker's layout (two contexts, each one shared cache) with top-k on the
    device: the same 40 candidates reach coupled sampling, so the same answers."""
    reqs = [
        request(1, "What is the capital of France?", temperature_milli=0, max_tokens=10),
        request(2, "Write a haiku about the sea.", temperature_milli=700, max_tokens=14, seed=7),
        request(3, LONG, temperature_milli=300, max_tokens=12, seed=5),
    ]
    answers = []
    for device_top_k in (False, True):
        with BatchedLlm(
            SMOLLM,
            parallel=4,
            threads=2,
            slot_tokens=SLOT_TOKENS,
            contexts=2,
            device_top_k=device_top_k,
            kv_unified=True,
        ) as engine:
            answers.append([answer(o) for o in engine.generate(reqs)])
    host, device = answers
    assert all(a.text for a in host)
    assert device == host


def test_the_kv_budget_decides_the_slots() -> None:
    # SmolLM2: 30 layers x 3 KV heads x (64 + 64) x 2 bytes = 22.5 KiB a token
    with BatchedLlm(SMOLLM, parallel=8, threads=1, slot_tokens=256, kv_budget_mib=17) as small:
        assert small.slots == 3  # 256 tokens take 5.6 MiB
    with pytest.raises(KvBudgetTooSmall):
        BatchedLlm(SMOLLM, parallel=8, threads=1, slot_tokens=256, kv_budget_mib=5)


def test_a_context_with_its_layers_offloaded_takes_the_gpu_s_settings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``gpu_layers=-1`` on a build without a GPU: the layers stay on the CPU, but the
    engine takes the GPU's settings (packed streams, a batch of all its slots' tokens up to
    ``GPU_BATCH_TOKENS``, read in one micro-batch, flash attention where llama.cpp
    resolves it on), and a shared cache where asked for one, which llama.cpp's flash
    attention lets it keep."""
    with BatchedLlm(SMOLLM, parallel=2, threads=2, slot_tokens=SLOT_TOKENS, gpu_layers=-1) as gpu:
        assert (gpu.kv_unified, gpu.pack_streams) == (False, True)
        assert (gpu.batch_tokens, gpu.micro_batch_tokens) == (512, 512)  # what 2 slots hold
        assert answer(gpu.generate([request(1, max_tokens=5)])[0]).completion_tokens == 5
    with BatchedLlm(
        SMOLLM, parallel=2, threads=2, slot_tokens=SLOT_TOKENS, gpu_layers=-1, kv_unified=True
    ) as shared:
        assert shared.kv_unified
        assert answer(shared.generate([request(1, max_tokens=5)])[0]).completion_tokens == 5
    assert "no flash attention" not in caplog.text
    with BatchedLlm(SMOLLM, parallel=2, threads=2, slot_tokens=SLOT_TOKENS) as cpu:
        assert (cpu.kv_unified, cpu.pack_streams) == (False, False)
        assert (cpu.batch_tokens, cpu.micro_batch_tokens) == (2048, 512)


def test_without_flash_attention_a_gpu_context_takes_a_stream_a_sequence(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where llama.cpp does not report flash attention on (injected: no device here lacks
    it), a shared cache asked for would reserve attention scores over all its cells: the
    engine falls back to a stream a sequence, says so, and answers."""
    monkeypatch.setattr(batched, "_FLASH_ATTN_ON", b"not a line llama.cpp logs")
    with BatchedLlm(
        SMOLLM,
        parallel=2,
        threads=2,
        slot_tokens=SLOT_TOKENS,
        gpu_layers=-1,
        contexts=2,
        kv_unified=True,
    ) as gpu:
        assert not gpu.kv_unified
        outcomes = gpu.generate([request(1, max_tokens=5), request(2, max_tokens=3, seed=2)])
        assert [answer(o).completion_tokens for o in outcomes] == [5, 3]
    assert caplog.text.count("no flash attention for this model on this device") == 1


def test_a_step_log_holds_each_steps_own_times(split_host_llm: BatchedLlm) -> None:
    """What benchmarks read step by step adds up to the engine's running totals."""
    before = dataclasses.replace(split_host_llm.times)
    split_host_llm.step_log = []
    reqs = [request(key, max_tokens=5, seed=key) for key in range(1, 5)]
    assert all(isinstance(o, Generation) for o in split_host_llm.generate(reqs))
    log, split_host_llm.step_log = split_host_llm.step_log, None
    run = split_host_llm.times.since(before)
    assert len(log) > 1 and all(entry.steps <= 1 for entry in log)  # a launch a step at most
    assert sum(entry.steps for entry in log) == run.steps
    assert sum(entry.tokens for entry in log) == run.tokens == 4 * 5
    assert sum(entry.join_s for entry in log) == pytest.approx(run.join_s)
    assert sum(entry.total_s for entry in log) == pytest.approx(run.total_s)
