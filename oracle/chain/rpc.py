"""The one RPC error taxonomy: whatever the transport or the endpoint does, one of three.

- **An answer** passes through untouched: a contract revert (``ContractLogicError``, only
  when it really carries revert data) and "no such block / transaction"
  (``BlockNotFound``, ``TransactionNotFound``). The caller handles them.
- **Transient** (``RpcUnavailable`` and its kinds): the endpoint is away, slow, lagging,
  rate limiting (``RpcRateLimited``, with the delay it asked for), or answered with
  something that is not a JSON-RPC answer (``RpcMalformedResponse``: an HTML page, a body
  cut mid-way, a result of the wrong shape). Callers back off and try again, perhaps on
  another endpoint.
- **Permanent** (``RpcError`` itself): the endpoint understood the call and refused it
  (a JSON-RPC error). The caller records the reason.

Nothing else escapes ``rpc_errors``: a provider cannot stop a node with an exception
nobody expected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import requests
from eth_abi.exceptions import DecodingError
from web3.exceptions import (
    BlockNotFound,
    ContractLogicError,
    ProviderConnectionError,
    TooManyRequests,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)

from oracle.errors import RpcError, RpcMalformedResponse, RpcRateLimited, RpcUnavailable

__all__ = [
    "classify_rpc_error",
    "is_log_range_refusal",
    "is_rate_limit",
    "is_revert",
    "retry_after_header",
    "rpc_errors",
]

# How providers say "ask for fewer blocks": geth, Erigon, Infura, Alchemy, QuickNode,
# Ankr and others each have their own sentence.
_RANGE_REFUSALS = re.compile(
    r"query returned more than|block range|range too (large|wide)|range is too large"
    r"|too many (results|logs|blocks)|exceed(s|ed)? (the )?max(imum)?|response size"
    r"|limited to a|max results|log response size|result window",
    re.IGNORECASE,
)
# How providers say "slow down" inside a JSON-RPC error (HTTP 429 is handled apart).
_RATE_LIMITS = re.compile(
    r"rate.?limit|too many requests|limit exceeded|exceeded .*(capacity|quota|limit)"
    r"|request limit|compute units|throttl|capacity reached|try again later",
    re.IGNORECASE,
)
# How a backend behind a load balancer says it has not seen a block yet.
_NOT_SYNCED = re.compile(
    r"header not found|unknown block|block not found|missing trie node|not synced"
    r"|state.*not available|is not available|backend.*(lag|behind)",
    re.IGNORECASE,
)
_RATE_LIMIT_CODES = frozenset({429, -32005, -32029, -32090})
_MALFORMED = (
    json.JSONDecodeError,
    UnicodeDecodeError,
    DecodingError,
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
)
"""What web3 and its formatters raise on an answer of the wrong shape."""


def is_log_range_refusal(reason: str) -> bool:
    """True when an ``eth_getLogs`` error means the block range should shrink."""
    return _RANGE_REFUSALS.search(reason) is not None


def is_rate_limit(reason: str, code: object = None) -> bool:
    """True when a JSON-RPC error means "slow down" rather than "no"."""
    if code in _RATE_LIMIT_CODES and not is_log_range_refusal(reason):
        return True
    return _RATE_LIMITS.search(reason) is not None


def is_revert(exc: ContractLogicError) -> bool:
    """True when a ``ContractLogicError`` is a revert, not another error web3 took for one.

    web3 reads any JSON-RPC error carrying a ``data`` object as a revert; providers put
    rate-limit details there. A revert's data is hex (``0x`` and the encoded error), or
    absent with "revert" in the message.
    """
    data = exc.data
    if isinstance(data, bytes):
        return True
    if isinstance(data, str):
        return data.startswith("0x") or "revert" in (exc.message or "").lower()
    if isinstance(data, Mapping):
        return False
    return "revert" in (exc.message or "").lower()


def classify_rpc_error(
    method: str, reason: str, code: object = None, data: object = None
) -> RpcError:
    """A JSON-RPC error object as the taxonomy sees it."""
    hint = _retry_hint(data) if isinstance(data, Mapping) else None
    if is_rate_limit(reason, code) or hint is not None:
        return RpcRateLimited(
            method=method,
            reason=reason,
            retry_after_s=hint,
        )
    if _NOT_SYNCED.search(reason) is not None:
        return RpcUnavailable(method=method, reason=reason)
    return RpcError(method=method, reason=reason)


@contextmanager
def rpc_errors(method: str) -> Iterator[None]:
    """Translate the transport's and the endpoint's errors for one RPC call."""
    try:
        yield
    except ContractLogicError as exc:
        if is_revert(exc):
            raise
        raise classify_rpc_error(method, exc.message or str(exc), data=exc.data) from exc
    except (BlockNotFound, TransactionNotFound, RpcError):
        raise
    except TooManyRequests as exc:
        raise RpcRateLimited(method=method, reason=str(exc)) from exc
    except requests.HTTPError as exc:
        raise _http_error(method, exc) from exc
    except (requests.RequestException, ProviderConnectionError) as exc:  # refused, reset, cut
        raise RpcUnavailable(method=method, reason=f"{type(exc).__name__}: {exc}") from exc
    except Web3RPCError as exc:
        error = exc.rpc_response.get("error") if exc.rpc_response else None
        code = error.get("code") if isinstance(error, Mapping) else None
        data = error.get("data") if isinstance(error, Mapping) else None
        raise classify_rpc_error(method, exc.message or str(exc), code, data) from exc
    except (*_MALFORMED, Web3Exception) as exc:
        reason = f"{type(exc).__name__}: {_short(str(exc))}"
        raise RpcMalformedResponse(method=method, reason=reason) from exc
    except OSError as exc:  # a socket error that the transport did not wrap
        raise RpcUnavailable(method=method, reason=f"{type(exc).__name__}: {exc}") from exc


def _http_error(method: str, exc: requests.HTTPError) -> RpcError:
    response = exc.response
    status = response.status_code if response is not None else None
    if status == 429:
        return RpcRateLimited(
            method=method, reason="HTTP 429", retry_after_s=retry_after_header(response)
        )
    return RpcUnavailable(method=method, reason=f"HTTP {status}")


def retry_after_header(response: requests.Response | None) -> float | None:
    """The seconds an HTTP answer's ``Retry-After`` asks for (None for none or a date)."""
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date; the caller's own backoff is good enough
        return None


def _retry_hint(data: Mapping[str, Any]) -> float | None:
    """A delay that a rate-limit error's ``data`` asks for (Infura-style ``rate``)."""
    for holder in (data, data.get("rate")):
        if not isinstance(holder, Mapping):
            continue
        for key in ("backoff_seconds", "retry_after", "retryAfter", "backoff"):
            value = holder.get(key)
            if isinstance(value, int | float) and value >= 0:
                return float(value)
    return None


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
