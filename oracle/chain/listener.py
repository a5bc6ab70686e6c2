"""Follows the coordinator's logs into Postgres: checkpointed, reorg-aware, adaptive ranges.

Each poll:

1. reads the checkpoint (the last block fully processed, with its hash) and the head's
   header;
2. checks that the checkpoint block is still on the chain (at the head, the head itself
   or its parent hash says so, and a head unchanged since the last poll vouches for
   every block below it: a poll that finds nothing new is one call); if another block
   holds its number, walks back through the remembered blocks to the newest one that
   still is, rolls back what the orphaned blocks brought (``rollback_after``) and
   continues from there. A backend that lags (its head below the checkpoint, or a block it does not
   know yet) is not a reorg: the poll waits for it and changes nothing;
3. reads ``eth_getLogs`` from the checkpoint up to ``latest - confirmations`` in block
   ranges that grow while the endpoint accepts them and shrink on any failure (at once
   and again when it calls the range too large, otherwise for the next try; never
   skipping a block), backing off when it rate-limits;
4. checks the range hangs off the checkpoint (its first block's parent hash), that its
   last block is the same before and after the logs were read (the hash commits to every
   block between, so a reorg while reading cannot slip through), and that every log's
   block is the chain's block at that number; then stores the range's events, the
   blocks it touched and the new checkpoint in one transaction. The timestamps of the
   range's consecutive headers (its last two at least) go to the node's ``BlockPace``:
   admission asks for reveal and dispute windows of a few of the chain's blocks.

Only blocks that carried events and the checkpoint block are remembered (the newest
``retained_blocks`` of them), so catching up does not fetch every header; a reorg rolls
back to the newest remembered block still on the chain, which may be a little further
back than the fork point, and the rest is read again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

from hexbytes import HexBytes
from sqlalchemy.orm import Session
from web3 import Web3
from web3.exceptions import BlockNotFound
from web3.types import BlockData, FilterParams, LogReceipt

from oracle.chain.coordinator import CoordinatorBinding
from oracle.chain.polling import backoff_delay, poll_until_stopped
from oracle.chain.rpc import is_log_range_refusal, rpc_errors
from oracle.domain.events import ChainEvent
from oracle.domain.pace import BlockPace
from oracle.errors import LogRangeTooLarge, RpcError, RpcMalformedResponse, RpcRateLimited
from oracle.store.chain_state import (
    BlockRef,
    apply_event,
    delete_checkpoint,
    load_checkpoint,
    prune_blocks,
    recent_blocks,
    record_block,
    rollback_after,
    save_checkpoint,
)
from oracle.store.notify import CHAIN_CHANNEL, notify
from oracle.store.wakes import wake_requests, wake_unsettled_requests

__all__ = ["Listener"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_HEADER_BATCH = 100
_VERIFIED_RANGE = 100
"""Ranges shorter than this (following the head) have every header read, to check each
block's logsBloom against the logs the range answer brought."""


@dataclass(frozen=True, slots=True)
class _Chunk:
    """A verified block range: its events, the blocks to remember, and its last block."""

    events: list[ChainEvent]
    blocks: list[BlockRef]
    end: BlockRef


class _ChainMoved(Exception):
    """The chain reorganised while a range was being read; read it again next poll."""


class _Lagging(Exception):
    """The endpoint has not seen blocks this node already processed: wait for it."""


class Listener:
    """Keeps Postgres in step with the coordinator's events (see the module docstring)."""

    def __init__(
        self,
        *,
        w3: Web3,
        session_factory: Callable[[], Session],
        binding: CoordinatorBinding,
        name: str = "coordinator",
        start_block: int = 0,
        confirmations: int = 0,
        initial_range: int = 500,
        max_range: int = 5000,
        retained_blocks: int = 256,
        progress_interval_s: float = 5.0,
        rate_limit_retries: int = 5,
        poll_budget_s: float = 5.0,
        max_lag_s: float = 30.0,
        on_reorg: Callable[[], None] | None = None,
        pace: BlockPace | None = None,
    ) -> None:
        if not 1 <= initial_range <= max_range:
            raise ValueError(f"need 1 <= initial_range={initial_range} <= max_range={max_range}")
        if retained_blocks < 1 or confirmations < 0 or start_block < 0:
            raise ValueError("retained_blocks must be >= 1; confirmations, start_block >= 0")
        self._w3 = w3
        self._sessions = session_factory
        self._binding = binding
        self.name = name
        self.start_block = start_block
        self.confirmations = confirmations
        self.max_range = max_range
        self.block_range = initial_range
        """The current eth_getLogs range; adapts to what the endpoint accepts."""
        self._retained_blocks = retained_blocks
        self._progress_interval_s = progress_interval_s
        self._rate_limit_retries = rate_limit_retries
        self._poll_budget_s = poll_budget_s
        self._last_progress_log = 0.0
        self.blocks_behind = 0
        """How far the last poll stopped short of ``latest - confirmations``."""
        self._on_reorg = on_reorg
        """Told after a rollback (the sender then looks up its mined transactions again)."""
        self.max_lag_s = max_lag_s
        """How long missing blocks are taken for a lagging endpoint before a reorg."""
        self._lag_since: float | None = None
        self.lagging_polls = 0
        """Polls that found the endpoint behind this node (and waited rather than roll back)."""
        self.pace = pace
        """Told the time between consecutive blocks of every verified range."""
        self._last_read: BlockRef | None = None
        self._still: tuple[bytes, bytes] | None = None
        """(head hash, checkpoint hash) of the last poll that found the checkpoint on the
        chain: while the head is the same block, so is every block below it."""

    # --- polling ------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Catch up to ``latest - confirmations``; returns how many events were applied."""
        return self._poll(deadline=None)

    async def run(self, stop: asyncio.Event, poll_interval: float) -> None:
        """Poll until ``stop`` is set; RPC and database outages are logged and waited out."""
        await poll_until_stopped(
            stop,
            lambda: self._poll(time.monotonic() + self._poll_budget_s),
            poll_interval=poll_interval,
            what="listener poll",
            next_delay=lambda: 0.0 if self.blocks_behind else poll_interval,
        )

    def _poll(self, deadline: float | None) -> int:
        with self._sessions() as session:
            checkpoint = load_checkpoint(session, self.name)
        # the head's header, not just its number: at the head it vouches for the
        # checkpoint (itself, or its parent) without asking for the checkpoint's header
        head = self._header("latest")
        target = head.number - self.confirmations
        applied = 0
        try:
            if checkpoint is not None:
                checkpoint = self._follow_reorg(checkpoint, head)
            self._lag_since = None
            while self._next_block(checkpoint) <= target:
                if deadline is not None and time.monotonic() > deadline:
                    break
                chunk = self._read_range(self._next_block(checkpoint), target, checkpoint, head)
                applied += self._store(chunk)
                checkpoint = chunk.end
                self._log_progress(checkpoint.number, target)
        except _ChainMoved as moved:
            logger.info("the chain moved while reading; again next poll", extra={"why": str(moved)})
        except _Lagging as lagging:
            logger.info("the endpoint lags behind this node; waiting", extra={"why": str(lagging)})
            self.lagging_polls += 1
        self.blocks_behind = max(0, target - self._next_block(checkpoint) + 1)
        return applied

    def _next_block(self, checkpoint: BlockRef | None) -> int:
        return self.start_block if checkpoint is None else checkpoint.number + 1

    # --- reorgs -------------------------------------------------------------------------

    def _follow_reorg(self, checkpoint: BlockRef, head: BlockRef) -> BlockRef | None:
        """The checkpoint if still on the chain; else roll back to the common ancestor."""
        if self._still == (head.hash, checkpoint.hash) or (
            head.number == checkpoint.number + 1 and head.parent_hash == checkpoint.hash
        ):
            return checkpoint  # the head is the block it was, or the checkpoint's child
        canonical = None
        if head.number == checkpoint.number:
            canonical = head
        elif head.number > checkpoint.number:
            canonical = self._header_or_none(checkpoint.number)
        if canonical is None:
            self._wait_if_lagging(
                f"the endpoint's head {head.number} lacks block {checkpoint.number}"
            )
        elif canonical.hash == checkpoint.hash:
            self._still = (head.hash, checkpoint.hash)
            return checkpoint
        ancestor = self._common_ancestor()
        with self._sessions() as session, session.begin():
            if ancestor is None:
                rollback_after(session, self.start_block - 1)
                delete_checkpoint(session, self.name)
            else:
                rollback_after(session, ancestor.number)
                save_checkpoint(session, self.name, ancestor)
            wake_unsettled_requests(session.connection(), "reorg")
            notify(session.connection(), CHAIN_CHANNEL, "reorg")
        self._log_reorg(checkpoint, ancestor)
        if self._on_reorg is not None:
            self._on_reorg()
        return ancestor

    def _common_ancestor(self) -> BlockRef | None:
        """The newest remembered block that is still on the chain, if any is."""
        with self._sessions() as session:
            remembered = recent_blocks(session, self._retained_blocks)
        for block in remembered:
            canonical = self._header_or_none(block.number)
            if canonical is None:  # perhaps a lagging backend: roll back nothing on its word
                self._wait_if_lagging(f"the endpoint lacks block {block.number}")
            elif canonical.hash == block.hash:
                return block
        return None

    def _wait_if_lagging(self, why: str) -> None:
        """Raise ``_Lagging`` while blocks could be missing because the endpoint lags.

        A backend behind a load balancer may answer with an older head, or not know a
        block yet; a reorg to a shorter chain looks the same at first. Missing blocks are
        taken for a lag for ``max_lag_s``, and only then for a reorg.
        """
        now = time.monotonic()
        if self._lag_since is None:
            self._lag_since = now
        if now - self._lag_since < self.max_lag_s:
            raise _Lagging(why)

    def _log_reorg(self, checkpoint: BlockRef, ancestor: BlockRef | None) -> None:
        if ancestor is None:
            logger.error(
                "reorg deeper than every remembered block; re-reading from the start block",
                extra={"checkpoint_block": checkpoint.number, "start_block": self.start_block},
            )
            return
        logger.warning(
            "reorg detected; rolled back to the common ancestor",
            extra={
                "depth": checkpoint.number - ancestor.number,
                "checkpoint_block": checkpoint.number,
                "ancestor_block": ancestor.number,
            },
        )

    # --- reading a range ----------------------------------------------------------------

    def _read_range(
        self, first: int, target: int, checkpoint: BlockRef | None, head: BlockRef
    ) -> _Chunk:
        last = min(target, first + self.block_range - 1)
        before = head if head.number == last else self._headers([last])[last]
        logs, last = self._logs_adaptive(first, last)
        events = sorted(
            self._binding.decode_logs(logs),
            key=lambda e: (e.position.block_number, e.position.log_index),
        )
        # ``before`` is at or past ``last``: unchanged, it vouches for every block up to it
        # the block before ``last`` too: two consecutive headers time the chain's blocks
        wanted = {first, max(first, last - 1), last, before.number}
        wanted |= {e.position.block_number for e in events}
        if last - first < _VERIFIED_RANGE:  # near the head, where backends lag: every block
            wanted |= set(range(first, last + 1))
        headers = self._headers(sorted(wanted))
        if headers[before.number].hash != before.hash:
            raise _ChainMoved(f"block {before.number} changed while the logs were read")
        events = self._with_missed_events(events, headers, first, last)
        _check_links(headers, first, checkpoint, events)
        if self.pace is not None:
            # the checkpoint as read from the chain (with its timestamp) when this process
            # read it: a listener following the head reads a block or two a poll
            timed = self._last_read
            previous = timed if timed and checkpoint and timed.hash == checkpoint.hash else None
            _time_blocks(self.pace, headers, previous, last)
            self._last_read = headers[last]
        remembered = {e.position.block_number for e in events} | {last}
        blocks = [headers[n] for n in sorted(remembered)]
        return _Chunk(events=events, blocks=blocks, end=headers[last])

    def _with_missed_events(
        self, events: list[ChainEvent], headers: dict[int, BlockRef], first: int, last: int
    ) -> list[ChainEvent]:
        """The range's events, with those of blocks the range answer left out.

        A backend behind a load balancer may answer ``eth_getLogs`` from an older head
        while the headers come from a newer one: the last blocks' logs are silently
        missing. A block whose logsBloom says it may hold our events, yet brought none, is
        asked again by its hash (EIP-234), which no backend can answer from another block.
        """
        seen = {e.position.block_number for e in events}
        for number in range(first, last + 1):
            header = headers.get(number)
            if (
                header is None
                or number in seen
                or not self._binding.may_hold_events(header.logs_bloom)
            ):
                continue
            logs = self._rpc("eth_getLogs", functools.partial(self._logs_of_block, header.hash))
            found = self._binding.decode_logs(logs)
            if found:
                logger.warning(
                    "the log range answer missed a block's events; read them by its hash",
                    extra={"block": number, "events": len(found)},
                )
                events = events + found
        return sorted(events, key=lambda e: (e.position.block_number, e.position.log_index))

    def _logs_of_block(self, block_hash: bytes) -> list[LogReceipt]:
        params: FilterParams = {
            "blockHash": HexBytes(block_hash),
            "address": self._binding.address,
            "topics": [self._binding.event_topics],
        }
        return list(self._w3.eth.get_logs(params))

    def _logs_adaptive(self, first: int, target: int) -> tuple[list[LogReceipt], int]:
        """Logs from ``first`` on, as far as the endpoint accepts; returns them and the end.

        A range called too large is halved and asked again at once; any other failure
        (a timeout, an HTTP error, a cut body) halves it for the next try and is raised,
        so that the caller backs off instead of hammering the endpoint.
        """
        while True:
            last = min(target, first + self.block_range - 1)
            try:
                logs = self._get_logs(first, last)
            except LogRangeTooLarge:
                if last == first:
                    raise
                self.block_range = max(1, (last - first + 1) // 2)
                logger.info("log range refused; halved", extra={"block_range": self.block_range})
                continue
            except RpcRateLimited:
                raise
            except RpcError:
                self.block_range = max(1, (last - first + 1) // 2)
                raise
            if last - first + 1 >= self.block_range:
                self.block_range = min(self.max_range, self.block_range + self.block_range // 4 + 1)
            return logs, last

    def _get_logs(self, first: int, last: int) -> list[LogReceipt]:
        params: FilterParams = {
            "fromBlock": first,
            "toBlock": last,
            "address": self._binding.address,
            "topics": [self._binding.event_topics],
        }
        try:
            return self._rpc("eth_getLogs", lambda: list(self._w3.eth.get_logs(params)))
        except RpcError as exc:
            if isinstance(exc, RpcRateLimited) or not is_log_range_refusal(exc.reason):
                raise
            raise LogRangeTooLarge(from_block=first, to_block=last, reason=exc.reason) from exc

    def _headers(self, numbers: Sequence[int]) -> dict[int, BlockRef]:
        """Headers of ``numbers``, fetched in JSON-RPC batches."""
        headers: dict[int, BlockRef] = {}
        for start in range(0, len(numbers), _HEADER_BATCH):
            batch_numbers = numbers[start : start + _HEADER_BATCH]
            try:
                fetch = functools.partial(self._get_blocks, batch_numbers)
                blocks = self._rpc("eth_getBlockByNumber", fetch)
            except BlockNotFound as exc:  # the chain got shorter under us
                raise _ChainMoved(str(exc)) from exc
            for block in blocks:
                if block is None:  # a batch answers "no such block" with null
                    raise _ChainMoved("a block of the range is not on the chain (yet)")
                ref = _block_ref(block)
                headers[ref.number] = ref
            if missing := set(batch_numbers) - headers.keys():
                reason = f"a batch of headers lacks blocks {sorted(missing)}"
                raise RpcMalformedResponse(method="eth_getBlockByNumber", reason=reason)
        return headers

    def _get_blocks(self, numbers: Sequence[int]) -> list[BlockData]:
        with self._w3.batch_requests() as batch:
            for number in numbers:
                batch.add(self._w3.eth.get_block(number))
            return cast(list[BlockData], batch.execute())

    def _header_or_none(self, number: int) -> BlockRef | None:
        try:
            return self._header(number)
        except BlockNotFound:
            return None

    def _header(self, block: int | Literal["latest"]) -> BlockRef:
        return _block_ref(self._rpc("eth_getBlockByNumber", lambda: self._w3.eth.get_block(block)))

    def _rpc(self, method: str, call: Callable[[], _T]) -> _T:
        """One RPC call with its errors translated, waiting out rate limits a few times."""
        for attempt in itertools.count(1):
            try:
                with rpc_errors(method):
                    return call()
            except RpcRateLimited as exc:
                if attempt > self._rate_limit_retries:
                    raise
                delay = backoff_delay(exc, 0.25, attempt)
                logger.info("rate limited; waiting", extra={"method": method, "wait_s": delay})
                time.sleep(delay)
        raise AssertionError("unreachable")

    # --- storing ------------------------------------------------------------------------

    def _store(self, chunk: _Chunk) -> int:
        """Events, remembered blocks and checkpoint of one range, in one transaction."""
        with self._sessions() as session, session.begin():
            for event in chunk.events:
                apply_event(session, event)
            for block in chunk.blocks:
                record_block(session, block)
            save_checkpoint(session, self.name, chunk.end)
            prune_blocks(session, self._retained_blocks)
            if chunk.events:  # the node's lifecycle wakes on commit instead of its next tick
                woken = [event.request_id for event in chunk.events]
                wake_requests(session.connection(), woken, "chain event")
                notify(session.connection(), CHAIN_CHANNEL, str(len(chunk.events)))
        return len(chunk.events)

    def _log_progress(self, block: int, target: int) -> None:
        behind = target - block
        now = time.monotonic()
        if behind <= self.block_range or now - self._last_progress_log < self._progress_interval_s:
            return
        self._last_progress_log = now
        logger.info(
            "catching up with the chain",
            extra={"block": block, "target_block": target, "blocks_behind": behind},
        )


def _check_links(
    headers: dict[int, BlockRef],
    first: int,
    checkpoint: BlockRef | None,
    events: Iterable[ChainEvent],
) -> None:
    """The range hangs off the checkpoint and its logs come from the chain's blocks."""
    if checkpoint is not None and headers[first].parent_hash != checkpoint.hash:
        raise _ChainMoved(f"block {first} no longer follows the checkpoint {checkpoint.number}")
    for event in events:
        position = event.position
        if headers[position.block_number].hash != position.block_hash:
            raise _ChainMoved(f"a log of block {position.block_number} came from another fork")


def _time_blocks(
    pace: BlockPace, headers: dict[int, BlockRef], previous: BlockRef | None, last: int
) -> None:
    """Record the intervals between the verified range's consecutive headers (and
    between ``previous``, the block before the range, and its first)."""
    known = {n: h for n, h in headers.items() if n <= last}
    if previous is not None:
        known.setdefault(previous.number, previous)
    for number, header in sorted(known.items()):
        earlier = known.get(number - 1)
        if earlier is not None and earlier.timestamp is not None and header.timestamp is not None:
            pace.record(earlier.timestamp, header.timestamp)


def _block_ref(block: BlockData) -> BlockRef:
    try:
        return BlockRef(
            number=int(block["number"]),
            hash=bytes(block["hash"]),
            parent_hash=bytes(block["parentHash"]),
            logs_bloom=bytes(block.get("logsBloom", b"")),
            timestamp=int(block["timestamp"]) if "timestamp" in block else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"a block header of the wrong shape: {exc!r}"
        raise RpcMalformedResponse(method="eth_getBlockByNumber", reason=reason) from exc
