"""The ``oracle worker`` command line a supervisor writes says everything its spec says."""

from __future__ import annotations

import click
import pytest

import oracle.cli
from oracle.engine.llm_options import LlmEngineOptions
from oracle.engine.supervisor import WorkerSpec

SMOLLM2 = "SmolLM2-135M-Instruct-Q4_1"


def _spec_the_worker_reads(command: list[str], monkeypatch: pytest.MonkeyPatch) -> WorkerSpec:
    started: list[WorkerSpec] = []
    monkeypatch.setattr(
        oracle.cli, "_run_one_worker", lambda _url, spec, _pid: started.append(spec)
    )
    assert command[1:4] == ["-m", "oracle.cli", "worker"]
    oracle.cli.worker.main(
        [*command[4:], "--database-url", "postgresql://x@localhost/x"], standalone_mode=False
    )
    assert len(started) == 1
    return started[0]


@pytest.mark.parametrize(
    "llm",
    [
        LlmEngineOptions(),
        LlmEngineOptions(
            engine="batched",
            parallel=256,
            gpu_layers=-1,
            kv_budget_mib=4096.0,
            slot_tokens=512,
            contexts=1,
            device_top_k=True,
            kv_layout="streams",
        ),
        LlmEngineOptions(engine="batched", gpu_layers=-1, kv_layout="shared"),
    ],
)
def test_every_llm_engine_setting_reaches_the_worker(
    llm: LlmEngineOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = WorkerSpec(role="llm", model=SMOLLM2, threads=3, llm=llm)
    assert _spec_the_worker_reads(spec.command(), monkeypatch).llm == llm


def test_an_unknown_kv_layout_is_refused() -> None:
    with pytest.raises(click.BadParameter):
        oracle.cli.worker.main(
            ["--model", SMOLLM2, "--database-url", "postgresql://x@y/z", "--kv-layout", "ring"],
            standalone_mode=False,
        )


@pytest.mark.parametrize(
    "spec",
    [
        WorkerSpec(role="embedding", model="all-MiniLM-L6-v2"),
        WorkerSpec(
            role="embedding",
            model="all-MiniLM-L6-v2",
            device="cuda",
            embed_claim=4096,
            embed_batch=512,
            embed_lanes=4,
            embed_process=False,
        ),
        WorkerSpec(role="embedding", model="all-MiniLM-L6-v2", embed_process=True),
    ],
)
def test_every_embedding_setting_reaches_the_worker(
    spec: WorkerSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _spec_the_worker_reads(spec.command(), monkeypatch) == spec
