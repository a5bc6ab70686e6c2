"""The edge between web3/requests and the node: their errors become ``RpcError`` subclasses.

Contract reverts (``ContractLogicError``) and "no such block / transaction"
(``BlockNotFound``, ``TransactionNotFound``) pass through untouched: they are answers,
not failures of the endpoint, and the caller handles them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    ProviderConnectionError,
    TooManyRequests,
    TransactionNotFound,
    Web3RPCError,
)

from oracle.errors import RpcError, RpcRateLimited, RpcUnavailable

__all__ = ["is_log_range_refusal", "rpc_errors"]

# How providers say "ask for fewer blocks": geth, Erigon, Infura, Alchemy, QuickNode,
# Ankr and others each have their own sentence.
_RANGE_REFUSALS = re.compile(
    r"query returned more than|block range|range too (large|wide)|range is too large"
    r"|too many (results|logs|blocks)|exceed(s|ed)? (the )?max(imum)?|response size"
    r"|limited to a|max results|log response size|result window",
    re.IGNORECASE,
)


def is_log_range_refusal(reason: str) -> bool:
    """True when an ``eth_getLogs`` error means the block range should shrink."""
    return _RANGE_REFUSALS.search(reason) is not None


@contextmanager
def rpc_errors(method: str) -> Iterator[None]:
    """Translate the transport's and the endpoint's errors for one RPC call."""
    try:
        yield
    except (ContractLogicError, BlockNotFound, TransactionNotFound):
        raise
    except TooManyRequests as exc:
        raise RpcRateLimited(method=method, reason=str(exc)) from exc
    except requests.HTTPError as exc:
        raise _http_error(method, exc) from exc
    except (requests.ConnectionError, requests.Timeout, ProviderConnectionError) as exc:
        raise RpcUnavailable(method=method, reason=f"{type(exc).__name__}: {exc}") from exc
    except Web3RPCError as exc:
        raise RpcError(method=method, reason=exc.message) from exc


def _http_error(method: str, exc: requests.HTTPError) -> RpcError:
    response = exc.response
    status = response.status_code if response is not None else None
    if status == 429:
        return RpcRateLimited(
            method=method, reason="HTTP 429", retry_after_s=_retry_after(response)
        )
    return RpcUnavailable(method=method, reason=f"HTTP {status}")


def _retry_after(response: requests.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date; the caller's own backoff is good enough
        return None
