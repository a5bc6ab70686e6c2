"""Compiled contract artifacts (committed under ``contracts/artifacts``) and their errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address

ARTIFACT_DIR = Path(__file__).resolve().parents[2] / "contracts" / "artifacts"

_ERROR_STRING = bytes.fromhex("08c379a0")  # Error(string)
_PANIC = bytes.fromhex("4e487b71")  # Panic(uint256)


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


@cache
def load_artifact(name: str) -> Artifact:
    data = json.loads((ARTIFACT_DIR / f"{name}.json").read_text())
    return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"])


def _abi_type(param: dict[str, Any]) -> str:
    if param["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){param['type'][5:]}"
    return str(param["type"])


@cache
def _error_table(name: str) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table: dict[bytes, tuple[str, list[str], list[str]]] = {}
    for item in load_artifact(name).abi:
        if item["type"] != "error":
            continue
        types = [_abi_type(p) for p in item["inputs"]]
        selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
        table[selector] = (item["name"], [p["name"] for p in item["inputs"]], types)
    return table


class UndecodableRevert(ValueError):
    """Revert data that is not hex, or whose body does not fit the error it names: no
    contract reverts that way, so whoever answered did not run the call."""


def decode_revert(data: bytes | str | None, contract: str = "InferenceCoordinator") -> str:
    """Turn revert data into a readable reason such as ``SeatsFull(requestId=3)``;
    ``UndecodableRevert`` when the data cannot be what the contract reverted with."""
    if isinstance(data, str):
        try:
            raw: bytes | None = bytes.fromhex(data[2:] if data.startswith("0x") else data)
        except ValueError as exc:
            raise UndecodableRevert(f"revert data that is not hex: {data[:80]!r}") from exc
    else:
        raw = data
    if not raw or len(raw) < 4:
        return "reverted without a reason"
    selector, body = raw[:4], raw[4:]
    try:
        if selector == _ERROR_STRING:
            return str(abi_decode(["string"], body)[0])
        if selector == _PANIC:
            return f"Panic(0x{abi_decode(['uint256'], body)[0]:02x})"
        known = _error_table(contract).get(selector)
        if known is None:
            return f"unknown error 0x{raw.hex()}"
        error_name, names, types = known
        values = abi_decode(types, body)
    except (DecodingError, ValueError) as exc:  # cut short, or a string that is not UTF-8
        shown = raw.hex() if len(raw) <= 100 else raw[:100].hex() + "..."
        raise UndecodableRevert(f"revert data that does not decode: 0x{shown} ({exc})") from exc
    args = ", ".join(f"{n}={_show(v, t)}" for n, v, t in zip(names, values, types, strict=True))
    return f"{error_name}({args})"


def error_name(data: bytes | str | None, contract: str = "InferenceCoordinator") -> str:
    """Just the custom error's name of a revert (``SeatsFull``)."""
    return reason_name(decode_revert(data, contract))


def reason_name(reason: str) -> str:
    """The custom error's name of a decoded revert: ``UnknownRequest(requestId=1)`` ->
    ``UnknownRequest``."""
    return reason.split("(", 1)[0]


def _show(value: object, abi_type: str) -> str:
    if abi_type == "address":
        return to_checksum_address(str(value))
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)
