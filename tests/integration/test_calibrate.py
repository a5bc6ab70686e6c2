"""``oracle calibrate`` on real models: SmolLM2 answers two prompts, MiniLM embeds them."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from oracle.cli import main

pytestmark = pytest.mark.slow

PROMPTS = ("What is the capital of France?", "Write a haiku about the sea.")
TARGET = 0.9


def test_calibrate_recommends_a_frame_from_the_models_answers() -> None:
    arguments = ["calibrate", "--seeds", "3", "--max-tokens", "16", "--target", str(TARGET)]
    for prompt in PROMPTS:
        arguments += ["--prompt", prompt]
    result = CliRunner().invoke(main, [*arguments, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)

    assert calibration["dim_bits"] == 384
    assert calibration["shared_seed"] is True  # one request's answers on simulated machines
    assert [figures["prompt"] for figures in calibration["per_prompt"]] == list(PROMPTS)
    assert calibration["honest_agreement"] >= TARGET
    distance = calibration["sec_distance_bp"]
    assert 0 <= distance <= 10_000 and distance % 50 == 0
    # the smallest such distance: one step tighter, fewer honest pairs agree
    curve = {point["sec_distance_bp"]: point for point in calibration["curve"]}
    assert curve[distance]["honest_agreement"] == calibration["honest_agreement"]
    if distance > 0:
        assert curve[distance - 50]["honest_agreement"] < TARGET
    # what it lets through: answers to the other prompt, measured and quoted
    assert calibration["other_prompt_acceptance"] is not None
    closest = calibration["closest_other"]
    assert closest["left"] and closest["right"]
    assert 0 < closest["distance"] <= 1
    assert 5_100 <= calibration["sec_percentage_bp"] <= 10_000


def test_calibrate_prints_the_recommendation() -> None:
    result = CliRunner().invoke(
        main,
        [
            "calibrate",
            "--prompt",
            PROMPTS[0],
            "--prompt",
            PROMPTS[1],
            "--seeds",
            "2",
            "--max-tokens",
            "8",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "recommended secDistance" in result.output
    assert "lets through:" in result.output
    assert "<- recommended" in result.output
    assert "3 simulated machines (logit noise 0.2)" in result.output
    assert "one request's answers (one seed)" in result.output


def test_calibrate_compares_signals_on_the_same_answers() -> None:
    """Two signals read one set of answers: each gets its own recommendation, and the
    text ends with them side by side."""
    arguments = [
        *("calibrate", "--prompt", "Is 17 a prime number? Answer yes or no.", "--prompt"),
        *("Is the sun a star? Answer yes or no.", "--seeds", "2", "--max-tokens", "8"),
        *("--embedding-model", "all-MiniLM-L6-v2"),
        *("--embedding-model", "first-word-exact/shake256"),
    ]
    found = CliRunner().invoke(main, [*arguments, "--json"], catch_exceptions=False)
    assert found.exit_code == 0, found.output
    both = json.loads(found.stdout)
    assert [c["embedding_model"] for c in both] == [
        "all-MiniLM-L6-v2",
        "first-word-exact/shake256",
    ]
    assert all(c["dim_bits"] == 384 for c in both)
    assert both[1]["sec_distance_bp"] <= 3500  # an exact signal never merges other words
    text = CliRunner().invoke(main, arguments, catch_exceptions=False)
    assert text.exit_code == 0, text.output
    assert "signals compared on the same answers" in text.output
    assert "| first-word-exact/shake256 | " in text.output


def test_calibrate_pairs_different_seeds_when_asked() -> None:
    result = CliRunner().invoke(
        main,
        [
            *("calibrate", "--prompt", PROMPTS[0], "--seeds", "2", "--max-tokens", "8"),
            "--independent-seeds",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "one machine, independent seeds" in result.output
    assert "honest pairs here are of different seeds" in result.output


def test_calibrate_says_what_is_wrong_with_its_input_in_one_line() -> None:
    no_prompts = CliRunner().invoke(main, ["calibrate"])
    assert no_prompts.exit_code == 1
    assert "no prompts: give --prompt" in no_prompts.output
    assert "Traceback" not in no_prompts.output
    unknown = CliRunner().invoke(main, ["calibrate", "--prompt", "Hi", "--model", "gpt-17"])
    assert unknown.exit_code == 1
    assert "gpt-17" in unknown.output
    assert "Traceback" not in unknown.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--logit-noise", "0"),
        ("--logit-noise", "nan"),
        ("--engines", "1"),
        ("--seeds", "1 --independent-seeds"),
    ],
)
def test_calibrate_refuses_machines_that_cannot_part(option: str, value: str) -> None:
    """Without noise, or with one machine, a request's answers could not part: the
    figures would claim agreement that nothing measured."""
    arguments = ["calibrate", "--prompt", PROMPTS[0], option, *value.split()]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 2
    assert option in result.output


@pytest.mark.parametrize(
    "signal_name", ["all-MiniLM-L6-v2/echo-norm-centred-d7b956d1", "first-word-exact/shake256"]
)
def test_calibrate_reads_the_answers_as_a_registered_signal_does(signal_name: str) -> None:
    """The centred signal embeds what it reads against its centre; the exact one digests
    the first word, with no model run."""
    from oracle.calibrate import embed_answers, generate_answers
    from oracle.consensus.signal import SIGNALS, digest_bits, load_centre
    from oracle.engine.embedder import Embedder

    signal = SIGNALS[signal_name]
    answered = generate_answers(
        [PROMPTS[0]],
        models=["SmolLM2-135M-Instruct-Q4_1"],
        temperature_milli=200,
        max_tokens=12,
        seeds=[1, 2],
        threads=1,
    )
    answers = embed_answers(answered, embedding_model=signal.name, threads=1)
    embedder = None if signal.exact else Embedder(signal.model)
    for answer in answers:
        read = signal.text(answer.prompt, answer.text)
        if embedder is None:
            assert answer.bits == digest_bits(read, signal.dimensions)
        else:
            assert answer.bits == embedder.embed([read], load_centre(signal))[0]
