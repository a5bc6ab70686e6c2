"""``oracle calibrate``: secDistance and secPercentage chosen from the models' own answers.

A requester knows its prompts, not how far apart honest answers to them land. This
command runs the accepted models locally on example prompts (a file of prompts, or a
template filled with values), several seeds each, reduces every answer to the sign bits
nodes reveal, and recommends:

- **secDistance**: the smallest (in steps of 50 bp) at which at least the target share
  of pairs of honest answers to the same request lie within it. Pairs cross models: a
  quorum may mix every accepted model. For an exact signal never above 0.35
  (``oracle.consensus.signal.useful_sec_distance_bp``): beyond it different words would
  agree, so a target that needs more is reported as not reached.
- **secPercentage**: at that distance, the share of the answers that the worst
  request's largest cluster held, rounded down to 100 bp; never below a strict majority
  (5100), since a smaller share lets a minority decide, and flagged when honest answers
  do not reach a majority.

It shows what that threshold lets through: the share of pairs of answers to *different*
example prompts that lie within it, of the pairs whose texts differ (a "No." to another
question is the same text as this one's, within any threshold, and says nothing else),
the share that are the same text, and the closest pair that differs. Agreement is not truth:
a plausible wrong answer to the same prompt can lie as close as an honest one
(docs/consensus.md); this command cannot see that.

Honest nodes answer a request with its one seed and coupled sampling, so nodes on the
same build give the same text, and nodes on other hardware part only where their logits
tip a near tie (on SmolLM2's benchmark answers, 35-54 % of answers were the same text
across machines; docs/consensus.md). One machine stands in for several: each request
(a prompt and a seed) is answered ``engines`` times, each time with independent Gaussian
noise of ``logit_noise`` logits added to every logit (``LogitNoise``), and the honest
pairs are those answers: one request on simulated machines that part where a near tie
tips. ``DEFAULT_LOGIT_NOISE`` was chosen against answers of three real machines
(docs/consensus.md, "oracle calibrate's simulated machines"). With
``independent_seeds`` the pairs are of different seeds instead, each as far apart as two
nodes that part at the first token: the worst case, as nodes drew before the shared seed.

The calibration itself (``calibrate``) is pure; running the models is ``generate_answers``
and reading the answers as a signal does is ``embed_answers``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from oracle.consensus import BASIS_POINTS, hamming
from oracle.consensus.quality import cluster_share, share_within, smallest_sec_distance
from oracle.consensus.signal import normalise_answer, useful_sec_distance_bp
from oracle.errors import OracleError

__all__ = [
    "Answered",
    "Calibration",
    "CalibrationAnswer",
    "CalibrationInputError",
    "calibrate",
    "calibrate_command",
    "embed_answers",
    "generate_answers",
    "render",
    "render_comparison",
]

logger = logging.getLogger(__name__)

DEFAULT_ENGINES = 3
"""Simulated machines answering each request."""
DEFAULT_LOGIT_NOISE = 0.2
"""The simulated machines' logit noise (standard deviation, in logits): the level whose
pairs were as often the same text and as often within 0.35 as the pairs of three real
machines, on SmolLM2's answers to the consensus benchmark (``bench/consensus.py
--simulate-noise``)."""
MAJORITY_BP = BASIS_POINTS // 2 + 100
"""The smallest secPercentage recommended: a strict majority, in 100 bp steps."""
CURVE_BP = tuple(range(1000, 5001, 500))
STEP_BP = 50


class CalibrationInputError(OracleError):
    """The calibration's input is not usable."""

    reason: str

    def __init__(self, *, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True, slots=True)
class CalibrationAnswer:
    """One answer to one example prompt, as a node would reveal it."""

    prompt: str
    model: str
    seed: int
    text: str
    bits: bytes
    engine: int = 0
    """Which simulated machine answered (``LogitNoise``'s seed); 0: this one, no noise."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PromptFigures:
    prompt: str
    honest_agreement: float
    """Share of this prompt's honest pairs within the recommended secDistance."""
    cluster_share: float
    """Share of the answers in the largest cluster at that distance, for this prompt's
    worst request (all of its answers, with independent seeds)."""
    max_distance: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ClosestOther:
    distance: float
    left: str
    right: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CurvePoint:
    sec_distance_bp: int
    honest_agreement: float
    other_prompt_acceptance: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Calibration:
    """The recommendation and what it rests on."""

    target: float
    dim_bits: int
    shared_seed: bool
    """Honest pairs are one request's answers on simulated machines (else: different seeds)."""
    sec_distance_bp: int
    sec_percentage_bp: int
    honest_agreement: float
    """Share of all honest pairs within sec_distance_bp (at least ``target``)."""
    honest_majority: bool
    """Whether every request's answers reached a strict majority in one cluster."""
    other_prompt_acceptance: float | None
    """Share of pairs of answers to different prompts within sec_distance_bp, of the
    pairs whose texts differ; None with a single prompt (or no such pair)."""
    other_same_text: float | None
    """Share of the pairs of answers to different prompts that are the same text
    (normalised): within any secDistance, and not an answer that says something else."""
    closest_other: ClosestOther | None
    per_prompt: tuple[PromptFigures, ...]
    curve: tuple[CurvePoint, ...]


def calibrate(
    answers: Sequence[CalibrationAnswer],
    *,
    target: float,
    max_sec_distance_bp: int = BASIS_POINTS,
    shared_seed: bool = True,
) -> Calibration:
    """Recommend a frame for these answers (pure: no model is run here). The
    recommended secDistance is never above ``max_sec_distance_bp`` (an exact signal's
    useful range ends below the distance of two different words); where the target
    needs more, the recommendation stops there and falls short of it.

    ``shared_seed``: a request is a prompt and a seed, and honest pairs are its answers
    (other models, other simulated machines); else a request is a prompt, and its
    answers of every seed pair up."""
    by_prompt = _by_prompt(answers)
    dim_bits = len(answers[0].bits) * 8
    requests = {
        prompt: _requests(group) if shared_seed else [group] for prompt, group in by_prompt.items()
    }
    small = [p for p, groups in requests.items() if any(len(g) < 2 for g in groups)]
    if small:
        raise CalibrationInputError(
            reason=f"{len(small)} prompts have a request with fewer than two answers "
            "(with the shared seed: more than one model or simulated machine)"
        )
    honest = {
        prompt: [d for group in groups for d in _pair_distances(group)]
        for prompt, groups in requests.items()
    }
    all_honest = [d for distances in honest.values() for d in distances]
    sec_distance_bp = min(
        smallest_sec_distance(all_honest, dim_bits, target=target, step_bp=STEP_BP),
        max_sec_distance_bp,
    )
    every_other = _other_pairs(by_prompt)
    others = [
        pair
        for pair in every_other
        if normalise_answer(pair[1].text) != normalise_answer(pair[2].text)
    ]
    per_prompt = tuple(
        PromptFigures(
            prompt=prompt,
            honest_agreement=share_within(honest[prompt], sec_distance_bp, dim_bits),
            cluster_share=min(
                cluster_share([a.bits for a in group], sec_distance_bp)
                for group in requests[prompt]
            ),
            max_distance=max(honest[prompt], default=0) / dim_bits,
        )
        for prompt in by_prompt
    )
    worst_share = min(figures.cluster_share for figures in per_prompt)
    rounded = int(worst_share * BASIS_POINTS) // 100 * 100
    return Calibration(
        target=target,
        dim_bits=dim_bits,
        shared_seed=shared_seed,
        sec_distance_bp=sec_distance_bp,
        sec_percentage_bp=max(rounded, MAJORITY_BP),
        honest_agreement=share_within(all_honest, sec_distance_bp, dim_bits),
        honest_majority=worst_share * BASIS_POINTS >= MAJORITY_BP,
        other_prompt_acceptance=_acceptance(others, sec_distance_bp, dim_bits),
        other_same_text=(1 - len(others) / len(every_other) if every_other else None),
        closest_other=_closest(others, dim_bits),
        per_prompt=per_prompt,
        curve=tuple(
            CurvePoint(
                sec_distance_bp=bp,
                honest_agreement=share_within(all_honest, bp, dim_bits),
                other_prompt_acceptance=_acceptance(others, bp, dim_bits),
            )
            for bp in sorted({*CURVE_BP, sec_distance_bp, max(0, sec_distance_bp - STEP_BP)})
        ),
    )


def _by_prompt(answers: Sequence[CalibrationAnswer]) -> dict[str, list[CalibrationAnswer]]:
    if not answers:
        raise CalibrationInputError(reason="no answers to calibrate on")
    lengths = {len(a.bits) for a in answers}
    if len(lengths) != 1 or 0 in lengths:
        raise CalibrationInputError(reason=f"embeddings of different lengths: {sorted(lengths)}")
    by_prompt: dict[str, list[CalibrationAnswer]] = {}
    for answer in answers:
        by_prompt.setdefault(answer.prompt, []).append(answer)
    return by_prompt


def _requests(group: Sequence[CalibrationAnswer]) -> list[list[CalibrationAnswer]]:
    """One prompt's answers by request: a seed, answered by every model and machine."""
    by_seed: dict[int, list[CalibrationAnswer]] = {}
    for answer in group:
        by_seed.setdefault(answer.seed, []).append(answer)
    return list(by_seed.values())


def _pair_distances(group: Sequence[CalibrationAnswer]) -> list[int]:
    return [hamming(a.bits, b.bits) for a, b in itertools.combinations(group, 2)]


def _other_pairs(
    by_prompt: dict[str, list[CalibrationAnswer]],
) -> list[tuple[int, CalibrationAnswer, CalibrationAnswer]]:
    return [
        (hamming(a.bits, b.bits), a, b)
        for left, right in itertools.combinations(by_prompt.values(), 2)
        for a in left
        for b in right
    ]


def _acceptance(
    others: Sequence[tuple[int, CalibrationAnswer, CalibrationAnswer]], bp: int, dim_bits: int
) -> float | None:
    if not others:
        return None
    return share_within((d for d, _a, _b in others), bp, dim_bits)


def _closest(
    others: Sequence[tuple[int, CalibrationAnswer, CalibrationAnswer]], dim_bits: int
) -> ClosestOther | None:
    if not others:
        return None
    distance, a, b = min(others, key=lambda pair: pair[0])
    return ClosestOther(distance=distance / dim_bits, left=a.text, right=b.text)


# --- running the models ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Answered:
    """One generation: the request (prompt, seed), who answered it, and the text."""

    prompt: str
    model: str
    seed: int
    engine: int
    text: str


def generate_answers(
    prompts: Sequence[str],
    *,
    models: Sequence[str],
    temperature_milli: int,
    max_tokens: int,
    seeds: Sequence[int],
    threads: int,
    engines: int = 1,
    logit_noise: float = 0.0,
) -> list[Answered]:
    """Every prompt answered by every model once per seed and simulated machine
    (``engines`` of them, each with its own ``LogitNoise`` of ``logit_noise`` logits;
    one and no noise: this machine as it is), not yet embedded."""
    from oracle.engine.llm import LlmRunner
    from oracle.engine.sampling import LogitNoise

    if engines < 1 or (engines > 1 and not logit_noise > 0):
        raise CalibrationInputError(
            reason="simulated machines need logit noise above 0 (without it they answer alike)"
        )
    noises = [
        LogitNoise(logit_noise, engine) if logit_noise else None for engine in range(1, engines + 1)
    ]
    answered: list[Answered] = []
    for model in models:
        with LlmRunner.from_registry(model, n_threads=threads) as runner:
            for prompt in prompts:
                for seed in seeds:
                    for noise in noises:
                        generation = runner.generate(
                            prompt=prompt,
                            temperature_milli=temperature_milli,
                            max_tokens=max_tokens,
                            seed=seed,
                            logit_noise=noise,
                        )
                        answered.append(
                            Answered(
                                prompt=prompt,
                                model=model,
                                seed=seed,
                                engine=0 if noise is None else noise.seed,
                                text=generation.text,
                            )
                        )
        logger.info("answered", extra={"model": model, "prompts": len(prompts)})
    return answered


def embed_answers(
    answered: Sequence[Answered], *, embedding_model: str, threads: int
) -> list[CalibrationAnswer]:
    """The answers as nodes reveal them for ``embedding_model``, which may name a
    registered signal: its model reads each answer as the signal does, bits against its
    centre."""
    from oracle.consensus.signal import SIGNALS, digest_bits, load_centre
    from oracle.engine.embedder import Embedder

    signal = SIGNALS.get(embedding_model)
    if signal is None or signal.name == signal.model:
        embedder = Embedder(embedding_model, threads=threads)
        bits = embedder.embed([a.text for a in answered])
    else:
        read = [signal.text(a.prompt, a.text) for a in answered]
        if signal.exact:
            bits = [digest_bits(text, signal.dimensions) for text in read]
        else:
            bits = Embedder(signal.model, threads=threads).embed(read, load_centre(signal))
    return [
        CalibrationAnswer(
            prompt=a.prompt, model=a.model, seed=a.seed, engine=a.engine, text=a.text, bits=b
        )
        for a, b in zip(answered, bits, strict=True)
    ]


def load_prompts(
    *,
    prompts: Sequence[str],
    prompts_file: Path | None,
    template: str | None,
    values_file: Path | None,
) -> list[str]:
    """The example prompts: given ones, a file's lines, or a template's ``{}`` filled
    with each line of a values file."""
    collected = list(prompts)
    if prompts_file is not None:
        collected += _lines(prompts_file)
    if template is not None or values_file is not None:
        if template is None or values_file is None or "{}" not in template:
            raise CalibrationInputError(
                reason="--template needs a '{}' to fill and --values with one value a line"
            )
        collected += [template.replace("{}", value) for value in _lines(values_file)]
    unique = list(dict.fromkeys(collected))
    if not unique:
        raise CalibrationInputError(
            reason="no prompts: give --prompt, --prompts-file or --template with --values"
        )
    return unique


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- output ---------------------------------------------------------------------------


def render(calibration: Calibration) -> list[str]:
    """The report ``oracle calibrate`` prints."""
    c = calibration
    lines = ["| secDistance | honest pairs within | other-prompt pairs within |", "|---|---|---|"]
    for point in c.curve:
        mark = " <- recommended" if point.sec_distance_bp == c.sec_distance_bp else ""
        lines.append(
            f"| {point.sec_distance_bp / BASIS_POINTS:.3f}{mark} | "
            f"{_pct(point.honest_agreement)} | {_pct(point.other_prompt_acceptance)} |"
        )
    lines += [
        "",
        f"recommended secDistance {c.sec_distance_bp} bp ({c.sec_distance_bp / BASIS_POINTS:.3f}): "
        f"{_pct(c.honest_agreement)} of honest pairs agree (target {_pct(c.target)})",
        f"recommended secPercentage {c.sec_percentage_bp} bp: the least share of "
        f"{'one request' if c.shared_seed else 'one prompt'}'s answers in one cluster at that "
        "distance, at least a strict majority",
    ]
    if c.honest_agreement < c.target:
        lines.append(
            f"  warning: the target is not reached: {_pct(c.honest_agreement)} of honest pairs "
            "agree at the largest secDistance this signal can use (an exact signal's answers "
            "agree only where their first words match: ask for a bare verdict, label or "
            "number, or lower the temperature)"
        )
    if not c.honest_majority:
        lines.append(
            "  warning: some prompt's honest answers do not reach a majority in one cluster at "
            "this distance; such requests will often fail (lower the temperature or maxTokens)"
        )
    if c.other_same_text is None:
        lines.append("lets through: unknown with one prompt (give several to see it)")
    elif c.other_prompt_acceptance is None:
        lines.append("lets through: unknown: every answer to another prompt is the same text")
    else:
        lines.append(
            f"lets through: {_pct(c.other_prompt_acceptance)} of pairs of answers to different "
            "prompts lie within it (an answer not computed for the request), of the pairs "
            f"whose texts differ; {_pct(c.other_same_text)} of the pairs are the same text, "
            "which no signal can tell apart"
        )
    if c.closest_other is not None:
        lines.append(
            f"  closest answers to different prompts: {c.closest_other.distance:.3f} apart: "
            f"{_quote(c.closest_other.left)} / {_quote(c.closest_other.right)}"
        )
    if c.shared_seed:
        lines.append(
            "honest pairs here are one request's answers (one seed) by other models or "
            "simulated machines: nodes share the request's seed, and machines part where a "
            "near tie tips (docs/consensus.md)"
        )
    else:
        lines.append(
            "honest pairs here are of different seeds: the worst case of two nodes on "
            "different hardware (nodes share the request's seed; docs/consensus.md)"
        )
    lines.append(
        "per prompt: honest pairs within | largest cluster (worst request) | farthest honest pair"
    )
    for figures in c.per_prompt:
        lines.append(
            f"  {_pct(figures.honest_agreement)} | {_pct(figures.cluster_share)} | "
            f"{figures.max_distance:.3f}  {_quote(figures.prompt)}"
        )
    lines.append(
        "agreement is not truth: a plausible wrong answer to the same prompt may lie as close "
        "as an honest one (docs/consensus.md)"
    )
    return lines


def render_comparison(calibrations: Mapping[str, Calibration]) -> list[str]:
    """The signals side by side on the same answers, each at its recommendation."""
    lines = [
        "signals compared on the same answers, each at its recommended secDistance:",
        "| signal | secDistance | honest pairs within | other-prompt pairs within "
        "| secPercentage |",
        "|---|---|---|---|---|",
    ]
    for signal, c in calibrations.items():
        short = " (target not reached)" if c.honest_agreement < c.target else ""
        lines.append(
            f"| {signal} | {c.sec_distance_bp / BASIS_POINTS:.3f} | "
            f"{_pct(c.honest_agreement)}{short} | {_pct(c.other_prompt_acceptance)} | "
            f"{c.sec_percentage_bp} |"
        )
    return lines


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _quote(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    shown = flat if len(flat) <= limit else flat[: limit - 3] + "..."
    return ascii(shown)


# --- the command ----------------------------------------------------------------------


def _finite(value: float) -> float:
    if not math.isfinite(value):  # click's range lets nan through
        raise click.BadParameter(f"{value} is not a number of logits")
    return value


@click.command("calibrate")
@click.option("--prompt", "prompts", multiple=True, help="An example prompt (repeatable).")
@click.option(
    "--prompts-file", type=click.Path(dir_okay=False, path_type=Path), help="One prompt a line."
)
@click.option("--template", help="A prompt with '{}' where each line of --values goes.")
@click.option("--values", "values_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--model",
    "models",
    multiple=True,
    default=("SmolLM2-135M-Instruct-Q4_1",),
    help="An accepted model (repeatable).",
)
@click.option("--temperature", default=0.2, type=click.FloatRange(0.0, 2.0))
@click.option("--max-tokens", default=32, type=click.IntRange(min=1))
@click.option(
    "--seeds",
    default=4,
    type=click.IntRange(min=1),
    help="Requests per prompt (one seed each); with --independent-seeds, answers per prompt.",
)
@click.option(
    "--engines",
    default=DEFAULT_ENGINES,
    type=click.IntRange(min=2),
    help="Simulated machines answering each request, each with its own logit noise.",
)
@click.option(
    "--logit-noise",
    default=DEFAULT_LOGIT_NOISE,
    type=click.FloatRange(min=0.0, min_open=True, max=10.0),
    callback=lambda _ctx, _param, value: _finite(value),
    help="The simulated machines' logit noise (standard deviation, in logits).",
)
@click.option(
    "--independent-seeds",
    is_flag=True,
    help="Pair answers of different seeds instead (one machine, no noise): the worst case.",
)
@click.option(
    "--target", default=0.95, type=click.FloatRange(0.0, 1.0), help="Honest pairs that must agree."
)
@click.option(
    "--embedding-model",
    "embedding_models",
    multiple=True,
    default=("all-MiniLM-L6-v2",),
    help="The signal to calibrate (repeatable: the same answers read by each, compared).",
)
@click.option("--threads", default=2, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
def calibrate_command(
    prompts: tuple[str, ...],
    prompts_file: Path | None,
    template: str | None,
    values_file: Path | None,
    models: tuple[str, ...],
    temperature: float,
    max_tokens: int,
    seeds: int,
    engines: int,
    logit_noise: float,
    independent_seeds: bool,
    target: float,
    embedding_models: tuple[str, ...],
    threads: int,
    as_json: bool,
) -> None:
    """Recommend secDistance and secPercentage from the models' own answers to example prompts."""
    if independent_seeds and seeds < 2:
        raise click.BadParameter("at least 2 with --independent-seeds", param_hint="--seeds")
    signals = list(dict.fromkeys(embedding_models))
    try:
        examples = load_prompts(
            prompts=prompts, prompts_file=prompts_file, template=template, values_file=values_file
        )
        answered = generate_answers(
            examples,
            models=models,
            temperature_milli=round(temperature * 1000),
            max_tokens=max_tokens,
            seeds=range(1, seeds + 1),
            threads=threads,
            engines=1 if independent_seeds else engines,
            logit_noise=0.0 if independent_seeds else logit_noise,
        )
        calibrations = {
            signal: calibrate(
                embed_answers(answered, embedding_model=signal, threads=threads),
                target=target,
                max_sec_distance_bp=useful_sec_distance_bp(signal),
                shared_seed=not independent_seeds,
            )
            for signal in signals
        }
    except OracleError as exc:  # unusable input, an unknown or missing model: one line
        raise click.ClickException(str(exc)) from exc
    if as_json:
        found = [{"embedding_model": s, **asdict(c)} for s, c in calibrations.items()]
        click.echo(json.dumps(found[0] if len(found) == 1 else found, indent=2))
        return
    machines = (
        "one machine, independent seeds"
        if independent_seeds
        else f"{engines} simulated machines (logit noise {logit_noise})"
    )
    for signal, calibration in calibrations.items():
        click.echo(
            f"{len(examples)} prompts x {len(models)} models x {seeds} seeds x {machines} at "
            f"temperature {temperature}, at most {max_tokens} tokens, {signal} "
            f"({calibration.dim_bits} sign bits)"
        )
        for line in render(calibration):
            click.echo(line)
        click.echo("")
    if len(calibrations) > 1:
        for line in render_comparison(calibrations):
            click.echo(line)
