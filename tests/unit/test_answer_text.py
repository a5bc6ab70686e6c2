"""What the node stores and commits of a generated answer."""

from __future__ import annotations

from oracle.engine.worker import answer_text


def test_an_answer_never_holds_a_nul() -> None:
    assert answer_text("Par\x00is.\x00") == "Paris."
    assert answer_text("bidi \u202e and \x1b stay") == "bidi \u202e and \x1b stay"
