"""The composition root: the one place that builds a node from its parts and runs it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from eth_account import Account
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from web3 import Web3

from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.endpoints import FailoverProvider
from oracle.chain.listener import Listener
from oracle.chain.polling import backoff_delay, sleep_unless_stopped
from oracle.chain.sender import TxSender
from oracle.config import ConfigError, NodeSettings
from oracle.domain.pace import BlockPace
from oracle.engine.gpus import detect_gpus
from oracle.engine.llm_options import LlmEngineOptions
from oracle.engine.models import DEFAULT_LLMS, lookup_llm
from oracle.engine.supervisor import WorkerSpec, WorkerSupervisor, autoscaling_for
from oracle.errors import OracleError, SenderAlreadyRunning
from oracle.lifecycle.conduct import HONEST, Conduct
from oracle.lifecycle.context import (
    DEFAULT_WINDOW_BLOCKS,
    AcceptedTerms,
    ModelProfile,
    NodeContext,
)
from oracle.lifecycle.driver import advance_requests
from oracle.observability import Readiness, serve_http
from oracle.preflight import check_node_start
from oracle.store import current_revision, head_revision, make_engine, make_session_factory, upgrade
from oracle.store.embedded import embedded_postgres, ensure_database
from oracle.store.maintenance import maintain_queue
from oracle.store.notify import CHAIN_CHANNEL, NotificationWaiter
from oracle.store.outbox import enqueue_tx
from oracle.store.queue import JOBS_DONE_CHANNEL
from oracle.store.retention import prune_old_rows
from oracle.store.workers import missing_models

logger = logging.getLogger(__name__)

RPC_TIMEOUT_S = 30.0
PART_RESTART_S = 1.0
"""The first wait before a failed part starts again; it doubles up to a minute."""
PART_HEALTHY_S = 60.0
"""A part that ran this long before failing starts its backoff afresh."""
FATAL: tuple[type[BaseException], ...] = (SenderAlreadyRunning,)
"""Failures no restart can heal: the node stops and says why."""
NEWS_WAIT_S = 1.0
"""How long one wait for notifications blocks; a stop is noticed within it."""

PRUNE_INTERVAL_S = 600.0


class SchemaBehind(OracleError):
    """The database schema is older than this version of the node; run `oracle db upgrade`"""


@contextmanager
def node_database(settings: NodeSettings) -> Iterator[str]:
    """The operator's database, or an embedded Postgres under the data directory."""
    if settings.database_url:
        yield settings.database_url
        return
    with embedded_postgres(settings.data_dir / "postgres") as server:
        yield ensure_database(server, "oracle").render_as_string(hide_password=False)


def prepare_schema(database_url: str, *, migrate: bool) -> None:
    current, head = current_revision(database_url), head_revision()
    if current == head:
        return
    if not migrate:
        raise SchemaBehind(f"database at {current or 'empty'}, this node needs {head}")
    logger.info("migrating database", extra={"from": current, "to": head})
    upgrade(database_url)


@dataclass(slots=True)
class Node:
    settings: NodeSettings
    engine: Engine
    sessions: sessionmaker[Session]
    binding: CoordinatorBinding
    listener: Listener
    sender: TxSender
    supervisor: WorkerSupervisor
    ctx: NodeContext
    readiness: Readiness = field(default_factory=Readiness)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the chain and serve requests until ``stop`` is set or a part fails."""
        scheduler = AsyncIOScheduler()
        poll = self.settings.poll_interval_s
        ready = self.readiness
        parts: list[Awaitable[None]] = [
            supervised("listener", lambda: self.listener.run(stop, poll), stop, ready),
            supervised("sender", lambda: self.sender.run(stop, poll), stop, ready),
            supervised(
                "workers", lambda: self.supervisor.run(stop, engine=self.engine), stop, ready
            ),
            supervised(
                "lifecycle", lambda: self._register_then_serve(scheduler, stop), stop, ready
            ),
        ]
        if self.settings.http_port is not None:
            port = self.settings.http_port
            parts.append(
                serve_http(
                    self.engine,
                    port,
                    stop,
                    [self.supervisor.metrics],
                    host=self.settings.http_host,
                    readiness=self.readiness,
                )
            )
        try:
            await _run_together(parts, stop)
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=False)
            await asyncio.to_thread(self.supervisor.stop)  # whatever ended the node
            self.engine.dispose()

    async def _register_then_serve(self, scheduler: AsyncIOScheduler, stop: asyncio.Event) -> None:
        await self._wait_for_workers(stop)
        await self._ensure_registered(stop)
        self.readiness.registered = True
        wanted = asyncio.Event()

        async def tick() -> None:  # the time-based steps: deadlines pass without any news
            wanted.set()

        scheduler.add_job(
            tick,
            "interval",
            seconds=self.settings.poll_interval_s,
            max_instances=1,
            coalesce=True,
            id="advance-requests",
            replace_existing=True,  # after a restart of this part, tick its new event
        )
        scheduler.add_job(
            self._maintain,
            "interval",
            seconds=2.0,
            max_instances=1,
            coalesce=True,
            id="maintain-queue",
            replace_existing=True,
        )
        if self.settings.retention_days > 0:
            scheduler.add_job(
                self._prune,
                "interval",
                seconds=PRUNE_INTERVAL_S,
                max_instances=1,
                id="prune",
                replace_existing=True,
            )
        if not scheduler.running:
            scheduler.start()
        logger.info("serving requests", extra={"address": self.ctx.address})
        await asyncio.gather(
            self._advance_when_wanted(wanted, stop), self._wake_on_news(wanted, stop)
        )

    async def _advance_when_wanted(self, wanted: asyncio.Event, stop: asyncio.Event) -> None:
        """One lifecycle pass at a time, again as soon as it is wanted again. A pass looks
        only at the requests with news (wakes) or a check come due, so ticking is cheap."""
        while not stop.is_set():
            await _first_of(wanted, stop)
            if stop.is_set():
                return
            wanted.clear()
            try:
                await asyncio.to_thread(advance_requests, self.sessions, self.ctx, self.binding)
            except OperationalError as exc:  # the database is away; the next tick tries again
                logger.warning("advancing requests failed", extra={"error": str(exc)})
            except Exception:  # one bad pass must not stop the node; each step is idempotent
                logger.exception("advancing requests failed; the next pass tries again")

    async def _wake_on_news(self, wanted: asyncio.Event, stop: asyncio.Event) -> None:
        """A pass as soon as a job finishes or the listener stores events, not at the next tick."""
        url = self.engine.url.render_as_string(hide_password=False)
        channels = [JOBS_DONE_CHANNEL, CHAIN_CHANNEL]
        waiter = await asyncio.to_thread(NotificationWaiter, url, channels)
        try:
            while not stop.is_set():
                if await asyncio.to_thread(waiter.wait, NEWS_WAIT_S):
                    wanted.set()
        finally:
            waiter.close()

    async def _wait_for_workers(self, stop: asyncio.Event) -> None:
        """Take no request before a worker of every served model has loaded it."""
        floors = self.settings.min_workers_per_model
        autoscale = self.settings.autoscale  # autoscaled models at 0 load when jobs come
        wanted = [model for (_role, model), floor in floors.items() if floor or not autoscale]
        self.readiness.wanted_models = tuple(wanted)
        announced: list[str] | None = None
        while not stop.is_set():
            missing = await asyncio.to_thread(self._missing_models, wanted)
            if not missing:
                return
            if missing != announced:
                logger.info("waiting for workers to load models", extra={"models": missing})
                announced = missing
            await asyncio.sleep(self.settings.poll_interval_s)

    def _missing_models(self, wanted: list[str]) -> list[str]:
        with self.engine.connect() as conn:
            return missing_models(conn, wanted)

    async def _ensure_registered(self, stop: asyncio.Event) -> None:
        """Register with the coordinator, staking --stake-wei or, if that is less (0 by
        default), the coordinator's ``minStake``."""
        address = self.ctx.address
        if await asyncio.to_thread(self.binding.is_registered, address):
            return
        min_stake = await asyncio.to_thread(self.binding.min_stake)
        stake = max(self.settings.stake_wei, min_stake)
        with self.sessions.begin() as session:
            enqueue_tx(
                session,
                kind="register",
                request_id=None,
                from_address=address,
                to_address=self.ctx.coordinator,
                data=self.binding.encode_register(),
                value_wei=stake,
            )
        logger.info(
            "registering with the coordinator",
            extra={"stake_wei": stake, "min_stake_wei": min_stake},
        )
        while not stop.is_set() and not await asyncio.to_thread(
            self.binding.is_registered, address
        ):
            await asyncio.sleep(self.settings.poll_interval_s)

    async def _maintain(self) -> None:
        await asyncio.to_thread(maintain_queue, self.engine)

    async def _prune(self) -> None:
        retention = timedelta(days=self.settings.retention_days)
        await asyncio.to_thread(prune_old_rows, self.engine, retention)


async def supervised(
    name: str, start: Callable[[], Awaitable[None]], stop: asyncio.Event, readiness: Readiness
) -> None:
    """Run one part until ``stop``; should it fail, log why, wait, and start it again.

    A part failing is not the node failing: one odd answer of an RPC endpoint or one bad
    row must not stop the service. Only what cannot heal (``FATAL``) stops the node.
    While a part waits to restart, ``/healthz`` says so.
    """
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            await start()
            return
        except FATAL:
            raise
        except Exception as exc:
            if stop.is_set():
                return
            if time.monotonic() - started > PART_HEALTHY_S:
                failures = 0  # it ran well for a while: start the backoff afresh
            failures += 1
            delay = backoff_delay(exc, PART_RESTART_S, failures - 1)
            logger.exception(
                "a part of the node failed; restarting it",
                extra={"part": name, "failures": failures, "restart_in_s": delay},
            )
            readiness.restarting.add(name)
            await sleep_unless_stopped(stop, delay)
            readiness.restarting.discard(name)


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _run_together(parts: list[Awaitable[None]], stop: asyncio.Event) -> None:
    """Every part runs until stop; the first one to fail stops the rest and is re-raised."""
    tasks = [asyncio.ensure_future(p) for p in parts]
    _done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


def build_node(
    settings: NodeSettings, database_url: str, chain_id: int, conduct: Conduct = HONEST
) -> Node:
    """The node's parts, wired; ``chain_id`` is what the start-up checks found; ``conduct``
    is how the node answers (honest, unless an end-to-end test injects a hostile one)."""
    engine = make_engine(database_url, pool_size=10)
    sessions = make_session_factory(engine)
    provider = FailoverProvider(settings.rpc_urls, timeout_s=RPC_TIMEOUT_S, chain_id=chain_id)
    w3 = Web3(provider)
    account = Account.from_key(settings.private_key)
    binding = CoordinatorBinding(w3, settings.contract)
    pace = BlockPace()  # the listener times the blocks; admission holds windows to them
    ctx = NodeContext(
        address=account.address.lower(),
        coordinator=settings.contract.lower(),
        models={m: _profile(m, settings) for m in settings.models},
        embedding_models=settings.embedding_models,
        verify_tolerance_bits=settings.verify_tolerance_bits,
        read_back_margin=settings.read_back_margin or None,
        max_commit_window_s=settings.max_commit_window_s,
        accepts=AcceptedTerms(
            min_reveal_window_s=settings.min_reveal_window_s,
            min_dispute_window_s=settings.min_dispute_window_s,
            max_slash_bps=settings.max_slash_bps,
            min_expiry_grace_s=settings.min_expiry_grace_s,
            window_blocks=DEFAULT_WINDOW_BLOCKS + settings.confirmations,
        ),
        block_pace=pace,
        conduct=conduct,
    )
    sender = TxSender(w3=w3, session_factory=sessions, account=account, chain_id=chain_id)
    return Node(
        settings=settings,
        engine=engine,
        sessions=sessions,
        binding=binding,
        listener=Listener(
            w3=w3,
            session_factory=sessions,
            binding=binding,
            start_block=settings.start_block,
            confirmations=settings.confirmations,
            on_reorg=sender.recheck_soon,
            pace=pace,
        ),
        sender=sender,
        supervisor=worker_supervisor(settings, database_url),
        ctx=ctx,
        readiness=Readiness(
            chain_head=lambda: w3.eth.block_number, confirmations=settings.confirmations
        ),
    )


def worker_supervisor(settings: NodeSettings, database_url: str) -> WorkerSupervisor:
    """Workers scaled with demand inside the operator's budget, or a fixed pool per model;
    those on a GPU placed on the GPUs by their memory (``gpu_budget``)."""
    models = worker_specs(settings)
    gpus = gpu_budget(settings)
    if not settings.autoscale:
        pools = {"llm": settings.llm_workers, "embedding": settings.embedding_workers}
        fixed = [s for s in models for _ in range(pools[s.role])]
        return WorkerSupervisor(database_url, fixed, gpus=gpus)
    scaling = autoscaling_for(
        models,
        min_workers=settings.min_workers_per_model,
        max_workers=settings.worker_budget,
        max_memory_mib=settings.max_memory_mib,
        max_threads=settings.max_threads,
        gpu_slots=settings.gpu_slots,
        gpus=gpus,
        idle_unload_s=settings.idle_unload_s,
    )
    return WorkerSupervisor(database_url, autoscaling=scaling)


def worker_specs(settings: NodeSettings) -> list[WorkerSpec]:
    """How to start a worker of each served model."""
    llm = LlmEngineOptions(
        engine=settings.llm_engine,
        parallel=settings.parallel,
        gpu_layers=settings.gpu_layers,
        slot_tokens=settings.slot_tokens,
    )
    threads = settings.llm_threads
    models = [WorkerSpec(role="llm", model=m, threads=threads, llm=llm) for m in settings.models]
    models += [
        WorkerSpec(role="embedding", model=m, device=settings.embedding_device)
        for m in settings.embedding_models
    ]
    return models


def gpu_budget(
    settings: NodeSettings, detected: Mapping[int, float] | None = None
) -> dict[int, float]:
    """Memory for workers on each GPU they may use (empty when no worker runs on a GPU):
    the GPUs named, else every one nvidia-smi lists (``detected`` stands in for it), each
    with ``gpu_memory_mib``, else its total."""
    if not settings.workers_on_gpu:
        return {}
    found = detect_gpus() if detected is None else dict(detected)
    indices = settings.gpus or tuple(sorted(found))
    if not indices:
        if settings.gpu_slots:
            return {}  # counted in --gpu-slots, not placed
        raise ConfigError(
            "workers on a GPU (--gpu-layers, --embedding-device) but nvidia-smi lists none: "
            "name them with --gpu and --gpu-memory-mib, or count them with --gpu-slots"
        )
    budget = {}
    for index in indices:
        memory = settings.gpu_memory_mib or found.get(index)
        if memory is None:
            raise ConfigError(
                f"GPU {index} is not among those nvidia-smi lists ({sorted(found)}); "
                "give its memory with --gpu-memory-mib"
            )
        budget[index] = memory
    return budget


def _profile(model: str, settings: NodeSettings) -> ModelProfile:
    spec = lookup_llm(model, DEFAULT_LLMS)
    batched = settings.llm_engine == "batched"
    llm = LlmEngineOptions(engine=settings.llm_engine, slot_tokens=settings.slot_tokens)
    return ModelProfile(
        name=model,
        # what one job gets (a batched slot): admission declines a prompt that cannot fit
        context_tokens=llm.job_context_tokens(spec.context_tokens),
        workers=settings.llm_workers,
        price_per_token_wei=settings.price_of(model),
        slots=settings.parallel if batched else 1,
    )


async def run_node(settings: NodeSettings, stop: asyncio.Event, conduct: Conduct = HONEST) -> None:
    """``oracle run``: database, schema, parts, then serve until stopped."""
    with node_database(settings) as database_url:
        await asyncio.to_thread(prepare_schema, database_url, migrate=settings.migrate)
        chain_id = await asyncio.to_thread(
            check_node_start, settings, database_url, settings.rpc_urls, stop.is_set
        )
        if chain_id is None:
            return  # stopped while waiting for the RPC endpoint
        node = await asyncio.to_thread(build_node, settings, database_url, chain_id, conduct)
        await node.run(stop)
