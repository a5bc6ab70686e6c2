"""Log output for the commands: one line per record, its fields as key=value (or JSON).

Prompts, outputs, model names and anything else from the chain are untrusted: a
requester can put terminal escapes, bidi overrides or line breaks in them. Every message
and field passes through ``printable`` here, so no caller has to remember to.
"""

from __future__ import annotations

import json
import logging
import sys
import unicodedata
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
"""Controls (NUL, ESC of ANSI sequences, line breaks), format characters (bidi overrides,
zero-width ones), lone surrogates, private-use and unassigned code points, line and
paragraph separators."""


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` safe for a terminal or a log line: unsafe characters become escapes.

    ``\\n``, ``\\t`` and ``\\r`` read as themselves, others as ``\\xNN``, ``\\uNNNN`` or
    ``\\UNNNNNNNN``; everything else, accents and scripts included, is left alone.
    """
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(char, keep_newlines) for char in text)


def _escape(char: str, keep_newlines: bool) -> str:
    if char == "\n" and keep_newlines:
        return char
    if char == " " or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    return char.encode("unicode_escape").decode("ascii")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.name}: {printable(record.getMessage())}"
        extras = " ".join(f"{k}={printable(_show(v))}" for k, v in _fields(record).items())
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line = f"{line}\n{printable(trace, keep_newlines=True)}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": printable(record.getMessage()),
            **{k: printable(_show(v)) for k, v in _fields(record).items()},
        }
        if record.exc_info:
            entry["exception"] = printable(
                self.formatException(record.exc_info), keep_newlines=True
            )
        return json.dumps(entry)


def _show(value: object) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def configure_logging(level: str = "INFO", *, json_lines: bool = False, prefix: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter() if json_lines else KeyValueFormatter()
    if prefix and not json_lines:
        formatter = _Prefixed(prefix, formatter)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in (
        "alembic",
        "apscheduler",
        "filelock",
        "httpx",
        "pgserver",
        "sentence_transformers",
        "urllib3",
        "web3",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Prefixed(logging.Formatter):
    def __init__(self, prefix: str, inner: logging.Formatter) -> None:
        super().__init__()
        self._prefix, self._inner = prefix, inner

    def format(self, record: logging.LogRecord) -> str:
        return f"[{printable(self._prefix)}] {self._inner.format(record)}"
