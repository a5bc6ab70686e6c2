"""Coupled sampling: the token a request's seed picks, the same on every node.

Every node answers a request with the request's seed (``oracle.engine.llm.request_seed``),
so that honest nodes draw the same random numbers. llama.cpp's ``dist`` sampler turns
one uniform number per step into a token by walking the candidates' cumulative
probabilities in sorted order. Two nodes never compute quite the same logits (another
CPU's kernels, a GPU, another batch), and where two candidates' logits nearly tie the
nodes sort them differently: the same number then lands on another token, and the
answers part for good. Measured on SmolLM2's answers to the consensus benchmark's
prompts (temperatures 0.2 and 0.7), the same seeds gave the same text on two machines'
CPUs in 32 % of answers, on a CPU and a GPU in 20-22 %; with the rule below, 54 % and
35 % (docs/consensus.md).

Here every candidate token gets its own Gumbel noise, a function of (seed, step, token
id) alone, and the token chosen is ``argmax(logit / T + noise)``. The Gumbel-max rule
samples exactly from ``softmax(logit / T)`` over the candidates kept, so the
distribution a requester asks for is unchanged; but no order enters the choice, and
two nodes whose logits differ by ε choose differently only when the best two scores lie
within about ε / T of each other.

The rules, fixed so that any implementation can match them bit for bit:

1. Temperature 0: the highest logit; among equal logits the lowest token id.
2. Candidates: the ``TOP_K`` highest logits (all, when fewer; where logits tie at
   the cut, which of them is in is not fixed), sorted by logit descending, then token
   id ascending.
3. ``p = softmax(logits)`` over the candidates (temperature 1, float64). Top-p: keep
   the shortest prefix whose cumulative p reaches ``TOP_P`` (at least one). Min-p: of
   those, keep the ones with ``p >= MIN_P * p[0]``.
4. For each kept token: ``u = ((h >> 11) + 0.5) / 2**53`` with
   ``h = mix(mix(mix(seed ^ SEED_DOMAIN) + step) + token)`` (``mix`` is splitmix64's
   finaliser, additions modulo 2**64; ``step`` counts the tokens generated before this
   one, from 0), and the score ``logit / T - log(-log(u))``.
5. The kept token with the highest score; on equal scores the earlier in the order of 2.

These are the same filters (top-k 40, top-p 0.95, min-p 0.05, then temperature) that
llama-cpp-python's completion sampler applies with the settings nodes pin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "MIN_P",
    "SEED_DOMAIN",
    "TOP_K",
    "TOP_P",
    "LogitNoise",
    "candidate_margins",
    "choice_margins",
    "choose_among",
    "choose_token",
    "choose_tokens",
    "top_candidates",
    "uniforms",
]

TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05
SEED_DOMAIN = 0x6F7261636C652F31  # b"oracle/1"
# one row's top-k looks first among the logits above a threshold read off a sample
_SAMPLE_STRIDE = 64
_SAMPLE_RANK = 4
_PAIRWISE_BLOCK = 128
"""The longest array numpy sums without splitting it (``_numpy_sum``)."""

_MASK = 2**64 - 1
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True, slots=True)
class LogitNoise:
    """Another machine's arithmetic, simulated on this one: independent Gaussian noise of
    standard deviation ``sigma`` (in logits) added to every logit before the choice,
    drawn from (``seed``, step) alone. Two runs of one request with different noise seeds
    part where a near tie tips, as two nodes on different hardware do. For ``oracle
    calibrate`` only: a node never adds it."""

    sigma: float
    seed: int

    def __post_init__(self) -> None:
        if not (self.sigma >= 0 and np.isfinite(self.sigma)):
            raise ValueError(f"logit noise must be finite and >= 0, not {self.sigma}")
        if self.seed < 0:
            raise ValueError(f"a noise seed is >= 0, not {self.seed}")

    def applied(self, logits: npt.NDArray[np.floating], step: int) -> npt.NDArray[np.floating]:
        """``logits`` with this step's noise added (a new array)."""
        noise = np.random.default_rng((self.seed, step)).normal(0.0, self.sigma, logits.shape)
        return (logits + noise).astype(logits.dtype, copy=False)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser, on arrays (numpy's uint64 arithmetic wraps modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * _MIX_1
    x = (x ^ (x >> np.uint64(27))) * _MIX_2
    return x ^ (x >> np.uint64(31))


def uniforms(
    seeds: npt.ArrayLike, steps: npt.ArrayLike, tokens: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """The uniform number in (0, 1) of each (seed, step, token), broadcast together."""
    seed = np.asarray(seeds, dtype=np.uint64)
    step = np.asarray(steps, dtype=np.uint64)
    token = np.asarray(tokens, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = _mix(_mix(_mix(seed ^ np.uint64(SEED_DOMAIN)) + step) + token)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)


def top_candidates(
    logits: npt.NDArray[np.floating],
    ids: npt.NDArray[np.integer] | None = None,
    *,
    count: int = TOP_K,
    whole_rows: bool = False,
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]:
    """Each row's ``count`` highest logits and their token ids (by default rule 2's
    candidates, not yet sorted; all, when fewer). ``ids``: the token id of each column;
    None for the whole vocabulary. The heavy part of a step's sampling, and numpy's
    partitions and comparisons release the GIL. ``whole_rows``: partition each row's
    whole vocabulary in one numpy call, which releases the GIL throughout; for blocks
    sampled on many threads at once, where the sampled threshold's many small numpy
    calls (some holding the GIL) make the threads queue."""
    rows = np.asarray(logits)
    width = rows.shape[1]
    if width <= count:
        if ids is None:
            return rows, np.broadcast_to(np.arange(width, dtype=np.int64), rows.shape)
        return rows, np.asarray(ids, dtype=np.int64)
    if ids is None and count == TOP_K and not whole_rows:  # by a sampled threshold
        if rows.shape[0] == 1:
            columns = _top_columns(rows[0])
            return rows[0][columns][None, :], columns[None, :]
        return _top_of_block(rows)
    values, columns = _partitioned(rows, count)
    if ids is None:  # a column is its token id
        return values, columns
    return values, np.take_along_axis(np.asarray(ids, dtype=np.int64), columns, axis=1)


def _partitioned(
    rows: npt.NDArray[np.floating], count: int
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]:
    """Each row's ``count`` highest logits and their columns, by one partition of the
    whole block (the GIL released all along: a loop over the rows, though less work,
    holds it between calls, and a pool's threads then queue)."""
    width = rows.shape[1]
    columns = np.argpartition(rows, width - count, axis=1)[:, width - count :]
    return np.take_along_axis(rows, columns, axis=1), columns.astype(np.int64, copy=False)


def _top_of_block(
    rows: npt.NDArray[np.floating],
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.int64]]:
    """``_top_columns`` for a block of rows at once, in a few whole-block numpy calls:
    each row's threshold off its sample, the logits at or above it gathered into a short
    padded row, their top ``TOP_K`` partitioned there. A row with fewer than ``TOP_K``
    at or above its threshold (or a threshold that is not a finite number) is
    partitioned whole."""
    count, width = rows.shape
    sample = rows[:, ::_SAMPLE_STRIDE]
    if sample.shape[1] < _SAMPLE_RANK:
        return _partitioned(rows, TOP_K)
    cut = sample.shape[1] - _SAMPLE_RANK
    thresholds = np.partition(sample, cut, axis=1)[:, cut]
    near = rows >= thresholds[:, None]
    # one flat scan (a 2-d nonzero and a sum over booleans cost ten times more)
    in_row, column = np.divmod(np.flatnonzero(near), width)  # each row's together
    sizes = np.bincount(in_row, minlength=count)
    whole = (sizes < TOP_K) | ~np.isfinite(thresholds)
    if whole.any():
        kept = ~whole[in_row]
        in_row, column = in_row[kept], column[kept]
        sizes[whole] = 0
    padded = max(int(sizes.max()), TOP_K)
    place = np.arange(column.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    near_values = np.full((count, padded), -np.inf, dtype=rows.dtype)
    near_columns = np.zeros((count, padded), dtype=np.int64)
    near_values[in_row, place] = rows[in_row, column]
    near_columns[in_row, place] = column
    top = np.argpartition(near_values, padded - TOP_K, axis=1)[:, padded - TOP_K :]
    values = np.take_along_axis(near_values, top, axis=1)
    columns = np.take_along_axis(near_columns, top, axis=1)
    if whole.any():
        values[whole], columns[whole] = _partitioned(rows[whole], TOP_K)
    return values, columns


def _top_columns(row: npt.NDArray[np.floating]) -> npt.NDArray[np.int64]:
    """The columns of one row's ``TOP_K`` highest logits (more than ``TOP_K`` of them), in
    rule 2's order.

    First among the logits at or above a threshold read off a sample of the row: every
    logit below it is below every logit above it, so when ``TOP_K`` or more pass, their
    top ``TOP_K`` are the row's. The threshold is the ``_SAMPLE_RANK``-th highest of
    every ``_SAMPLE_STRIDE``-th logit: on SmolLM2's answers about 240 logits pass it, and
    fewer than 40 (then the whole row is partitioned) in 0.2 % of tokens. A sample's
    partition, one comparison and a sort of a few hundred cost a fraction of
    partitioning the whole vocabulary (13 against 57 us on a 2-core EPYC).
    """
    width = row.size
    sample = row[::_SAMPLE_STRIDE]
    near = None
    if sample.size >= _SAMPLE_RANK:
        cut = sample.size - _SAMPLE_RANK
        near = (row >= np.partition(sample, cut)[cut]).nonzero()[0]
    if near is None or near.size < TOP_K:
        near = np.argpartition(row, width - TOP_K)[width - TOP_K :]
    return near[np.lexsort((near, -row[near]))[:TOP_K]].astype(np.int64, copy=False)


def choose_among(
    values: npt.NDArray[np.floating],
    tokens: npt.NDArray[np.integer],
    *,
    seeds: Sequence[int],
    steps: Sequence[int],
    temperatures_milli: Sequence[int],
) -> list[int]:
    """Rules 1 and 3-5 over each row's candidates (``top_candidates``)."""
    count = values.shape[0]
    if count == 0:
        return []
    if count == 1:
        return [
            _choose_one(
                np.asarray(values[0], dtype=np.float64),
                np.asarray(tokens[0], dtype=np.int64),
                seed=seeds[0],
                step=steps[0],
                temperature_milli=temperatures_milli[0],
            )
        ]
    values = np.asarray(values, dtype=np.float64)
    tokens = np.asarray(tokens, dtype=np.int64)
    # rule 2's order: logit descending, then token id ascending (a stable sort on ids first)
    by_id = np.argsort(tokens, axis=1, kind="stable")
    tokens = np.take_along_axis(tokens, by_id, axis=1)
    values = np.take_along_axis(values, by_id, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    tokens = np.take_along_axis(tokens, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    # rule 3: the filters, at temperature 1
    shifted = np.exp(values - values[:, :1])
    p = shifted / shifted.sum(axis=1, keepdims=True)
    before = np.cumsum(p, axis=1) - p
    keep = (before < TOP_P) & (p >= MIN_P * p[:, :1])
    keep[:, 0] = True
    # rules 4 and 5; rule 1 (temperature 0) is the first of the order
    temperature = np.asarray(temperatures_milli, dtype=np.float64)[:, None] / 1000.0
    greedy = temperature[:, 0] == 0.0
    u = uniforms(
        np.asarray(seeds, dtype=np.uint64)[:, None],
        np.asarray(steps, dtype=np.uint64)[:, None],
        tokens,
    )
    scale = np.where(greedy[:, None], 1.0, temperature)
    scores = np.where(keep, values / scale - np.log(-np.log(u)), -np.inf)
    picked = np.where(greedy, 0, np.argmax(scores, axis=1))
    return [int(t) for t in tokens[np.arange(count), picked]]


def _choose_one(
    values: npt.NDArray[np.float64],
    tokens: npt.NDArray[np.int64],
    *,
    seed: int,
    step: int,
    temperature_milli: int,
) -> int:
    """``choose_among`` for one row: rule 2's order, then ``_choose_ranked``."""
    order = np.lexsort((tokens, -values))  # logit descending, then token id ascending
    return _choose_ranked(
        values[order].tolist(),
        tokens[order].tolist(),
        seed=seed,
        step=step,
        temperature_milli=temperature_milli,
    )


def _choose_ranked(
    logits: list[float], ids: list[int], *, seed: int, step: int, temperature_milli: int
) -> int:
    """Rules 1 and 3-5 for one row's candidates in rule 2's order, to the bit of the
    batch's arrays (``choose_among``), in a few numpy calls.

    A request decoded alone pays this on every token, where each numpy call costs
    microseconds (more right after a decode, with its code and data out of the caches:
    9.6 us for one small ufunc call after reading 64 MB on the 2-core development
    machine). So only the transcendentals (exp, log) are numpy's; the rest is Python
    floats, whose sums, differences, products and quotients round as numpy's do, with
    the sum in numpy's pairwise order (``_numpy_sum``) and the cumulative sum in order;
    uniforms only for the tokens the filters keep.
    """
    if temperature_milli == 0:
        return ids[0]
    shifted = np.exp(np.array(logits) - logits[0]).tolist()
    total = _numpy_sum(shifted)
    p = [value / total for value in shifted]
    floor = MIN_P * p[0]
    kept = [0]
    cumulative = p[0]
    for index in range(1, len(p)):
        cumulative += p[index]
        if cumulative - p[index] < TOP_P and p[index] >= floor:
            kept.append(index)
    seed, step = int(np.uint64(seed)), int(np.uint64(step))  # ``uniforms``' range checks
    u = np.array([_uniform(seed, step, ids[index]) for index in kept])
    noise = np.log(-np.log(u)).tolist()
    temperature = temperature_milli / 1000.0
    best, best_score = kept[0], logits[kept[0]] / temperature - noise[0]
    for index, gumbel in zip(kept[1:], noise[1:], strict=True):
        score = logits[index] / temperature - gumbel
        if score > best_score:  # the first of equal scores, as argmax takes
            best, best_score = index, score
    return ids[best]


def _numpy_sum(values: list[float]) -> float:
    """``numpy.sum`` of float64 values, to the bit: numpy adds up to 128 values in eight
    running sums, one for each position modulo 8, combines them in pairs, then adds the
    remainder in order (its ``pairwise_sum``); fewer than eight, in order."""
    count = len(values)
    if count > _PAIRWISE_BLOCK:  # numpy halves longer arrays first
        return float(np.sum(values))
    if count < 8:
        total = 0.0
        for value in values:
            total += value
        return total
    sums = values[:8]
    whole = count - count % 8
    for start in range(8, whole, 8):
        for lane in range(8):
            sums[lane] += values[start + lane]
    total = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + (
        (sums[4] + sums[5]) + (sums[6] + sums[7])
    )
    for value in values[whole:]:
        total += value
    return total


def _uniform(seed: int, step: int, token: int) -> float:
    """Rule 4's uniform of one (seed, step, token), in plain integers."""
    h = _mix_int(_mix_int(_mix_int(seed ^ SEED_DOMAIN) + step & _MASK) + token & _MASK)
    return ((h >> 11) + 0.5) / float(2**53)


def _mix_int(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def choose_tokens(
    logits: npt.NDArray[np.floating],
    *,
    seeds: Sequence[int],
    steps: Sequence[int],
    temperatures_milli: Sequence[int],
    ids: npt.NDArray[np.integer] | None = None,
) -> list[int]:
    """The token of each row of ``logits`` (one row a sequence).

    ``ids``: the token id of each column, one row a sequence (candidates kept on the
    device); None when the columns are the whole vocabulary.
    """
    values, tokens = top_candidates(logits, ids)
    return choose_among(
        values, tokens, seeds=seeds, steps=steps, temperatures_milli=temperatures_milli
    )


def choose_token(
    logits: npt.NDArray[np.floating],
    *,
    seed: int,
    step: int,
    temperature_milli: int,
    ids: npt.NDArray[np.integer] | None = None,
) -> int:
    """``choose_tokens`` for one sequence (``logits`` one row over the vocabulary, or
    over the candidates ``ids``)."""
    row = np.asarray(logits)
    if ids is None and row.size > TOP_K:  # the one-row path, with no arrays of rows
        columns = _top_columns(row)
        return _choose_ranked(
            row[columns].tolist(),
            columns.tolist(),
            seed=seed,
            step=step,
            temperature_milli=temperature_milli,
        )
    return choose_tokens(
        row[None, :],
        seeds=[seed],
        steps=[step],
        temperatures_milli=[temperature_milli],
        ids=None if ids is None else np.asarray(ids)[None, :],
    )[0]


def candidate_margins(
    logits: npt.NDArray[np.floating], *, seed: int, temperature_milli: int, width: int = TOP_K
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Each row's ``width`` candidates (rule 2's order; row ``j`` is step ``j``) and, for
    each, how far the row's logits lie from picking it, in logits: 0 for the pick.

    For another candidate: T times its score's shortfall from the pick's (rule 4; at
    temperature 0, its logit's from the highest), and at least, where the filters drop
    it, how far its logit lies from what they keep (min-p: ``log(MIN_P) + logit[0] -
    logit``; top-p: ``log(mass above it / TOP_P)``). ``width`` above ``TOP_K`` takes in
    the next highest logits too, each at least as far as its logit lies below the
    ``TOP_K``-th: on another engine it might have been a candidate. Two engines whose
    logits differ by less than a candidate's margin cannot part over it: the margins of
    an answer read back say how far another engine's arithmetic would have had to be
    from this one's for it to write that answer.
    """
    rows = np.asarray(logits)
    values, candidates = top_candidates(rows, count=max(width, TOP_K))
    values = np.asarray(values, dtype=np.float64)
    order = np.lexsort((candidates, -values), axis=1)
    candidates = np.take_along_axis(np.asarray(candidates, dtype=np.int64), order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    if temperature_milli == 0:  # rule 1: the highest logit, whatever the filters
        return candidates, values[:, :1] - values
    shifted = np.exp(values - values[:, :1])
    shifted[:, TOP_K:] = 0.0  # past the top-k: in no candidate's softmax
    p = shifted / shifted.sum(axis=1, keepdims=True)
    above = np.minimum(np.cumsum(p, axis=1) - p, 1.0)
    keep = (above < TOP_P) & (p >= MIN_P * p[:, :1])
    keep[:, 0] = True
    keep[:, TOP_K:] = False
    with np.errstate(divide="ignore"):
        dropped_by = np.maximum(
            np.log(MIN_P) + values[:, :1] - values, np.log(np.maximum(above, 1e-300) / TOP_P)
        )
    if values.shape[1] > TOP_K:  # below the top-k: at least as far as the last candidate
        dropped_by[:, TOP_K:] = np.maximum(
            dropped_by[:, TOP_K:], values[:, TOP_K - 1 : TOP_K] - values[:, TOP_K:]
        )
    shortfall = np.where(keep, 0.0, np.maximum(dropped_by, 1e-12))
    temperature = temperature_milli / 1000.0
    steps = np.arange(rows.shape[0], dtype=np.uint64)[:, None]
    scores = values / temperature - np.log(-np.log(uniforms(np.uint64(seed), steps, candidates)))
    best = np.where(keep, scores, -np.inf).max(axis=1, keepdims=True)
    return candidates, np.maximum(shortfall, temperature * np.maximum(best - scores, 0.0))


def choice_margins(
    logits: npt.NDArray[np.floating],
    tokens: Sequence[int],
    *,
    seed: int,
    temperature_milli: int,
) -> npt.NDArray[np.float64]:
    """The margin (:func:`candidate_margins`) of each given token: row ``j`` of
    ``logits`` is step ``j``'s, ``tokens[j]`` the token taken there; infinity for a
    token outside the row's ``TOP_K``."""
    given = np.asarray(tokens, dtype=np.int64)
    if np.asarray(logits).shape[0] != given.size:
        raise ValueError(f"{np.asarray(logits).shape[0]} rows of logits for {given.size} tokens")
    if given.size == 0:
        return np.zeros(0)
    candidates, margins = candidate_margins(logits, seed=seed, temperature_milli=temperature_milli)
    found = np.where(candidates == given[:, None], margins, np.inf)
    return np.asarray(found.min(axis=1), dtype=np.float64)
