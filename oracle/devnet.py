"""``oracle dev``: a whole local network in one command.

anvil (1 s blocks) -> contracts deployed -> N nodes, each its own key and database on an
embedded Postgres -> a sample request through the example consumer -> the phases as they
happen -> the agreed answer, the cluster, the transaction hashes and where the time went.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy.engine import URL
from web3 import Web3

from oracle.chain.anvil import Anvil, dev_private_key, start_anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.deploy import Deployment, deploy_all
from oracle.children import start_child
from oracle.client import RequestOptions, RequestResult, send_request
from oracle.errors import OracleError
from oracle.logs import printable
from oracle.store.db import to_sqlalchemy_url
from oracle.store.embedded import embedded_postgres, ensure_database
from oracle.timings import node_timings

logger = logging.getLogger(__name__)

REVEAL_WINDOW_S = 20
DISPUTE_WINDOW_S = 8
EXPIRY_GRACE_S = 60
"""A request nobody finalized can be expired a minute after its dispute window."""
UNBONDING_PERIOD_S = 3600
"""The contract's shortest: a dev node's stake comes back an hour after it deregisters."""
REGISTRATION_TIMEOUT_S = 180


class DevnetFailed(OracleError):
    """The local network did not come up"""


@dataclass(frozen=True, slots=True, kw_only=True)
class DevOptions:
    nodes: int = 3
    keep_running: bool = False
    prompt: str = "What is the capital of France? Answer in one short sentence."
    data_dir: Path = Path(".oracle/dev")
    database_url: str | None = None


@dataclass(slots=True)
class DevNode:
    index: int
    address: str
    database_url: str
    log_path: Path
    process: subprocess.Popen[bytes]
    args: tuple[str, ...] = ()


def deploy_local(
    anvil: Anvil,
    *,
    reveal_window_s: int = REVEAL_WINDOW_S,
    dispute_window_s: int = DISPUTE_WINDOW_S,
) -> Deployment:
    """The contracts on a local anvil, deployed by its first account, with the short
    reveal and dispute windows (unless given), expiry and unbonding that suit 1 s blocks."""
    return deploy_all(
        anvil.w3,
        sender=Web3.to_checksum_address(anvil.w3.eth.accounts[0]),
        reveal_window_s=reveal_window_s,
        dispute_window_s=dispute_window_s,
        expiry_grace_s=EXPIRY_GRACE_S,
        unbonding_period_s=UNBONDING_PERIOD_S,
    )


def run_devnet(options: DevOptions) -> int:
    options.data_dir.mkdir(parents=True, exist_ok=True)
    say(f"starting anvil and deploying contracts ({options.nodes} nodes)")
    anvil = start_anvil("--block-time", "1", "--accounts", str(options.nodes + 2))
    try:
        deployment = deploy_local(anvil)
        say(
            f"anvil {anvil.url}  coordinator {deployment.coordinator}  "
            f"consumer {deployment.consumer}"
        )
        with _postgres(options) as server_url:
            return _run_network(options, anvil, deployment, server_url)
    finally:
        anvil.stop()


def _run_network(options: DevOptions, anvil: Anvil, deployment: Deployment, server_url: URL) -> int:
    with LocalNetwork(anvil, deployment, server_url, options.data_dir) as network:
        # one LLM thread per core the node gets: oversubscribed cores slow llama.cpp tenfold
        threads = str(max(1, (os.cpu_count() or 1) // options.nodes))
        for i in range(options.nodes):
            network.start_node(i, "--llm-threads", threads)
        network.wait_for_registration()
        say(f"{options.nodes} nodes registered; sending the sample request")
        started = time.monotonic()
        result = send_request(
            RequestOptions(
                prompt=options.prompt,
                rpc_url=anvil.url,
                contract=deployment.coordinator,
                private_key=dev_private_key(0),
                quorum=options.nodes,
                callback=deployment.consumer,
                callback_gas_limit=300_000,
                timeout_s=240,
            ),
            on_event=lambda line: say(f"  {line}"),
        )
        elapsed = time.monotonic() - started
        _report(result, elapsed, list(network.nodes.values()), anvil, deployment)
        if options.keep_running and result.finalized:
            _hold(anvil, deployment)
        say(result.summary())
        return 0 if result.finalized else 2


@contextlib.contextmanager
def _postgres(options: DevOptions) -> Iterator[URL]:
    if options.database_url:
        yield to_sqlalchemy_url(options.database_url)
        return
    say("starting the embedded Postgres")
    with embedded_postgres(options.data_dir / "postgres") as url:
        yield url


class LocalNetwork:
    """Node processes against one chain and one Postgres server, each its own key and database.

    ``oracle dev`` runs one; the end-to-end tests use it to start, kill and restart nodes.
    """

    def __init__(
        self, anvil: Anvil, deployment: Deployment, server_url: URL, data_dir: Path
    ) -> None:
        self.anvil = anvil
        self.deployment = deployment
        self.server_url = server_url
        self.data_dir = data_dir
        self.token = f"{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        self.nodes: dict[int, DevNode] = {}

    def __enter__(self) -> LocalNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def start_node(self, index: int, *extra_args: str) -> DevNode:
        """Start node ``index`` (anvil account index + 1) with its own database."""
        name = f"oracle_dev_{self.token}_node{index}"
        database_url = ensure_database(self.server_url, name).render_as_string(hide_password=False)
        key = dev_private_key(index + 1)
        log_path = self.data_dir / f"node{index}.log"
        command = [
            sys.executable, "-m", "oracle.cli", "--log-prefix", f"node{index}", "run",
            "--rpc", self.anvil.url, "--contract", self.deployment.coordinator,
            "--data-dir", str(self.data_dir / f"node{index}"), *extra_args,
        ]  # fmt: skip
        env = {**os.environ, "ORACLE_PRIVATE_KEY": key, "ORACLE_DATABASE_URL": database_url}
        with log_path.open("ab") as log:  # a node gets SIGTERM if we die: it stops cleanly
            process = start_child(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        address = Web3.to_checksum_address(_address_of(key))
        node = DevNode(
            index=index,
            address=address,
            database_url=database_url,
            log_path=log_path,
            process=process,
            args=extra_args,
        )
        self.nodes[index] = node
        say(f"node{index} {address} pid {process.pid}, log {log_path}")
        return node

    def kill_node(self, index: int) -> None:
        """SIGKILL the node process and its workers, as a crash would."""
        node = self.nodes[index]
        for pid in [*_children(node.process.pid), node.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.process.wait()

    def restart_node(self, index: int) -> DevNode:
        """Start node ``index`` again on its database, with the arguments it had."""
        return self.start_node(index, *self.nodes[index].args)

    def wait_for_registration(self, timeout_s: float = REGISTRATION_TIMEOUT_S) -> None:
        coordinator = CoordinatorBinding(self.anvil.w3, self.deployment.coordinator)
        deadline = time.monotonic() + timeout_s
        waiting = {n.address for n in self.nodes.values()}
        while waiting:
            for node in self.nodes.values():
                if node.process.poll() is not None:
                    code = node.process.returncode
                    raise DevnetFailed(f"node{node.index} exited with {code}; see {node.log_path}")
            waiting = {a for a in waiting if not coordinator.is_registered(a)}
            if time.monotonic() > deadline:
                raise DevnetFailed(
                    f"nodes not registered after {timeout_s:.0f} s: {sorted(waiting)}"
                )
            time.sleep(0.5)

    def stop_all(self) -> None:
        nodes = list(self.nodes.values())
        for node in nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGINT)
        for node in nodes:
            try:
                node.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_node(node.index)


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _address_of(key: str) -> str:
    from eth_account import Account

    return str(Account.from_key(key).address)


def _report(
    result: RequestResult,
    elapsed: float,
    nodes: list[DevNode],
    anvil: Anvil,
    deployment: Deployment,
) -> None:
    if result.finalized:
        consumer = anvil.w3.eth.contract(
            address=Web3.to_checksum_address(deployment.consumer),
            abi=_consumer_abi(),
        )
        stored = consumer.functions.answers(result.request_id).call()
        say(f"agreed answer ({result.model}): {result.output!r}")
        say(f"cluster seats: {list(result.cluster_seats)}; consumer holds: {stored[0]!r}")
    else:
        say(f"no agreed answer: {result.reason}")
    say(f"request tx {result.request_tx}")
    for name, hashes in result.tx_hashes.items():
        say(f"{name} txs: {', '.join(hashes)}")
    say(f"request to outcome: {elapsed:.1f} s")
    for node in nodes:
        say(f"node{node.index}: {node_timings(node.database_url, node.process.pid)}")


def _consumer_abi() -> list[dict[str, object]]:
    from oracle.chain.artifacts import load_artifact

    return load_artifact("ExampleConsumer").abi


def _hold(anvil: Anvil, deployment: Deployment) -> None:
    say("network is up; send more requests with:")
    say(
        f"  ORACLE_PRIVATE_KEY={dev_private_key(0)} oracle request 'your prompt' "
        f"--rpc {anvil.url} --contract {deployment.coordinator} --quorum 1"
    )
    say("press Ctrl-C to stop")
    stopped = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopped:
        time.sleep(0.5)


def say(line: str) -> None:
    """Print a line that may carry a requester's or a node's text (escaped)."""
    print(printable(line), flush=True)
