"""GPUs as a budget: a worker's estimated GPU memory, which GPU it goes on, and the
autoscaler starting, holding and making room on GPUs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from oracle.engine.autoscale import ModelKey, WorkerView
from oracle.engine.gpus import (
    CUDA_OVERHEAD_MIB,
    GpuPlacementError,
    llm_gpu_mib,
    parse_gpu_list,
    pick_gpu,
    place_all,
)
from oracle.engine.llm_options import (
    GPU_BATCH_TOKENS,
    GPU_LOGITS_BUDGET_MIB,
    MIN_MICRO_BATCH,
    KvBudgetTooSmall,
    LlmEngineOptions,
    gpu_batch_tokens,
    gpu_micro_batch_tokens,
)
from oracle.engine.supervisor import WorkerSpec, autoscaling_for
from tests.unit.test_autoscale import (
    GEMMA,
    MINILM,
    SMOL,
    budget,
    decide,
    demand,
    holds,
    settings,
    taken,
    worker,
)

SMOLLM2 = "SmolLM2-135M-Instruct-Q4_1"
KV_SMOLLM2 = 22.5 / 1024  # MiB a token
BATCHED_GPU = LlmEngineOptions(engine="batched", parallel=256, gpu_layers=-1, slot_tokens=512)
LOGITS_2 = 2 * 5376 * 49_152 * 4 / 2**20  # two contexts' micro-batch of logits: 2 x 1,008 MiB


# --- a worker's need ------------------------------------------------------------------------


def test_a_batched_worker_needs_weights_its_slots_kv_cache_logits_and_the_cuda_overhead() -> None:
    need = llm_gpu_mib(SMOLLM2, BATCHED_GPU, context_tokens=4096)
    assert need == pytest.approx(100 + 256 * 512 * KV_SMOLLM2 + LOGITS_2 + CUDA_OVERHEAD_MIB)
    one_context = replace(BATCHED_GPU, contexts=1)
    assert llm_gpu_mib(SMOLLM2, one_context, context_tokens=4096) == pytest.approx(
        need - LOGITS_2 / 2
    )
    few = replace(BATCHED_GPU, parallel=4, slot_tokens=256)  # prompts of 1,024 tokens at most
    assert llm_gpu_mib(SMOLLM2, few, context_tokens=4096) == pytest.approx(
        100 + 4 * 256 * KV_SMOLLM2 + 2 * 1024 * 49_152 * 4 / 2**20 + CUDA_OVERHEAD_MIB
    )
    gemma = llm_gpu_mib("gemma-3-270m-Q4_K_M", BATCHED_GPU, context_tokens=32_768)
    gemma_kv = 256 * 512 * 18 * 2 * 256 * 2 / 2**20
    assert gemma == pytest.approx(260 + gemma_kv + 2 * 1024 + CUDA_OVERHEAD_MIB)  # 1,024 tokens
    sequential = replace(BATCHED_GPU, engine="sequential")  # llama-cpp-python's own context
    assert llm_gpu_mib(SMOLLM2, sequential, context_tokens=4096) == pytest.approx(
        100 + 512 * KV_SMOLLM2 + CUDA_OVERHEAD_MIB
    )


def test_a_gpu_decode_takes_what_its_slots_hold_up_to_a_bound() -> None:
    assert gpu_batch_tokens(256, 512) == GPU_BATCH_TOKENS
    assert gpu_batch_tokens(4, 256) == 1024
    assert gpu_batch_tokens(2, 1) == 3  # a token a slot and one more, always


def test_a_gpu_micro_batch_holds_what_the_logits_budget_allows() -> None:
    assert GPU_LOGITS_BUDGET_MIB * 2**20 // (4 * 49_152) == 5461  # SmolLM2's vocabulary
    assert gpu_micro_batch_tokens(8192, 49_152) == 5376  # in multiples of 256
    assert gpu_micro_batch_tokens(8192, 262_144) == 1024  # Gemma 3's
    assert gpu_micro_batch_tokens(2048, 49_152) == 2048  # never more than the batch
    assert gpu_micro_batch_tokens(8192, 4_000_000) == MIN_MICRO_BATCH  # nor less than this
    assert gpu_micro_batch_tokens(300, 4_000_000) == 300


def test_slot_tokens_default_to_the_context_and_a_kv_budget_caps_the_slots() -> None:
    whole_context = replace(BATCHED_GPU, slot_tokens=None, parallel=8)
    assert llm_gpu_mib(SMOLLM2, whole_context, context_tokens=4096) == pytest.approx(
        100 + 8 * 4096 * KV_SMOLLM2 + LOGITS_2 + CUDA_OVERHEAD_MIB
    )
    capped = replace(BATCHED_GPU, kv_budget_mib=1000)  # holds 88 slots of 512 tokens
    assert llm_gpu_mib(SMOLLM2, capped, context_tokens=4096) == pytest.approx(
        100 + 88 * 512 * KV_SMOLLM2 + LOGITS_2 + CUDA_OVERHEAD_MIB
    )
    with pytest.raises(KvBudgetTooSmall):
        llm_gpu_mib(SMOLLM2, replace(BATCHED_GPU, kv_budget_mib=1), context_tokens=4096)


def test_slots_are_counted_as_the_engine_allocates_them_in_whole_kv_cells() -> None:
    """The engine rounds a slot of 600 tokens up to 768 (three cells of 256): the estimate
    counts those, for the cache and for how many slots a KV budget holds."""
    odd = replace(BATCHED_GPU, parallel=8, slot_tokens=600)
    assert odd.job_context_tokens(4096) == 768
    assert llm_gpu_mib(SMOLLM2, odd, context_tokens=4096) == pytest.approx(
        100 + 8 * 768 * KV_SMOLLM2 + LOGITS_2 + CUDA_OVERHEAD_MIB
    )
    budgeted = replace(odd, kv_budget_mib=100)  # 5 slots of 768 tokens; 600 would give 7
    assert llm_gpu_mib(SMOLLM2, budgeted, context_tokens=4096) == pytest.approx(
        100 + 5 * 768 * KV_SMOLLM2 + 2 * 3840 * 49_152 * 4 / 2**20 + CUDA_OVERHEAD_MIB
    )


def test_a_worker_on_the_cpu_needs_no_gpu() -> None:
    on_cpu = replace(BATCHED_GPU, gpu_layers=0)
    assert llm_gpu_mib(SMOLLM2, on_cpu, context_tokens=4096) == 0.0
    assert not WorkerSpec(role="llm", model=SMOLLM2, llm=on_cpu).on_gpu
    assert WorkerSpec(role="llm", model=SMOLLM2, llm=BATCHED_GPU).on_gpu
    assert WorkerSpec(role="embedding", model="all-MiniLM-L6-v2", device="cuda").on_gpu
    assert not WorkerSpec(role="embedding", model="all-MiniLM-L6-v2").on_gpu


def test_nvidia_smi_lines_are_read_and_junk_is_skipped() -> None:
    text = "0, 143771\n1, 81559\nNo devices were found\n2, [N/A]\n"
    assert parse_gpu_list(text) == {0: 143771.0, 1: 81559.0}


# --- placement --------------------------------------------------------------------------------


def test_a_worker_goes_on_the_gpu_it_fills_best() -> None:
    assert pick_gpu({0: 5000, 1: 3000, 2: 900}, 1000) == 1  # the large hole stays
    assert pick_gpu({0: 3000, 1: 3000}, 1000) == 0  # a tie: the lower index
    assert pick_gpu({0: 999, 1: 500}, 1000) is None


def test_a_fixed_pool_is_placed_largest_first_or_refused_with_the_numbers() -> None:
    assert place_all([1000, 6000, 3000, 2000], {0: 8000, 1: 4000}) == [1, 0, 1, 0]
    with pytest.raises(GpuPlacementError, match=r"6000 MiB for one.*GPU 0: 5000 MiB"):
        place_all([6000, 1000], {0: 5000, 1: 5000})


# --- the autoscaler on GPUs -----------------------------------------------------------------


def _on(
    key: str, model: ModelKey, gpu: int, *, idle_s: float = 0.0, stopping: bool = False
) -> WorkerView:
    return replace(worker(key, model, idle_s=idle_s, stopping=stopping), gpu=gpu)


GPU_BUDGET = budget(
    gpu_slots=8,
    gpu_need={"smol": 1, "gemma": 1, "minilm": 1},
    gpus={0: 10_000, 1: 4_000},
    gpu_memory_mib={"smol": 3_000, "gemma": 6_000, "minilm": 1_000},
)


def test_starts_say_which_gpu_and_count_what_is_placed_there() -> None:
    decisions = decide(
        [demand(SMOL, jobs=100, work=10_000, deadline_s=10)],
        [_on("s1", SMOL, 0), _on("g1", GEMMA, 0)],  # 9,000 of GPU 0's 10,000 taken
        the_budget=GPU_BUDGET,
    )
    starts = [d for d in decisions if d.action == "start"]
    assert [d.gpu for d in starts] == [1]  # only GPU 1 holds another 3,000
    (held,) = holds(decisions)
    assert "no GPU has 3000 MiB free (GPU 0: 1000 MiB, GPU 1: 1000 MiB)" in held.reason


def test_a_stopping_worker_holds_its_gpu_memory_until_it_is_gone() -> None:
    decisions = decide(
        [demand(GEMMA, jobs=1)],
        [_on("g1", GEMMA, 0, stopping=True), _on("m1", MINILM, 1)],
        the_budget=replace(GPU_BUDGET, gpus={0: 10_000, 1: 1_000}),
    )
    assert taken(decisions) == []
    assert "waiting for stopping workers to exit" in holds(decisions)[0].reason


def test_an_idle_worker_on_the_crowded_gpu_makes_room_for_a_first_worker() -> None:
    decisions = decide(
        [demand(GEMMA, jobs=1)],
        [_on("s1", SMOL, 0, idle_s=30), _on("m1", MINILM, 1, idle_s=30)],
        the_budget=replace(GPU_BUDGET, gpus={0: 8_000, 1: 4_000}),
        the_settings=settings(min_workers={SMOL: 0, GEMMA: 0, MINILM: 0}),
    )
    # gemma needs 6,000: GPU 0 has 5,000 free, GPU 1 3,000; stopping minilm on GPU 1 gives
    # 4,000, not enough; stopping smol on GPU 0 gives 8,000
    assert taken(decisions) == [("stop", "smol", "s1", "preempt")]


def test_without_gpus_given_workers_on_a_gpu_are_only_counted() -> None:
    counted = replace(GPU_BUDGET, gpus={})
    decisions = decide([demand(GEMMA, jobs=100, work=10_000, deadline_s=1)], the_budget=counted)
    assert {d.gpu for d in decisions} == {None}
    assert len(taken(decisions)) == 8  # the worker limit, not memory


def test_the_supervisor_budget_holds_each_gpu_model_s_estimate() -> None:
    specs = [
        WorkerSpec(role="llm", model=SMOLLM2, llm=BATCHED_GPU),
        WorkerSpec(role="llm", model="gemma-3-270m-Q4_K_M"),  # on the CPU
        WorkerSpec(role="embedding", model="all-MiniLM-L6-v2", device="cuda"),
    ]
    scaling = autoscaling_for(
        specs, min_workers={}, max_workers=4, gpus={0: 143_771.0}, idle_unload_s=60
    )
    assert scaling.budget.gpu_memory_mib == {
        SMOLLM2: pytest.approx(100 + 256 * 512 * KV_SMOLLM2 + LOGITS_2 + CUDA_OVERHEAD_MIB),
        "all-MiniLM-L6-v2": 1024.0,
    }
    assert scaling.budget.gpu_need == {SMOLLM2: 1, "all-MiniLM-L6-v2": 1}


# --- a node's GPUs ------------------------------------------------------------------------------


def test_a_node_s_gpus_are_those_named_or_found_with_their_memory() -> None:
    from oracle.config import ConfigError, NodeSettings
    from oracle.node import gpu_budget

    node = NodeSettings(
        rpc_urls=("http://x",), contract="0x" + "11" * 20, private_key="0x" + "22" * 32
    )
    found = {0: 143_771.0, 1: 81_559.0}
    assert gpu_budget(node, found) == {}  # nothing runs on a GPU
    on_gpu = replace(node, gpu_layers=-1)
    assert gpu_budget(on_gpu, found) == found
    assert gpu_budget(replace(on_gpu, gpus=(1,)), found) == {1: 81_559.0}
    assert gpu_budget(replace(on_gpu, gpu_memory_mib=40_000), found) == {0: 40_000, 1: 40_000}
    embeddings = replace(node, embedding_device="cuda", gpus=(3,), gpu_memory_mib=2_000)
    assert gpu_budget(embeddings, {}) == {3: 2_000}
    assert gpu_budget(replace(on_gpu, gpu_slots=1), {}) == {}  # counted, not placed
    with pytest.raises(ConfigError, match="nvidia-smi lists none"):
        gpu_budget(on_gpu, {})
    with pytest.raises(ConfigError, match="GPU 3 is not among"):
        gpu_budget(replace(on_gpu, gpus=(3,)), found)
