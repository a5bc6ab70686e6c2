"""``oracle status``: this node's requests, their phases and outcomes."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from oracle.store.db import make_engine
from oracle.store.models import Answer, Request


def request_rows(database_url: str, limit: int) -> Iterator[str]:
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with Session(engine) as session:
            query = select(Request).order_by(Request.id.desc()).limit(limit)
            requests = list(session.scalars(query))
            answers = {
                a.request_id: a
                for a in session.scalars(
                    select(Answer).where(Answer.request_id.in_([r.id for r in requests]))
                )
            }
    finally:
        engine.dispose()
    yield f"{'id':>6}  {'phase':<10}  {'quorum':>6}  {'model':<28}  outcome"
    for req in requests:
        answer = answers.get(req.id)
        outcome = req.outcome_reason or req.skip_reason or ""
        model = answer.model if answer else "-"
        yield f"{req.id:>6}  {req.phase:<10}  {req.quorum:>6}  {model:<28}  {outcome}"
