"""GPUs as a budget: what a worker needs of a GPU's memory, and which GPU it goes on.

Pure but for :func:`detect_gpus`. A worker on a GPU holds, for as long as it runs, its
model's weights, its KV cache (a batched LLM worker reserves ``slot_tokens`` cells for
each of its slots up front) and the CUDA context with llama.cpp's or torch's compute
buffers. The supervisor adds up these estimates per GPU and starts a worker only on a GPU
with room for it, with ``CUDA_VISIBLE_DEVICES`` naming that GPU alone, so the worker sees
it as device 0.

The estimates are deliberately simple and on the high side (weights from the file,
KV cache from the model's shape, a fixed allowance for the rest); ``--gpu-memory-mib``
states how much of each GPU the workers may take.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence

from oracle.engine.llm_options import (
    LlmEngineOptions,
    gpu_batch_tokens,
    gpu_logits_mib,
    gpu_micro_batch_tokens,
    slots_for_budget,
)
from oracle.errors import OracleError

__all__ = [
    "CUDA_OVERHEAD_MIB",
    "EMBEDDING_GPU_MIB",
    "GpuPlacementError",
    "describe_free",
    "detect_gpus",
    "embedding_gpu_mib",
    "llm_gpu_mib",
    "parse_gpu_list",
    "pick_gpu",
    "place_all",
]

CUDA_OVERHEAD_MIB = 768.0
"""A worker process's CUDA context and compute buffers, whatever its model."""
EMBEDDING_GPU_MIB = 1024.0
"""An embedding worker on a GPU (all-MiniLM-L6-v2: 87 MiB of weights, passes of 256
texts), its CUDA context included."""

LLM_WEIGHTS_MIB: Mapping[str, float] = {
    "SmolLM2-135M-Instruct-Q4_1": 100.0,
    "gemma-3-270m-Q4_K_M": 260.0,
}
"""Weights on the GPU (the GGUF file's size, rounded up), by model."""
DEFAULT_LLM_WEIGHTS_MIB = 2048.0
KV_BYTES_PER_TOKEN: Mapping[str, int] = {
    "SmolLM2-135M-Instruct-Q4_1": 30 * 2 * 3 * 64 * 2,  # layers, K and V, KV heads, dims, f16
    "gemma-3-270m-Q4_K_M": 18 * 2 * 1 * 256 * 2,
}
"""KV-cache bytes one token takes, by model (what oracle.engine.batched reads from the
loaded model: 22.5 KiB for SmolLM2)."""
DEFAULT_KV_BYTES_PER_TOKEN = 128 * 1024
LLM_VOCAB_TOKENS: Mapping[str, int] = {
    "SmolLM2-135M-Instruct-Q4_1": 49_152,
    "gemma-3-270m-Q4_K_M": 262_144,
}
"""The vocabulary, by model: a batched worker's contexts reserve a row of logits for every
token of a micro-batch."""
DEFAULT_LLM_VOCAB_TOKENS = 262_144


class GpuPlacementError(OracleError):
    """The workers asked for do not fit the GPUs given."""


def llm_gpu_mib(model: str, options: LlmEngineOptions, context_tokens: int) -> float:
    """GPU memory of one LLM worker with layers on the GPU: weights, the KV cache of its
    slots (``kv_budget_mib`` when set, else slots x slot tokens), the CUDA overhead, and
    for the batched engine each context's logits of a micro-batch. 0 when it runs on the
    CPU (``gpu_layers`` 0). The batched engine's slots are counted as it allocates them,
    rounded up to whole KV cells (``padded_to_kv_cells``)."""
    if options.gpu_layers == 0:
        return 0.0
    weights = LLM_WEIGHTS_MIB.get(model, DEFAULT_LLM_WEIGHTS_MIB)
    per_token = KV_BYTES_PER_TOKEN.get(model, DEFAULT_KV_BYTES_PER_TOKEN)
    if options.engine == "sequential":
        kv_mib = (options.slot_tokens or context_tokens) * per_token / 2**20
        logits_mib = 0.0
    else:
        slot_tokens = options.job_context_tokens(context_tokens)  # padded, as allocated
        slots = slots_for_budget(
            parallel=options.parallel,
            kv_budget_mib=options.kv_budget_mib,
            slot_tokens=slot_tokens,
            kv_bytes_per_token=per_token,
        )
        kv_mib = slots * slot_tokens * per_token / 2**20
        vocab = LLM_VOCAB_TOKENS.get(model, DEFAULT_LLM_VOCAB_TOKENS)
        batch = gpu_batch_tokens(slots, slot_tokens)
        micro_batch = gpu_micro_batch_tokens(batch, vocab)
        logits_mib = min(slots, options.resolved_contexts) * gpu_logits_mib(micro_batch, vocab)
    return weights + kv_mib + logits_mib + CUDA_OVERHEAD_MIB


def embedding_gpu_mib(model: str) -> float:
    """GPU memory of one embedding worker on a GPU."""
    return EMBEDDING_GPU_MIB


def pick_gpu(free_mib: Mapping[int, float], need_mib: float) -> int | None:
    """The GPU for a worker needing ``need_mib``: among those with room, the one with the
    least left (so that a large hole stays for a large worker), the lower index on a tie;
    None when no GPU has room."""
    fitting = [(free, index) for index, free in free_mib.items() if free >= need_mib]
    return min(fitting)[1] if fitting else None


def place_all(needs_mib: Sequence[float], gpus_mib: Mapping[int, float]) -> list[int]:
    """A GPU for each of a fixed set of workers (largest first, each on the GPU
    :func:`pick_gpu` chooses), in the order given; GpuPlacementError when they do not fit."""
    free = dict(gpus_mib)
    placed: dict[int, int] = {}
    order = sorted(range(len(needs_mib)), key=lambda i: (-needs_mib[i], i))
    for i in order:
        gpu = pick_gpu(free, needs_mib[i])
        if gpu is None:
            total = sum(needs_mib)
            raise GpuPlacementError(
                f"the GPU workers need {total:.0f} MiB in all, {needs_mib[i]:.0f} MiB for "
                f"one; they do not fit ({describe_free(gpus_mib)} given, "
                f"{describe_free(free)} left when this one came)"
            )
        placed[i] = gpu
        free[gpu] -= needs_mib[i]
    return [placed[i] for i in range(len(needs_mib))]


def describe_free(free_mib: Mapping[int, float]) -> str:
    """``GPU 0: 1200 MiB, GPU 1: 300 MiB``."""
    return ", ".join(f"GPU {i}: {free:.0f} MiB" for i, free in sorted(free_mib.items()))


def detect_gpus() -> dict[int, float]:
    """The NVIDIA GPUs of this machine and their memory in MiB (``nvidia-smi``); empty
    when there is none or no driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return {}
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_gpu_list(out)


def parse_gpu_list(text: str) -> dict[int, float]:
    """``nvidia-smi --query-gpu=index,memory.total --format=csv,noheader,nounits`` read."""
    gpus = {}
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            try:
                gpus[int(parts[0])] = float(parts[1])
            except ValueError:
                continue
    return gpus
