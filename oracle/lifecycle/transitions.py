"""The lifecycle's transitions, one small function each; ``steps.TRANSITIONS`` says which
runs in which state.

Each function reads what it needs of the request's state (its row, its seats as the chain
reported them, this node's jobs, answer and outbox rows), may write a decision in the
caller's transaction, and answers a ``Verdict``: ``Move`` to another state, or ``Wait``
(until a time, or for news). Running one twice changes nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from eth_utils.crypto import keccak
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from oracle.chain.commitment import commitment_hash, new_salt
from oracle.consensus import (
    ConsensusResult,
    compute_consensus,
    default_verify_tolerance_bits,
    dispute_excludes,
    length_fault,
    read_back_fault,
    verify_embedding,
)
from oracle.consensus.signal import embedding_job
from oracle.domain.text import invisibly_altered
from oracle.engine.llm import request_seed
from oracle.lifecycle.admission import (
    Admit,
    Offer,
    Terms,
    admit,
    inference_deadline,
    prompt_tokens_estimate,
)
from oracle.lifecycle.turn import DeadlineQuestion, Move, Step, Verdict, Wait
from oracle.store.chain_state import disputes_against
from oracle.store.models import Answer, Job, JobKind, OutgoingTx, Request, Seat
from oracle.store.outbox import enqueue_tx
from oracle.store.queue import (
    PRIORITY_EMBEDDING,
    PRIORITY_INFERENCE,
    PRIORITY_VERIFICATION,
    enqueue_job,
    expire_queued_jobs,
)
from oracle.store.queue_stats import inference_loads

logger = logging.getLogger(__name__)

FAILED_JOB_STATES = ("dead", "expired", "failed")
CHECK_KINDS: tuple[JobKind, ...] = ("verification", "readback")
"""The jobs that check other seats' reveals."""
COMMIT_LANDING_GRACE_S = 10.0
OUTSIDER_FINALIZE_MAX_BYTES = 8192
"""The longest winning output a node without a seat finalizes: finalize carries the
output as calldata (about 40 gas a byte), paid by the finalizer, while the fee goes to the
seats; a requester holding the only seat could otherwise make honest outsiders pay for
an output as long as it likes (``maxTokens * 64`` bytes). Longer ones wait for a seat to
finalize them, or for ``expiresAt``, when anyone may settle them with ``expire``."""
RETRY_READ_S = 1.0
"""A chain read made before the lock no longer fits the seats: look again this soon."""

ELIGIBLE_UNKNOWN = 2**16 - 1
"""``eligibleCount`` when more nodes were active than it counts: commits then close only at
the commit deadline."""

NEWS = Wait()
"""Only news (a chain event for the request, one of its jobs ending) can change anything."""


# --- requested ---------------------------------------------------------------------


def admit_request(step: Step, seats: Sequence[Seat]) -> Verdict:
    """Serve the request when it pays this node's price and a model it accepts can answer
    before its commit deadline, behind the better-paying work already queued."""
    req = step.request
    offer = Offer(
        fee_wei=req.fee_wei,
        quorum=req.quorum,
        max_tokens=req.max_tokens,
        prompt_tokens=prompt_tokens_estimate(req.prompt),
    )
    accepted = [m for m in req.accepted_models if m in step.ctx.models]
    decision = admit(
        accepted_models=req.accepted_models,
        embedding_model=req.embedding_model,
        offer=offer,
        terms=Terms(
            reveal_window_s=(req.reveal_deadline - req.commit_deadline).total_seconds(),
            dispute_window_s=req.dispute_window_s,
            slash_bps=req.slash_bps,
            expiry_grace_s=None
            if req.expires_at is None
            else (req.expires_at - req.reveal_deadline).total_seconds() - req.dispute_window_s,
            dim_bits=req.dim_bits,
        ),
        commit_deadline=req.commit_deadline,
        now=step.now,
        ctx=step.ctx,
        loads=inference_loads(
            step.session.connection(),
            accepted,
            pay_per_token_wei=offer.pay_per_token_wei,
            deadline=inference_deadline(req.commit_deadline, step.ctx),
        ),
    )
    if not isinstance(decision, Admit):
        return Move("skipped", decision.reason)
    seed = request_seed(req.id, step.ctx.coordinator)
    enqueue_job(
        step.session.connection(),
        kind="inference",
        request_id=req.id,
        model=decision.model,
        priority=PRIORITY_INFERENCE,
        deadline=decision.job_deadline,
        payload={
            "prompt": req.prompt,
            "temperature_milli": req.temperature_milli,
            "max_tokens": req.max_tokens,
            # what the queue counts it as (oracle.store.queue_stats); the worker reads not
            "work_tokens": offer.work_tokens,
            "seed": seed,
            "model_index": decision.model_index,
        },
        pay_per_token_wei=decision.pay_per_token_wei,
    )
    logger.info(
        "admitted",
        extra={
            **step.log,
            "model": decision.model,
            "seed": seed,
            "estimate_s": round(decision.estimate_s, 2),
            "earn_rate_wei_per_s": round(decision.earn_rate_wei_per_s),
        },
    )
    return Move("committing")


# --- committing: inference, embedding, commit, reveal ------------------------------


def embed_answer(step: Step, seats: Sequence[Seat]) -> Verdict:
    """Our inference ended: embed its text, or stay out when it failed."""
    if _answer(step) is not None or _latest_job(step, "embedding") is not None:
        return NEWS
    inference = _latest_job(step, "inference")
    if inference is None:
        return NEWS
    if inference.status in FAILED_JOB_STATES:
        return Move("skipped", f"inference {inference.status}: {inference.last_error}")
    if inference.status != "done" or inference.result is None:
        return _until_job_ends(inference)
    model, signal = embedding_job(step.request.embedding_model, step.request.prompt)
    enqueue_job(
        step.session.connection(),
        kind="embedding",
        request_id=step.request.id,
        model=model,
        priority=PRIORITY_EMBEDDING,
        deadline=step.request.commit_deadline,
        # cut to what the embedder reads whole and to maxTokens of our model, so that no
        # verifier can dispute it as too long (oracle.engine.worker: fit)
        payload={
            "text": _answer_text(step, inference.result),
            "fit": {"max_tokens": step.request.max_tokens, "model": str(inference.model)},
            **signal,
        },
    )
    return NEWS


def commit_answer(step: Step, seats: Sequence[Seat]) -> Verdict:
    """Our embedding ended: store the answer with a fresh salt and decide the commit."""
    if _answer(step) is not None:
        return NEWS
    inference, embedding = _latest_job(step, "inference"), _latest_job(step, "embedding")
    if inference is None or inference.status != "done" or inference.result is None:
        return NEWS
    if embedding is None:
        return NEWS
    if embedding.status in FAILED_JOB_STATES:
        return Move("skipped", f"embedding {embedding.status}: {embedding.last_error}")
    if embedding.status != "done" or embedding.result is None:
        return _until_job_ends(embedding)
    if step.request.request_hash is None:
        return Move("skipped", "stored before protocol v2: no request hash to commit to")
    bits = bytes.fromhex(embedding.result["bits"])
    # the embedded text: the answer, cut where the embedder or maxTokens would stop reading
    output = str(embedding.result.get("text", _answer_text(step, inference.result)))
    _store_answer_and_commit(step, inference, output, bits)
    return NEWS


def _until_job_ends(job: Job) -> Wait:
    """A job's end is news (the queue wakes its request); its deadline is a fallback."""
    return Wait(job.deadline)


def _answer_text(step: Step, result: dict[str, Any]) -> str:
    return step.ctx.conduct.answer_text(step.request.id, str(result["text"]))


def _store_answer_and_commit(step: Step, inference: Job, output: str, bits: bytes) -> None:
    bits = step.ctx.conduct.embedding_bits(step.request.id, bits)
    req = step.request
    assert req.request_hash is not None  # commit_answer checked
    model_index = int(inference.payload["model_index"])
    salt = new_salt()
    commitment = commitment_hash(
        request_id=req.id,
        request_hash=req.request_hash,
        oracle=step.ctx.address,
        output=output,
        model_index=model_index,
        embedding_bits=bits,
        salt=salt,
    )
    # the salt is stored in the same transaction that decides the commit, before any send
    step.session.add(
        Answer(
            request_id=req.id,
            model=str(inference.model),
            model_index=model_index,
            output=output,
            embedding_bits=bits,
            salt=salt,
            seed=int(inference.payload["seed"]),
            commitment=commitment,
        )
    )
    step.session.flush()
    _send(step, "commit", step.chain.encode_commit(req.id, req.request_hash, commitment))
    logger.info("answer ready, commit decided", extra={**step.log, "output_chars": len(output)})


def reveal_answer(step: Step, seats: Sequence[Seat]) -> Verdict:
    """We hold a seat and commits have closed (the commit deadline passed, or every node
    that could commit has): no better ticket can take the seat any more."""
    answer = _answer(step)
    mine = _my_commit(step)
    if answer is None or mine is None or mine.evicted_block_number is not None:
        return NEWS
    req = step.request
    if not commits_closed(step.session, req, step.now):
        return Wait(req.commit_deadline)
    call = step.chain.encode_reveal(
        req.id, answer.output, answer.model_index, answer.embedding_bits, answer.salt
    )
    _send(step, "reveal", call)
    return Move("revealing")


def leave_if_evicted(step: Step, seats: Sequence[Seat]) -> Verdict:
    """A commit with a better ticket took our seat: we do nothing more for this request."""
    mine = _my_commit(step)
    if mine is None or mine.evicted_block_number is None:
        return NEWS
    return Move(
        "evicted",
        f"a better ticket took seat {mine.seat_no} in block {mine.evicted_block_number}",
    )


def give_up_commit(step: Step, seats: Sequence[Seat]) -> Verdict:
    """Our commit was refused (a ticket too weak for the seats, commits closed) or never
    made it on-chain: stop waiting for it, with the reason.

    A commit that may have been mined (sent or confirmed: the sender holds, or may yet
    get, its receipt) is waited for up to the reveal deadline, not only the commit
    deadline's grace: the listener reports our seat only after its confirmations, or
    after an outage, and a seat given up is one never revealed, which the contract
    slashes."""
    if _answer(step) is None or _my_commit(step) is not None:
        return NEWS
    refused = _refused_commit(step)
    if refused is not None:
        return Move("skipped", refused)
    give_up_at = step.request.commit_deadline + timedelta(seconds=COMMIT_LANDING_GRACE_S)
    if step.now < give_up_at:
        return Wait(give_up_at)
    if _commit_tx(step, "sent", "confirmed") is not None:  # broadcast, not failed
        if step.now < step.request.reveal_deadline:
            return Wait(step.request.reveal_deadline)
        return Move(
            "skipped", "our commit was sent, but no seat of ours was seen by the reveal deadline"
        )
    return Move("skipped", "our commit did not land before the commit deadline")


def _commit_tx(step: Step, *statuses: str) -> OutgoingTx | None:
    """Our commit transaction for the request in one of ``statuses``, if any."""
    return step.session.scalars(
        select(OutgoingTx).where(
            OutgoingTx.kind == "commit",
            OutgoingTx.request_id == step.request.id,
            OutgoingTx.status.in_(statuses),
        )
    ).first()


def _refused_commit(step: Step) -> str | None:
    """Why our commit transaction failed, in words; None while it has not."""
    tx = _commit_tx(step, "failed")
    if tx is None:
        return None
    error = tx.last_error or "no reason given"
    if error.startswith("TicketTooWeak"):
        return f"our ticket is too weak for a seat: {error}"
    return f"our commit was refused: {error}"


def commits_closed(session: Session, request: Request, now: datetime) -> bool:
    """Whether no commit can change the seats any more: the commit deadline passed, or
    every node that could commit (``eligibleCount``) has."""
    if now > request.commit_deadline:
        return True
    if request.eligible_count is None or request.eligible_count == ELIGIBLE_UNKNOWN:
        return False
    return commit_count(session, request.id) >= request.eligible_count


# --- revealing and finalizing: verification and disputes ---------------------------


def end_reveals(step: Step, seats: Sequence[Seat]) -> Verdict:
    """Every seat revealed (a reveal needs closed commits, so the seats are final), or the
    reveal deadline passed: on to finalizing."""
    req = step.request
    revealed = sum(1 for s in seats if s.revealed_output is not None)
    if (seats and revealed == len(seats)) or step.now > req.reveal_deadline:
        return Move("finalizing")
    return Wait(req.reveal_deadline)


def verify_reveals(step: Step, seats: Sequence[Seat]) -> Verdict:
    """Re-embed the other seats' outputs and read those unlike our answer back through
    the model; dispute reveals whose bits do not match their text, whose text the model
    does not write for this request's seed, or that are our own answer with invisible
    characters changed (the same bits, other bytes: at distance 0 such a copy could win
    the medoid's tie and be delivered), until disputes close (once finalizing; a close
    time not read yet counts as open); then drop the checks no worker has taken."""
    if step.request.phase == "finalizing":
        closes_at = _close_time(step, seats)
        if closes_at is not None and step.now > closes_at:
            _drop_late_checks(step)
            return NEWS
    others = [s for s in seats if s.revealed_output is not None and s.oracle != step.ctx.address]
    # a job checks one reveal: a reorg may put another node, or other text, in its seat
    jobs = {
        (j.kind, int(j.payload["seat"]), str(j.payload.get("oracle")), j.payload.get("text")): j
        for j in step.session.scalars(
            select(Job).where(Job.request_id == step.request.id, Job.kind.in_(CHECK_KINDS))
        )
    }
    answer = _answer(step)
    for seat in others:
        key = (seat.seat_no, seat.oracle, seat.revealed_output)
        if seat.reveal_defect is not None:  # no text to embed: its bits cannot be checked
            _dispute(step, seat, f"revealed output {seat.reveal_defect}")
        elif answer is not None and invisibly_altered(str(seat.revealed_output), answer.output):
            _dispute(step, seat, "revealed output is our answer with invisible characters changed")
        else:
            _check_embedding(step, seat, jobs.get(("verification", *key)))
            if answer is not None and seat.revealed_output != answer.output:
                _check_provenance(step, seat, jobs.get(("readback", *key)))
    return NEWS


def _drop_late_checks(step: Step) -> None:
    """Disputes have closed: a check no worker has taken can change nothing now. Expire
    it, so that it does not run ahead of inference until its own deadline (disputes close
    a window after the last reveal, which can be well before the reveal deadline's
    window), and say which reveals stand unchecked and why."""
    dropped = expire_queued_jobs(
        step.session.connection(),
        request_id=step.request.id,
        kinds=CHECK_KINDS,
        reason="disputes closed before a worker took it",
    )
    if dropped:
        unchecked = sorted(f"{kind} of seat {payload['seat']}" for kind, payload in dropped)
        logger.warning(
            "disputes closed before these checks ran: the reveals stand unchecked (more "
            "workers for these kinds, or a longer dispute window, would have checked them)",
            extra={**step.log, "unchecked": unchecked},
        )


def _check_embedding(step: Step, seat: Seat, job: Job | None) -> None:
    if job is None:
        _queue_verification(step, seat)
    elif job.status == "done" and job.result is not None:
        _dispute_if_faulty(step, seat, job.result)


def _check_provenance(step: Step, seat: Seat, job: Job | None) -> None:
    """Read another text than ours back through the model the seat named, where this node
    serves it (``readback`` jobs, oracle.engine.worker.AnswerReader), and dispute it when no
    way of writing it comes within ``read_back_margin`` of what the model writes with the
    request's seed. A text the same as ours needs no reading: we wrote it."""
    margin = step.ctx.read_back_margin
    named = _named_model(step.request, seat)
    if margin is None or named is None or named not in step.ctx.models:
        return
    if job is None:
        _queue_read_back(step, seat, named, margin)
        return
    if job.status != "done" or job.result is None:
        return
    max_margin, worst = job.result.get("max_margin"), job.result.get("worst_token")
    fault = read_back_fault(
        model=named,
        max_margin=None if max_margin is None else float(max_margin),
        worst_token=None if worst is None else int(worst),
        limit=float(job.payload["limit"]),
    )
    if fault is not None:
        _dispute(step, seat, fault)


def _named_model(req: Request, seat: Seat) -> str | None:
    """The accepted model the seat says it ran, if its index names one."""
    if seat.model_index is not None and 0 <= seat.model_index < len(req.accepted_models):
        return req.accepted_models[seat.model_index]
    return None


def _queue_read_back(step: Step, seat: Seat, model: str, margin: float) -> None:
    req = step.request
    _queue_check(
        step,
        seat,
        "readback",
        model,
        prompt=req.prompt,
        temperature_milli=req.temperature_milli,
        max_tokens=req.max_tokens,
        seed=request_seed(req.id, step.ctx.coordinator),
        limit=margin,
    )


def _queue_verification(step: Step, seat: Seat) -> None:
    """Re-embed the reveal, and count its tokens: the embedder's, and the named model's
    when this node serves it (only a node that has a model can count its tokens)."""
    named = _named_model(step.request, seat)
    model, signal = embedding_job(step.request.embedding_model, step.request.prompt)
    count_model = named if named in step.ctx.models else None
    _queue_check(step, seat, "verification", model, count_model=count_model, **signal)


def _queue_check(step: Step, seat: Seat, kind: JobKind, model: str, **payload: Any) -> None:
    """A job that checks one reveal (its seat, node and text: a reorg may put others
    there), ahead of inference and due when disputes can close at the latest."""
    req = step.request
    enqueue_job(
        step.session.connection(),
        kind=kind,
        request_id=req.id,
        model=model,
        priority=PRIORITY_VERIFICATION,
        deadline=req.reveal_deadline + timedelta(seconds=req.dispute_window_s),
        payload={
            "text": seat.revealed_output,
            "seat": seat.seat_no,
            "oracle": seat.oracle,
            **payload,
        },
    )


def _dispute_if_faulty(step: Step, seat: Seat, result: dict[str, Any]) -> None:
    """Dispute a reveal too long to be checked whole, or whose bits do not match its text."""
    if "embedder_tokens" in result:  # absent from results of jobs queued before it counted
        model_tokens = result.get("model_tokens")
        fault = length_fault(
            embedder_tokens=int(result["embedder_tokens"]),
            embedder_window=int(result["embedder_window"]),
            model_tokens=None if model_tokens is None else int(model_tokens),
            max_tokens=step.request.max_tokens,
        )
        if fault is not None:
            _dispute(step, seat, fault)
            return
    recomputed = bytes.fromhex(result["bits"])
    revealed = seat.embedding_bits or b""
    tolerance = step.ctx.verify_tolerance_bits
    if tolerance is None:
        tolerance = default_verify_tolerance_bits(len(revealed) * 8 or len(recomputed) * 8)
    if verify_embedding(revealed, recomputed, tolerance):
        return
    _dispute(step, seat, "revealed embedding does not match its output")


def _dispute(step: Step, seat: Seat, why: str) -> None:
    request_hash = step.request.request_hash
    if request_hash is None:  # stored before protocol v2: this node never revealed on it
        return
    if _send(
        step,
        "dispute",
        step.chain.encode_dispute(step.request.id, request_hash, seat.oracle),
        dedupe_key=seat.oracle,
    ):
        logger.warning(
            "disputing a reveal",
            extra={**step.log, "accused": seat.oracle, "seat": seat.seat_no, "why": why},
        )


# --- finalizing (and settling a request this node stayed out of) -------------------


def finalize_request(step: Step, seats: Sequence[Seat]) -> Verdict:
    """Disputes have closed and it is this node's turn: decide the finalize, before the
    request expires; after that, settle it with ``expire``."""
    req = step.request
    if req.request_hash is None or req.expires_at is None:
        return NEWS  # stored before protocol v2: the coordinator it came from is not ours
    closes_at = _close_time(step, seats)
    if closes_at is None:
        return Wait(step.now + timedelta(seconds=RETRY_READ_S))
    if step.now <= closes_at:
        return Wait(closes_at)
    result, hashes, bits = _consensus(step, seats)
    delay = timedelta(seconds=_my_delay_s(step, seats, result.winner))
    if step.now > req.expires_at:
        return _expire(step, req.expires_at + delay)
    winner_output = ""
    if result.reached and result.winner is not None:
        winner = seats[result.winner]
        if winner.reveal_defect is not None:
            # Its exact bytes are not kept (only an escaped form): another node, or the
            # request's expiry, settles it.
            logger.warning(
                "the winning reveal is not usable text; not finalizing",
                extra={**step.log, "seat": winner.seat_no, "defect": winner.reveal_defect},
            )
            return Wait(req.expires_at + delay)
        winner_output = winner.revealed_output or ""
    output_bytes = len(winner_output.encode())
    if output_bytes > OUTSIDER_FINALIZE_MAX_BYTES and step.ctx.address not in {
        s.oracle for s in seats
    }:
        logger.info(
            "the winning output is too long to finalize without a seat; expire settles it",
            extra={**step.log, "output_bytes": output_bytes},
        )
        return Wait(req.expires_at + delay)
    my_turn = closes_at + delay
    if step.now < my_turn:
        return Wait(my_turn)
    call = step.chain.encode_finalize(req.id, bits, hashes, winner_output)
    if _send(step, "finalize", call):
        logger.info(
            "finalize decided",
            extra={
                **step.log,
                "reached": result.reached,
                "winner": result.winner,
                "support": result.support,
                "need": result.need,
            },
        )
    # should the finalize not land in time (a slow chain, a crash), expire settles it
    return Wait(req.expires_at + delay)


def _expire(step: Step, my_turn: datetime) -> Verdict:
    """Nobody finalized before ``expiresAt``: settle the request (fee back, faulty seats
    slashed), staggered like finalize so that one node pays for it."""
    if step.now < my_turn:
        return Wait(my_turn)
    if _send(step, "expire", step.chain.encode_expire(step.request.id)):
        logger.warning("the request expired unsettled; expiring it", extra=step.log)
    return NEWS


def dispute_deadline_question(request: Request, seats: Sequence[Seat]) -> DeadlineQuestion | None:
    """What the chain must be asked for this request's dispute close time; None when that
    follows from the request alone (or is not needed in its state).

    With every seat revealed, the coordinator closes disputes a window after the last
    reveal; a reveal needs closed commits, so these seats are final and the answer holds
    for these reveals.
    """
    if request.phase not in ("revealing", "finalizing", "skipped") or not seats:
        return None
    if any(s.revealed_output is None for s in seats):
        return None
    reveals = tuple((s.seat_no, s.reveal_block_number) for s in seats)
    return DeadlineQuestion(request_id=request.id, reveals=reveals)


def _close_time(step: Step, seats: Sequence[Seat]) -> datetime | None:
    """When the coordinator lets finalize through; None when that needs a chain read
    that the driver did not make for these seats (they changed since)."""
    req = step.request
    if not seats:
        return req.commit_deadline
    question = dispute_deadline_question(req, seats)
    if question is None:
        return req.reveal_deadline + timedelta(seconds=req.dispute_window_s)
    return step.reads.dispute_deadlines.get(question)


def _my_delay_s(step: Step, seats: Sequence[Seat], winner: int | None) -> float:
    """The winner's node finalizes at once, the other seats one after another, outsiders last.

    Nodes cannot talk to each other; staggering by a rank every node computes the same
    way keeps them from all paying for the same finalize (simulation catches the rest).
    """
    order = [s.oracle for s in seats]
    if winner is not None:
        order.insert(0, order.pop(winner))
    if step.ctx.address in order:
        return order.index(step.ctx.address) * step.ctx.finalize_stagger_s
    tiebreak = hashlib.sha256(f"{step.request.id}:{step.ctx.address}".encode()).digest()[0] / 255
    return step.ctx.outsider_delay_s + tiebreak * step.ctx.finalize_stagger_s * 4


def _consensus(
    step: Step, seats: Sequence[Seat]
) -> tuple[ConsensusResult, list[bytes], list[bytes]]:
    """The contract's clustering of the seats (in seat order, with their tickets and the
    exclusions disputes made), and the output hashes and bits that finalize takes."""
    req = step.request
    disputes = disputes_against(step.session, req.id)
    reveals: list[tuple[bytes, bool]] = []
    hashes: list[bytes] = []
    bits: list[bytes] = []
    for seat in seats:
        if seat.revealed_output is None or seat.embedding_bits is None:
            reveals.append((b"", True))
            hashes.append(bytes(32))
            bits.append(b"")
            continue
        excluded = dispute_excludes(len(disputes.get(seat.oracle, set())), req.quorum)
        reveals.append((seat.embedding_bits, excluded))
        hashes.append(seat.output_hash or keccak(seat.revealed_output.encode("utf-8")))
        bits.append(seat.embedding_bits)
    result = compute_consensus(
        reveals,
        quorum=req.quorum,
        sec_distance_bp=req.sec_distance_bp,
        sec_percentage_bp=req.sec_percentage_bp,
        tickets=[seat.ticket or 0 for seat in seats],
    )
    return result, hashes, bits


# --- helpers -----------------------------------------------------------------------


def load_seats(session: Session, request_id: int) -> list[Seat]:
    """The request's seats as they stand, in seat order (commits evicted left out)."""
    query = (
        select(Seat)
        .where(Seat.request_id == request_id, Seat.evicted_block_number.is_(None))
        .order_by(Seat.seat_no)
    )
    return list(session.scalars(query))


def commit_count(session: Session, request_id: int) -> int:
    """Distinct committers, evicted ones included: the contract's ``commitCount``."""
    query = select(func.count()).select_from(Seat).where(Seat.request_id == request_id)
    return int(session.scalar(query) or 0)


def _answer(step: Step) -> Answer | None:
    return step.session.get(Answer, step.request.id)


def _my_commit(step: Step) -> Seat | None:
    """This node's commit as the chain reported it (its seat, or the seat it lost)."""
    return step.session.get(Seat, (step.request.id, step.ctx.address))


def _latest_job(step: Step, kind: str) -> Job | None:
    query = (
        select(Job)
        .where(Job.request_id == step.request.id, Job.kind == kind)
        .order_by(Job.id.desc())
        .limit(1)
    )
    return step.session.scalars(query).first()


def _send(step: Step, kind: str, data: bytes, dedupe_key: str = "") -> bool:
    return enqueue_tx(
        step.session,
        kind=kind,  # type: ignore[arg-type]
        request_id=step.request.id,
        dedupe_key=dedupe_key,
        from_address=step.ctx.address,
        to_address=step.ctx.coordinator,
        data=data,
    )
