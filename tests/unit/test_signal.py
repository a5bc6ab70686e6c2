"""How an answer becomes bits (oracle.consensus.signal): the text embedded, the centre,
the bits, and the shipped centre file."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from oracle.consensus import pack_sign_bits
from oracle.consensus.signal import (
    FIRST_WORD_EXACT,
    RAW,
    SIGNALS,
    Centre,
    CentreMismatch,
    EmbeddingSignal,
    build_centre,
    centre_bytes,
    digest_bits,
    embedding_text,
    first_word,
    load_centre,
    normalise_answer,
    parse_centre,
    signal_bits,
    strip_question_echo,
)
from oracle.errors import InvalidEmbedding

FAST = settings(max_examples=150, deadline=None)
PROPOSED = SIGNALS["all-MiniLM-L6-v2/echo-norm-centred-d7b956d1"]
finite32 = st.floats(-1.0, 1.0, width=32, allow_nan=False, allow_infinity=False)


def centre_of(values: list[float]) -> Centre:
    data = centre_bytes(values)
    return parse_centre(
        "test", data, dimensions=len(values), sha256=hashlib.sha256(data).hexdigest()
    )


# --- the text embedded -----------------------------------------------------------------


def test_a_base_model_echoing_its_prompt_keeps_only_its_own_words() -> None:
    question = "What is the capital of France?"
    answer = " Paris\nWhat is the capital of France?\nAnswer: Paris\nWhat is the capital of France?"
    assert strip_question_echo(question, answer) == " Paris\n \nAnswer: Paris\n "


def test_the_question_is_matched_without_its_surrounding_whitespace() -> None:
    assert strip_question_echo("  Is 17 prime?\n", "Is 17 prime? Yes.") == "  Yes."


def test_only_whole_copies_go_never_part_of_a_word_or_a_reworded_question() -> None:
    assert strip_question_echo("Hi", "Hiking, Hi there, hi") == "Hiking,   there, hi"
    reworded = "The capital of France is Paris."
    assert strip_question_echo("What is the capital of France?", reworded) == reworded
    assert strip_question_echo("Is 17 prime?", "Is 17 prime") == "Is 17 prime"


def _echo_by_regex(question: str, answer: str) -> str:
    """The rule as a regex states it (what ``strip_question_echo`` computes without one)."""
    echo = question.strip()
    if not echo:
        return answer
    pattern = re.escape(echo)
    if re.match(r"\w", echo[0]):
        pattern = r"(?<!\w)" + pattern
    if re.match(r"\w", echo[-1]):
        pattern += r"(?!\w)"
    rest = re.sub(pattern, " ", answer)
    return rest if rest.strip() else answer


_ECHO_ALPHABET = st.sampled_from(["a", "b", " ", "_", ".", "\n", "é", "٣", "?", "ab", "a b"])


@settings(max_examples=400, deadline=None)
@given(
    question=st.lists(_ECHO_ALPHABET, max_size=5).map("".join),
    answer=st.lists(_ECHO_ALPHABET, max_size=30).map("".join),
)
def test_echo_stripping_is_the_regex_rule(question: str, answer: str) -> None:
    """Overlapping copies, copies inside words, Unicode letters and digits: the same
    result as the word-bounded regex, found in linear time."""
    assert strip_question_echo(question, answer) == _echo_by_regex(question, answer)
    embedded = f"{answer}{question}{answer}"
    assert strip_question_echo(question, embedded) == _echo_by_regex(question, embedded)


def test_an_answer_that_is_only_the_echo_is_kept_whole() -> None:
    assert strip_question_echo("Is 17 prime?", " Is 17 prime?\n") == " Is 17 prime?\n"


def test_a_blank_question_strips_nothing() -> None:
    assert strip_question_echo(" \n", "Paris") == "Paris"


def test_a_question_full_of_regex_characters_is_matched_literally() -> None:
    question = "What is 2*(3+4)? [one number]"
    assert strip_question_echo(question, f"{question} 14") == "  14"
    near_miss = "What is 34 o, 14"  # what the unescaped pattern would match
    assert strip_question_echo(question, near_miss) == near_miss


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        (" The capital of France is Paris.\n", "the capital of france is paris"),
        ("Yes...", "yes"),
        ("No, 17 is not prime. ", "no, 17 is not prime"),
        ("POSITIVE", "positive"),
        ("a\n\n b\tc", "a b c"),
        ("Is it 3.5?", "is it 3.5?"),
        ("...", ""),
    ],
)
def test_normalising_folds_case_whitespace_and_trailing_periods(text: str, normalised: str) -> None:
    assert normalise_answer(text) == normalised


@given(st.text(alphabet=st.sampled_from(". \t\n\u00a0\u2003\u3000x\u00e9"), max_size=40))
def test_trailing_periods_go_as_the_regex_took_them(text: str) -> None:
    r"""Every node must normalise alike: the loop gives what ``[\s.]+$`` gave."""
    spaced = re.sub(r"\s+", " ", text).strip()
    assert normalise_answer(text) == re.sub(r"[\s.]+$", "", spaced).casefold()


def test_a_long_run_of_periods_inside_an_answer_is_kept_and_read_once() -> None:
    """A revealed answer may be ``maxTokens * 64`` bytes: 262 KB of periods before a
    letter took the regex minutes (quadratic); the text is kept whole, its end stripped."""
    answer = "." * 262_144 + "x. ."
    assert normalise_answer(answer) == "." * 262_144 + "x"


def test_the_text_embedded_is_the_answer_itself_unless_asked() -> None:
    answer = " Paris\nWhat is the capital of France?"
    question = "What is the capital of France?"
    assert embedding_text(question, answer) == answer
    assert RAW.text(question, answer) == answer
    assert embedding_text(question, answer, strip_echo=True) == " Paris\n "
    assert embedding_text(question, answer, normalise=True) == (
        "paris what is the capital of france?"
    )
    assert PROPOSED.text(question, answer) == "paris"


# --- the bits --------------------------------------------------------------------------


@FAST
@given(arrays(np.float32, 384, elements=finite32))
def test_without_a_centre_the_bits_are_todays_sign_bits(vector: np.ndarray) -> None:
    assert signal_bits(vector) == pack_sign_bits(vector)
    assert signal_bits(vector, None) == pack_sign_bits(vector)


@FAST
@given(arrays(np.float32, 16, elements=finite32), arrays(np.float32, 16, elements=finite32))
def test_bit_i_is_set_when_component_i_exceeds_the_centre(
    vector: np.ndarray, centre: np.ndarray
) -> None:
    bits = signal_bits(vector, centre_of(centre.tolist()))
    expected = [float(v) > float(c) for v, c in zip(vector, centre, strict=True)]
    assert bits == np.packbits(expected).tobytes()


def test_a_component_equal_to_the_centre_gives_0_and_the_top_bit_comes_first() -> None:
    centre = centre_of([0.5, -0.25, 0.0, 1e-3, 0.0, 0.0, 0.0, 0.0])
    vector = np.array([0.5, -0.2, 0.0, 2e-3, 1e-30, -1e-30, 0.1, -0.1], dtype=np.float32)
    assert signal_bits(vector, centre) == bytes([0b01011010])


def test_the_comparison_is_exact_for_float32_neighbours() -> None:
    c = np.float32(0.1)
    above = np.nextafter(c, np.float32(1.0))
    centre = centre_of([float(c)] * 8)
    assert signal_bits(np.array([above] + [c] * 7, dtype=np.float32), centre) == b"\x80"


@pytest.mark.parametrize(
    ("vector", "reason"),
    [
        (np.zeros(16), "against a centre of 8"),
        (np.zeros((2, 8)), "one vector"),
        (np.array([np.nan] + [0.0] * 7), "NaN"),
        (np.zeros(7), "multiple of 8"),
    ],
)
def test_vectors_that_cannot_be_reduced_are_refused(vector: np.ndarray, reason: str) -> None:
    with pytest.raises(InvalidEmbedding, match=reason):
        signal_bits(vector, centre_of([0.0] * 8))


# --- centres ---------------------------------------------------------------------------


def test_a_centre_is_the_corpus_mean_rounded_once_to_float32() -> None:
    corpus = np.array([[1.0, -1.0, 0.25, 0.0], [0.0, 1.0, 0.5, 0.1], [0.5, 0.0, 0.0, 0.2]])
    centre = build_centre(corpus)
    assert centre.dtype == np.float32
    assert centre.tolist() == pytest.approx([0.5, 0.0, 0.25, 0.1])


@pytest.mark.parametrize("corpus", [np.zeros((0, 8)), np.zeros(8), np.full((2, 8), np.inf)])
def test_a_centre_needs_a_finite_non_empty_corpus(corpus: np.ndarray) -> None:
    with pytest.raises(InvalidEmbedding):
        build_centre(corpus)


def test_a_centre_file_is_float32_little_endian_and_reads_back() -> None:
    values = [0.5, -0.25, 1e-3, 0.0]
    data = centre_bytes(values)
    assert data[:4] == bytes.fromhex("0000003f")  # 0.5, little-endian
    centre = parse_centre("m", data, dimensions=4, sha256=hashlib.sha256(data).hexdigest().upper())
    assert centre.vector.tolist() == pytest.approx(values)
    assert centre.sha256 == hashlib.sha256(data).hexdigest()
    assert centre.dimensions == 4
    assert not centre.vector.flags.writeable


def test_a_centre_that_is_not_the_registered_one_is_refused() -> None:
    data = centre_bytes([0.5, -0.25])
    with pytest.raises(CentreMismatch, match="sha256"):
        parse_centre("m", data, dimensions=2, sha256="0" * 64)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(CentreMismatch, match="8 bytes"):
        parse_centre("m", data, dimensions=3, sha256=digest)
    bad = centre_bytes([np.nan, 0.0])
    with pytest.raises(CentreMismatch, match="NaN"):
        parse_centre("m", bad, dimensions=2, sha256=hashlib.sha256(bad).hexdigest())


def test_the_shipped_centre_is_the_registered_one() -> None:
    centre = load_centre(PROPOSED)
    assert centre is not None
    assert centre.sha256 == PROPOSED.centre_sha256
    assert centre.dimensions == PROPOSED.dimensions == 384
    # a mean of unit vectors: shorter than one, and not nothing
    assert 0.05 < float(np.linalg.norm(centre.vector)) < 1.0


def test_a_signal_without_a_centre_loads_none_and_a_missing_file_is_refused() -> None:
    assert load_centre(RAW) is None
    missing = EmbeddingSignal(
        name="x",
        model="all-MiniLM-L6-v2",
        dimensions=384,
        centre_sha256="0" * 64,
        centre_file="absent.f32",
    )
    with pytest.raises(CentreMismatch, match="not in the package"):
        load_centre(missing)


def test_a_request_s_embedding_runs_on_its_signal_s_model_with_the_prompt() -> None:
    from oracle.consensus.signal import embedding_job

    centred = "all-MiniLM-L6-v2/echo-norm-centred-d7b956d1"
    assert embedding_job(centred, "Capital of France?") == (
        "all-MiniLM-L6-v2",
        {"signal": centred, "prompt": "Capital of France?"},
    )
    assert embedding_job("all-MiniLM-L6-v2", "Capital of France?") == ("all-MiniLM-L6-v2", {})
    assert embedding_job("some-other-model", "x") == ("some-other-model", {})


def test_a_centred_signal_s_name_carries_its_centre_s_hash() -> None:
    """The name is what a request pins on chain: it must name this very centre."""
    from oracle.consensus.signal import SIGNALS, load_centre

    for signal in SIGNALS.values():
        centre = load_centre(signal)
        if centre is not None:
            assert signal.name.endswith("-" + centre.sha256[:8]), signal.name


# --- the exact signal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("No, 21 is not a prime number.", "no"),
        ("  YES.", "yes"),
        ("$1,200.50 in total", "1,200.50"),
        ("3.5 kg", "3.5"),
        ("Don't know", "don't"),
        ("« Bonjour », dit-il", "bonjour"),
        ("東京です。", "東京です"),
        ("_under_score", "under"),
        ("... !?", ""),
        ("", ""),
    ],
)
def test_the_first_word_is_letters_and_digits_case_folded(text: str, word: str) -> None:
    assert first_word(text) == word


def test_the_exact_signal_agrees_on_the_first_word_and_nothing_else() -> None:
    """Answers that differ after their verdict get the same bits; another verdict gets
    bits about half apart; the prompt's echo is not a first word."""
    exact = SIGNALS[FIRST_WORD_EXACT]
    assert exact.exact and exact.model == "all-MiniLM-L6-v2" and exact.dimensions == 384
    question = "Is 21 a prime number?"
    no = [
        "No.",
        "no, 21 is not a prime number. A prime number has two divisors.",
        "Is 21 a prime number? No",
    ]
    bits = {digest_bits(exact.text(question, answer), exact.dimensions) for answer in no}
    assert bits == {hashlib.shake_256(b"no").digest(48)}
    yes = digest_bits(exact.text(question, "Yes, it is."), exact.dimensions)
    apart = sum(bin(a ^ b).count("1") for a, b in zip(yes, next(iter(bits)), strict=True))
    assert 0.35 * 384 < apart < 0.65 * 384


@given(st.text(max_size=40), st.text(max_size=40))
@FAST
def test_digest_bits_are_equal_exactly_when_the_texts_are(a: str, b: str) -> None:
    assert len(digest_bits(a, 384)) == 48
    assert (digest_bits(a, 384) == digest_bits(b, 384)) == (a == b)


@pytest.mark.parametrize("dimensions", [0, -8, 12])
def test_digest_bits_need_whole_bytes(dimensions: int) -> None:
    with pytest.raises(InvalidEmbedding, match="multiple of 8"):
        digest_bits("no", dimensions)


def test_the_exact_signal_runs_on_the_minilm_workers_with_the_prompt() -> None:
    from oracle.consensus.signal import embedding_job

    assert embedding_job(FIRST_WORD_EXACT, "Is 21 prime?") == (
        "all-MiniLM-L6-v2",
        {"signal": FIRST_WORD_EXACT, "prompt": "Is 21 prime?"},
    )
