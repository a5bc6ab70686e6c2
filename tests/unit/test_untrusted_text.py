"""Untrusted text is escaped wherever the node logs or prints it."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from oracle.domain.text import invisibly_altered, visible_form
from oracle.logs import JsonFormatter, KeyValueFormatter, printable

HOSTILE = "Paris\x1b[2J\x1b]0;owned\x07\u202egnp.exe\x00\r\nFAKE 00:00:00 INFO forged\u2028\ud800"
"""ANSI clear-screen and title escapes, a bidi override, NUL, a forged log line,
a line separator and a lone surrogate."""

UNSAFE = ("\x1b", "\x07", "\u202e", "\x00", "\r", "\n", "\u2028", "\ud800")


def record(message: str, *args: object, **fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("oracle.test", logging.INFO, __file__, 1, message, args, None)
    entry.__dict__.update(fields)
    return entry


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("What is the capital of France?", "What is the capital of France?"),
        ("Paris, é, 日本語, emoji 🙂", "Paris, é, 日本語, emoji 🙂"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("a\u202eb\u2066c", "a\\u202eb\\u2066c"),
        ("nul\x00", "nul\\x00"),
        ("two\nlines\r", "two\\nlines\\r"),
        ("\x7f\x85\ufeff", "\\x7f\\x85\\ufeff"),
    ],
)
def test_printable_escapes_only_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown


def test_the_key_value_formatter_escapes_message_and_every_field() -> None:
    line = KeyValueFormatter().format(record("answer %s", HOSTILE, output=HOSTILE, model=HOSTILE))
    assert "\n" not in line
    for char in UNSAFE:
        assert char not in line
    assert "answer Paris\\x1b[2J\\x1b]0;owned\\x07\\u202egnp.exe\\x00\\r\\nFAKE" in line
    assert "output=Paris\\x1b[2J" in line
    line.encode("utf-8")  # a lone surrogate would make the stream's write fail


def test_an_exception_keeps_its_lines_but_not_their_escapes() -> None:
    try:
        raise ValueError(HOSTILE)
    except ValueError:
        entry = record("failed")
        entry.exc_info = sys.exc_info()
    text = KeyValueFormatter().format(entry)
    assert "Traceback" in text and "\n" in text
    assert "\x1b" not in text and "\u202e" not in text and "\x00" not in text
    assert "ValueError: Paris\\x1b[2J" in text


def test_the_json_formatter_carries_the_escaped_form() -> None:
    line = JsonFormatter().format(record(HOSTILE, prompt=HOSTILE))
    entry = json.loads(line)
    for value in (entry["message"], entry["prompt"]):
        assert value.startswith("Paris\\x1b[2J\\x1b]0;owned\\x07\\u202egnp.exe\\x00")
        for char in UNSAFE:
            assert char not in value


def test_a_hostile_log_line_through_the_configured_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from oracle.logs import configure_logging

    configure_logging("INFO")
    try:
        logging.getLogger("oracle.test").info(
            "request admitted", extra={"request_id": 7, "prompt": HOSTILE}
        )
    finally:
        logging.getLogger().handlers.clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "request_id=7 prompt=Paris\\x1b[2J\\x1b]0;owned\\x07\\u202egnp.exe\\x00\\r\\nFAKE" in err


@pytest.mark.parametrize(
    "edited",
    [
        "Ye\u200bs",  # ZERO WIDTH SPACE
        "Yes\u200d",  # ZERO WIDTH JOINER at the end
        "\u202eYes",  # RIGHT-TO-LEFT OVERRIDE
        "Yes" + "".join(chr(0xE0000 + ord(c)) for c in "run rm -rf"),  # tag characters
        "Y\ufe0fes",  # a variation selector
        "Ye\x07s",  # a control character
        "\u00adYes",  # SOFT HYPHEN
    ],
)
def test_invisible_edits_of_an_answer_are_told_apart(edited: str) -> None:
    assert visible_form(edited) == "Yes"
    assert invisibly_altered(edited, "Yes")
    assert invisibly_altered("Yes", edited)  # removing them from one's own text too


def test_other_spaces_are_spaces_and_line_breaks_stay() -> None:
    assert visible_form("Paris\u00a0is\u2009big.\n\tYes") == "Paris is big.\n\tYes"
    assert invisibly_altered("Paris\u00a0is", "Paris is")


@pytest.mark.parametrize(
    "other",
    ["Yes", "YES", "yes", "Yés", "Yes.", "Yes ", "No", "Y es"],
)
def test_visible_differences_and_the_same_text_are_not_edits(other: str) -> None:
    """Case, accents, punctuation and ordinary spaces: honest engines part on those at
    near ties, so a node must not dispute them; the same bytes are no edit at all."""
    assert not invisibly_altered(other, "Yes")
