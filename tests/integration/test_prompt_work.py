"""A request with a context-filling prompt and maxTokens 1 neither jumps the queue nor,
once run, makes the model look slow: a job's work is the tokens the model reads and
writes, in the claim order, the work ahead and the measured speed alike.

Before: pay per token counted output tokens only, so 8,000 bytes of prompt (3,703 SmolLM2
tokens) with maxTokens 1 at the minimum fee claimed before a request paying 50 times
more for 64 tokens; a real worker then took 83 s on it, the paying job missed its
deadline, and the measured speed (1 token in 83 s) declined a request paying 1,000 times
the minimum ("needs about 5318 s of inference"). (At the minimum fee such a request is
now declined outright: the node's price counts the prompt too. Here it pays its work's
price, 2,700 tokens at 1 gwei, and still pays the least per token.)

Real Postgres, the lifecycle driver and the real queue; the attacker's job is completed
with the result a real SmolLM2 worker recorded for it; anvil only for calldata.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select, text

from oracle.chain.anvil import Anvil
from oracle.chain.coordinator import CoordinatorBinding
from oracle.domain.events import RequestedEvent
from oracle.lifecycle.driver import advance_requests
from oracle.store import make_session_factory
from oracle.store.models import Job
from oracle.store.queue import claim_jobs
from oracle.store.queue_stats import inference_loads
from tests.integration.test_chain_state import at, requested
from tests.integration.test_paying_work_first import (
    COORDINATOR,
    CTX,
    MIN_FEE_PER_SEAT,
    SMOL,
    phase,
    skip_reason,
    store,
)

ATTACK_PROMPT = "quartz123 " * 800  # 8,000 bytes
HONEST_PROMPT = "What is the capital of France? Answer in one short sentence."
ATTACK_RESULT = {"text": "x", "completion_tokens": 1, "prompt_tokens": 3703, "elapsed_s": 83.0}
"""What a real SmolLM2 worker (two threads, two cores) recorded for such a job."""


def test_a_huge_prompt_with_one_output_token_neither_jumps_the_queue_nor_poisons_the_speed(
    db_engine: Engine, chain: Anvil
) -> None:
    sessions = make_session_factory(db_engine)
    binding = CoordinatorBinding(chain.w3, COORDINATOR)
    attacker, honest, later = 1, 2, 3
    store(sessions, [request(attacker, fee=3 * MIN_FEE_PER_SEAT, max_tokens=1,
                             commit_in_s=600, prompt=ATTACK_PROMPT)])  # fmt: skip
    store(sessions, [request(honest, fee=50 * MIN_FEE_PER_SEAT, max_tokens=64,
                             commit_in_s=60, prompt=HONEST_PROMPT)])  # fmt: skip
    assert advance_requests(sessions, CTX, binding) == 2
    assert phase(sessions, attacker) == phase(sessions, honest) == "committing"

    # the request paying 50 times more is claimed first: per token of all its work
    with db_engine.begin() as conn:
        claimed = claim_jobs(conn, worker_id="w", kinds=["inference"], models=[SMOL])
    assert [job.request_id for job in claimed] == [honest]
    with sessions() as session:
        rows = session.execute(select(Job.request_id, Job.payload["work_tokens"].as_integer()))
        work = {int(request_id): int(tokens) for request_id, tokens in rows}
    assert work[attacker] == 2700 and work[honest] < 200  # 8,000 bytes over 3, template, 1

    # the attacker's job counts as its prompt and maxTokens for whoever it runs before
    with db_engine.connect() as conn:
        (deadline,) = conn.execute(text("SELECT max(deadline) FROM jobs")).one()
        load = inference_loads(conn, [SMOL], pay_per_token_wei=0.0, deadline=deadline)[SMOL]
    assert load.ahead_tokens == work[attacker] + work[honest]

    # it runs, as slowly as a real worker ran it: the model still reads ~45 tokens a second
    with db_engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'done', result = CAST(:result AS jsonb), "
                "finished_at = now() WHERE request_id = :id"
            ),
            {"result": json.dumps(ATTACK_RESULT), "id": attacker},
        )
        speed = inference_loads(
            conn, [SMOL], pay_per_token_wei=1.0, deadline=datetime.now(UTC) + timedelta(seconds=60)
        )[SMOL].tokens_per_s
    assert speed is not None and abs(speed - 3704 / 83.0) < 0.01

    # so a request paying 1,000 times the minimum for 64 tokens is still served
    store(sessions, [request(later, fee=1000 * MIN_FEE_PER_SEAT, max_tokens=64,
                             commit_in_s=60, prompt="Name a colour.")])  # fmt: skip
    advance_requests(sessions, CTX, binding)
    assert phase(sessions, later) == "committing", skip_reason(sessions, later)


def request(
    request_id: int, *, fee: int, max_tokens: int, commit_in_s: int, prompt: str
) -> RequestedEvent:
    commit_deadline = int(time.time()) + commit_in_s
    return dataclasses.replace(
        requested(request_id, at(10 + request_id, log_index=request_id)),
        prompt=prompt,
        quorum=1,
        max_tokens=max_tokens,
        fee_wei=fee,
        commit_deadline=commit_deadline,
        reveal_deadline=commit_deadline + 30,
    )
