"""Log output for the commands: one line per record, its fields as key=value (or JSON)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%H:%M:%S")
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={_show(v)}" for k, v in _fields(record).items())
        if extras:
            line = f"{line} {extras}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **{k: _show(v) for k, v in _fields(record).items()},
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
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
        return f"[{self._prefix}] {self._inner.format(record)}"
