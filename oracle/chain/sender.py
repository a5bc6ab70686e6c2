"""Works the transaction outbox for one key: simulate, sign, persist, broadcast, follow up.

The order that makes a crash harmless: a pending row is simulated, signed with the next
local nonce, and stored as ``sent`` (nonce, gas, fees, the signed hash) in a committed
transaction *before* it is broadcast. After a crash the row is found ``sent``; if the
chain has neither a receipt nor the transaction, it is signed again from the stored
fields (EIP-1559 signatures are deterministic, so the same bytes and hash) and
broadcast: nothing is lost and nothing is sent twice.

Simulation (``eth_call`` from the key's address against the pending block) sorts
reverts into three kinds: the work is already done (the row is ``skipped``), the
contract says "not yet" (the row waits, with backoff), or anything else (``failed``,
with the decoded custom error). A revert that only says the endpoint has not seen what
the decision rests on (an unknown request, a commit or reveal it lacks) counts as "not
yet" while that endpoint's head is behind the listener's checkpoint. A transaction
that is not mined within ``bump_after_s`` is replaced at the same nonce with fees raised
by at least ``fee_bump_percent``; every hash it was sent under is kept, since any may be
mined.

One sender per key: nonces are allocated here, resynced from the chain's ``pending``
count (and the outbox's own highest nonce) at start and after nonce errors; ``run``
holds a Postgres advisory lock on the key so a second node process on the same
database and key refuses to start. The lock lives as long as its connection: before
each round of broadcasts the sender checks that connection (a fence), and after a
Postgres restart takes the lock again or stops (``SenderAlreadyRunning``).

What the chain may undo or refuse:

- **Reorgs.** Every ``recheck_interval_s`` the rows confirmed in the last
  ``recheck_blocks`` blocks are looked up again as they age: once when they are 1, 2, 4,
  8, ... blocks deep (a reorg deeper than twice the last look is what would go unseen
  for longer; seven looks a row over 64 blocks, where a look every 5 s was 150 on a
  chain of 12 s blocks), and all of them at once after ``recheck_soon``, which the
  listener calls on a reorg. One whose receipt is gone goes back to ``sent`` and is
  broadcast again with the same nonce and bytes, or, if its nonce went to another
  transaction or the reorg orphaned its request, re-decided from ``pending``. (The
  contract itself refuses a commit made for another request under the same id,
  ``StaleRequest``: a copy of the old transaction that some mempool still mines fails
  instead of taking a seat.) One answer that lacks a transaction proves
  nothing (a backend may lag behind its block): a row counts as lost only after the
  chain has not known it for ``lost_after_s``. A nonce that nothing holds any more (a hole
  below transactions already sent) is filled with a zero-value transfer to self.
- **Following up.** A receipt can only appear with a new block: a sent row is looked
  up (receipt, else whether the chain knows it; the nonce hole check with it) when the
  listener has taken in a block since its last look, or ``lookup_every_s`` after it
  (a listener that stalls must not stall the follow-up), not on every poll: on a chain
  of 12 s blocks and 0.5 s polls that was two dozen lookups a block for each row.
- **Fees.** A slow transaction is bumped at most ``max_bumps`` times (and never above
  ``max_fee_gwei_cap``); still not mined ``give_up_after_s`` after its last bump, the row
  is failed with the reason.
- **Refused broadcasts.** "Already known" is success; "nonce too low" resyncs;
  "underpriced" bumps at once; "insufficient funds" waits with a growing delay (logged
  as an error: the operator must fund the key); a lasting refusal (a fee over the node's
  cap, gas limits) fails the row and frees its nonce. Anything else is retried.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from eth_account.datastructures import SignedTransaction
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound
from web3.types import TxParams, TxReceipt, Wei

from oracle.chain.artifacts import UndecodableRevert, decode_revert, reason_name
from oracle.chain.polling import poll_until_stopped
from oracle.chain.rpc import rpc_errors
from oracle.domain.retry import backoff_s
from oracle.errors import (
    RpcError,
    RpcMalformedResponse,
    RpcRateLimited,
    RpcUnavailable,
    SenderAlreadyRunning,
)
from oracle.store.chain_state import highest_checkpoint
from oracle.store.models import OutgoingTx
from oracle.store.outbox import (
    defer_tx,
    highest_nonce,
    in_flight_txs,
    mark_confirmed,
    mark_failed,
    mark_refused,
    mark_replaced,
    mark_sent,
    mark_skipped,
    mark_unmined,
    nonce_held,
    note_tx_error,
    recent_confirmed_txs,
    release_nonce,
    request_orphaned,
    sendable_txs,
)

__all__ = [
    "ALREADY_DONE_ERRORS",
    "NOT_SEEN_YET_ERRORS",
    "NOT_YET_ERRORS",
    "STALE_ERRORS",
    "PreparedTx",
    "TxSender",
]

logger = logging.getLogger(__name__)

ALREADY_DONE_ERRORS = frozenset(
    {"AlreadyCommitted", "AlreadyRevealed", "AlreadyDisputed", "RequestClosed", "AlreadyRegistered"}
)
"""Reverts meaning someone (perhaps this node, before a crash) already did the work."""
NOT_YET_ERRORS = frozenset({"RevealNotOpen", "FinalizeTooEarly", "NotExpired"})
"""Reverts meaning the contract will accept the call later."""
NOT_SEEN_YET_ERRORS = frozenset({"UnknownRequest", "NotCommitted", "NotARevealer"})
"""Reverts meaning the simulating endpoint lacks what the decision rests on (the request,
our commit, the accused's reveal): "not yet" while its head is behind the node's view,
final once it has caught up (``TxSender._lags_behind_decisions``)."""
STALE_ERRORS = frozenset({"StaleRequest"})
"""Reverts meaning the row was decided for a request the chain no longer holds under its
id (a reorg replaced it): it can never do its work, and fails for good."""

_V = TypeVar("_V")
_GWEI = 10**9
_ALREADY_KNOWN = ("already known", "known transaction", "alreadyknown", "already imported")
_NONCE_TOO_LOW = ("nonce too low", "noncetoolow", "nonce is too low", "invalid nonce")
_UNDERPRICED = ("underpriced", "fee too low", "less than block base fee", "feecap too low")
_NO_FUNDS = ("insufficient funds", "insufficientfunds")
_REFUSED_FOR_GOOD = (
    "exceeds the configured cap",
    "exceeds configured cap",
    "intrinsic gas too low",
    "exceeds block gas limit",
    "gas limit reached",
    "oversized data",
    "invalid sender",
    "not supported",
)
_FILLER_GAS = 21_000
REPLAY_SUCCEEDS = "reverted on chain; replaying it afterwards succeeds"
MAX_EARLY_REVERTS = 3
"""Sends of one row that may revert for coming too early before it fails for good."""


@dataclass(frozen=True, slots=True)
class PreparedTx:
    """A row stored as ``sent`` whose signed bytes still have to reach the chain."""

    tx_id: int
    raw: bytes
    log: dict[str, Any]
    replacing: bool = False
    """A fee bump of a transaction already sent (its earlier version may still be mined)."""


@dataclass(frozen=True, slots=True)
class _Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


class TxSender:
    """The one sender of ``account``'s transactions (see the module docstring)."""

    def __init__(
        self,
        *,
        w3: Web3,
        session_factory: Callable[[], Session],
        account: LocalAccount,
        chain_id: int,
        bump_after_s: float = 15,
        fee_bump_percent: int = 15,
        max_fee_gwei_cap: float | None = None,
        gas_margin_percent: int = 20,
        not_yet_retry_s: float = 2.0,
        max_bumps: int = 8,
        give_up_after_s: float = 600,
        recheck_blocks: int = 64,
        recheck_interval_s: float = 5.0,
        lost_after_s: float = 6.0,
        lookup_every_s: float = 3.0,
    ) -> None:
        if fee_bump_percent < 10:
            raise ValueError("fee_bump_percent below 10 is refused as an underpriced replacement")
        self._w3 = w3
        self._sessions = session_factory
        self._account = account
        self._chain_id = chain_id
        self.address = account.address.lower()
        self._bump_after = timedelta(seconds=bump_after_s)
        self._bump_percent = fee_bump_percent
        self._fee_cap = None if max_fee_gwei_cap is None else int(max_fee_gwei_cap * _GWEI)
        self._gas_margin_percent = gas_margin_percent
        self._not_yet_retry_s = not_yet_retry_s
        self._max_bumps = max_bumps
        self._give_up_after = timedelta(seconds=give_up_after_s)
        self._recheck_blocks = recheck_blocks
        self._recheck_interval_s = recheck_interval_s
        self._next_recheck = 0.0
        self._rechecked: dict[int, int] = {}
        """Confirmed rows: the depth class (``bit_length`` of blocks since their block)
        of their last look that found the receipt."""
        self._lost_after_s = lost_after_s
        self._lookup_every_s = lookup_every_s
        self._looked_up: dict[int, tuple[int | None, float]] = {}
        """Sent rows: the listener's block and the monotonic time of their last look."""
        self._missing_since: dict[int, float] = {}
        """Rows the chain did not know at a look: when that was first seen. One answer from
        a lagging or flaky backend proves nothing; a row is lost after ``lost_after_s`` of
        such answers, never sooner."""
        self._next_nonce: int | None = None
        self._lock_connection: Connection | None = None
        self._locking = False
        """True while ``run`` holds (or must take back) the key's lock."""
        self._bumps_refused: set[int] = set()
        """Rows whose fee bump the node refused for good: their current version stands."""
        self._bump_now: set[int] = set()
        """Rows whose broadcast was refused as underpriced: replaced on the next check."""
        self._hole_seen: tuple[int, float] | None = None
        """A nonce no row holds below the sent ones, and when it was first seen."""
        self._rebroadcast_after: dict[int, tuple[float, int]] = {}
        """Rows refused for lack of funds or by a rate limit: (monotonic time of the next
        try, refusals for lack of funds)."""
        self._check_turns = _Turns()
        self._recheck_turns = _Turns()

    # --- the loop -----------------------------------------------------------------------

    def sync_once(self) -> None:
        """Send the pending rows (oldest first), then follow up on the sent ones."""
        self._fence()
        self._prepare_ready(self.broadcast)
        self.check_sent()
        if time.monotonic() >= self._next_recheck:
            self.check_mined()

    def recheck_soon(self) -> None:
        """Look up the recently mined rows again on the next sync (the chain reorganised)."""
        self._next_recheck = 0.0
        self._rechecked.clear()

    async def run(self, stop: asyncio.Event, poll_interval: float) -> None:
        """Sync until ``stop`` is set, holding this key's lock; outages are waited out."""
        self._lock_connection = await asyncio.to_thread(self._lock_key)
        self._locking = True
        try:
            await poll_until_stopped(
                stop, self.sync_once, poll_interval=poll_interval, what="sender sync"
            )
        finally:
            self._locking = False
            lock, self._lock_connection = self._lock_connection, None
            if lock is not None:
                await asyncio.to_thread(_unlock, lock, _lock_id(self.address))

    def _lock_key(self) -> Connection:
        with self._sessions() as session:
            engine = session.get_bind()
        assert isinstance(engine, Engine)
        connection = engine.connect()
        locked = connection.scalar(select(func.pg_try_advisory_lock(_lock_id(self.address))))
        connection.commit()  # the lock is the connection's, not the transaction's
        if not locked:
            connection.close()
            raise SenderAlreadyRunning(address=self.address)
        return connection

    def _fence(self) -> None:
        """Before broadcasting: this process still holds the key's lock.

        A session-level advisory lock dies with its connection (a Postgres restart, a
        network cut); another node process may have taken it since. The connection is
        checked; if it is gone the lock is taken again, or ``SenderAlreadyRunning`` stops
        this sender. While the database is away, this raises and nothing is broadcast.
        """
        if not self._locking:
            return  # not running under ``run`` (a single sync, as in tests)
        connection = self._lock_connection
        if connection is not None:
            try:
                connection.scalar(select(1))
                connection.commit()
                return
            except DBAPIError:
                logger.warning("the sender's lock connection is gone; taking the lock again")
                self._lock_connection = None
                connection.invalidate()
                connection.close()
        self._lock_connection = self._lock_key()  # raises while the database is away
        self._next_nonce = None  # another process may have sent meanwhile
        logger.info("the sender holds its key's lock again", extra={"address": self.address})

    # --- pending rows -------------------------------------------------------------------

    def prepare_pending(self) -> list[PreparedTx]:
        """Simulate, sign and store as ``sent`` every ready pending row; broadcast nothing."""
        prepared: list[PreparedTx] = []
        self._prepare_ready(prepared.append)
        return prepared

    def _prepare_ready(self, then: Callable[[PreparedTx], object]) -> None:
        """Prepare the ready pending rows, oldest first, handing each to ``then`` as soon as
        it is stored as ``sent``.

        Each row is broadcast before the next is simulated: a rate limit that ends the pass
        part-way leaves the rows before it on their way, where a pass that broadcast only at
        its end left them signed and unsent until ``check_sent`` found them missing for
        ``lost_after_s``.
        """
        if self._next_nonce is None:
            self._resync_nonce()
        with self._sessions() as session:
            ready = sendable_txs(session, self.address, _now())
        poll_fees = functools.cache(self._fees)  # asked once a poll, and only if one is signed

        def prepare(tx: OutgoingTx) -> None:
            one = self._prepare(tx, poll_fees)
            if one is not None:
                then(one)

        _each_transaction(ready, prepare, "preparing")

    def _prepare(self, tx: OutgoingTx, fees_now: Callable[[], _Fees]) -> PreparedTx | None:
        try:
            gas = self._simulate(self._call_params(tx))
        except RpcUnavailable:
            raise
        except RpcError as exc:  # refused, not reverted ("insufficient funds for gas", ...)
            self._defer(tx, f"simulation refused: {exc.reason}")
            return None
        if isinstance(gas, str):
            self._handle_revert(tx, gas)
            return None
        nonce = self._allocate_nonce()
        fees = fees_now()
        signed = self._sign(tx, nonce=nonce, gas=gas, fees=fees)
        with self._sessions() as session, session.begin():
            mark_sent(
                session,
                tx.id,
                nonce=nonce,
                tx_hash=bytes(signed.hash),
                gas_limit=gas,
                max_fee_per_gas=fees.max_fee_per_gas,
                max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
            )
        self._next_nonce = nonce + 1
        log = _fields(tx, tx_hash=bytes(signed.hash), nonce=nonce)
        return PreparedTx(tx_id=tx.id, raw=bytes(signed.raw_transaction), log=log)

    def _not_seen_yet(self, error: str) -> bool:
        """A revert named ``error`` that only says the simulating endpoint has not caught
        up with what the node decided on (``NOT_SEEN_YET_ERRORS``)."""
        return error in NOT_SEEN_YET_ERRORS and self._lags_behind_decisions()

    def _lags_behind_decisions(self) -> bool:
        """Whether the endpoint that simulates is behind the block the node decided on.

        The lifecycle decides on what the listener has seen, so every row rests on a block
        at or below the highest checkpoint. An endpoint whose head is below it (a lagging
        backend) may answer "unknown request", "not committed" or "not a revealer" about
        things the chain holds: such an answer means "not yet", never "never". With no
        checkpoint (no listener has run) the answer is taken as it is.
        """
        with self._sessions() as session:
            decided_on = highest_checkpoint(session)
        if decided_on is None:
            return False
        with rpc_errors("eth_blockNumber"):
            head = self._w3.eth.block_number
        return head < decided_on

    def _simulate(self, params: TxParams) -> int | str:
        """Run ``params`` on the pending block: the gas limit to sign, or the decoded revert.

        The gas limit is the estimate plus ``gas_margin_percent``.
        """
        try:
            with rpc_errors("eth_call"):
                self._w3.eth.call(params, "pending")
            with rpc_errors("eth_estimateGas"):
                estimate = self._w3.eth.estimate_gas(params, "pending")
        except ContractLogicError as exc:
            return _revert_reason(exc)
        return estimate * (100 + self._gas_margin_percent) // 100

    def _defer(
        self,
        tx: OutgoingTx,
        reason: str,
        message: str = "not sent yet",
        level: int = logging.WARNING,
    ) -> None:
        """Still pending; asked again after a delay that grows with its attempts."""
        delay = backoff_s(tx.attempts + 1, self._not_yet_retry_s, 60.0)
        with self._sessions() as session, session.begin():
            defer_tx(session, tx.id, until=_now() + timedelta(seconds=delay), reason=reason)
        logger.log(level, message, extra={**_fields(tx, reason=reason), "wait_s": delay})

    def _handle_revert(self, tx: OutgoingTx, reason: str) -> None:
        name = reason_name(reason)
        if name in NOT_YET_ERRORS:
            self._defer(tx, reason, "not sent yet: the contract says wait", logging.INFO)
            return
        if self._not_seen_yet(name):
            self._defer(tx, reason, "not sent yet: the endpoint lags behind the node's view")
            return
        log = _fields(tx, reason=reason)
        with self._sessions() as session, session.begin():
            if name in ALREADY_DONE_ERRORS:
                mark_skipped(session, tx.id, reason=reason)
                logger.info("not sent: already done", extra=log)
            elif name in STALE_ERRORS:
                mark_failed(session, tx.id, reason=reason)
                logger.warning("not sent: made for a request a reorg replaced", extra=log)
            else:
                mark_failed(session, tx.id, reason=reason)
                logger.error("not sent: the call would revert", extra=log)

    # --- broadcasting -------------------------------------------------------------------

    def broadcast(self, prepared: PreparedTx) -> None:
        """Hand signed bytes to the node; a refusal is logged and settled by ``check_sent``."""
        try:
            with rpc_errors("eth_sendRawTransaction"):
                self._w3.eth.send_raw_transaction(prepared.raw)
        except RpcError as exc:
            self._broadcast_refused(prepared, exc)
            return
        logger.info("transaction sent", extra=prepared.log)

    def _broadcast_refused(self, prepared: PreparedTx, exc: RpcError) -> None:
        reason = exc.reason.lower()
        if any(marker in reason for marker in _ALREADY_KNOWN):
            return
        log = {**prepared.log, "error": exc.reason}
        if not isinstance(exc, RpcUnavailable) and any(m in reason for m in _REFUSED_FOR_GOOD):
            if prepared.replacing:  # the earlier version stands; bumping stops here
                logger.error("a fee bump was refused; keeping the earlier version", extra=log)
                self._bumps_refused.add(prepared.tx_id)
                return
            with self._sessions() as session, session.begin():
                mark_refused(session, prepared.tx_id, reason=f"broadcast refused: {exc.reason}")
            self._forget(prepared.tx_id)
            self._next_nonce = None  # its nonce was never used
            logger.error("broadcast refused for good; the transaction failed", extra=log)
            return
        if any(marker in reason for marker in _NONCE_TOO_LOW):
            self._next_nonce = None  # resync; check_sent settles the row
        elif any(marker in reason for marker in _UNDERPRICED):
            self._bump_now.add(prepared.tx_id)
        elif any(marker in reason for marker in _NO_FUNDS):
            self._wait_for_funds(prepared, log)
        elif isinstance(exc, RpcRateLimited):
            # refused unread, so no pool holds it: sent again once the endpoint's wait is
            # over, without the lost_after_s a broadcast whose answer was lost waits out
            now = time.monotonic()
            self._missing_since[prepared.tx_id] = now - self._lost_after_s
            self._rebroadcast_after[prepared.tx_id] = (now + (exc.retry_after_s or 1.0), 0)
        with self._sessions() as session, session.begin():
            note_tx_error(session, prepared.tx_id, reason=f"broadcast refused: {exc.reason}")
        logger.warning("broadcast refused", extra=log)

    def _wait_for_funds(self, prepared: PreparedTx, log: dict[str, Any]) -> None:
        _at, refusals = self._rebroadcast_after.get(prepared.tx_id, (0.0, 0))
        delay = backoff_s(refusals + 1, 5.0, 300.0)
        self._rebroadcast_after[prepared.tx_id] = (time.monotonic() + delay, refusals + 1)
        logger.error(
            "the key has too little ETH for this transaction; fund it",
            extra={**log, "address": self.address, "retry_in_s": delay},
        )

    # --- sent rows ----------------------------------------------------------------------

    def check_sent(self) -> None:
        """Receipts settle rows; unknown ones are broadcast again; slow ones get higher fees;
        a nonce hole below them is filled. Only rows due a look (``_due``)."""
        with self._sessions() as session:
            sent = in_flight_txs(session, self.address)
            block = highest_checkpoint(session)
        self._looked_up = {tx.id: self._looked_up[tx.id] for tx in sent if tx.id in self._looked_up}
        due = [tx for tx in sent if self._due(tx.id, block)]
        if due:  # first: a hole stalls every row above it, whatever their checks meet
            try:
                self._fill_nonce_hole(min(_stored(tx.nonce) for tx in sent))
            except RpcRateLimited:
                raise
            except RpcUnavailable as exc:
                logger.info("looking for a nonce hole failed", extra={"error": str(exc)})

        def check(tx: OutgoingTx) -> None:
            self._check_one(tx)
            self._looked_up[tx.id] = (block, time.monotonic())

        _each_transaction(due, check, "checking", self._check_turns)

    def _due(self, tx_id: int, block: int | None) -> bool:
        """A row is looked up once a block the listener took in (every poll while no
        listener has run), at the latest ``lookup_every_s`` after its last look, and at
        once when its broadcast was refused as underpriced."""
        last = self._looked_up.get(tx_id)
        if block is None or last is None or tx_id in self._bump_now:
            return True
        seen_block, at = last
        return seen_block != block or time.monotonic() - at >= self._lookup_every_s

    def _check_one(self, tx: OutgoingTx) -> None:
        receipt = self._receipt(tx)
        if receipt is not None:
            self._forget(tx.id)
            self._settle(tx, receipt)
        elif not self._known(tx):
            waiting = self._rebroadcast_after.get(tx.id)
            if self._missing_for_long(tx.id) and (
                waiting is None or time.monotonic() >= waiting[0]
            ):
                self._resend_or_release(tx)
        else:
            self._missing_since.pop(tx.id, None)
            if tx.id in self._bump_now or (
                tx.sent_at is not None and _now() - tx.sent_at >= self._bump_after
            ):
                self._bump_now.discard(tx.id)
                self._bump(tx)

    def _missing_for_long(self, tx_id: int) -> bool:
        """The chain has not known this row for ``lost_after_s``: the first such answer
        starts the clock."""
        now = time.monotonic()
        return now - self._missing_since.setdefault(tx_id, now) >= self._lost_after_s

    def _forget(self, tx_id: int) -> None:
        self._bump_now.discard(tx_id)
        self._bumps_refused.discard(tx_id)
        self._rebroadcast_after.pop(tx_id, None)
        self._missing_since.pop(tx_id, None)

    def check_mined(self) -> None:
        """Rows confirmed in the last ``recheck_blocks`` blocks whose receipt the chain no
        longer has (a reorg dropped them) go back to ``sent``, to be broadcast again.

        A receipt missing from one answer may be a backend that lags behind the block; the
        row is looked up again within a second, and goes back only once it has been
        missing for ``lost_after_s``.
        """
        self._next_recheck = time.monotonic() + self._recheck_interval_s
        with self._sessions() as session:
            head = highest_checkpoint(session)  # the listener's: no call (a little behind)
        if head is None:
            with rpc_errors("eth_blockNumber"):
                head = self._w3.eth.block_number
        with self._sessions() as session:
            mined = recent_confirmed_txs(session, self.address, head - self._recheck_blocks)
        self._rechecked = {
            tx.id: self._rechecked[tx.id] for tx in mined if tx.id in self._rechecked
        }
        due = [tx for tx in mined if self._rechecked.get(tx.id) != _depth_class(tx, head)]
        _each_transaction(
            due, functools.partial(self._recheck_one, head=head), "rechecking", self._recheck_turns
        )

    def _recheck_one(self, tx: OutgoingTx, head: int) -> None:
        if self._receipt(tx) is not None:
            self._missing_since.pop(tx.id, None)
            self._rechecked[tx.id] = _depth_class(tx, head)
            return
        if not self._missing_for_long(tx.id):
            self._next_recheck = min(self._next_recheck, time.monotonic() + 1.0)
            return
        # (its missing-since time stays: back in ``sent``, it is sent again at once)
        reason = f"mined in block {tx.receipt_block}, which left the chain"
        with self._sessions() as session, session.begin():
            mark_unmined(session, tx.id, reason=reason)
        self._next_nonce = None
        logger.warning(
            "a mined transaction left the chain (reorg); sending it again",
            extra=_fields(tx, block=tx.receipt_block),
        )

    def _fill_nonce_hole(self, lowest_sent: int) -> None:
        """A nonce below every sent row that nothing will ever use stalls them all: send a
        zero-value transfer to self with it. (A hole appears when the row that held it is
        released: its lost transaction was done by someone else meanwhile, or a reorg took
        it and it is decided again.)

        The node's pool cannot be asked whether it holds that nonce (a ``pending`` count
        may include the stalled transactions above the hole), so the hole must stay the
        same for ``lost_after_s`` first. A filler that meets a transaction in the pool is
        refused or replaces one whose row was released: either way the nonce is used.
        """
        with rpc_errors("eth_getTransactionCount"):
            mined = self._w3.eth.get_transaction_count(self._account.address, "latest")
        if lowest_sent <= mined:
            self._hole_seen = None
            return
        with self._sessions() as session:
            held = nonce_held(session, self.address, mined)
        if held:  # a row still counts on it: a reorg dropped it, and check_mined will see
            self.recheck_soon()
            return
        now = time.monotonic()
        if self._hole_seen is None or self._hole_seen[0] != mined:
            self._hole_seen = (mined, now)
        if now - self._hole_seen[1] < self._lost_after_s:
            return
        self._hole_seen = None
        fees = self._fees()
        signed = self._account.sign_transaction(
            {
                "type": 2,
                "chainId": self._chain_id,
                "nonce": mined,
                "to": self._account.address,
                "value": 0,
                "gas": _FILLER_GAS,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            }
        )
        log = {"address": self.address, "nonce": mined, "tx_hash": _hex(bytes(signed.hash))}
        logger.warning("filling a nonce hole with a transfer to self", extra=log)
        try:
            with rpc_errors("eth_sendRawTransaction"):
                self._w3.eth.send_raw_transaction(signed.raw_transaction)
        except RpcError as exc:  # seen again on the next check if it persists
            logger.warning("the nonce filler was refused", extra={**log, "error": exc.reason})

    def _receipt(self, tx: OutgoingTx) -> TxReceipt | None:
        for tx_hash in [_stored(tx.tx_hash), *tx.replaced_tx_hashes]:
            try:
                with rpc_errors("eth_getTransactionReceipt"):
                    return self._w3.eth.get_transaction_receipt(HexBytes(tx_hash))
            except TransactionNotFound:
                continue
        return None

    def _known(self, tx: OutgoingTx) -> bool:
        """The chain knows some version of the row (a refused fee bump leaves the earlier
        one in the pool)."""
        for tx_hash in [_stored(tx.tx_hash), *tx.replaced_tx_hashes]:
            try:
                with rpc_errors("eth_getTransactionByHash"):
                    self._w3.eth.get_transaction(HexBytes(tx_hash))
            except TransactionNotFound:
                continue
            return True
        return False

    def _settle(self, tx: OutgoingTx, receipt: TxReceipt) -> None:
        mined_hash = bytes(receipt["transactionHash"])
        block = int(receipt["blockNumber"])
        log = _fields(tx, tx_hash=mined_hash, block=block)
        if receipt["status"] == 1:
            with self._sessions() as session, session.begin():
                mark_confirmed(session, tx.id, tx_hash=mined_hash, receipt_block=block)
            logger.info("transaction confirmed", extra=log)
            return
        reason = self._failure_reason(tx, receipt)
        if _came_too_early(reason) and tx.attempts <= MAX_EARLY_REVERTS:
            # Mined before what it needed (a reorg re-ordered the work): send it again.
            with self._sessions() as session, session.begin():
                release_nonce(session, tx.id, reason=f"reverted on chain too early: {reason}")
            self._next_nonce = None
            logger.warning("transaction reverted too early; will send again", extra=log)
            return
        with self._sessions() as session, session.begin():
            mark_failed(session, tx.id, reason=reason, tx_hash=mined_hash, receipt_block=block)
        logger.error("transaction reverted on chain", extra={**log, "reason": reason})

    def _failure_reason(self, tx: OutgoingTx, receipt: TxReceipt) -> str:
        """Why a mined transaction reverted: replayed on the state its block left."""
        try:
            with rpc_errors("eth_call"):
                self._w3.eth.call(self._call_params(tx), receipt["blockNumber"])
        except ContractLogicError as exc:
            return _revert_reason(exc)
        if tx.gas_limit is not None and receipt["gasUsed"] >= tx.gas_limit:
            return f"out of gas (limit {tx.gas_limit})"
        return REPLAY_SUCCEEDS

    def _resend_or_release(self, tx: OutgoingTx) -> None:
        """The chain knows none of it: broadcast it again, unless its nonce went elsewhere
        or a reorg orphaned its request.

        An orphaned request's id may already hold another request (or the same one with
        another seed) on the new chain, where a commit made for the old one would take a
        seat it can never reveal; the row goes back to pending, held there while its
        request stays orphaned (``sendable_txs``).
        """
        assert tx.nonce is not None
        with rpc_errors("eth_getTransactionCount"):
            mined_nonces = self._w3.eth.get_transaction_count(self._account.address, "latest")
        if mined_nonces > tx.nonce and self._receipt(tx) is None:  # (mined meanwhile?)
            self._release(tx, f"nonce {tx.nonce} was used by another transaction")
            logger.warning("nonce taken elsewhere; will send again", extra=_fields(tx))
            return
        with self._sessions() as session:
            orphaned = request_orphaned(session, tx.request_id)
        if orphaned:
            self._release(tx, "lost by the chain, and its request was orphaned by a reorg")
            logger.warning("a lost transaction waits for its orphaned request", extra=_fields(tx))
            return
        if not self._still_wanted(tx):
            return
        signed = self._sign(tx, nonce=tx.nonce, gas=_stored(tx.gas_limit), fees=_stored_fees(tx))
        if bytes(signed.hash) != tx.tx_hash:
            logger.error("re-signing gave another hash; sending it anyway", extra=_fields(tx))
        logger.info("re-broadcasting a transaction the chain does not know", extra=_fields(tx))
        self.broadcast(PreparedTx(tx_id=tx.id, raw=bytes(signed.raw_transaction), log=_fields(tx)))

    def _still_wanted(self, tx: OutgoingTx) -> bool:
        """Before a transaction the chain lost is sent again: would it still do its work?

        After a reorg it may come too early (a reveal before the other commits are back),
        be done already, or no longer fit. Then it goes back to pending without its nonce,
        to be decided again in order (after the rows of its request it depends on): a
        transaction that holds a nonce while it waits would stall every later one. An
        endpoint that lags behind the decision proves nothing: the row stays sent.
        """
        try:
            gas = self._simulate(self._call_params(tx))
        except RpcUnavailable:
            raise
        except RpcError:
            return True  # the node refuses the call, not the contract: let it see the tx
        if not isinstance(gas, str):
            return True
        if self._not_seen_yet(reason_name(gas)):
            logger.info("a lost transaction waits for the endpoint to catch up", extra=_fields(tx))
            return False  # still sent; looked at again on the next check
        self._release(tx, f"lost by the chain, now {gas}")
        logger.warning("a lost transaction is decided again", extra=_fields(tx, reason=gas))
        return False

    def _release(self, tx: OutgoingTx, reason: str) -> None:
        """Back to pending without its nonce, to be decided again in order."""
        with self._sessions() as session, session.begin():
            release_nonce(session, tx.id, reason=reason)
        self._next_nonce = None
        self._forget(tx.id)

    def _bump(self, tx: OutgoingTx) -> None:
        """Replace a slow transaction: same nonce, fees up by at least the bump percent.

        At the ceiling (``max_bumps`` replacements, the fee cap, or a bump the node
        refused) it waits; ``give_up_after_s`` after the last bump the row fails.
        """
        assert tx.nonce is not None
        at_ceiling = tx.attempts > self._max_bumps or tx.id in self._bumps_refused
        fees = None if at_ceiling else self._bumped_fees(_stored_fees(tx))
        if fees is None:
            self._wait_at_ceiling(tx)
            return
        signed = self._sign(tx, nonce=tx.nonce, gas=_stored(tx.gas_limit), fees=fees)
        with self._sessions() as session, session.begin():
            mark_replaced(
                session,
                tx.id,
                tx_hash=bytes(signed.hash),
                max_fee_per_gas=fees.max_fee_per_gas,
                max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
            )
        log = _fields(tx, tx_hash=bytes(signed.hash), replaces=_hex(tx.tx_hash))
        logger.info("replacing a slow transaction with higher fees", extra=log)
        raw = bytes(signed.raw_transaction)
        self.broadcast(PreparedTx(tx_id=tx.id, raw=raw, log=log, replacing=True))

    def _wait_at_ceiling(self, tx: OutgoingTx) -> None:
        waited = _now() - tx.sent_at if tx.sent_at is not None else timedelta(0)
        if waited < self._give_up_after:
            logger.warning("stuck at the fee ceiling; waiting", extra=_fields(tx))
            return
        gwei = _stored(tx.max_fee_per_gas) / _GWEI
        reason = (
            f"not mined after {tx.attempts - 1} fee bumps (max fee {gwei:.3g} gwei) and "
            f"{waited.total_seconds():.0f} s at the ceiling; gave up"
        )
        with self._sessions() as session, session.begin():
            mark_failed(session, tx.id, reason=reason)
        self._forget(tx.id)
        logger.error("gave up on a transaction", extra=_fields(tx, reason=reason))

    # --- nonces, fees, signatures -------------------------------------------------------

    def _resync_nonce(self) -> None:
        with rpc_errors("eth_getTransactionCount"):
            pending = self._w3.eth.get_transaction_count(self._account.address, "pending")
        with self._sessions() as session:
            stored = highest_nonce(session, self.address)
        self._next_nonce = max(pending, -1 if stored is None else stored + 1)
        logger.info("nonce synced", extra={"address": self.address, "nonce": self._next_nonce})

    def _allocate_nonce(self) -> int:
        if self._next_nonce is None:
            self._resync_nonce()
        assert self._next_nonce is not None
        return self._next_nonce

    def _fees(self) -> _Fees:
        """EIP-1559 fees: twice the latest base fee plus the suggested tip, under the cap."""
        with rpc_errors("eth_getBlockByNumber"):
            base_fee = int(self._w3.eth.get_block("latest").get("baseFeePerGas", 0))
        with rpc_errors("eth_maxPriorityFeePerGas"):
            tip = int(self._w3.eth.max_priority_fee)
        max_fee = 2 * base_fee + tip
        if self._fee_cap is not None:
            max_fee = min(max_fee, self._fee_cap)
        return _Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=min(tip, max_fee))

    def _bumped_fees(self, old: _Fees) -> _Fees | None:
        """``fee_bump_percent`` over ``old`` (and no less than today's fees), under the cap.

        None when the cap leaves less than the 10% raise nodes demand of a replacement.
        """
        current = self._fees()
        tip = max(
            _raised(old.max_priority_fee_per_gas, self._bump_percent),
            current.max_priority_fee_per_gas,
        )
        max_fee = max(
            _raised(old.max_fee_per_gas, self._bump_percent), current.max_fee_per_gas, tip
        )
        if self._fee_cap is not None:
            max_fee = min(max_fee, self._fee_cap)
            tip = min(tip, max_fee)
        if max_fee < _raised(old.max_fee_per_gas, 10) or tip < _raised(
            old.max_priority_fee_per_gas, 10
        ):
            return None
        return _Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=tip)

    def _call_params(self, tx: OutgoingTx) -> TxParams:
        return {
            "from": self._account.address,
            "to": Web3.to_checksum_address(tx.to_address),
            "data": HexBytes(tx.data),
            "value": Wei(tx.value_wei),
        }

    def _sign(self, tx: OutgoingTx, *, nonce: int, gas: int, fees: _Fees) -> SignedTransaction:
        return self._account.sign_transaction(
            {
                "type": 2,
                "chainId": self._chain_id,
                "nonce": nonce,
                "to": Web3.to_checksum_address(tx.to_address),
                "value": tx.value_wei,
                "data": HexBytes(tx.data),
                "gas": gas,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            }
        )


# --- helpers -----------------------------------------------------------------------------


class _Turns:
    """The order in which a pass visits rows: the least recently visited first.

    A rate limit ends a pass part-way (the endpoint asked for calm). Were every pass to
    start again from the lowest nonce, an endpoint that limits every few dozen calls would
    leave the rows at the end of a long list unvisited for as long as it does: a reveal
    whose broadcast was lost waited past its deadline so. With turns, the next pass starts
    with the rows the last one did not reach, and every row is visited within a few passes.
    """

    def __init__(self) -> None:
        self._visits = 0
        self._last_visit: dict[int, int] = {}

    def order(self, txs: Sequence[OutgoingTx]) -> list[OutgoingTx]:
        """``txs`` with the rows never or least recently visited first (stable: the
        rows' own order among equals)."""
        ids = {tx.id for tx in txs}
        self._last_visit = {i: n for i, n in self._last_visit.items() if i in ids}
        return sorted(txs, key=lambda tx: self._last_visit.get(tx.id, 0))

    def visited(self, tx_id: int) -> None:
        self._visits += 1
        self._last_visit[tx_id] = self._visits


def _each_transaction(
    txs: Sequence[OutgoingTx],
    work: Callable[[OutgoingTx], object],
    what: str,
    turns: _Turns | None = None,
) -> None:
    """``work`` on each row; an endpoint's hiccup on one row does not hold up the others.

    One sync touches many rows with a few calls each: were any failed call to end the
    sync, a flaky endpoint would leave every row waiting. A rate limit still ends it (the
    endpoint asked for calm), and so does failing on every row (the endpoint is away);
    with ``turns``, the next pass starts where a rate limit ended this one.
    """
    failures: list[RpcUnavailable] = []
    for tx in txs if turns is None else turns.order(txs):
        try:
            work(tx)
        except RpcRateLimited:
            raise
        except RpcUnavailable as exc:
            failures.append(exc)
            logger.info(
                f"{what} a transaction failed; the others go on", extra=_fields(tx, error=str(exc))
            )
        if turns is not None:
            turns.visited(tx.id)
    if failures and len(failures) == len(txs):
        raise failures[0]


def _now() -> datetime:
    return datetime.now(UTC)


def _depth_class(tx: OutgoingTx, head: int) -> int:
    """0 in its own block, then 1, 2, 2, 3, 3, 3, 3, 4, ...: a new class at 1, 2, 4, 8
    blocks deep."""
    return max(0, head - _stored(tx.receipt_block)).bit_length()


def _raised(value: int, percent: int) -> int:
    return -(-value * (100 + percent) // 100)


def _stored(value: _V | None) -> _V:
    assert value is not None, "a sent row stores its hash, gas and fees"
    return value


def _stored_fees(tx: OutgoingTx) -> _Fees:
    return _Fees(
        max_fee_per_gas=_stored(tx.max_fee_per_gas),
        max_priority_fee_per_gas=_stored(tx.max_priority_fee_per_gas),
    )


def _came_too_early(reason: str) -> bool:
    """A revert that says "not yet", or one that the state right after it no longer shows."""
    return reason == REPLAY_SUCCEEDS or reason_name(reason) in NOT_YET_ERRORS


def _revert_reason(exc: ContractLogicError) -> str:
    """The decoded revert; data that no contract could have reverted with is a malformed
    answer (transient: asked again later), never a verdict on the transaction."""
    data = exc.data if isinstance(exc.data, str | bytes) else None
    if not data:
        return exc.message or "reverted without a reason"
    try:
        return decode_revert(data)
    except UndecodableRevert as bad:
        raise RpcMalformedResponse(method="eth_call", reason=str(bad)) from exc


def _hex(value: bytes | None) -> str | None:
    return None if value is None else "0x" + value.hex()


def _fields(tx: OutgoingTx, **more: object) -> dict[str, Any]:
    """The structured log fields of a transaction: kind, request_id, tx_hash, nonce."""
    fields: dict[str, Any] = {
        "kind": tx.kind,
        "request_id": tx.request_id,
        "tx_id": tx.id,
        "tx_hash": _hex(tx.tx_hash),
        "nonce": tx.nonce,
    }
    for key, value in more.items():
        fields[key] = _hex(value) if isinstance(value, bytes) else value
    return fields


def _lock_id(address: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``address``."""
    digest = hashlib.sha256(f"oracle-sender:{address}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _unlock(connection: Connection, lock_id: int) -> None:
    try:
        connection.scalar(select(func.pg_advisory_unlock(lock_id)))
        connection.commit()
    finally:
        connection.close()
