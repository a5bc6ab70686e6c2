"""Reading an answer back: does it come from this prompt, this model and this seed?

Coupled sampling (``oracle.engine.sampling``) fixes every node's draw: the token taken at
each step is ``argmax(logit / T + noise(seed, step, token))``, the noise public. A node
that is given a revealed answer can read it back through the model (the prompt and the
answer in one pass) and see, token by token, how far each one lay from the token the
model picks there with the request's seed: its *margin*, in logits (0 where it is the
pick).
Another engine's honest answer differs from this engine's only where its logits tipped
a near tie, so its margins stay small; an answer the model would not write for this
prompt and seed has large ones, whatever it means. This measures how well the largest
margin of an answer tells the two apart, on the consensus benchmark's data
(``bench/data``, see ``bench/consensus.py``):

- *honest*: the model's answers on other engines (``consensus_answers.<engine>.jsonl``:
  this project's 2-core CPU through the batched engine, an H200's GPU and its 16-core
  CPU), each read back here with its own prompt, temperature and seed;
- *other prompt*: one engine's answers to other prompts (``--others`` a prompt, half
  of its own task type; prompts whose reference answers are the same left out), with
  the same temperature and seed, read back as answers to this prompt: a replay; and
  apart, the replays whose text is none of the honest answers to this request (a bare
  "No." replayed where the model says "No." too is this request's answer as well);
- *wrong* and *reference*: the data's hand-written plausible wrong answer and its
  correct one (the check is about where an answer comes from, not whether it is true).

``--model`` picks whose answers (SmolLM2's by default; gemma-3-270m's were answered on
the H200's two engines only). The verifier is ``LlmRunner.choice_margins`` on this
machine's CPU: the answer is read
along the way the model would cut it into tokens, and an answer shorter than
``max_tokens`` tokens with the model's end-of-generation token after it. Printed: per
kind, task type and
temperature, the share of answers whose largest margin is at most each threshold. The
last line reads ``honest_pass_min=<fraction> other_prompt_pass_max=<fraction>`` at
``--margin`` (default ``DEFAULT_MARGIN``): the lowest honest pass rate and the highest
pass rate of replays with new text, over task types and temperatures. Before it, the
share of each kind and task type that a node disputes (``DEFAULT_READ_BACK_MARGIN``),
and the consensus benchmark's other-prompt acceptance (pairs of a replay and an honest
answer within secDistance 0.35 of MiniLM's bits) by the embedding alone and once nodes
dispute what reads back past their margin.

Run: ``.venv/bin/python bench/provenance.py [--prompts N] [--threads N]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ -> the repository root, so that bench._common imports
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence

from bench._common import SMOLLM, add_smoke_flag, apply_smoke, print_machine
from bench.consensus import (
    TASKS,
    TEMPERATURES_MILLI,
    AnswerSet,
    Prompt,
    engine_files,
    load_answers,
    load_prompts,
    model_prompt,
    other_prompts,
    round_robin,
)
from oracle.consensus import (
    DEFAULT_READ_BACK_MARGIN,
    DEFAULT_SEC_DISTANCE_BP,
    are_neighbours,
    hamming,
)
from oracle.engine.embedder import Embedder
from oracle.engine.llm import LlmRunner
from oracle.engine.models import lookup_llm

DEFAULT_MARGIN = 2.0
"""In logits: where 95-100 % of every task type's honest answers from other engines pass
(docs/consensus.md)."""
THRESHOLDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
KINDS = ("honest", "other prompt", "other prompt, new text", "wrong", "reference")


def read_back(
    verifier: LlmRunner, prompt: Prompt, text: str, temperature: int, seed: int, max_tokens: int
) -> float:
    """The largest margin of an answer read as an answer to ``prompt``."""
    margins = verifier.choice_margins(
        prompt=model_prompt(prompt, verifier.spec.prompt_style),
        output=text,
        temperature_milli=temperature,
        seed=seed,
        max_tokens=max_tokens,
        # past the table's last column and the nodes' margin, no need to know how far
        limit=max(THRESHOLDS[-1], DEFAULT_READ_BACK_MARGIN) * 1.01,
    )
    return float(margins.max()) if margins.size else 0.0


Found = dict[tuple[str, str, int], list[float]]
"""(kind, task, temperature) -> the largest margin of each answer read back."""
Replays = dict[tuple[str, int], list[tuple[str, set[str], float]]]
"""(task, temperature) -> each replay with new text: its text, the honest answers to the
request it was replayed for (every engine's, the same seed), its largest margin."""


def measure(
    verifier: LlmRunner,
    prompts: Sequence[Prompt],
    engines: dict[str, dict[tuple[str, str, int], AnswerSet]],
    others: int,
) -> tuple[Found, Replays]:
    """Read back the answers of ``verifier``'s model: every engine's, replays (from the
    first engine that answered with it), wrong and reference."""
    model = verifier.model
    found: Found = defaultdict(list)
    replays: Replays = defaultdict(list)
    by_id = {prompt.id: prompt for prompt in prompts}
    replayed = {
        pid: [p for p in chosen if p.id in by_id][:others]
        for pid, chosen in other_prompts(prompts, random.Random(7)).items()
    }
    first_engine = next(a for a in engines.values() if any(k[1] == model for k in a))
    for prompt in prompts:
        for temperature in TEMPERATURES_MILLI:
            own = first_engine.get((prompt.id, model, temperature))
            if own is None:
                continue
            group = (prompt.task, temperature)
            honest_texts = read_honest(verifier, prompt, own, engines, found[("honest", *group)])
            for seed in own.seeds:
                for other in replayed[prompt.id]:
                    theirs = first_engine.get((other.id, model, temperature))
                    if theirs is None:
                        continue
                    replay = theirs.texts[theirs.seeds.index(seed)]
                    margin = read_back(verifier, prompt, replay, temperature, seed, own.max_tokens)
                    found[("other prompt", *group)].append(margin)
                    if replay not in honest_texts[seed]:  # not also this request's own answer
                        found[("other prompt, new text", *group)].append(margin)
                        replays[group].append((replay, honest_texts[seed], margin))
                for kind, text in (("wrong", prompt.wrong), ("reference", prompt.reference)):
                    if text is not None:
                        margin = read_back(
                            verifier, prompt, text, temperature, seed, own.max_tokens
                        )
                        found[(kind, *group)].append(margin)
    return found, replays


def read_honest(
    verifier: LlmRunner,
    prompt: Prompt,
    own: AnswerSet,
    engines: dict[str, dict[tuple[str, str, int], AnswerSet]],
    into: list[float],
) -> dict[int, set[str]]:
    """Every engine's answers to one request set read back into ``into``; their texts
    by seed."""
    texts: dict[int, set[str]] = defaultdict(set)
    for answers in engines.values():
        row = answers.get(own.key)
        if row is None:
            continue
        for seed, text in zip(row.seeds, row.texts, strict=True):
            into.append(
                read_back(verifier, prompt, text, own.temperature_milli, seed, row.max_tokens)
            )
            texts[seed].add(text)
    return texts


def share_within(margins: Sequence[float], threshold: float) -> float:
    return sum(m <= threshold for m in margins) / len(margins) if margins else float("nan")


def print_table(found: Found) -> None:
    header = " | ".join(f"<= {t:g}" for t in THRESHOLDS)
    print(f"\n| kind | task | T | answers | {header} |")
    print("|---|---|---|---|" + "---|" * len(THRESHOLDS))
    for kind in KINDS:
        for task in TASKS:
            for temperature in TEMPERATURES_MILLI:
                margins = found.get((kind, task, temperature))
                if not margins:
                    continue
                shares = " | ".join(f"{share_within(margins, t):.0%}" for t in THRESHOLDS)
                print(f"| {kind} | {task} | {temperature / 1000} | {len(margins)} | {shares} |")


def print_disputes(found: Found) -> None:
    """The share of each kind a node disputes (margin at or past its dispute margin)."""
    limit = DEFAULT_READ_BACK_MARGIN
    print(f"\ndisputed by a node (largest margin {limit:g} logits or more), both temperatures:")
    print("\n| kind | " + " | ".join(TASKS) + " |")
    print("|---|" + "---|" * len(TASKS))
    for kind in KINDS:
        cells = []
        for task in TASKS:
            margins = [m for t in TEMPERATURES_MILLI for m in found.get((kind, task, t), [])]
            disputed = sum(m >= limit for m in margins)
            cells.append(f"{disputed / len(margins):.0%} of {len(margins)}" if margins else "-")
        print(f"| {kind} | " + " | ".join(cells) + " |")


SEC_DISTANCES_BP = (DEFAULT_SEC_DISTANCE_BP, 4_000, 4_500)
"""Where other-prompt acceptance is shown: the default, and looser frames that read-back
may make safe."""


def print_acceptance(replays: Replays) -> float:
    """Other-prompt acceptance as the consensus benchmark counts it (pairs of a replay and
    an honest answer within secDistance of MiniLM's sign bits), by the embedding alone and
    once nodes dispute what reads back past their margin; returns the highest of the
    latter at the default secDistance."""
    texts = sorted({t for rows in replays.values() for r, h, _m in rows for t in (r, *h)})
    bits = dict(zip(texts, Embedder("all-MiniLM-L6-v2").embed(texts), strict=True))
    print(
        "\nreplays of another prompt's answer (new text): pairs with an honest answer within "
        "secDistance (MiniLM sign bits), by the embedding alone / and not disputed:"
    )
    columns = " | ".join(f"{bp / 10_000:g}" for bp in SEC_DISTANCES_BP)
    print(f"\n| task | T | pairs | {columns} |")
    print("|---|---|---|" + "---|" * len(SEC_DISTANCES_BP))
    worst = 0.0
    for task in TASKS:
        for temperature in TEMPERATURES_MILLI:
            rows = replays.get((task, temperature))
            if not rows:
                continue
            pairs = [(hamming(bits[r], bits[h]), m) for r, honest, m in rows for h in honest]
            cells = []
            for bp in SEC_DISTANCES_BP:
                near = [m for d, m in pairs if are_neighbours(d, bp, 384)]
                kept = sum(m < DEFAULT_READ_BACK_MARGIN for m in near) / len(pairs)
                cells.append(f"{len(near) / len(pairs):.0%} / {kept:.0%}")
                if bp == DEFAULT_SEC_DISTANCE_BP:
                    worst = max(worst, kept)
            print(f"| {task} | {temperature / 1000} | {len(pairs)} | " + " | ".join(cells) + " |")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=0, help="at most this many (0: all)")
    parser.add_argument("--others", type=int, default=4)
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", default=SMOLLM, help="whose answers to read back")
    add_smoke_flag(parser)
    args = apply_smoke(parser.parse_args(), prompts=2, others=1)
    print_machine("Reading answers back", ["llama-cpp-python", "numpy"])
    engines = {label: load_answers(path) for label, path in engine_files().items()}
    if not engines:
        raise SystemExit("no answers of another engine in bench/data (consensus.py --generate-on)")
    answered = {
        pid for answers in engines.values() for (pid, model, _t) in answers if model == args.model
    }
    if not answered:
        raise SystemExit(f"no answers of {args.model} on another engine in bench/data")
    prompts = round_robin([p for p in load_prompts() if p.id in answered])
    if args.prompts:
        prompts = prompts[: args.prompts]
    print(
        f"{args.model}; engines: {', '.join(engines)}; {len(prompts)} prompts; "
        f"threads {args.threads}"
    )
    started = time.perf_counter()
    with LlmRunner(
        lookup_llm(args.model), n_threads=args.threads, n_ctx=512, reads_answers=True
    ) as verifier:
        found, replays = measure(verifier, prompts, engines, args.others)
    reads = sum(len(v) for (kind, *_g), v in found.items() if kind != "other prompt, new text")
    seconds = time.perf_counter() - started
    print(f"{reads} answers read back in {seconds:.0f} s ({1000 * seconds / reads:.0f} ms each)")
    print_table(found)
    print_disputes(found)
    accepted = print_acceptance(replays)
    honest = [share_within(v, args.margin) for (k, *_g), v in found.items() if k == "honest"]
    other = [
        share_within(v, args.margin)
        for (k, *_g), v in found.items()
        if k == "other prompt, new text"
    ]
    disputed = max(
        sum(m >= DEFAULT_READ_BACK_MARGIN for m in v) / len(v)
        for (k, *_g), v in found.items()
        if k == "honest"
    )
    print(
        f"\nat the nodes' margin ({DEFAULT_READ_BACK_MARGIN:g}): honest_disputed_max="
        f"{disputed:.3f} other_prompt_accepted_max={accepted:.3f}"
    )
    print(f"at margin {args.margin:g}:")
    print(f"honest_pass_min={min(honest):.3f} other_prompt_pass_max={max(other):.3f}")


if __name__ == "__main__":
    main()
