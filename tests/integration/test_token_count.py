"""An LLM's tokens in a text, from its vocabulary alone: what verification counts against
maxTokens, and the cut that keeps an honest answer within it."""

from __future__ import annotations

import pytest

from oracle.engine.llm import LlmRunner
from oracle.engine.token_count import ModelTokens
from oracle.errors import OracleError

pytestmark = pytest.mark.slow

SMOL = "SmolLM2-135M-Instruct-Q4_1"
GEMMA = "gemma-3-270m-Q4_K_M"
TEXT = "The capital of France is Paris. Ünïcödé 日本語 🙂 " * 10


@pytest.fixture(scope="module", params=[SMOL, GEMMA])
def counter(request: pytest.FixtureRequest) -> ModelTokens:
    return ModelTokens(request.param)


@pytest.mark.parametrize("limit", [1, 7, 20, 64])
def test_fit_keeps_a_start_of_the_text_within_the_limit(counter: ModelTokens, limit: int) -> None:
    cut = counter.fit(TEXT, limit)
    assert TEXT.startswith(cut)
    assert limit - 2 <= counter.count(cut) <= limit  # a character may hold several tokens
    assert counter.fit(cut, limit) == cut


def test_a_text_within_the_limit_is_left_alone(counter: ModelTokens) -> None:
    assert counter.fit(TEXT, counter.count(TEXT)) == TEXT
    assert counter.fit("", 1) == ""


def test_generated_answers_count_no_more_tokens_than_were_generated() -> None:
    """An honest answer of maxTokens tokens is not disputed as longer than maxTokens."""
    counter = ModelTokens(SMOL)
    with LlmRunner.from_registry(SMOL, n_threads=1) as runner:
        for seed in range(3):
            generation = runner.generate(
                prompt="Tell a long story about a dragon.",
                temperature_milli=1000,
                max_tokens=24,
                seed=seed,
            )
            assert counter.count(generation.text) <= generation.completion_tokens == 24


def test_a_model_that_is_not_here_says_so() -> None:
    with pytest.raises(OracleError):
        ModelTokens("no-such-model")
