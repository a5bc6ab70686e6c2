"""What the benchmarks share: the machine they ran on, a Postgres server and scratch
databases on it, a one-node network on anvil, and a few small helpers.

Importing this module starts nothing and prints nothing; ``make bench`` runs every
``bench/*.py``, so running it as a script does nothing either.

Every benchmark is started as ``.venv/bin/python bench/<name>.py`` and first puts the
repository root, not ``bench/``, at the head of ``sys.path``, so that ``bench._common``
imports as a package module. No file here is named like a standard-library module
(``tests/unit/test_bench_names.py`` checks it): ``bench/`` is on ``sys.path`` while a
benchmark starts, and such a file would shadow the module for everything it imports.

Every benchmark takes ``--smoke``: tiny sizes through the same code paths, a few seconds
to a minute on two cores, so that ``make test`` (``tests/bench/test_smoke.py``) notices a
benchmark that no longer runs. Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import psutil
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from oracle.engine.sampling import MIN_P, TOP_K, TOP_P
from oracle.store import make_engine, to_sqlalchemy_url, upgrade

if TYPE_CHECKING:
    from llama_cpp import Llama

    from oracle.chain.anvil import Anvil
    from oracle.chain.deploy import Deployment
    from oracle.devnet import DevNode

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM = "SmolLM2-135M-Instruct-Q4_1"
MINILM = "all-MiniLM-L6-v2"

# --- the machine ----------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def print_machine(title: str, packages: Sequence[str], server_url: URL | None = None) -> None:
    """The header every benchmark prints: what ran, on what, with which versions."""
    memory_gib = psutil.virtual_memory().total / 2**30
    print(f"# {title}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {memory_gib:.1f} GiB RAM")
    print(f"system: {platform.platform()}, Python {platform.python_version()}")
    print("versions: " + ", ".join(f"{p} {package_version(p)}" for p in packages))
    if server_url is not None:
        print(f"postgres: {postgres_version(server_url)} ({describe_server(server_url)})")
    print(f"load average at start: {load_average()} (other work on the machine skews figures)")
    print(flush=True)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def postgres_version(server_url: URL) -> str:
    engine = make_engine(server_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(text("SHOW server_version")))
    finally:
        engine.dispose()


def describe_server(server_url: URL) -> str:
    where = f"{server_url.host}:{server_url.port}" if server_url.host else "unix socket"
    source = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded pgserver"
    return f"{source}, {where}"


# --- smoke mode -------------------------------------------------------------------------

SMOKE_HELP = "tiny sizes through the same code paths: checks that the benchmark runs"


def add_smoke_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def apply_smoke(args: argparse.Namespace, **sizes: Any) -> argparse.Namespace:
    """With ``--smoke``, the given sizes replace those parsed (explicit ones included)."""
    if args.smoke:
        for name, value in sizes.items():
            setattr(args, name, value)
        print("smoke mode: tiny sizes, the figures below mean nothing", flush=True)
    return args


# --- Postgres ---------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server() -> Iterator[URL]:
    """The server's maintenance database: ``DATABASE_URL`` if set, else an embedded one."""
    configured = os.environ.get("DATABASE_URL")
    if configured:
        yield to_sqlalchemy_url(configured)
        return
    from oracle.store.embedded import embedded_postgres

    with (
        tempfile.TemporaryDirectory(prefix="oracle-bench-pg-") as data_dir,
        embedded_postgres(Path(data_dir)) as url,
    ):
        yield url


@contextlib.contextmanager
def scratch_database(server_url: URL, *, migrate: bool = True) -> Iterator[URL]:
    """A fresh database (migrated to head unless told otherwise), dropped on exit."""
    name = f"oracle_bench_{uuid.uuid4().hex[:12]}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    url = server_url.set(database=name)
    try:
        if migrate:
            upgrade(url)
        yield url
    finally:
        drop_database(server_url, name)


def drop_database(server_url: URL, name: str) -> None:
    _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(server_url: URL, statement: str) -> None:
    engine = make_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(statement))
    finally:
        engine.dispose()


def libpq_url(url: URL) -> str:
    """``postgresql://...`` as psycopg (not SQLAlchemy) takes it."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


# --- figures ----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), pct))


def ratio(ours: float, baseline: float) -> float:
    return ours / baseline if baseline > 0 else float("nan")


def wait_until(
    check: Callable[[], T | None], *, timeout_s: float, interval_s: float, what: str
) -> T:
    """Call ``check`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = check()
        if outcome:
            return outcome
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f} s")
        time.sleep(interval_s)


# --- models -----------------------------------------------------------------------------

# The sampling settings oracle.engine.llm pins for every request (llama.cpp's defaults).
SAMPLING: dict[str, Any] = {
    "top_k": TOP_K,
    "top_p": TOP_P,
    "min_p": MIN_P,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
}


def plain_llama(n_threads: int) -> Llama:
    """SmolLM2 loaded by llama-cpp-python directly, with the context the node gives it and
    the chat template from its GGUF file (what the node's runner uses too)."""
    from llama_cpp import Llama

    from oracle.engine.models import lookup_llm

    spec = lookup_llm(SMOLLM)
    return Llama(
        model_path=str(spec.resolve()),
        n_ctx=spec.context_tokens,
        n_threads=n_threads,
        chat_format="chat_template.default",
        verbose=False,
    )


# --- a one-node network on anvil ----------------------------------------------------------


class BlockClock:
    """When each block appeared, from anvil's ``newHeads`` subscription (no polling).

    Block timestamps have whole-second resolution; the arrival of the header over the
    websocket is within a few milliseconds of the block being mined.
    """

    def __init__(self, http_url: str) -> None:
        from websockets.sync.client import connect

        self._socket = connect(http_url.replace("http://", "ws://"))
        request = {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
        self._socket.send(json.dumps(request))
        json.loads(self._socket.recv(timeout=10))  # the subscription id
        self.seen: dict[int, float] = {}
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            for message in self._socket:
                arrived = time.time()
                header = json.loads(message)["params"]["result"]
                self.seen.setdefault(int(header["number"], 16), arrived)

    def mined_at(self, block_number: int) -> float:
        """Wall time (epoch seconds) the block was announced; waits briefly if it is new."""
        deadline = time.monotonic() + 5
        while block_number not in self.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.seen[block_number]

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class SentRequest:
    request_id: int
    block_number: int
    prompt: str


@dataclass(slots=True, kw_only=True)
class OneNodeNetwork:
    """anvil (1 s blocks), the coordinator, one ``oracle run`` node and a block clock."""

    anvil: Anvil
    deployment: Deployment
    node: DevNode
    clock: BlockClock
    requester_key: str = field(repr=False)

    def coordinator(self) -> Any:
        from oracle.client import coordinator_contract

        return coordinator_contract(self.anvil.w3, self.deployment.coordinator)

    def node_rows(self, sql: str, **params: Any) -> list[Any]:
        """Rows of a query on the node's own database."""
        engine = make_engine(self.node.database_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params))
        finally:
            engine.dispose()

    def send_requests(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int,
        temperature_milli: int,
        max_time_ms: int,
        one_per_block: bool,
    ) -> list[SentRequest]:
        """Send quorum-1 requests (SmolLM2, MiniLM, no callback) with explicit nonces.

        ``one_per_block=False`` sends them all before waiting for any receipt, so they
        land together; ``True`` waits for each receipt first (one request a block).
        """
        from eth_account import Account

        w3 = self.anvil.w3
        coordinator = self.coordinator()
        account = Account.from_key(self.requester_key)
        nonce = int(w3.eth.get_transaction_count(account.address, "pending"))
        frame = (1, max_time_ms, 3500, 6700, MINILM)
        zero = "0x0000000000000000000000000000000000000000"
        signed = []
        for prompt in prompts:  # signed first, so that sending them takes milliseconds
            call = coordinator.functions.requestInference(
                prompt, [SMOLLM], temperature_milli, max_tokens, frame, zero, 0, 0
            )
            tx = call.build_transaction({"from": account.address, "value": 10**15, "nonce": nonce})
            nonce += 1
            signed.append((prompt, account.sign_transaction(tx).raw_transaction))
        sent: list[SentRequest] = []
        hashes = []
        for prompt, raw in signed:
            tx_hash = w3.eth.send_raw_transaction(raw)
            if one_per_block:
                sent.append(self._sent(prompt, w3.eth.wait_for_transaction_receipt(tx_hash)))
            else:
                hashes.append((prompt, tx_hash))
        for prompt, tx_hash in hashes:
            sent.append(self._sent(prompt, w3.eth.wait_for_transaction_receipt(tx_hash)))
        return sent

    def _sent(self, prompt: str, receipt: Any) -> SentRequest:
        from web3.logs import DISCARD

        if receipt["status"] != 1:
            raise RuntimeError(f"requestInference reverted: {receipt['transactionHash'].hex()}")
        (event,) = (
            self.coordinator().events.InferenceRequested().process_receipt(receipt, errors=DISCARD)
        )
        return SentRequest(
            request_id=int(event["args"]["requestId"]),
            block_number=int(receipt["blockNumber"]),
            prompt=prompt,
        )

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far by each part of the network, and by the
        whole machine (``machine``), to see who shared the cores during a measurement."""
        used = {"LLM worker": 0.0, "embedding worker": 0.0, "node process": 0.0}
        node = psutil.Process(self.node.process.pid)
        for process in [node, *node.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                command = " ".join(process.cmdline())
                part = "node process"
                if "--role llm" in command:
                    part = "LLM worker"
                elif "--role embedding" in command:
                    part = "embedding worker"
                used[part] += _busy(process.cpu_times())
        used["anvil"] = _busy(psutil.Process(self.anvil.process.pid).cpu_times())
        database = _database_name(self.node.database_url)
        used["postgres (node's backends)"] = sum(
            _busy(p.cpu_times()) for p in psutil.process_iter() if _is_backend_of(p, database)
        )
        used["this benchmark"] = _busy(psutil.Process().cpu_times())
        machine = psutil.cpu_times()
        used["machine"] = machine.user + machine.system + machine.nice + machine.softirq
        return used

    def event_blocks(self, name: str, from_block: int) -> dict[int, int]:
        """request id -> block number of the last ``name`` event about it."""
        logs = getattr(self.coordinator().events, name)().get_logs(from_block=from_block)
        return {int(log["args"]["requestId"]): int(log["blockNumber"]) for log in logs}


@contextlib.contextmanager
def one_node_network(server_url: URL, *node_args: str) -> Iterator[OneNodeNetwork]:
    """Start anvil (``--block-time 1``), deploy with ``oracle dev``'s windows, run one node
    on its own database on ``server_url``, wait for its registration; tear all down after.
    """
    from oracle.chain.anvil import dev_private_key, start_anvil
    from oracle.devnet import LocalNetwork, deploy_local

    with tempfile.TemporaryDirectory(prefix="oracle-bench-net-") as data_dir:
        anvil = start_anvil("--block-time", "1", "--accounts", "4")
        local: LocalNetwork | None = None
        clock: BlockClock | None = None
        try:
            deployment = deploy_local(anvil)
            clock = BlockClock(anvil.url)
            local = LocalNetwork(anvil, deployment, server_url, Path(data_dir))
            node = local.start_node(0, *node_args)
            local.wait_for_registration()
            yield OneNodeNetwork(
                anvil=anvil,
                deployment=deployment,
                node=node,
                clock=clock,
                requester_key=dev_private_key(0),
            )
        except BaseException:
            _print_log_tail(Path(data_dir) / "node0.log")
            raise
        finally:
            if local is not None:
                local.stop_all()
                for node in local.nodes.values():
                    drop_database(server_url, _database_name(node.database_url))
            if clock is not None:
                clock.close()
            anvil.stop()


def print_cpu_use(before: dict[str, float], after: dict[str, float], seconds: float) -> None:
    """Average cores each part kept busy between two ``cpu_seconds`` snapshots."""
    shares = [f"{part} {(after[part] - before[part]) / seconds:.2f}" for part in before]
    print(f"  cores busy on average ({os.cpu_count()} in all): " + ", ".join(shares))


def _busy(times: Any) -> float:
    return float(times.user + times.system)


def _is_backend_of(process: psutil.Process, database: str) -> bool:
    try:
        return process.name().startswith("postgres") and database in " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _database_name(database_url: str) -> str:
    return str(to_sqlalchemy_url(database_url).database)


def _print_log_tail(log_path: Path, lines: int = 40) -> None:
    if log_path.is_file():
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last {len(tail)} lines of {log_path}:", *tail, sep="\n", flush=True)
