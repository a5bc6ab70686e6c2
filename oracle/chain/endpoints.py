"""Several RPC endpoints behind one web3 provider: the first healthy one answers.

An operator gives ``--rpc`` more than once (their own node first, a provider or two
after it). Every call goes to the first endpoint in that order that is not resting; an
endpoint that fails in a way another endpoint may not (it cannot be reached, times out,
cuts the body, answers HTTP 429/5xx or something that is not JSON-RPC, or says in a
JSON-RPC error that it is rate limiting or has not synced) rests for a while, growing
with its consecutive failures or as long as its ``Retry-After`` asks, and the call is
tried on the next one. A JSON-RPC error that is an answer (a revert, a refused
transaction) is returned as it is: another endpoint would say the same.

Given the chain id the node serves, each endpoint is asked for its own before its first
call: one on another chain (a fallback pointed at another network by mistake) is never
used, and an error says so; ``eth_chainId`` is then answered here, from that id (web3
asks it twice around every ``eth_call`` and ``eth_estimateGas`` to check the
transaction's chain: three HTTP requests for one call). When every endpoint fails, the
last failure is raised for ``oracle.chain.rpc`` to classify, and the caller's loop backs
off. web3's own retries are turned off: a rate-limited endpoint must be left alone, not
asked five more times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from web3 import HTTPProvider
from web3.providers.base import JSONBaseProvider
from web3.types import RPCEndpoint, RPCResponse

from oracle.chain.rpc import classify_rpc_error, retry_after_header
from oracle.domain.retry import backoff_s
from oracle.errors import RpcRateLimited, RpcUnavailable

__all__ = ["Endpoint", "FailoverProvider", "redact_url"]

logger = logging.getLogger(__name__)

_R = TypeVar("_R")
_BASE_REST_S = 1.0
_MAX_REST_S = 60.0
_SECOND_PASS_PAUSE_S = 0.1


def redact_url(url: str) -> str:
    """The URL without what may be a secret: credentials and any path (API keys live there)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<rpc>"
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    return f"{scheme}://{host}" + ("/..." if "/" in rest.strip("/") else "")


@dataclass(slots=True)
class Endpoint:
    """One RPC endpoint and its health as this node has seen it."""

    url: str
    provider: HTTPProvider
    failures: int = 0
    resting_until: float = 0.0
    calls: int = 0
    failed_calls: int = 0
    chain_checked: bool = False
    wrong_chain: int | None = None
    """The chain id it reported when that was not the node's chain: never used again."""

    @property
    def name(self) -> str:
        return redact_url(self.url)


class _EndpointFailed(Exception):
    """An answer that another endpoint may not give: malformed, or an error that says
    "slow down" or "not synced"."""

    def __init__(
        self, response: object, retry_after_s: float | None, *, rate_limited: bool = False
    ) -> None:
        error = response.get("error") if isinstance(response, Mapping) else None
        super().__init__(str(error) if error is not None else "a malformed answer")
        self.response = response
        self.retry_after_s = retry_after_s
        self.rate_limited = rate_limited


class FailoverProvider(JSONBaseProvider):
    """A web3 provider over several HTTP endpoints (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 30.0,
        chain_id: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("at least one RPC endpoint is needed")
        self.endpoints = [
            Endpoint(
                url=url,
                provider=HTTPProvider(
                    url,
                    request_kwargs={"timeout": timeout_s},
                    exception_retry_configuration=None,
                ),
            )
            for url in urls
        ]
        self._clock = clock
        self._chain_id = chain_id
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return "RPC endpoints " + ", ".join(e.name for e in self.endpoints)

    def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        if method == "eth_chainId" and self._chain_id is not None:
            # every endpoint used is on this chain (``_on_our_chain``)
            return {"jsonrpc": "2.0", "id": 0, "result": hex(self._chain_id)}
        return self._first_healthy(lambda p: p.make_request(method, params), method)

    def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        def call(provider: HTTPProvider) -> list[RPCResponse] | RPCResponse:
            answers = provider.make_batch_request(batch_requests)
            if not isinstance(answers, list):
                return answers  # one error object for the whole batch
            unique = _one_answer_per_id(answers)
            if len(unique) != len(batch_requests):  # an answer missing: ask elsewhere
                raise _EndpointFailed(unique, None)
            return unique

        return self._first_healthy(call, RPCEndpoint("batch"))

    def is_connected(self, show_traceback: bool = False) -> bool:
        return any(e.provider.is_connected(show_traceback) for e in self.endpoints)

    # --- choosing ---------------------------------------------------------------------

    def _first_healthy(self, call: Callable[[HTTPProvider], _R], method: str) -> _R:
        """The first endpoint's answer that is one; when every endpoint failed, and none of
        them asked to be left alone, they are all asked once more after a pause (a
        dropped connection or a 503 is usually gone a moment later)."""
        last_error: BaseException | None = None
        for attempt in range(2):
            if attempt:
                if _asks_to_wait(last_error):
                    break
                time.sleep(_SECOND_PASS_PAUSE_S)
            for endpoint in self._order():
                try:
                    if not self._on_our_chain(endpoint):
                        continue
                    result = call(endpoint.provider)
                    _raise_if_endpoint_failed(result, method)
                except _EndpointFailed as exc:
                    self._rest(endpoint, method, exc, exc.retry_after_s)
                    last_error = exc
                    continue
                except (requests.RequestException, ValueError, OSError) as exc:
                    response = getattr(exc, "response", None)
                    self._rest(endpoint, method, exc, retry_after_header(response))
                    last_error = exc
                    continue
                self._recovered(endpoint)
                return result
        if isinstance(last_error, _EndpointFailed):
            return last_error.response  # type: ignore[return-value]  # web3 raises from it
        if last_error is None:
            raise ValueError("no RPC endpoint on the node's chain")  # -> RpcMalformedResponse
        raise last_error

    def _on_our_chain(self, endpoint: Endpoint) -> bool:
        """Ask an endpoint its chain id before its first use; False for another chain."""
        if self._chain_id is None or endpoint.chain_checked:
            return endpoint.wrong_chain is None
        response = endpoint.provider.make_request(RPCEndpoint("eth_chainId"), [])
        result = response.get("result")
        if not isinstance(result, str):
            raise _EndpointFailed(response, None)
        reported = int(result, 16)
        endpoint.chain_checked = True
        if reported != self._chain_id:
            endpoint.wrong_chain = reported
            logger.error(
                "an RPC endpoint serves another chain; it will not be used",
                extra={"endpoint": endpoint.name, "chain_id": reported, "expected": self._chain_id},
            )
        return endpoint.wrong_chain is None

    def _order(self) -> list[Endpoint]:
        """Endpoints not resting, in the operator's order; all of them if all are resting
        (the soonest back first), so that a call is never refused without a try."""
        now = self._clock()
        with self._lock:
            usable = [e for e in self.endpoints if e.wrong_chain is None]
            ready = [e for e in usable if e.resting_until <= now]
            if ready:
                return ready
            return sorted(usable, key=lambda e: e.resting_until)

    def _rest(
        self, endpoint: Endpoint, method: str, exc: BaseException, asked_s: float | None
    ) -> None:
        with self._lock:
            endpoint.failures += 1
            endpoint.calls += 1
            endpoint.failed_calls += 1
            backoff = backoff_s(endpoint.failures, _BASE_REST_S, _MAX_REST_S)
            rest = min(_MAX_REST_S, asked_s) if asked_s is not None else backoff
            endpoint.resting_until = self._clock() + rest
        if len(self.endpoints) > 1:
            logger.warning(
                "RPC endpoint failed; trying the next",
                extra={
                    "endpoint": endpoint.name,
                    "method": method,
                    "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                    "rest_s": round(rest, 2),
                },
            )

    def _recovered(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.calls += 1
            if endpoint.failures:
                logger.info("RPC endpoint answers again", extra={"endpoint": endpoint.name})
            endpoint.failures = 0
            endpoint.resting_until = 0.0


def _asks_to_wait(error: BaseException | None) -> bool:
    """A rate limit (HTTP 429, or a JSON-RPC error that says so): do not ask again now."""
    if isinstance(error, _EndpointFailed):
        return error.rate_limited
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None) == 429


def _one_answer_per_id(answers: list[RPCResponse]) -> list[RPCResponse]:
    """A batch's answers with repeats of an id dropped (some proxies repeat one), in order."""
    seen: set[object] = set()
    unique = []
    for answer in answers:
        key = answer.get("id") if isinstance(answer, Mapping) else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        unique.append(answer)
    return unique


def _raise_if_endpoint_failed(result: object, method: str) -> None:
    """Raise ``_EndpointFailed`` for error answers that another endpoint may not give."""
    responses = result if isinstance(result, list) else [result]
    for response in responses:
        if not isinstance(response, Mapping) or (
            "result" not in response and "error" not in response
        ):
            raise _EndpointFailed(result, None)  # web3 raises BadResponseFormat from it
        error = response.get("error")
        if not isinstance(error, Mapping):
            continue
        classified = classify_rpc_error(
            method, str(error.get("message", "")), error.get("code"), error.get("data")
        )
        if isinstance(classified, RpcRateLimited):
            raise _EndpointFailed(response, classified.retry_after_s, rate_limited=True)
        if isinstance(classified, RpcUnavailable):
            raise _EndpointFailed(response, None)
