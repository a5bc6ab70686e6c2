"""Start-up checks: what the operator gave must work before the node builds anything.

Each failure is one ``OracleError`` whose text says what to fix: an RPC endpoint that
does not answer (retried with backoff for ``rpc_wait_s`` first, since a chain node may
still be starting), an address without the coordinator's code, a database that belongs
to another chain or contract.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import cast

import requests
from eth_typing import ABIEvent, ABIFunction
from eth_utils.abi import event_abi_to_log_topic, function_abi_to_4byte_selector
from sqlalchemy import make_url
from sqlalchemy.pool import NullPool
from web3 import Web3

from oracle.chain.artifacts import load_artifact
from oracle.chain.coordinator import CONTRACT_NAME
from oracle.chain.endpoints import redact_url
from oracle.chain.polling import backoff_delay
from oracle.chain.rpc import rpc_errors
from oracle.config import NodeSettings
from oracle.errors import CoordinatorMissing, RpcNotAnswering
from oracle.store import make_engine
from oracle.store.binding import ChainBinding, bind_database

__all__ = ["check_coordinator", "check_node_start", "database_label", "wait_for_chain"]

logger = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5
ATTEMPT_TIMEOUT_S = 10.0
STOP_CHECK_S = 0.1


def check_node_start(
    settings: NodeSettings,
    database_url: str,
    rpc_urls: Sequence[str],
    stopped: Callable[[], bool] = lambda: False,
) -> int | None:
    """All start-up checks, in the order an operator would fix them; returns the chain id.

    None when ``stopped`` said so while waiting for the RPC endpoint.
    """
    answer = wait_for_chain(rpc_urls, settings.rpc_wait_s, stopped)
    if answer is None:
        return None
    w3, chain_id = answer
    check_coordinator(w3, settings.contract)
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        bind_database(
            engine,
            ChainBinding(chain_id=chain_id, coordinator=settings.contract.lower()),
            database=database_label(settings, database_url),
        )
    finally:
        engine.dispose()
    return chain_id


def wait_for_chain(
    urls: Sequence[str], wait_s: float, stopped: Callable[[], bool] = lambda: False
) -> tuple[Web3, int] | None:
    """The first endpoint that tells its chain id, asked in turn with backoff for ``wait_s``.

    None as soon as ``stopped()`` is true (the operator pressed Ctrl-C meanwhile).
    """
    deadline = time.monotonic() + wait_s
    timeout = max(1.0, min(ATTEMPT_TIMEOUT_S, wait_s))
    clients = [
        (url, Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))) for url in urls
    ]
    failures, failure, last_error = 0, Exception(), "no endpoint given"
    while True:
        for _url, w3 in clients:
            try:
                return w3, int(w3.eth.chain_id)
            except Exception as exc:  # any way of not answering: refused, timeout, HTML, junk
                last_error = _short(exc)
                failure = exc
        failures += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RpcNotAnswering(
                urls=tuple(redact_url(url) for url in urls), waited_s=wait_s, last_error=last_error
            )
        delay = min(remaining, backoff_delay(failure, FIRST_RETRY_S, failures - 1))
        logger.warning(
            "RPC endpoint does not answer; retrying",
            extra={
                "urls": ", ".join(redact_url(url) for url in urls),
                "error": last_error,
                "retry_in_s": round(delay, 2),
                "gives_up_in_s": round(remaining, 1),
            },
        )
        until = time.monotonic() + delay
        while time.monotonic() < until:
            if stopped():
                return None
            time.sleep(max(0.0, min(STOP_CHECK_S, until - time.monotonic())))


def check_coordinator(w3: Web3, address: str) -> None:
    """Refuse an address whose code lacks any function or event of this node's coordinator.

    The dispatcher of a Solidity contract holds each function's selector and every
    ``emit`` the event's topic, so an account, another contract, or a coordinator of
    another version (a changed signature) all miss some of them.
    """
    with rpc_errors("eth_getCode"):
        code = bytes(w3.eth.get_code(Web3.to_checksum_address(address)))
    if not code:
        raise CoordinatorMissing(
            address=address, reason="holds no code (an account, not a contract)"
        )
    missing = [name for name, marker in _coordinator_markers() if marker not in code]
    if missing:
        shown = ", ".join(missing[:4]) + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
        raise CoordinatorMissing(
            address=address,
            reason=f"holds a contract without the coordinator's {shown} "
            "(another contract, or a coordinator of another version)",
        )


@cache
def _coordinator_markers() -> tuple[tuple[str, bytes], ...]:
    """(name, bytes its code must contain) for every function and event of the coordinator."""
    markers = []
    for entry in load_artifact(CONTRACT_NAME).abi:
        if entry.get("type") == "function":
            # a selector with leading zero bytes is pushed shorter (PUSH3 and below)
            selector = bytes(function_abi_to_4byte_selector(cast(ABIFunction, entry))).lstrip(b"\0")
            markers.append((f"{entry['name']}()", selector))
        elif entry.get("type") == "event" and not entry.get("anonymous"):
            markers.append(
                (f"event {entry['name']}", bytes(event_abi_to_log_topic(cast(ABIEvent, entry))))
            )
    return tuple(markers)


def database_label(settings: NodeSettings, database_url: str) -> str:
    """How a refusal names the database: its URL without the password, or where it lives."""
    if settings.database_url:
        return f"database {make_url(database_url).render_as_string(hide_password=True)}"
    return f"the embedded database in {settings.data_dir / 'postgres'}"


def _short(exc: BaseException) -> str:
    """The kind of failure, without the transport's detail (which repeats the URL)."""
    kind = type(exc).__name__
    if isinstance(exc, requests.RequestException):
        return kind
    lines = str(exc).splitlines()
    return f"{kind}: {lines[0][:120]}" if lines else kind
