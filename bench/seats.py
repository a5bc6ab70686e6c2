"""Capture probability of a request's seats: stake-weighted tickets against the binomial
floor and against first-come seats (docs/security.md).

A Monte Carlo of the rule the contract runs (protocol v2): every node that commits draws
its ticket with ``oracle.consensus.tickets`` (keccak of a random seed, a random request id
and its address, the exact 64.64 log2, divided by its stake in wei), and the ``quorum``
smallest tickets hold the seats. The network: ``--honest`` honest nodes whose stakes are
drawn once from a log-normal around 10 ether (seeded), and one attacker holding 10 %,
20 % or 33 % of all stake, split evenly over 1, 10 or 50 addresses that always commit
(the attacker wins ties), or split infinitely fine: then its tickets are a Poisson process
whose rate is its stake (exponential gaps drawn by the trial; the limit of ever more
addresses, and the attacker's best split). An address holds at most one seat, so the
split matters for a majority, though not for any single seat. Offline honest nodes (0 %
or 20 %, a fresh random set each trial) do not commit. Counted: the trials in which the
attacker holds a strict majority of the seats (2 * seats > quorum), for quorums 3, 5, 9
and 15.

Beside each figure:
- the floor: the binomial tail P(Binomial(quorum, share) > quorum / 2), each seat an
  independent draw with the attacker's share of the stake;
- the floor at the effective share when honest nodes are offline: share / (share +
  online * (1 - share)); stake that does not commit cannot hold a seat;
- first-come seats (the comparison the issue gives): an address is admitted when its
  draw passes a stake threshold set for twice the quorum (``x / 2**64 < 2 * quorum *
  stake / registered stake``, the same hash), and the admitted addresses take the seats
  in arrival order, the attacker's first.

One trial draws one seed and request id and reuses each address's ``-log2(u)`` for every
share, split and offline case (the attacker's stake only changes the division), so the
cells are correlated with one another but each is an unbiased estimate; its standard
error is printed. Also printed: how rarely commits can close early (only when every
eligible node has committed; a node whose ticket cannot beat the worst seat is refused).

Run: ``.venv/bin/python bench/seats.py [--trials 60000] [--honest 50] [--seed 8]``
(``--smoke``: 200 trials). The last line reads
``worst_ratio=<x> worst_ratio_offline=<x> first_come_q5_s20=<p>``: the largest ratio of
the simulated probability (the attacker's best split) to the floor over the cells whose
floor is at least 0.01, with all honest nodes online and, offline, to the floor at the
effective share; and first-come's probability at quorum 5 and 20 % of the stake.
``--processes`` splits the trials over processes, each with its own random stream.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import itertools
import math
import multiprocessing
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from eth_utils.crypto import keccak

from bench._common import add_smoke_flag, apply_smoke, print_machine
from oracle.consensus.tickets import (
    MAX_VARIATE,
    neg_log2_64x64,
    ticket_for_stake,
    ticket_variate,
)

SHARES = (Fraction(10, 100), Fraction(20, 100), Fraction(33, 100))
QUORUMS = (3, 5, 9, 15)
OFFLINE = (Fraction(0), Fraction(20, 100))
SPLITS = (1, 10, 50)
UNBOUNDED = 0
"""The split key of an attacker whose stake is split infinitely fine: its tickets are then
a Poisson process whose rate is its stake (the limit of ever more addresses)."""
TICKET_SPLITS = (*SPLITS, UNBOUNDED)
TICKET_SCALE = 2.0**128 / math.log(2)
"""ticket = -log2(u) * 2**128 / stake = E * TICKET_SCALE / stake, E an Exp(1) variate."""
RESOLVED_FLOOR = 0.01
"""Cells whose floor is below this are printed but left out of the last line's ratios."""
ETHER = 10**18
PACKAGES = ("eth-utils", "eth-hash", "pycryptodome")

Cell = tuple[str, Fraction, int, Fraction, int]
"""(rule, share, split, offline, quorum); rule is "tickets" or "first-come"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Network:
    honest_stakes: tuple[int, ...]
    honest_addresses: tuple[bytes, ...]
    attacker_addresses: tuple[bytes, ...]

    @property
    def honest_total(self) -> int:
        return sum(self.honest_stakes)

    def attacker_total(self, share: Fraction) -> int:
        """The attacker's stake in wei: share / (1 - share) of the honest stake."""
        return self.honest_total * share.numerator // (share.denominator - share.numerator)

    def attacker_stakes(self, share: Fraction, split: int) -> list[int]:
        """The attacker's stake split evenly over ``split`` addresses (to the wei)."""
        each, rest = divmod(self.attacker_total(share), split)
        return [each + (1 if index < rest else 0) for index in range(split)]


def build_network(honest: int, rng: random.Random) -> Network:
    stakes = tuple(
        max(ETHER // 100, int(rng.lognormvariate(0, 1) * 10 * ETHER)) for _ in range(honest)
    )

    def address(tag: str, index: int) -> bytes:
        return keccak(f"{tag}-{index}-{rng.random()}".encode())[:20]

    return Network(
        honest_stakes=stakes,
        honest_addresses=tuple(address("honest", i) for i in range(honest)),
        attacker_addresses=tuple(address("attacker", i) for i in range(max(SPLITS))),
    )


# --- one trial ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Attacker:
    """One way the attacker holds its stake: its share, split over ``split`` addresses."""

    share: Fraction
    split: int
    stakes: tuple[int, ...]
    admit_below: dict[int, tuple[int, ...]]
    """quorum -> per address, the variates below which first-come admits the address:
    x * registered < 2 * quorum * stake * 2**64, i.e. x < ceil(that / registered)."""


def plan_attackers(network: Network) -> list[Attacker]:
    plans = []
    for share in SHARES:
        registered = network.honest_total + network.attacker_total(share)
        for split in SPLITS:
            stakes = tuple(network.attacker_stakes(share, split))
            admit_below = {
                quorum: tuple(
                    -(-2 * quorum * stake * MAX_VARIATE // registered) for stake in stakes
                )
                for quorum in QUORUMS
            }
            plans.append(Attacker(share=share, split=split, stakes=stakes, admit_below=admit_below))
    return plans


def attacker_seats(honest_best: Sequence[int], attacker_best: Sequence[int]) -> list[int]:
    """seats[q] = the attacker's seats among the q smallest tickets (attacker wins ties)."""
    seats = [0]
    taken_honest = taken_attacker = 0
    for _ in range(max(QUORUMS)):
        attacker_next = taken_attacker < len(attacker_best) and (
            taken_honest >= len(honest_best)
            or attacker_best[taken_attacker] <= honest_best[taken_honest]
        )
        if attacker_next:
            taken_attacker += 1
        else:
            taken_honest += 1
        seats.append(taken_attacker)
    return seats


def run_trial(
    network: Network, attackers: Sequence[Attacker], rng: random.Random, majorities: Counter[Cell]
) -> None:
    seed, request_id = rng.getrandbits(256), rng.getrandbits(64)
    honest_x = [ticket_variate(seed, request_id, a) for a in network.honest_addresses]
    attacker_x = [ticket_variate(seed, request_id, a) for a in network.attacker_addresses]
    honest_tickets = [
        ticket_for_stake(neg_log2_64x64(x), stake)
        for x, stake in zip(honest_x, network.honest_stakes, strict=True)
    ]
    attacker_neg_logs = [neg_log2_64x64(x) for x in attacker_x]
    attacker_tickets = {
        (plan.share, plan.split): sorted(
            ticket_for_stake(neg_log, stake)
            for neg_log, stake in zip(attacker_neg_logs, plan.stakes, strict=False)
        )
        for plan in attackers
    }
    gaps = [rng.expovariate(1.0) for _ in range(max(QUORUMS))]
    arrivals = list(itertools.accumulate(gaps))
    for share in SHARES:  # the limit of ever more addresses (floats: ties never matter)
        rate = network.attacker_total(share)
        attacker_tickets[share, UNBOUNDED] = [int(a * TICKET_SCALE / rate) for a in arrivals]
    for plan in attackers:  # first-come: only the attacker's admitted addresses matter
        for quorum, limits in plan.admit_below.items():
            admitted = sum(1 for x, limit in zip(attacker_x, limits, strict=False) if x < limit)
            if 2 * min(admitted, quorum) > quorum:
                for offline in OFFLINE:  # it takes its seats first, whoever else is online
                    majorities["first-come", plan.share, plan.split, offline, quorum] += 1
    honest_count = len(honest_tickets)
    for offline in OFFLINE:
        gone = set(rng.sample(range(honest_count), round(offline * honest_count)))
        honest_best = sorted(t for i, t in enumerate(honest_tickets) if i not in gone)
        for (share, split), attacker_best in attacker_tickets.items():
            seats = attacker_seats(honest_best, attacker_best)
            for quorum in QUORUMS:
                if 2 * seats[quorum] > quorum:
                    majorities["tickets", share, split, offline, quorum] += 1


def run_trials(honest: int, seed: int, stream: int, trials: int) -> Counter[Cell]:
    """``trials`` trials on the network ``seed`` builds, with random stream ``stream``."""
    network = build_network(honest, random.Random(seed))
    attackers = plan_attackers(network)
    rng = random.Random(f"{seed}-{stream}")
    majorities: Counter[Cell] = Counter()
    for _ in range(trials):
        run_trial(network, attackers, rng, majorities)
    return majorities


def run_all(args: argparse.Namespace) -> Counter[Cell]:
    """The trials in ``--processes`` processes, each its own random stream, added up."""
    shares = [args.trials // args.processes] * args.processes
    shares[0] += args.trials - sum(shares)
    jobs = [(args.honest, args.seed, stream, n) for stream, n in enumerate(shares)]
    if args.processes == 1:
        return run_trials(*jobs[0])
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        parts = pool.starmap(run_trials, jobs)
    total: Counter[Cell] = Counter()
    for part in parts:
        total.update(part)
    return total


# --- the arithmetic beside it ---------------------------------------------------------------


def binomial_floor(quorum: int, share: float) -> float:
    """P(Binomial(quorum, share) > quorum / 2): each seat an independent stake-weighted draw."""
    return sum(
        math.comb(quorum, k) * share**k * (1 - share) ** (quorum - k)
        for k in range(quorum // 2 + 1, quorum + 1)
    )


def effective_share(share: Fraction, offline: Fraction) -> float:
    """The attacker's share of the stake that commits when a fraction of honest stake is
    offline (in expectation: offline nodes are drawn by count, not by stake)."""
    return float(share / (share + (1 - offline) * (1 - share)))


def early_close_probability(committers: int, quorum: int) -> float:
    """P(every eligible node gets to commit), arrivals in random order, distinct tickets.

    Once the seats are full a commit is refused unless it beats the worst seat, so the
    i-th arrival (i > quorum) commits only if it is among the quorum best of the first i:
    probability quorum / i, independently of the others (as for records of a random
    permutation).
    """
    return math.prod(quorum / i for i in range(quorum + 1, committers + 1))


def standard_error(p: float, trials: int) -> float:
    return math.sqrt(p * (1 - p) / trials)


# --- output ---------------------------------------------------------------------------------


def fmt(p: float) -> str:
    if p == 0:
        return "0"
    return f"{p:.1e}" if p < 0.001 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def fmt_ratio(value: float, floor: float) -> str:
    return f"{value / floor:5.2f}x" if floor > 0 else "   -  "


def print_network(network: Network) -> None:
    stakes = sorted(network.honest_stakes)
    total = network.honest_total
    print(
        f"network: {len(stakes)} honest nodes, {total / ETHER:.1f} ether in all; stake smallest "
        f"{stakes[0] / ETHER:.2f}, median {statistics.median(stakes) / ETHER:.2f}, largest "
        f"{stakes[-1] / ETHER:.2f} ether ({stakes[-1] / total:.1%} of the honest stake)"
    )
    print(
        "attacker: 10 %, 20 % or 33 % of all stake, split evenly over "
        + ", ".join(str(s) for s in SPLITS)
        + " addresses, every address commits, wins ties; offline honest nodes drawn "
        "by count each trial"
    )


def print_cells(majorities: Counter[Cell], trials: int) -> tuple[float, float]:
    """The full table; returns the worst ratios (online, offline) over resolved cells."""
    split_heads = "  ".join(f"k={split or 'inf':<3} tickets" for split in TICKET_SPLITS)
    print(
        f"\nP(attacker holds > quorum/2 seats), {trials} trials; s.e. = the largest standard "
        "error in the row; k = the attacker's addresses (inf: split infinitely fine)"
    )
    print(
        f"share offline  q  {split_heads}   s.e.    floor  eff.floor  worst/floor  "
        "worst/eff  first-come k=10  k=50"
    )
    worst_online = worst_offline = 0.0
    for share in SHARES:
        for offline in OFFLINE:
            floor_share = float(share)
            eff_share = effective_share(share, offline)
            for quorum in QUORUMS:
                probs = [
                    majorities["tickets", share, k, offline, quorum] / trials for k in TICKET_SPLITS
                ]
                worst = max(probs)
                first_come = [
                    majorities["first-come", share, k, offline, quorum] / trials for k in (10, 50)
                ]
                floor = binomial_floor(quorum, floor_share)
                eff_floor = binomial_floor(quorum, eff_share)
                se = max(standard_error(p, trials) for p in [*probs, *first_come])
                print(
                    f"{float(share):4.0%} {float(offline):6.0%} {quorum:3d}  "
                    + "  ".join(f"{fmt(p):>11s}" for p in probs)
                    + f"  {se:.4f}  {fmt(floor):>7s}  {fmt(eff_floor):>9s}  "
                    f"{fmt_ratio(worst, floor):>11s}  {fmt_ratio(worst, eff_floor):>9s}  "
                    f"{fmt(first_come[0]):>15s}  {fmt(first_come[1])}"
                )
                if eff_floor >= RESOLVED_FLOOR:
                    if offline == 0:
                        worst_online = max(worst_online, worst / floor)
                    else:
                        worst_offline = max(worst_offline, worst / eff_floor)
    return worst_online, worst_offline


def print_summary(majorities: Counter[Cell], trials: int) -> None:
    """The condensed table of docs/security.md and the README (worst split per cell)."""
    print(
        "\nsummary (markdown; tickets: the attacker's best split of 1, 10, 50 addresses or "
        "infinitely many; first-come: 10 or 50 addresses)"
    )
    print(
        "| attacker's stake | quorum | floor | tickets, all online | ratio | "
        "tickets, 20 % honest offline | floor at effective share | ratio | first-come |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for share in SHARES:
        for quorum in QUORUMS:
            online = max(majorities["tickets", share, k, OFFLINE[0], quorum] for k in TICKET_SPLITS)
            offline = max(
                majorities["tickets", share, k, OFFLINE[1], quorum] for k in TICKET_SPLITS
            )
            first = max(majorities["first-come", share, k, OFFLINE[0], quorum] for k in SPLITS)
            floor = binomial_floor(quorum, float(share))
            eff_floor = binomial_floor(quorum, effective_share(share, OFFLINE[1]))
            print(
                f"| {float(share):.0%} | {quorum} | {fmt(floor)} | {fmt(online / trials)} | "
                f"{fmt_ratio(online / trials, floor).strip()} | {fmt(offline / trials)} | "
                f"{fmt(eff_floor)} | {fmt_ratio(offline / trials, eff_floor).strip()} | "
                f"{fmt(first / trials)} |"
            )


def print_early_close(honest: int) -> None:
    print(
        "\nearly close (every eligible node committed) with all nodes online, random arrival "
        "order; with any node offline it never happens:"
    )
    for committers in (honest + 1, honest + 10):
        figures = ", ".join(f"q={q}: {early_close_probability(committers, q):.1e}" for q in QUORUMS)
        print(f"  {committers} eligible nodes: {figures}")


# --- main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60_000)
    parser.add_argument("--honest", type=int, default=50, help="honest nodes")
    parser.add_argument("--seed", type=int, default=8, help="seeds the network and the trials")
    parser.add_argument(
        "--processes", type=int, default=1, help="worker processes (each its own random stream)"
    )
    add_smoke_flag(parser)
    return apply_smoke(parser.parse_args(), trials=200, processes=1)


def main() -> None:
    args = parse_args()
    print_machine("bench/seats.py: capture probability of stake-weighted seats", PACKAGES)
    print_network(build_network(args.honest, random.Random(args.seed)))
    started = time.perf_counter()
    majorities = run_all(args)
    elapsed = time.perf_counter() - started
    addresses = args.honest + max(SPLITS)
    print(
        f"{args.trials} trials in {elapsed:.1f} s, {args.processes} process(es) "
        f"({args.trials * addresses / elapsed:.0f} tickets/s)"
    )
    worst_online, worst_offline = print_cells(majorities, args.trials)
    print_summary(majorities, args.trials)
    print_early_close(args.honest)
    first_come = (
        max(majorities["first-come", SHARES[1], k, OFFLINE[0], 5] for k in SPLITS) / args.trials
    )
    print(
        f"\nworst ratio to the floor (cells with floor >= {RESOLVED_FLOOR}): all online "
        f"{worst_online:.2f}x, 20 % offline against the effective floor {worst_offline:.2f}x "
        "(goal: within 1.5x)"
    )
    print(
        f"worst_ratio={worst_online:.2f} worst_ratio_offline={worst_offline:.2f} "
        f"first_come_q5_s20={first_come:.3f}"
    )


if __name__ == "__main__":
    main()
