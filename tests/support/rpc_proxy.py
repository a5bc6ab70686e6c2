"""A JSON-RPC proxy between a node and anvil that injects the faults public endpoints show.

The proxy is a real HTTP server on 127.0.0.1 (a thread) that forwards every request to
the upstream URL. Faults are switched on with ``inject``: per kind, per method (or for
every method), with a probability drawn from one seeded ``random.Random`` (the same seed
and the same calls give the same faults), optionally a limited number of times or only
for calls a predicate picks. What was injected is counted by kind (``injected``) and
every request is recorded with its time (``calls``).

Kinds, and what the client sees:

- ``drop``: the request is forwarded, then the connection is closed without an answer.
- ``delay``: the answer comes ``delay_s`` late (past the client's timeout, a timeout).
- ``rate_limit``: HTTP 429 with ``Retry-After: retry_after_s``; nothing is forwarded.
- ``server_error``: HTTP ``status`` (5xx by default, any status given); nothing forwarded.
- ``reset_mid_body``: forwarded; status and headers (chunked) and half the body are
  sent, then the connection is closed (``requests`` raises ``ChunkedEncodingError``).
- ``html``: an HTML error page with status 200, as a CDN in front of a node sends.
- ``rpc_rate_limit``: a JSON-RPC error whose ``data`` field says "rate limited"
  (Infura's shape: code -32005, "limit exceeded"); nothing is forwarded.
- ``malformed``: forwarded; the JSON-RPC answer carries neither ``result`` nor ``error``.
- ``bad_revert``: a revert whose data does not decode (``Error(string)`` cut after its
  selector, ``BAD_REVERT_ERROR``); nothing is forwarded.
- ``lag``: a backend ``blocks`` behind the chain: ``eth_blockNumber`` answers N-k, blocks,
  receipts and transactions above N-k are not found (null), ``eth_getLogs`` is clipped
  to N-k, and "latest" means N-k; with ``pending``, so does "pending" in ``eth_call`` and
  ``eth_estimateGas`` (the backend simulates on its own head).
- ``duplicate`` / ``reorder``: in a batch answer, one answer appears twice / the answers
  come in another order (JSON-RPC lets a server answer a batch in any order).

HTTP-level kinds (``drop``, ``rate_limit``, ``server_error``, ``reset_mid_body``,
``html``) take the whole HTTP request, a batch included; the first rule that fires wins.
``rpc_rate_limit``, ``malformed`` and ``bad_revert`` replace the answer of each call they
pick, inside a batch too. ``after`` runs an action once a method's answer is in hand and
before it is delivered (a reorg between two calls of the client, for instance).
"""

from __future__ import annotations

import http.server
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import requests

__all__ = ["FAULT_KINDS", "Call", "FaultKind", "Recorded", "RpcProxy", "Rule", "running_proxy"]

logger = logging.getLogger(__name__)

FaultKind = Literal[
    "drop",
    "delay",
    "rate_limit",
    "server_error",
    "reset_mid_body",
    "html",
    "rpc_rate_limit",
    "malformed",
    "bad_revert",
    "lag",
    "duplicate",
    "reorder",
]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "drop",
    "delay",
    "rate_limit",
    "server_error",
    "reset_mid_body",
    "html",
    "rpc_rate_limit",
    "malformed",
    "bad_revert",
    "lag",
    "duplicate",
    "reorder",
)
_HTTP_KINDS = frozenset({"drop", "rate_limit", "server_error", "reset_mid_body", "html"})
_CALL_KINDS = frozenset({"rpc_rate_limit", "malformed", "bad_revert"})
_BATCH_KINDS = frozenset({"duplicate", "reorder"})

RATE_LIMIT_ERROR: dict[str, Any] = {
    "code": -32005,
    "message": "limit exceeded",
    "data": {
        "see": "https://infura.io/dashboard",
        "rate": {"allowed_rps": 1, "backoff_seconds": 1, "current_rps": 3.2},
    },
}
BAD_REVERT_ERROR: dict[str, Any] = {
    "code": 3,
    "message": "execution reverted",
    "data": "0x08c379a0ff",  # Error(string)'s selector, then one byte of a 64-byte body
}
HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1><p>The origin did not answer in time.</p>"
    b"<hr><center>cloudflare</center></body></html>"
)
_TAGS = frozenset({"latest", "pending", "safe", "finalized"})


@dataclass(frozen=True, slots=True)
class Call:
    """One JSON-RPC call of a request, as a rule's ``when`` sees it."""

    method: str
    params: list[Any]

    def block_span(self) -> int | None:
        """How many blocks an ``eth_getLogs`` filter covers (None when it is not a range)."""
        if self.method != "eth_getLogs" or not self.params:
            return None
        flt = self.params[0]
        first, last = flt.get("fromBlock"), flt.get("toBlock")
        if not isinstance(first, str) or not isinstance(last, str) or last in _TAGS:
            return None
        if first in _TAGS:
            return None
        return int(last, 16) - int(first, 16) + 1


@dataclass(slots=True)
class Rule:
    """One switched-on fault; ``cancel`` switches it off."""

    kind: FaultKind
    probability: float = 1.0
    methods: frozenset[str] | None = None
    times: int | None = None
    when: Callable[[Call], bool] | None = None
    delay_s: float = 1.0
    retry_after_s: float = 1.0
    status: int = 503
    blocks: int = 3
    pending: bool = False
    """``lag`` only: "pending" lags too."""
    active: bool = True

    def matches(self, call: Call) -> bool:
        if not self.active or self.times == 0:
            return False
        if self.methods is not None and call.method not in self.methods:
            return False
        return self.when is None or self.when(call)

    def cancel(self) -> None:
        self.active = False


@dataclass(frozen=True, slots=True)
class Recorded:
    """One HTTP request the proxy received: when, which methods, what it did to it."""

    at: float
    methods: tuple[str, ...]
    faults: tuple[str, ...]
    batch: bool


@dataclass(slots=True)
class _Plan:
    """What the proxy does to one HTTP request."""

    http: Rule | None = None
    delay_s: float = 0.0
    lag: int = 0
    lag_pending: bool = False
    per_call: dict[int, Rule] = field(default_factory=dict)
    batch: list[Rule] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)


class RpcProxy:
    """A fault-injecting JSON-RPC proxy in front of ``upstream`` (see the module docstring)."""

    def __init__(self, upstream: str, *, seed: int = 0, upstream_timeout_s: float = 30) -> None:
        self.upstream = upstream
        self._upstream_timeout_s = upstream_timeout_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._after: list[tuple[str, Callable[[Call], object]]] = []
        self._sessions = threading.local()
        self.injected: Counter[str] = Counter()
        """Faults injected so far, by kind (``lag`` counts the calls it altered)."""
        self.calls: list[Recorded] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> RpcProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rpc-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- switching faults -----------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind,
        *,
        probability: float = 1.0,
        methods: Iterable[str] | None = None,
        times: int | None = None,
        when: Callable[[Call], bool] | None = None,
        delay_s: float = 1.0,
        retry_after_s: float = 1.0,
        status: int = 503,
        blocks: int = 3,
        pending: bool = False,
    ) -> Rule:
        """Switch a fault on; rules are tried in the order they were added."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        rule = Rule(
            kind=kind,
            probability=probability,
            methods=None if methods is None else frozenset(methods),
            times=times,
            when=when,
            delay_s=delay_s,
            retry_after_s=retry_after_s,
            status=status,
            blocks=blocks,
            pending=pending,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def lag(self, blocks: int, *, pending: bool = False) -> Rule:
        """From now on, a backend ``blocks`` behind the chain (``cancel`` the rule to stop);
        with ``pending``, its simulations run on its own head too."""
        return self.inject("lag", blocks=blocks, pending=pending)

    def after(self, method: str, action: Callable[[Call], object], *, times: int = 1) -> None:
        """Run ``action`` when ``method``'s answer is in hand, before it is delivered."""
        with self._lock:
            self._after.extend([(method, action)] * times)

    def clear(self) -> None:
        """Switch every fault off (counts and the call record stay)."""
        with self._lock:
            for rule in self._rules:
                rule.cancel()
            self._rules.clear()
            self._after.clear()

    def requests_for(self, method: str) -> list[Recorded]:
        """The recorded HTTP requests that carried ``method``."""
        with self._lock:
            return [r for r in self.calls if method in r.methods]

    # --- planning -------------------------------------------------------------------------

    def _plan(self, calls: list[Call], batch: bool) -> _Plan:
        plan = _Plan()
        with self._lock:
            for rule in self._rules:
                picked = [i for i, call in enumerate(calls) if rule.matches(call)]
                if not picked or not _applies(rule, plan, batch, len(calls)):
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                self._take(rule, plan, picked)
        return plan

    def _take(self, rule: Rule, plan: _Plan, picked: list[int]) -> None:
        if rule.times is not None:
            rule.times -= 1
        if rule.kind in _HTTP_KINDS:
            plan.http = rule
        elif rule.kind == "delay":
            plan.delay_s += rule.delay_s
        elif rule.kind == "lag":
            plan.lag = max(plan.lag, rule.blocks)
            plan.lag_pending = plan.lag_pending or rule.pending
        elif rule.kind in _CALL_KINDS:
            for index in picked:
                plan.per_call.setdefault(index, rule)
        else:
            plan.batch.append(rule)
        if rule.kind != "lag":  # lag counts the calls it actually altered
            plan.faults.append(rule.kind)
            self.injected[rule.kind] += len(picked) if rule.kind in _CALL_KINDS else 1

    def _shuffled(self, items: list[Any]) -> list[Any]:
        with self._lock:
            order = list(items)
            while len(order) > 1 and order == items:
                self._rng.shuffle(order)
            return order

    def _pick(self, count: int) -> int:
        with self._lock:
            return self._rng.randrange(count)

    def _record(self, calls: list[Call], plan: _Plan, batch: bool) -> None:
        with self._lock:
            self.calls.append(
                Recorded(
                    at=time.monotonic(),
                    methods=tuple(c.method for c in calls),
                    faults=tuple(plan.faults),
                    batch=batch,
                )
            )

    def _count(self, kind: str, amount: int = 1) -> None:
        with self._lock:
            self.injected[kind] += amount

    def _actions_after(self, method: str) -> list[Callable[[Call], object]]:
        with self._lock:
            due = [(m, a) for m, a in self._after if m == method]
            for entry in due:
                self._after.remove(entry)
        return [action for _method, action in due]

    # --- forwarding -----------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._sessions, "session", None)
        if session is None:
            session = requests.Session()
            self._sessions.session = session
        return session

    def _forward(self, payload: Any) -> Any:
        response = self._session().post(
            self.upstream, json=payload, timeout=self._upstream_timeout_s
        )
        response.raise_for_status()
        return response.json()

    def answer(self, payload: Any, plan: _Plan) -> Any:
        """The upstream's answer to ``payload`` with the plan's call- and batch-level faults."""
        batch = isinstance(payload, list)
        items: list[dict[str, Any]] = payload if batch else [payload]
        head = self._upstream_head() if plan.lag else None
        answers = [self._answer_one(i, item, plan, head) for i, item in enumerate(items)]
        for rule in plan.batch:
            if rule.kind == "duplicate":
                answers.insert(self._pick(len(answers) + 1), answers[self._pick(len(answers))])
            else:
                answers = self._shuffled(answers)
        return answers if batch else answers[0]

    def _answer_one(
        self, index: int, item: dict[str, Any], plan: _Plan, head: int | None
    ) -> dict[str, Any]:
        rule = plan.per_call.get(index)
        ident = item.get("id")
        if rule is not None and rule.kind == "rpc_rate_limit":
            return {"jsonrpc": "2.0", "id": ident, "error": RATE_LIMIT_ERROR}
        if rule is not None and rule.kind == "bad_revert":
            return {"jsonrpc": "2.0", "id": ident, "error": BAD_REVERT_ERROR}
        if head is not None:
            answer = _Lagging(self, head - plan.lag, pending=plan.lag_pending).answer(item)
        else:
            answer = self._forward(item)
        call = Call(method=str(item.get("method")), params=list(item.get("params") or []))
        for action in self._actions_after(call.method):
            action(call)
        if rule is not None and rule.kind == "malformed":
            return {"jsonrpc": "2.0", "id": ident}
        return dict(answer)

    def _upstream_head(self) -> int:
        answer = self._forward({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber"})
        return int(answer["result"], 16)


def _applies(rule: Rule, plan: _Plan, batch: bool, size: int) -> bool:
    """Whether ``rule`` can still act on this request, given what the plan already holds."""
    if rule.kind in _HTTP_KINDS:
        return plan.http is None
    if rule.kind in _BATCH_KINDS:
        return batch and size >= 2 and all(r.kind != rule.kind for r in plan.batch)
    if rule.kind == "lag":
        return plan.lag == 0
    return True


class _Lagging:
    """Answers one call as a backend whose head is ``visible`` would."""

    def __init__(self, proxy: RpcProxy, visible: int, *, pending: bool = False) -> None:
        self._proxy = proxy
        self._visible = visible
        self._pending = pending

    def answer(self, item: dict[str, Any]) -> dict[str, Any]:
        method = str(item.get("method"))
        params = list(item.get("params") or [])
        if method == "eth_blockNumber":
            return self._altered(item, hex(self._visible))
        if method == "eth_getBlockByNumber":
            return self._block_by_number(item, params)
        if method == "eth_getLogs":
            return self._logs(item, params)
        answer: dict[str, Any] = self._proxy._forward(self._latest_means_visible(item, params))
        return self._hide_young(method, answer)

    def _altered(self, item: dict[str, Any], result: Any) -> dict[str, Any]:
        self._proxy._count("lag")
        return {"jsonrpc": "2.0", "id": item.get("id"), "result": result}

    def _block_by_number(self, item: dict[str, Any], params: list[Any]) -> dict[str, Any]:
        tag = params[0] if params else "latest"
        if tag in _TAGS:
            moved = {**item, "params": [hex(self._visible), *params[1:]]}
            return self._altered(item, self._proxy._forward(moved).get("result"))
        if tag != "earliest" and int(tag, 16) > self._visible:
            return self._altered(item, None)  # not there yet
        forwarded: dict[str, Any] = self._proxy._forward(item)
        return forwarded

    def _logs(self, item: dict[str, Any], params: list[Any]) -> dict[str, Any]:
        flt = dict(params[0]) if params else {}
        if "blockHash" in flt:
            forwarded: dict[str, Any] = self._proxy._forward(item)
            return forwarded
        first = _number(flt.get("fromBlock", "latest"), self._visible)
        last = _number(flt.get("toBlock", "latest"), self._visible)
        if last <= self._visible and not _names_a_tag(flt):
            forwarded = self._proxy._forward(item)
            return forwarded
        if first > min(last, self._visible):
            return self._altered(item, [])
        clipped = {**flt, "fromBlock": hex(first), "toBlock": hex(min(last, self._visible))}
        moved = {**item, "params": [clipped]}
        return self._altered(item, self._proxy._forward(moved).get("result"))

    def _latest_means_visible(self, item: dict[str, Any], params: list[Any]) -> dict[str, Any]:
        reads_state = item.get("method") in (
            "eth_call",
            "eth_getTransactionCount",
            "eth_getBalance",
        )
        if reads_state and len(params) >= 2 and params[-1] in ("latest", "safe", "finalized"):
            return {**item, "params": [*params[:-1], hex(self._visible)]}
        simulates = item.get("method") in ("eth_call", "eth_estimateGas")
        if self._pending and simulates and len(params) >= 2 and params[-1] == "pending":
            self._proxy._count("lag")
            return {**item, "params": [*params[:-1], hex(self._visible)]}
        return item

    def _hide_young(self, method: str, answer: dict[str, Any]) -> dict[str, Any]:
        result = answer.get("result")
        if method in ("eth_getTransactionReceipt", "eth_getBlockByHash") and isinstance(
            result, dict
        ):
            number = result.get("blockNumber", result.get("number"))
            if isinstance(number, str) and int(number, 16) > self._visible:
                self._proxy._count("lag")
                return {**answer, "result": None}
        return answer


def _names_a_tag(flt: dict[str, Any]) -> bool:
    return any(flt.get(key, "latest") in _TAGS for key in ("fromBlock", "toBlock"))


def _number(value: Any, visible: int) -> int:
    """A block parameter as a number, the tags read against the visible head."""
    if value == "earliest":
        return 0
    if value is None or value in _TAGS:
        return visible
    return int(value, 16)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: RpcProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(format, *args)

    def do_POST(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length))
        batch = isinstance(payload, list)
        items = payload if batch else [payload]
        calls = [
            Call(method=str(i.get("method")), params=list(i.get("params") or [])) for i in items
        ]
        plan = proxy._plan(calls, batch)
        proxy._record(calls, plan, batch)
        if plan.delay_s:
            time.sleep(plan.delay_s)
        try:
            self._respond(proxy, payload, plan)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
            self.close_connection = True

    def _respond(self, proxy: RpcProxy, payload: Any, plan: _Plan) -> None:
        rule = plan.http
        if rule is not None and rule.kind == "rate_limit":
            retry_after = f"{rule.retry_after_s:g}"
            self._send(429, b"Too Many Requests", "text/plain", {"Retry-After": retry_after})
            return
        if rule is not None and rule.kind == "server_error":
            self._send(rule.status, b"upstream unavailable", "text/plain")
            return
        if rule is not None and rule.kind == "html":
            self._send(200, HTML_PAGE, "text/html; charset=utf-8")
            return
        try:
            answer = proxy.answer(payload, plan)
        except requests.RequestException as exc:
            self._send(502, f"upstream failed: {exc}".encode(), "text/plain")
            return
        body = json.dumps(answer).encode()
        if rule is not None and rule.kind == "drop":
            self.close_connection = True  # forwarded, answer lost
            return
        if rule is not None and rule.kind == "reset_mid_body":
            self._send_half(body)
            return
        self._send(200, body, "application/json")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_half(self, body: bytes) -> None:
        half = body[: max(1, len(body) // 2)]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(f"{len(body):x}\r\n".encode() + half)  # a chunk cut short
        self.wfile.flush()
        self.close_connection = True


@contextmanager
def running_proxy(upstream: str, *, seed: int = 0) -> Iterator[RpcProxy]:
    """A started proxy in front of ``upstream``, stopped on exit."""
    proxy = RpcProxy(upstream, seed=seed).start()
    try:
        yield proxy
    finally:
        proxy.stop()
