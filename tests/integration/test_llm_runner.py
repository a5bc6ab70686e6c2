"""LlmRunner and the model registry on the real default models (SmolLM2, Gemma 3 270M)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oracle.engine.llm import (
    MAX_SEED,
    InvalidGenerationRequest,
    LlmRunner,
    ModelHasNoChatTemplate,
    ModelLoadFailed,
    PromptTooLong,
    request_seed,
)
from oracle.engine.models import (
    DEFAULT_LLMS,
    AssembledFromChunks,
    InvalidModelSpec,
    LlmSpec,
    ModelNotInstalled,
    PackagedFile,
    UnknownModel,
    lookup_llm,
    operator_llm,
    registry_with,
    resolve_llm,
)
from oracle.engine.sampling import LogitNoise
from oracle.errors import OracleError

pytestmark = pytest.mark.slow

SMOLLM = "SmolLM2-135M-Instruct-Q4_1"
GEMMA = "gemma-3-270m-Q4_K_M"
THREADS = 2
POEM = "Write a short poem about the sea."
STORY = "Tell me a long story about a dragon who learns to read."
COORDINATOR = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache per run, so Gemma's assembly from its chunk packages is exercised."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def smollm(cache_dir: Path) -> Iterator[LlmRunner]:
    with LlmRunner.from_registry(SMOLLM, n_threads=THREADS, cache_dir=cache_dir) as runner:
        yield runner


@pytest.fixture(scope="module")
def gemma(cache_dir: Path) -> Iterator[LlmRunner]:
    with LlmRunner.from_registry(GEMMA, n_threads=THREADS, cache_dir=cache_dir) as runner:
        yield runner


# --- SmolLM2 (chat) -------------------------------------------------------------------


def test_same_seed_gives_the_same_text_after_another_request(smollm: LlmRunner) -> None:
    first = smollm.generate(prompt=POEM, temperature_milli=700, max_tokens=40, seed=11)
    smollm.generate(prompt=STORY, temperature_milli=1200, max_tokens=30, seed=99)
    again = smollm.generate(prompt=POEM, temperature_milli=700, max_tokens=40, seed=11)

    assert again == first
    assert first.text
    assert first.model == SMOLLM
    assert first.seed == 11


def test_different_seeds_give_different_texts(smollm: LlmRunner) -> None:
    texts = {
        smollm.generate(prompt=POEM, temperature_milli=700, max_tokens=40, seed=seed).text
        for seed in (1, 2, 3, 4)
    }
    assert len(texts) > 1


def test_simulated_logit_noise_is_reproducible_and_parts_some_answers(smollm: LlmRunner) -> None:
    """``oracle calibrate``'s stand-in for another machine: the same noise gives the same
    text, no noise is the node's own answer, and another noise seed parts some answers
    (how often is the benchmark's to measure, docs/consensus.md)."""

    def answer(seed: int, noise: LogitNoise | None) -> str:
        return smollm.generate(
            prompt=POEM, temperature_milli=700, max_tokens=40, seed=seed, logit_noise=noise
        ).text

    plain = [answer(seed, None) for seed in (1, 2, 3, 4)]
    assert [answer(seed, LogitNoise(0.0, 5)) for seed in (1, 2, 3, 4)] == plain
    noisy = [answer(seed, LogitNoise(0.3, 5)) for seed in (1, 2, 3, 4)]
    assert [answer(seed, LogitNoise(0.3, 5)) for seed in (1, 2, 3, 4)] == noisy
    elsewhere = [answer(seed, LogitNoise(0.3, 6)) for seed in (1, 2, 3, 4)]
    assert noisy != elsewhere


def test_max_tokens_is_honoured_exactly(smollm: LlmRunner) -> None:
    for max_tokens in (1, 7, 33):
        answer = smollm.generate(prompt=STORY, temperature_milli=700, max_tokens=max_tokens, seed=5)
        assert answer.completion_tokens == max_tokens
        assert answer.finish_reason == "length"


def test_an_answer_that_ends_by_itself_stops_early(smollm: LlmRunner) -> None:
    answer = smollm.generate(
        prompt="What is the capital of France? Answer in one word.",
        temperature_milli=0,
        max_tokens=200,
        seed=1,
    )
    assert answer.finish_reason == "stop"
    assert 0 < answer.completion_tokens < 200
    assert "Paris" in answer.text


def test_prompt_tokens_count_what_the_model_reads(smollm: LlmRunner) -> None:
    answer = smollm.generate(prompt=POEM, temperature_milli=700, max_tokens=5, seed=3)
    # The chat template (with SmolLM2's default system message) is part of the prompt.
    assert answer.prompt_tokens == smollm.count_prompt_tokens(POEM)
    assert answer.prompt_tokens > len(POEM.split())


def test_a_prompt_too_long_for_the_context_is_refused(smollm: LlmRunner) -> None:
    prompt = "sea " * smollm.context_tokens
    with pytest.raises(PromptTooLong) as refused:
        smollm.generate(prompt=prompt, temperature_milli=700, max_tokens=16, seed=1)

    assert refused.value.model == SMOLLM
    assert refused.value.prompt_tokens == smollm.count_prompt_tokens(prompt)
    assert refused.value.max_tokens == 16
    assert refused.value.context_tokens == smollm.context_tokens
    assert str(smollm.context_tokens) in str(refused.value)


def test_check_fits_counts_prompt_and_max_tokens_together(smollm: LlmRunner) -> None:
    prompt_tokens = smollm.count_prompt_tokens(POEM)
    room = smollm.context_tokens - prompt_tokens

    assert smollm.check_fits(POEM, room) == prompt_tokens
    with pytest.raises(PromptTooLong):
        smollm.check_fits(POEM, room + 1)


def test_a_request_that_fills_the_context_exactly_is_served(cache_dir: Path) -> None:
    spec = lookup_llm(SMOLLM)
    with LlmRunner(spec, n_threads=THREADS, n_ctx=64, cache_dir=cache_dir) as small:
        room = small.context_tokens - small.count_prompt_tokens(STORY)
        answer = small.generate(prompt=STORY, temperature_milli=700, max_tokens=room, seed=2)
        assert answer.completion_tokens <= room
        assert answer.prompt_tokens + answer.completion_tokens <= 64
        with pytest.raises(PromptTooLong):
            small.generate(prompt=STORY, temperature_milli=700, max_tokens=room + 1, seed=2)


@pytest.mark.parametrize(
    ("field", "arguments"),
    [
        ("max_tokens", {"max_tokens": 0}),
        ("temperature_milli", {"temperature_milli": -1}),
        ("seed", {"seed": MAX_SEED + 1}),
        ("seed", {"seed": -1}),
    ],
)
def test_parameters_out_of_range_are_refused(
    smollm: LlmRunner, field: str, arguments: dict[str, int]
) -> None:
    request = {"temperature_milli": 700, "max_tokens": 8, "seed": 1} | arguments
    with pytest.raises(InvalidGenerationRequest) as refused:
        smollm.generate(prompt=POEM, **request)
    assert refused.value.field == field


# --- Gemma 3 270M (base model, plain completion) --------------------------------------


def test_gemma_completes_plain_text(gemma: LlmRunner) -> None:
    answer = gemma.generate(
        prompt="The capital of France is", temperature_milli=0, max_tokens=12, seed=1
    )
    assert answer.model == GEMMA
    assert answer.text
    assert answer.completion_tokens <= 12
    assert answer.prompt_tokens == gemma.count_prompt_tokens("The capital of France is")


@pytest.mark.parametrize("temperature_milli", [0, 700])
def test_gemma_is_reproducible_after_another_request(
    gemma: LlmRunner, temperature_milli: int
) -> None:
    prompt = "Once upon a time, in a small village by the sea,"
    first = gemma.generate(
        prompt=prompt, temperature_milli=temperature_milli, max_tokens=32, seed=21
    )
    gemma.generate(
        prompt="The three laws of motion are", temperature_milli=900, max_tokens=24, seed=7
    )
    again = gemma.generate(
        prompt=prompt, temperature_milli=temperature_milli, max_tokens=32, seed=21
    )
    assert again == first


def test_gemma_is_assembled_once_into_the_cache(gemma: LlmRunner, cache_dir: Path) -> None:
    assert gemma.model_path.parent == cache_dir
    before = gemma.model_path.stat()

    assert resolve_llm(GEMMA, cache_dir=cache_dir) == gemma.model_path
    after = gemma.model_path.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert not list(cache_dir.glob("*.partial"))


def test_a_completion_model_registered_for_chat_is_refused(
    gemma: LlmRunner, cache_dir: Path
) -> None:
    spec = operator_llm("gemma-as-chat", gemma.model_path, prompt_style="chat")
    with pytest.raises(ModelHasNoChatTemplate):
        LlmRunner(spec, n_threads=THREADS, cache_dir=cache_dir)


# --- the registry ---------------------------------------------------------------------


def test_the_default_registry_names_both_models() -> None:
    assert DEFAULT_LLMS[SMOLLM].prompt_style == "chat"
    assert DEFAULT_LLMS[GEMMA].prompt_style == "completion"
    assert resolve_llm(SMOLLM).name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_an_unknown_model_is_named_in_the_error() -> None:
    with pytest.raises(UnknownModel) as refused:
        resolve_llm("llama-9000")
    assert refused.value.model == "llama-9000"
    assert SMOLLM in str(refused.value)
    assert isinstance(refused.value, OracleError)


def test_an_operator_model_whose_file_is_missing_says_where(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    registry = registry_with(
        {"my-model": operator_llm("my-model", missing, prompt_style="completion")}
    )
    with pytest.raises(ModelNotInstalled) as refused:
        resolve_llm("my-model", registry)
    assert refused.value.model == "my-model"
    assert str(missing) in str(refused.value)

    with pytest.raises(ModelNotInstalled):
        LlmRunner.from_registry("my-model", registry, n_threads=THREADS)


@pytest.mark.parametrize(
    "locator",
    [
        PackagedFile(module="no_such_model_package", filename="model.gguf"),
        AssembledFromChunks(module="no_such_model_package"),
    ],
)
def test_a_model_package_not_installed_names_the_package(
    locator: PackagedFile | AssembledFromChunks, tmp_path: Path
) -> None:
    spec = LlmSpec(
        name="packaged",
        prompt_style="chat",
        locate=locator,
        install_hint="install it with `pip install no-such-model-package`",
    )
    with pytest.raises(ModelNotInstalled) as refused:
        resolve_llm("packaged", registry_with({"packaged": spec}), cache_dir=tmp_path)
    assert "pip install no-such-model-package" in str(refused.value)
    assert "no_such_model_package" in str(refused.value)


def test_a_file_that_is_not_a_gguf_fails_to_load(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelLoadFailed) as refused:
        LlmRunner(operator_llm("junk", junk, prompt_style="completion"), n_threads=THREADS)
    assert refused.value.path == junk


def test_operator_entries_replace_and_extend_the_defaults(tmp_path: Path) -> None:
    replacement = operator_llm(SMOLLM, tmp_path / "smol.gguf", prompt_style="chat")
    registry = registry_with({SMOLLM: replacement})
    assert registry[SMOLLM] is replacement
    assert registry[GEMMA] is DEFAULT_LLMS[GEMMA]
    assert DEFAULT_LLMS[SMOLLM] is not replacement

    with pytest.raises(InvalidModelSpec):
        registry_with({"alias": replacement})
    with pytest.raises(InvalidModelSpec):
        operator_llm("tiny", tmp_path / "t.gguf", prompt_style="chat", context_tokens=0)


# --- seeds ----------------------------------------------------------------------------


# --- reading an answer back ----------------------------------------------------------


@pytest.fixture(scope="module")
def reader(cache_dir: Path) -> Iterator[LlmRunner]:
    spec = lookup_llm(SMOLLM)
    with LlmRunner(spec, n_threads=THREADS, cache_dir=cache_dir, reads_answers=True) as runner:
        yield runner


@pytest.mark.parametrize("temperature_milli", [0, 200, 700])
def test_an_answer_read_back_with_its_own_seed_lies_at_the_picks(
    smollm: LlmRunner, reader: LlmRunner, temperature_milli: int
) -> None:
    """The same model on the same machine, read in one pass instead of token by token:
    llama.cpp's CPU kernels for a batch are not those for one token, and the logits
    differ by up to about half a unit (measured), so margins stay below 1."""
    for prompt, max_tokens in ((POEM, 40), ("What is the capital of Kenya?", 32)):
        answer = smollm.generate(
            prompt=prompt, temperature_milli=temperature_milli, max_tokens=max_tokens, seed=21
        )
        read = {
            limit: reader.choice_margins(
                prompt=prompt,
                output=answer.text,
                temperature_milli=temperature_milli,
                seed=21,
                max_tokens=max_tokens,
                limit=limit,
            )
            for limit in (float("inf"), 1.0)
        }
        margins = read[float("inf")]
        # one margin a token, and the end of generation when it stopped by itself
        expected = answer.completion_tokens + (answer.finish_reason == "stop")
        assert len(margins) == expected
        assert float(margins.max()) < 1.0
        assert read[1.0].tolist() == margins.tolist()


def test_another_seeds_or_another_prompts_answer_lies_far_from_the_picks(
    smollm: LlmRunner, reader: LlmRunner
) -> None:
    theirs = smollm.generate(prompt=STORY, temperature_milli=700, max_tokens=40, seed=1)
    ours = smollm.generate(prompt=STORY, temperature_milli=700, max_tokens=40, seed=2)
    assert theirs.text != ours.text
    seed_2 = reader.choice_margins(
        prompt=STORY, output=theirs.text, temperature_milli=700, seed=2, max_tokens=40
    )
    assert float(seed_2.max()) > 1.0
    replayed = reader.choice_margins(
        prompt=POEM, output=theirs.text, temperature_milli=700, seed=1, max_tokens=40
    )
    assert float(replayed.max()) > 1.0
    within_one = reader.choice_margins(
        prompt=POEM, output=theirs.text, temperature_milli=700, seed=1, max_tokens=40, limit=1.0
    )
    assert float(within_one.max()) == float("inf")  # no cut writes it within the limit
    written = reader.choice_margins(
        prompt="What is the capital of Kenya?",
        output="The capital of Kenya is Mombasa.",
        temperature_milli=200,
        seed=21,
        max_tokens=32,
    )
    assert float(written.max()) > 1.0


def test_reading_back_needs_a_runner_that_keeps_every_positions_logits(
    smollm: LlmRunner, reader: LlmRunner
) -> None:
    with pytest.raises(OracleError, match="reads_answers"):
        smollm.choice_margins(prompt=POEM, output="x", temperature_milli=0, seed=1, max_tokens=4)
    with pytest.raises(PromptTooLong):
        reader.choice_margins(
            prompt="word " * 10_000, output="x", temperature_milli=0, seed=1, max_tokens=4
        )


def test_request_seed_is_fixed_per_request_and_coordinator() -> None:
    seed = request_seed(7, COORDINATOR)
    assert seed == request_seed(7, COORDINATOR.lower())
    assert seed == request_seed(7, COORDINATOR.removeprefix("0x"))
    assert 0 <= seed <= MAX_SEED
    assert seed != request_seed(8, COORDINATOR)
    assert seed != request_seed(7, "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")


@pytest.mark.parametrize(
    ("request_id", "address"),
    [(-1, COORDINATOR), (2**256, COORDINATOR), (1, "0x1234"), (1, "not an address")],
)
def test_request_seed_refuses_bad_input(request_id: int, address: str) -> None:
    with pytest.raises(InvalidGenerationRequest):
        request_seed(request_id, address)
