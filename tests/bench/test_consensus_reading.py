"""How bench/consensus.py reads what a replayed answer says (``_says_the_same``).

The benchmark splits other prompts' answers that the signal lets in into those that say
what the honest answer says and those that say something else; the second figure is only
as honest as this reading, so its edges are pinned here.
"""

from __future__ import annotations

import pytest

from bench.consensus import Distances, Group, Prompt, _says_the_same, best_point


def prompt(task: str, key: str | None) -> Prompt:
    return Prompt(id=f"{task}-01", task=task, prompt="?", reference=None, wrong=None, key=key)


@pytest.mark.parametrize(
    ("task", "key", "replay", "answer", "same"),
    [
        # the same text, up to case, surrounding whitespace and a trailing period
        ("summary", None, " The storm closed the roads.", "the storm closed the roads", True),
        ("summary", None, "The storm closed the roads.", "Roads were closed by a storm.", False),
        # the same verdict, whatever the reason says
        ("yesno", "yes", "No, the Earth is not flat.", "No.", True),
        ("yesno", "yes", "Yes, 9 is odd.", "No.", False),
        # no verdict on either side is not agreement
        ("yesno", "yes", "Maybe.", "It depends.", False),
        ("classification", "positive", "The review is negative.", "Negative", True),
        ("classification", "positive", "The review is negative.", "Positive", False),
        ("classification", "positive", "Unclear", "Hard to say", False),
        # both hold this prompt's known answer; both lacking it says nothing alike
        ("factual", "paris", "Paris, of course.", "The capital of France is Paris.", True),
        ("factual", "paris", "The capital of Spain is Madrid.", "Lyon.", False),
        ("extraction", "36", "$36", "The total amount paid is $12.", False),
    ],
)
def test_what_a_replay_says(
    task: str, key: str | None, replay: str, answer: str, same: bool
) -> None:
    assert _says_the_same(prompt(task, key), replay, answer) is same


def distances(other: list[float]) -> Distances:
    """Honest pairs spread evenly from 0 to 0.5 apart, and the given replays."""
    honest = [i / 100 for i in range(51)]
    groups = [Group("factual", "SmolLM2-135M-Instruct-Q4_1", t) for t in (200, 700)]
    return Distances(
        honest={g: honest for g in groups},
        shared={g: honest for g in groups},
        other={groups[0]: other},
    )


def test_the_best_secdistance_keeps_replays_within_the_goal() -> None:
    # 1 replay in 20 within any threshold (5 %, the goal), the rest 0.40 apart
    point = best_point(distances([0.0] + [0.40] * 19))
    assert point is not None
    bp, summary = point
    # the most honest pairs before 0.40, where the replays come in; of 0.390 and 0.395,
    # which merge as many (the pairs lie 0.01 apart), the lower
    assert bp == 3900
    assert summary.other_prompt_max <= 0.05


def test_no_best_secdistance_where_replays_are_the_honest_text() -> None:
    # 2 replays in 20 are the honest answer word for word: in at every threshold
    assert best_point(distances([0.0, 0.0] + [0.40] * 18)) is None
    assert best_point(distances([0.0, 0.0] + [0.40] * 18), shared=True) is None
