"""Coupled sampling (oracle.engine.sampling): its rules, its distribution, its robustness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oracle.engine.sampling import (
    MIN_P,
    SEED_DOMAIN,
    TOP_K,
    LogitNoise,
    _numpy_sum,  # the one-row path's sum, against numpy's
    candidate_margins,
    choice_margins,
    choose_among,
    choose_token,
    choose_tokens,
    top_candidates,
    uniforms,
)

MASK = 2**64 - 1


def splitmix_finaliser(x: int) -> int:
    """splitmix64's finaliser in plain Python integers: the spec, written out again."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def spec_uniform(seed: int, step: int, token: int) -> float:
    h = splitmix_finaliser(seed ^ SEED_DOMAIN)
    h = splitmix_finaliser((h + step) & MASK)
    h = splitmix_finaliser((h + token) & MASK)
    return ((h >> 11) + 0.5) / 2**53


def test_the_uniforms_follow_the_written_rule_bit_for_bit() -> None:
    cases = [(0, 0, 0), (1, 0, 5), (2**32 - 1, 31, 49_151), (123_456, 7, 3)]
    got = uniforms([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases])
    assert [float(u) for u in got] == [spec_uniform(*c) for c in cases]
    assert all(0.0 < u < 1.0 for u in got)


def test_temperature_zero_takes_the_highest_logit_and_the_lowest_id_on_a_tie() -> None:
    logits = np.array([0.5, 2.0, 1.0, 2.0], dtype=np.float32)
    for seed in range(20):
        assert choose_token(logits, seed=seed, step=seed, temperature_milli=0) == 1


def test_the_same_seed_and_step_give_the_same_token_and_steps_draw_anew() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=500).astype(np.float32)
    first = [choose_token(logits, seed=9, step=s, temperature_milli=1500) for s in range(40)]
    again = [choose_token(logits, seed=9, step=s, temperature_milli=1500) for s in range(40)]
    assert first == again
    assert len(set(first)) > 5  # the step is part of the draw


def test_the_order_of_the_candidates_does_not_matter() -> None:
    """What a node's kernels or a device's top-k return in another order changes nothing."""
    rng = np.random.default_rng(2)
    ids = rng.permutation(1000)[:TOP_K]
    logits = rng.normal(size=TOP_K).astype(np.float32)
    for seed in range(50):
        shuffle = rng.permutation(TOP_K)
        assert choose_token(logits, seed=seed, step=0, temperature_milli=700, ids=ids) == (
            choose_token(
                logits[shuffle], seed=seed, step=0, temperature_milli=700, ids=ids[shuffle]
            )
        )


def test_device_candidates_choose_as_the_whole_vocabulary_does() -> None:
    rng = np.random.default_rng(3)
    vocab = rng.normal(size=2000).astype(np.float32)
    top = np.argsort(-vocab)[:TOP_K]
    for seed in range(50):
        assert choose_token(vocab, seed=seed, step=3, temperature_milli=900) == choose_token(
            vocab[top], seed=seed, step=3, temperature_milli=900, ids=top
        )


def test_rows_are_independent_of_the_batch_they_are_in() -> None:
    rng = np.random.default_rng(4)
    rows = rng.normal(size=(6, 300)).astype(np.float32)
    seeds, steps, temperatures = [1, 2, 3, 4, 5, 6], [0, 1, 2, 0, 1, 2], [0, 200, 700, 1000, 1, 5]
    together = choose_tokens(rows, seeds=seeds, steps=steps, temperatures_milli=temperatures)
    alone = [
        choose_token(rows[i], seed=seeds[i], step=steps[i], temperature_milli=temperatures[i])
        for i in range(6)
    ]
    assert together == alone


def in_a_batch(row: np.ndarray, seed: int, step: int, temperature_milli: int) -> int:
    """The token the batch path chooses for ``row`` (a second row makes it a batch)."""
    rows = np.stack([row, row[::-1]])
    return choose_tokens(
        rows,
        seeds=[seed, 1],
        steps=[step, 0],
        temperatures_milli=[temperature_milli, 700],
    )[0]


@pytest.mark.parametrize("width", [41, 300, 5_000, 49_152])
def test_a_row_alone_chooses_as_it_does_in_a_batch(width: int) -> None:
    """One row takes its own paths (a sampled threshold before its top-k, uniforms for the
    kept tokens only); they must choose what the batch's partition and arrays choose."""
    rng = np.random.default_rng(width)
    for case in range(150):
        row = rng.normal(scale=[0.3, 2.5, 6.0][case % 3], size=width).astype(np.float32)
        if case % 5 == 0:  # one token far ahead
            row[rng.integers(width)] += 15.0
        if case % 7 == 0:  # the best three tie
            row[np.argsort(-row)[:3]] = row.max()
        seed = int(rng.integers(2**64, dtype=np.uint64))
        step = int(rng.integers(10_000))
        temperature = [0, 1, 200, 700, 1000, 2000][case % 6]
        assert choose_token(row, seed=seed, step=step, temperature_milli=temperature) == (
            in_a_batch(row, seed, step, temperature)
        ), (width, case)


@pytest.mark.parametrize("width", [41, 300, 5_000, 49_152])
def test_the_candidates_are_each_rows_highest_logits(width: int) -> None:
    """Rule 2, for a row alone and for a block of rows (each row's threshold read off a
    sample of it), checked against a sort, on rows of every shape: flat, peaked, one
    whose sample misleads (four sampled logits far above the rest leave too few above
    the threshold: the whole row is partitioned), and one of -inf but for 50 logits
    (its threshold is -inf: partitioned whole too)."""
    rng = np.random.default_rng(width + 1)
    rows = rng.normal(scale=2.0, size=(30, width)).astype(np.float32)
    rows[1::3, rng.integers(width)] += 20.0
    rows[2, 0 : min(width, 256) : 64] = 50.0
    finite = rows[4, rng.choice(width, size=min(width, 50), replace=False)]
    rows[4] = -np.inf
    rows[4, rng.choice(width, size=finite.size, replace=False)] = finite
    in_a_block = top_candidates(rows)
    for index, row in enumerate(rows):
        expected = sorted(np.argsort(-row, kind="stable")[:TOP_K].tolist())
        alone = top_candidates(row[None, :])
        block = (in_a_block[0][index : index + 1], in_a_block[1][index : index + 1])
        for values, tokens in (alone, block):
            assert sorted(tokens[0].tolist()) == expected
            assert np.array_equal(values[0], row[tokens[0]])


def test_one_rows_sum_is_numpys_to_the_bit() -> None:
    """A row alone sums its probabilities in Python floats, in numpy's order: the same
    bits as ``numpy.sum`` for every length (a batch's rows are summed by numpy)."""
    rng = np.random.default_rng(11)
    for length in [*range(1, 42), 127, 128, 129, 300]:
        for _ in range(40):
            values = np.exp(-rng.random(length) * rng.choice([1.0, 20.0, 300.0]))
            assert _numpy_sum(values.tolist()) == values.sum(), length
            assert _numpy_sum(values.tolist()) == np.stack([values, values]).sum(axis=1)[0]


def test_one_rows_choice_is_the_batchs_over_many_candidate_sets() -> None:
    """The one-row choice (Python floats but for exp and log) against the batch's arrays,
    on candidate sets of every shape: flat, peaked, tied, a few -inf, at the top-p and
    min-p edges, and with fewer candidates than the top-k."""
    rng = np.random.default_rng(12)
    for case in range(3_000):
        width = TOP_K if case % 9 else int(rng.integers(1, TOP_K))
        values = rng.normal(scale=[0.05, 0.5, 2.0, 8.0][case % 4], size=width)
        if case % 5 == 0:
            values[: width // 2] = values[0]  # ties, broken by token id
        if case % 7 == 0 and width > 2:
            values[-2:] = -np.inf
        if case % 11 == 0 and width > 3:  # the second just at min-p of the first
            values[1] = values[0] + math.log(MIN_P)
        values = values.astype(np.float32)
        tokens = rng.permutation(49_152)[:width]
        seed, step = int(rng.integers(2**63)), int(rng.integers(1_000))
        temperature = [1, 200, 700, 1000, 2500][case % 5]
        alone = choose_among(
            values[None, :],
            tokens[None, :],
            seeds=[seed],
            steps=[step],
            temperatures_milli=[temperature],
        )
        batch = choose_among(
            np.stack([values, values[::-1]]),
            np.stack([tokens, tokens[::-1]]),
            seeds=[seed, seed],
            steps=[step, step],
            temperatures_milli=[temperature, temperature],
        )
        assert alone == batch[:1] and batch[0] == batch[1], case


def test_whole_rows_finds_the_same_candidates_as_the_sampled_threshold() -> None:
    """``whole_rows`` partitions each row whole, as a pool of many threads has it: the
    same candidates as the sampled threshold's, each row's highest by a sort."""
    rng = np.random.default_rng(7)
    block = rng.normal(scale=2.0, size=(8, 5_000)).astype(np.float32)
    whole_values, whole = top_candidates(block, whole_rows=True)
    _values, sampled = top_candidates(block)
    for index, row in enumerate(block):
        expected = sorted(np.argsort(-row, kind="stable")[:TOP_K].tolist())
        assert sorted(whole[index].tolist()) == sorted(sampled[index].tolist()) == expected
        assert np.array_equal(whole_values[index], row[whole[index]])


def test_tokens_below_min_p_are_never_chosen() -> None:
    # token 2's probability is below MIN_P of the best's at temperature 1
    logits = np.array([3.0, 3.0 + math.log(0.5), 3.0 + math.log(MIN_P / 2), -50.0])
    chosen = {choose_token(logits, seed=s, step=0, temperature_milli=2000) for s in range(3000)}
    assert chosen == {0, 1}


def test_the_draw_follows_softmax_at_the_temperature() -> None:
    """Gumbel-max is exact: over many seeds, frequencies match softmax(logit / T)."""
    logits = np.array([1.0, 0.8, 0.5, 0.2])
    temperature = 0.7
    draws = 20_000
    counts = np.bincount(
        choose_tokens(
            np.tile(logits, (draws, 1)),
            seeds=list(range(draws)),
            steps=[5] * draws,
            temperatures_milli=[700] * draws,
        ),
        minlength=4,
    )
    expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    # four standard deviations of a binomial share: fails only if the draw is biased
    tolerance = 4 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(counts / draws - expected) <= tolerance), (counts / draws, expected)


def inverse_cdf_pick(logits: np.ndarray, u: float, temperature: float) -> int:
    """llama.cpp's dist sampler, in short: candidates sorted by logit, one uniform number
    walked along the cumulative probabilities."""
    order = np.argsort(-logits, kind="stable")
    p = np.exp((logits[order] - logits[order][0]) / temperature)
    p /= p.sum()
    return int(order[min(np.searchsorted(np.cumsum(p), u), len(p) - 1)])


@pytest.mark.parametrize("noise", [1e-4, 1e-3])
def test_a_small_difference_in_logits_rarely_changes_the_token(noise: float) -> None:
    """Two nodes' logits differ slightly (another CPU, a GPU). Where candidates nearly
    tie, an order-based draw changes its token far more often than the coupled one."""
    rng = np.random.default_rng(5)
    trials, coupled_changed, ordered_changed = 2000, 0, 0
    for seed in range(trials):
        base = rng.normal(scale=0.05, size=8)  # eight candidates within a hair
        other = base + rng.normal(scale=noise, size=8)
        coupled_changed += choose_token(base, seed=seed, step=0, temperature_milli=700) != (
            choose_token(other, seed=seed, step=0, temperature_milli=700)
        )
        u = float(rng.random())
        ordered_changed += inverse_cdf_pick(base, u, 0.7) != inverse_cdf_pick(other, u, 0.7)
    assert coupled_changed <= trials * 0.01
    assert ordered_changed > 5 * max(coupled_changed, 1)


# --- reading an answer back: margins -------------------------------------------------


def sampled_path(logits: np.ndarray, seed: int, temperature_milli: int) -> list[int]:
    return [
        choose_token(row, seed=seed, step=step, temperature_milli=temperature_milli)
        for step, row in enumerate(logits)
    ]


@pytest.mark.parametrize("temperature_milli", [0, 200, 700, 1500])
def test_the_tokens_coupled_sampling_picks_have_margin_zero(temperature_milli: int) -> None:
    logits = np.random.default_rng(3).normal(scale=3.0, size=(12, 2_000)).astype(np.float32)
    path = sampled_path(logits, 99, temperature_milli)
    margins = choice_margins(logits, path, seed=99, temperature_milli=temperature_milli)
    assert margins.tolist() == [0.0] * 12
    candidates, each = candidate_margins(logits, seed=99, temperature_milli=temperature_milli)
    assert ((each == 0.0).sum(axis=1) >= 1).all()  # a pick in every row
    picked = candidates[np.arange(12), np.argmin(each, axis=1)]
    assert picked.tolist() == path


def test_another_seeds_answer_has_large_margins() -> None:
    logits = np.random.default_rng(4).normal(scale=3.0, size=(40, 2_000)).astype(np.float32)
    theirs = sampled_path(logits, 1, 700)
    margins = choice_margins(logits, theirs, seed=2, temperature_milli=700)
    assert (margins > 0).sum() >= 10  # the draws part wherever the two seeds' noise does
    assert margins.max() > 1.0


def test_a_token_outside_the_top_k_is_infinitely_far_and_one_below_min_p_is_finite() -> None:
    row = np.full(200, -10.0, dtype=np.float32)
    row[:TOP_K] = np.linspace(5.0, 0.0, TOP_K)  # 0..39 the candidates, in logit order
    row[7] = 5.0 + math.log(MIN_P) - 0.3  # below min-p by 0.3 in logits (rounded in float32)
    margins = choice_margins(row[None, :], [150], seed=5, temperature_milli=700)
    assert margins.tolist() == [math.inf]
    dropped = choice_margins(row[None, :], [7], seed=5, temperature_milli=700)[0]
    assert dropped >= 0.3 - 1e-5


def test_a_near_tie_costs_a_margin_about_the_logits_difference() -> None:
    """Two engines whose logits differ by less than a token's margin cannot part over it:
    nudging the runner-up's logit by its margin (and a hair) makes it the pick. (The
    runner-up among the five highest logits, which the filters keep: how far the filters
    are from keeping a token is estimated, not exact.)"""
    rng = np.random.default_rng(6)
    logits = rng.normal(scale=2.0, size=(30, 500))
    candidates, margins = candidate_margins(logits, seed=8, temperature_milli=700)
    for step in range(30):
        top = margins[step][:5]
        runner_up = int(np.flatnonzero(top > 0)[np.argmin(top[top > 0])])
        token, margin = int(candidates[step, runner_up]), float(margins[step, runner_up])
        nudged = logits.copy()
        nudged[step, token] += margin + 1e-6
        assert choose_token(nudged[step], seed=8, step=step, temperature_milli=700) == token


def test_margins_need_one_row_a_token() -> None:
    with pytest.raises(ValueError, match="2 rows of logits for 3 tokens"):
        choice_margins(np.zeros((2, 50)), [1, 2, 3], seed=1, temperature_milli=700)


def test_a_token_just_past_the_top_k_is_as_far_as_its_logit_lies_below_the_last() -> None:
    """Another engine may rank a token 40th that this one ranks 41st: read wider, it has
    a finite margin, at least the logit it would have to gain to be a candidate."""
    row = np.full(300, -20.0, dtype=np.float32)
    row[:TOP_K] = np.linspace(1.0, 0.5, TOP_K)  # a flat top: the filters keep all 40
    row[TOP_K] = 0.5 - 0.25  # 41st, a quarter below the 40th
    narrow = choice_margins(row[None, :], [TOP_K], seed=3, temperature_milli=700)
    assert narrow.tolist() == [math.inf]
    candidates, margins = candidate_margins(
        row[None, :], seed=3, temperature_milli=700, width=2 * TOP_K
    )
    wide = float(margins[0][list(candidates[0]).index(TOP_K)])
    assert 0.25 - 1e-6 <= wide < math.inf
    picks = candidates[0][margins[0] == 0.0].tolist()
    assert picks == candidates[0][:TOP_K][margins[0][:TOP_K] == 0.0].tolist()  # width adds none


# --- simulated noise (oracle calibrate) ---------------------------------------------------


def test_logit_noise_is_a_function_of_its_seed_and_step() -> None:
    logits = np.linspace(-3.0, 3.0, 1000, dtype=np.float32)
    noise = LogitNoise(0.1, 7)

    first = noise.applied(logits, 3)
    assert first.dtype == logits.dtype
    assert np.array_equal(first, LogitNoise(0.1, 7).applied(logits, 3))
    assert not np.array_equal(first, noise.applied(logits, 4))
    assert not np.array_equal(first, LogitNoise(0.1, 8).applied(logits, 3))
    assert np.array_equal(logits, np.linspace(-3.0, 3.0, 1000, dtype=np.float32))
    assert float(np.std(first - logits)) == pytest.approx(0.1, rel=0.1)
    assert np.array_equal(LogitNoise(0.0, 7).applied(logits, 3), logits)


@pytest.mark.parametrize(("sigma", "seed"), [(-0.1, 1), (math.nan, 1), (math.inf, 1), (0.1, -1)])
def test_logit_noise_refuses_what_is_not_a_deviation_or_a_seed(sigma: float, seed: int) -> None:
    with pytest.raises(ValueError, match="noise"):
        LogitNoise(sigma, seed)


def test_noise_parts_choices_only_near_a_tie() -> None:
    """Two simulated machines (two noise seeds) choose alike where one candidate leads
    clearly and part, some of the time, where two nearly tie."""
    clear = np.array([5.0, 1.0, 0.0, -1.0], dtype=np.float32)
    tied = np.array([1.0, 0.999, -2.0, -3.0], dtype=np.float32)

    def choices(logits: np.ndarray, noise_seed: int) -> list[int]:
        noise = LogitNoise(0.05, noise_seed)
        return [
            choose_token(noise.applied(logits, step), seed=3, step=step, temperature_milli=200)
            for step in range(300)
        ]

    assert choices(clear, 1) == choices(clear, 2)
    parted = sum(a != b for a, b in zip(choices(tied, 1), choices(tied, 2), strict=True))
    assert 0 < parted < 150
