"""A node's database serves one chain and one coordinator, for good.

Request ids, salts, checkpoints and nonces only mean something on the chain and contract
that produced them: pointed at a redeployed coordinator, a database would skip every
request whose id it had already seen. The first start writes the binding; every later
start compares what it is asked to follow with it and refuses anything else.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

from oracle.errors import DatabaseBoundElsewhere

__all__ = ["ChainBinding", "bind_database", "read_binding"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainBinding:
    chain_id: int
    coordinator: str
    """Lowercase 0x-hex, as every address in the database."""


def read_binding(conn: Connection) -> ChainBinding | None:
    row = conn.execute(text("SELECT chain_id, coordinator FROM node_binding")).one_or_none()
    return None if row is None else ChainBinding(chain_id=row.chain_id, coordinator=row.coordinator)


def bind_database(engine: Engine, wanted: ChainBinding, *, database: str) -> ChainBinding:
    """Record ``wanted`` on a database's first start; afterwards refuse any other binding.

    ``database`` names the database in the refusal (a URL without its password).
    """
    wanted = ChainBinding(chain_id=wanted.chain_id, coordinator=wanted.coordinator.lower())
    with engine.begin() as conn:
        inserted = conn.execute(
            text(
                """
                INSERT INTO node_binding (chain_id, coordinator) VALUES (:chain_id, :coordinator)
                ON CONFLICT (singleton) DO NOTHING
                """
            ),
            {"chain_id": wanted.chain_id, "coordinator": wanted.coordinator},
        ).rowcount
        bound = read_binding(conn)
    assert bound is not None  # inserted now or before
    if inserted:
        logger.info(
            "database bound to chain and coordinator",
            extra={"chain_id": bound.chain_id, "coordinator": bound.coordinator},
        )
    if bound != wanted:
        raise DatabaseBoundElsewhere(
            database=database,
            bound_chain_id=bound.chain_id,
            bound_coordinator=bound.coordinator,
            chain_id=wanted.chain_id,
            coordinator=wanted.coordinator,
        )
    return bound
