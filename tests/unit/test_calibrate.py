"""The calibration arithmetic of ``oracle calibrate`` (pure: bits given, no model run)."""

from __future__ import annotations

import pytest

from oracle.calibrate import (
    MAJORITY_BP,
    CalibrationAnswer,
    CalibrationInputError,
    calibrate,
    load_prompts,
    render,
    render_comparison,
)
from oracle.consensus import hamming

DIM_BYTES = 4  # 32 bits keep the distances easy to read


def bits_with(ones: int, *, offset: int = 0) -> bytes:
    """32 bits whose set bits are ``ones`` consecutive ones starting at ``offset``."""
    value = ((1 << ones) - 1) << offset
    return value.to_bytes(DIM_BYTES, "big")


def answers(
    prompt: str, bit_values: list[bytes], *, seed: int = 1, texts: list[str] | None = None
) -> list[CalibrationAnswer]:
    """One request (a prompt and a seed) answered on simulated machines 1, 2, ... (texts:
    each one's own unless given)."""
    return [
        CalibrationAnswer(
            prompt=prompt,
            model="m",
            seed=seed,
            engine=i,
            text=f"{prompt} #{seed}.{i}" if texts is None else texts[i - 1],
            bits=b,
        )
        for i, b in enumerate(bit_values, start=1)
    ]


def test_recommends_the_smallest_distance_that_reaches_the_target() -> None:
    # honest pairs of prompt A lie 0, 2 and 2 bits apart; prompt B's 0, 8 and 8 bits
    honest = answers("A", [bits_with(0), bits_with(2), bits_with(2)]) + answers(
        "B", [bits_with(8, offset=20), bits_with(8, offset=20), bits_with(0, offset=20)]
    )
    everything = calibrate(honest, target=1.0)
    # 8 of 32 bits = 0.25: the farthest honest pair
    assert everything.sec_distance_bp == 2500
    assert everything.honest_agreement == 1.0
    most = calibrate(honest, target=0.6)
    # 4 of 6 pairs (0.67) within 2 bits = 0.0625 -> the next 50 bp step is 650 bp
    assert most.sec_distance_bp == 650
    assert most.honest_agreement == pytest.approx(4 / 6)


def test_reports_what_the_threshold_lets_through() -> None:
    near = answers("A", [bits_with(4), bits_with(4)])
    far = answers("B", [bits_with(4, offset=28), bits_with(4, offset=28)])
    calibration = calibrate(near + far, target=0.95)
    assert calibration.sec_distance_bp == 0
    assert calibration.other_prompt_acceptance == 0.0
    assert calibration.closest_other is not None
    assert calibration.closest_other.distance == hamming(bits_with(4), bits_with(4, offset=28)) / 32
    loose = next(p for p in calibration.curve if p.sec_distance_bp == 3000)
    assert loose.other_prompt_acceptance == 1.0  # 8 of 32 bits = 0.25 <= 0.30


def test_an_exact_signal_is_never_recommended_a_distance_that_merges_other_words() -> None:
    """Digests of different first words lie about half the bits apart: reaching the
    target by a secDistance that wide would let every answer agree. The recommendation
    stops at the signal's useful limit and says the target is not reached."""
    from oracle.consensus.signal import (
        EXACT_SEC_DISTANCE_BP,
        FIRST_WORD_EXACT,
        digest_bits,
        useful_sec_distance_bp,
    )

    words = ["no", "no", "yes", "no", "yes"]  # a verdict that flips from seed to seed
    flipping = [
        CalibrationAnswer(
            prompt="Is 21 prime?", model="m", seed=i, text=w, bits=digest_bits(w, 384)
        )
        for i, w in enumerate(words)
    ]
    limit = useful_sec_distance_bp(FIRST_WORD_EXACT)
    assert limit == EXACT_SEC_DISTANCE_BP == 3500
    uncapped = calibrate(flipping, target=0.95, shared_seed=False)
    assert uncapped.sec_distance_bp > 4000  # merges words
    capped = calibrate(flipping, target=0.95, max_sec_distance_bp=limit, shared_seed=False)
    assert capped.sec_distance_bp == limit
    assert capped.honest_agreement == pytest.approx(4 / 10)  # the pairs of equal words
    assert any("target is not reached" in line for line in render(capped))
    assert useful_sec_distance_bp("all-MiniLM-L6-v2") == 10_000


def test_sec_percentage_is_the_worst_cluster_share_and_at_least_a_majority() -> None:
    # five answers, one of them far from the other four: 4/5 in one cluster at a tight distance
    spread = answers("A", [bits_with(0)] * 4 + [bits_with(16)])
    calibration = calibrate(spread, target=0.6)
    assert calibration.sec_distance_bp == 0
    assert calibration.sec_percentage_bp == 8000
    assert calibration.honest_majority
    # two clusters of two and a lone answer: no majority, so the floor and a warning
    split = answers("B", [bits_with(0)] * 2 + [bits_with(16)] * 2 + [bits_with(8, offset=24)])
    weak = calibrate(split, target=0.2)
    assert weak.sec_percentage_bp == MAJORITY_BP
    assert not weak.honest_majority
    assert any("warning" in line for line in render(weak))


def test_one_prompt_cannot_say_what_gets_through() -> None:
    calibration = calibrate(answers("A", [bits_with(1), bits_with(2)]), target=0.95)
    assert calibration.other_prompt_acceptance is None
    assert calibration.closest_other is None


def test_honest_pairs_are_one_requests_answers_under_the_shared_seed() -> None:
    """Two requests of one prompt: each request's machines agree, the two seeds' answers
    differ (another sample). Under the shared seed only the first counts; with
    independent seeds every pair does."""
    two_requests = answers("A", [bits_with(0)] * 3, seed=1) + answers(
        "A", [bits_with(12, offset=4)] * 2 + [bits_with(11, offset=4)], seed=2
    )
    shared = calibrate(two_requests, target=1.0)
    assert shared.shared_seed
    assert shared.sec_distance_bp == 350  # 1 of 32 bits: the closest seed-2 pair's 0.03125
    assert shared.per_prompt[0].cluster_share == 1.0
    independent = calibrate(two_requests, target=1.0, shared_seed=False)
    assert not independent.shared_seed
    assert independent.sec_distance_bp == 3750  # 12 of 32 bits: across the two seeds
    assert any("of different seeds" in line for line in render(independent))
    assert any("one request's answers" in line for line in render(shared))


def test_sec_percentage_is_the_worst_requests_cluster_share() -> None:
    agreeing = answers("A", [bits_with(0)] * 4, seed=1)
    split = answers("A", [bits_with(0)] * 2 + [bits_with(16)] * 2, seed=2)
    calibration = calibrate(agreeing + split, target=0.3)
    assert calibration.sec_distance_bp == 0
    assert calibration.per_prompt[0].cluster_share == 0.5
    assert calibration.sec_percentage_bp == MAJORITY_BP
    assert not calibration.honest_majority


def test_refuses_unusable_answers() -> None:
    with pytest.raises(CalibrationInputError):
        calibrate([], target=0.95)
    with pytest.raises(CalibrationInputError):
        calibrate(answers("A", [bits_with(1)]), target=0.95)
    # under the shared seed a request answered once has no honest pair
    lone = answers("A", [bits_with(1), bits_with(2)]) + answers("A", [bits_with(3)], seed=2)
    with pytest.raises(CalibrationInputError, match="request with fewer than two answers"):
        calibrate(lone, target=0.95)
    assert calibrate(lone, target=0.95, shared_seed=False).sec_distance_bp > 0


def test_prompts_from_a_template(tmp_path) -> None:  # type: ignore[no-untyped-def]
    values = tmp_path / "values.txt"
    values.write_text("France\n\nJapan\nFrance\n")
    prompts = load_prompts(
        prompts=["Hi"], prompts_file=None, template="Capital of {}?", values_file=values
    )
    assert prompts == ["Hi", "Capital of France?", "Capital of Japan?"]
    with pytest.raises(CalibrationInputError):
        load_prompts(prompts=[], prompts_file=None, template="no slot", values_file=values)
    with pytest.raises(CalibrationInputError):
        load_prompts(prompts=[], prompts_file=None, template=None, values_file=None)


def test_signals_side_by_side_say_which_falls_short() -> None:
    near = answers("A", [bits_with(0), bits_with(1)]) + answers("B", [bits_with(8, offset=24)] * 2)
    apart = answers("A", [bits_with(0), bits_with(16)]) + answers("B", [bits_with(0)] * 2)
    lines = render_comparison(
        {
            "close": calibrate(near, target=0.95),
            "capped": calibrate(apart, target=0.95, max_sec_distance_bp=3500),
        }
    )
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    assert rows["close"] == "| close | 0.035 | 100 % | 0 % | 10000 |"
    assert "(target not reached)" in rows["capped"]
    assert rows["capped"] == "| capped | 0.350 | 50 % (target not reached) | 50 % | 5100 |"


def test_answers_to_other_prompts_with_the_same_text_are_counted_apart() -> None:
    """ "No." to another question is the same bits as "No." to this one: no signal can
    refuse it, so what the threshold lets through counts the pairs whose texts differ,
    and the same-text share is reported beside it."""

    no = bits_with(0)
    reason = bits_with(6)
    calibration = calibrate(
        answers("Is 9 prime?", [no, no], texts=["No.", "no"])
        + answers("Is 21 prime?", [no, reason], texts=["No.", "No, 21 = 3 x 7."]),
        target=0.5,
    )
    assert calibration.sec_distance_bp == 0
    # 4 pairs across the prompts: 2 the same text ("No." / "no" normalised), 2 that differ
    assert calibration.other_same_text == pytest.approx(0.5)
    assert calibration.other_prompt_acceptance == 0.0  # "No." against the reason: 6 bits
    assert calibration.closest_other is not None
    assert calibration.closest_other.distance == 6 / 32
    assert any("50 % of the pairs are the same text" in line for line in render(calibration))
