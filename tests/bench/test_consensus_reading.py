"""How bench/consensus.py reads what a replayed answer says (``_says_the_same``).

The benchmark splits other prompts' answers that the signal lets in into those that say
what the honest answer says and those that say something else; the second figure is only
as honest as this reading, so its edges are pinned here.
"""

from __future__ import annotations

import pytest

from bench.consensus import Prompt, _says_the_same


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
