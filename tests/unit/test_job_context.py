"""The context one job gets, as admission is told it: a batched worker's slot."""

from __future__ import annotations

from oracle.config import NodeSettings
from oracle.engine.llm_options import LlmEngineOptions
from oracle.node import _profile

SMOLLM2 = "SmolLM2-135M-Instruct-Q4_1"  # a 4,096-token context


def test_a_job_gets_the_model_s_context_or_its_batched_slot_rounded_as_the_engine_does() -> None:
    assert LlmEngineOptions().job_context_tokens(4096) == 4096
    assert LlmEngineOptions(slot_tokens=512).job_context_tokens(4096) == 4096  # sequential
    assert LlmEngineOptions(engine="batched").job_context_tokens(4096) == 4096
    assert LlmEngineOptions(engine="batched", slot_tokens=512).job_context_tokens(4096) == 512
    assert LlmEngineOptions(engine="batched", slot_tokens=600).job_context_tokens(4096) == 768


def test_the_node_tells_admission_the_slot_not_the_model_s_context() -> None:
    node = NodeSettings(
        rpc_urls=("http://x",), contract="0x" + "11" * 20, private_key="0x" + "22" * 32
    )
    assert _profile(SMOLLM2, node).context_tokens == 4096
    batched = NodeSettings(
        rpc_urls=("http://x",),
        contract="0x" + "11" * 20,
        private_key="0x" + "22" * 32,
        llm_engine="batched",
        slot_tokens=1000,
    )
    assert _profile(SMOLLM2, batched).context_tokens == 1024
