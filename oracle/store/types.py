"""Column types and CHECK expressions shared by the models."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import Dialect, Numeric, TypeDecorator

UINT256_LIMIT = 2**256

# Addresses are stored as lowercase 0x-hex text, so equality in SQL never depends on
# checksum casing; writers lower() what web3 gives them.
ADDRESS_PATTERN = "^0x[0-9a-f]{40}$"


class Uint256(TypeDecorator[int]):
    """A Solidity ``uint256`` as ``NUMERIC(78, 0)``, read back as a Python ``int``."""

    impl = Numeric(78, 0)
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def one_of(column: str, values: Iterable[str]) -> str:
    """CHECK expression: ``column`` holds one of ``values``."""
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def uint256(column: str) -> str:
    """CHECK expression: ``column`` fits a ``uint256``."""
    return f"{column} >= 0 AND {column} < {UINT256_LIMIT}"


def byte_length(column: str, length: int) -> str:
    """CHECK expression: the bytea ``column`` is exactly ``length`` bytes long."""
    return f"octet_length({column}) = {length}"


def address(column: str) -> str:
    """CHECK expression: ``column`` is a lowercase 0x-prefixed 20-byte address."""
    return f"{column} ~ '{ADDRESS_PATTERN}'"


def between(column: str, low: int, high: int) -> str:
    """CHECK expression: ``low <= column <= high``."""
    return f"{column} BETWEEN {low} AND {high}"
