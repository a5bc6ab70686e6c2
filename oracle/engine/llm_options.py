"""How an LLM worker runs its model: which engine, on which device, with how many sequences.

Kept apart from the engines themselves so that the supervisor and the CLI can name these
settings without importing llama.cpp.

``batched`` decodes many requests together (continuous batching, one KV-cache sequence
and one sampler chain per request: :mod:`oracle.engine.batched`); ``sequential`` answers
one request at a time through llama-cpp-python's high-level API
(:mod:`oracle.engine.llm`), kept for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from oracle.errors import OracleError, OutOfRange

__all__ = [
    "DEFAULT_LLM_ENGINE",
    "DEFAULT_PARALLEL",
    "ENGINES",
    "GPU_BATCH_TOKENS",
    "GPU_CONTEXTS",
    "GPU_LOGITS_BUDGET_MIB",
    "KV_CELL_PAD",
    "KV_LAYOUTS",
    "MIN_MICRO_BATCH",
    "EngineKind",
    "KvBudgetTooSmall",
    "KvLayout",
    "LlmEngineOptions",
    "gpu_batch_tokens",
    "gpu_logits_mib",
    "gpu_micro_batch_tokens",
    "padded_to_kv_cells",
    "slots_for_budget",
]

EngineKind = Literal["batched", "sequential"]
ENGINES: tuple[EngineKind, ...] = get_args(EngineKind)
KvLayout = Literal["shared", "streams"]
KV_LAYOUTS: tuple[KvLayout, ...] = get_args(KvLayout)

GPU_CONTEXTS = 2
"""Contexts a batched worker with layers on a GPU decodes in turn unless told otherwise."""
KV_CELL_PAD = 256
"""llama.cpp rounds each sequence's context up to a multiple of this."""
GPU_BATCH_TOKENS = 8192
"""Most tokens one decode takes on a GPU (``gpu_batch_tokens``), in micro-batches of
``gpu_micro_batch_tokens``: every micro-batch is a graph built and launched, and only
decodes of one shape replay a captured CUDA graph, so a GPU reads the prompts admitted
together in few large ones (H200, 256 requests, the engine alone: 13,102 tokens/s with
8,192 against 11,142 with 2,048 and 10,496 with 2,048 in micro-batches of 512; the ten
longest steps, the prompts', took 291 against 456 ms). The bound on the micro-batch
(5,376 tokens for SmolLM2) was measured through the queue only (README)."""
GPU_LOGITS_BUDGET_MIB = 1024.0
"""What one GPU context's compute buffer may hold for a micro-batch's logits. llama.cpp
reserves a row of logits for every token a micro-batch can hold (``n_ubatch`` x the
vocabulary x 4 bytes; on the CPU: 98, 393 and 1,572 MiB for SmolLM2 at 512, 2,048 and 8,192
tokens), so a GPU context's micro-batch is as many tokens as this holds
(:func:`gpu_micro_batch_tokens`)."""
MIN_MICRO_BATCH = 512
"""llama.cpp's default micro-batch, and the least a GPU context gets (unless its batch is less)."""
DEFAULT_PARALLEL = 8
"""Sequences a batched worker decodes together unless told otherwise: enough to keep a
CPU's cores busy between sampling steps; on a GPU, use 64 to 256 (README, GPU section)."""


class KvBudgetTooSmall(OracleError):
    """The KV-cache budget does not hold one sequence of the slot's context."""

    budget_mib: float
    needed_mib: float

    def __init__(self, *, budget_mib: float, needed_mib: float) -> None:
        super().__init__(f"{budget_mib:g} MiB given, one slot needs {needed_mib:.1f} MiB")
        self.budget_mib = budget_mib
        self.needed_mib = needed_mib


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmEngineOptions:
    """The LLM engine settings of one worker process."""

    engine: EngineKind = "sequential"
    parallel: int = DEFAULT_PARALLEL
    """Most sequences decoded together (the batched engine's slots, before the budget)."""
    gpu_layers: int = 0
    """Layers offloaded to the GPU (llama.cpp's n_gpu_layers); -1 or a large number: all."""
    kv_budget_mib: float | None = None
    """Memory for the KV cache; the slots are as many as it holds, at most ``parallel``."""
    slot_tokens: int | None = None
    """Context of one sequence (prompt plus max_tokens); None: the model's context."""
    contexts: int | None = None
    """llama.cpp contexts the slots are split over, decoded in turn so that one's sampling
    runs while the device computes the other's; None: 2 with layers on a GPU, else 1."""
    device_top_k: bool = False
    """Keep each sequence's 40 highest logits on the device (llama.cpp's experimental
    backend sampling): 40 candidates come back instead of the vocabulary."""
    kv_layout: KvLayout | None = None
    """A context's KV cache: ``streams``, one a sequence (packed into one micro-batch a step
    on a GPU), or ``shared`` by its sequences; None: streams (:mod:`oracle.engine.batched`'s
    notes)."""

    def job_context_tokens(self, model_context_tokens: int) -> int:
        """The context one job gets (prompt plus max_tokens): the model's under the
        sequential engine, a slot under the batched one (``slot_tokens``, default the
        model's context, rounded up to a multiple of ``KV_CELL_PAD`` as the engine
        allocates it)."""
        if self.engine != "batched":
            return model_context_tokens
        return padded_to_kv_cells(self.slot_tokens or model_context_tokens)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise OutOfRange(field="engine", value=self.engine, allowed=" or ".join(ENGINES))
        if self.parallel < 1:
            raise OutOfRange(field="parallel", value=self.parallel, allowed=">= 1")
        if self.gpu_layers < -1:
            raise OutOfRange(field="gpu_layers", value=self.gpu_layers, allowed=">= -1")
        if self.kv_budget_mib is not None and self.kv_budget_mib <= 0:
            raise OutOfRange(field="kv_budget_mib", value=self.kv_budget_mib, allowed="> 0")
        if self.slot_tokens is not None and self.slot_tokens < 16:
            raise OutOfRange(field="slot_tokens", value=self.slot_tokens, allowed=">= 16")
        if self.contexts is not None and self.contexts < 1:
            raise OutOfRange(field="contexts", value=self.contexts, allowed=">= 1")
        if self.kv_layout is not None and self.kv_layout not in KV_LAYOUTS:
            raise OutOfRange(
                field="kv_layout", value=self.kv_layout, allowed=" or ".join(KV_LAYOUTS)
            )

    @property
    def resolved_contexts(self) -> int:
        """The contexts a batched worker uses: as set, else by device."""
        if self.contexts is not None:
            return self.contexts
        return 1 if self.gpu_layers == 0 else GPU_CONTEXTS

    def cli_args(self) -> list[str]:
        """These settings as ``oracle worker`` options."""
        args = ["--engine", self.engine, "--parallel", str(self.parallel)]
        args += ["--gpu-layers", str(self.gpu_layers)]
        if self.kv_budget_mib is not None:
            args += ["--kv-budget-mib", f"{self.kv_budget_mib:g}"]
        if self.slot_tokens is not None:
            args += ["--slot-tokens", str(self.slot_tokens)]
        if self.contexts is not None:
            args += ["--contexts", str(self.contexts)]
        if self.device_top_k:
            args.append("--device-top-k")
        if self.kv_layout is not None:
            args += ["--kv-layout", self.kv_layout]
        return args


DEFAULT_LLM_ENGINE = LlmEngineOptions()
"""A worker's LLM settings unless told otherwise."""


def gpu_batch_tokens(slots: int, slot_tokens: int) -> int:
    """The tokens one decode takes on a GPU: ``GPU_BATCH_TOKENS``, or all that the slots
    hold when that is less (a few slots need no larger micro-batch), and always a token a
    slot and one more."""
    return max(min(GPU_BATCH_TOKENS, slots * slot_tokens), slots + 1)


def gpu_logits_mib(micro_batch_tokens: int, n_vocab: int) -> float:
    """What llama.cpp reserves in a context's compute buffer for a micro-batch's logits."""
    return micro_batch_tokens * n_vocab * 4 / 2**20


def gpu_micro_batch_tokens(batch_tokens: int, n_vocab: int) -> int:
    """The micro-batch of a GPU context: as many tokens as ``GPU_LOGITS_BUDGET_MIB`` holds
    logits for, in multiples of 256, at least ``MIN_MICRO_BATCH`` and at most the batch
    (SmolLM2's 49,152-token vocabulary: 5,376; Gemma 3's 262,144: 1,024)."""
    fits = int(GPU_LOGITS_BUDGET_MIB * 2**20 // (4 * n_vocab)) // KV_CELL_PAD * KV_CELL_PAD
    return min(batch_tokens, max(MIN_MICRO_BATCH, fits))


def padded_to_kv_cells(tokens: int) -> int:
    """``tokens`` rounded up to a multiple of ``KV_CELL_PAD``: a batched slot's context."""
    return -(-tokens // KV_CELL_PAD) * KV_CELL_PAD


def slots_for_budget(
    *, parallel: int, kv_budget_mib: float | None, slot_tokens: int, kv_bytes_per_token: int
) -> int:
    """Sequences a worker can hold: ``parallel``, fewer when the KV budget holds fewer.

    Each slot reserves ``slot_tokens`` cells of ``kv_bytes_per_token`` bytes up front.
    """
    if kv_budget_mib is None:
        return parallel
    slot_mib = slot_tokens * kv_bytes_per_token / 2**20
    fits = int(kv_budget_mib // slot_mib)
    if fits < 1:
        raise KvBudgetTooSmall(budget_mib=kv_budget_mib, needed_mib=slot_mib)
    return min(parallel, fits)
