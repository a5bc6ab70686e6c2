"""A node's database is bound to the first chain and coordinator it serves."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from oracle.errors import DatabaseBoundElsewhere
from oracle.store.binding import ChainBinding, bind_database

COORDINATOR = "0x" + "c0" * 20
OTHER = "0x" + "0d" * 20


def test_the_first_start_binds_and_the_same_binding_passes_again(db_engine: Engine) -> None:
    wanted = ChainBinding(chain_id=31337, coordinator=COORDINATOR.upper().replace("0X", "0x"))
    assert bind_database(db_engine, wanted, database="db") == ChainBinding(
        chain_id=31337, coordinator=COORDINATOR
    )
    assert bind_database(db_engine, wanted, database="db").coordinator == COORDINATOR


@pytest.mark.parametrize(
    ("chain_id", "coordinator"), [(1, COORDINATOR), (31337, OTHER), (10, OTHER)]
)
def test_another_chain_or_contract_is_refused_with_both_named(
    db_engine: Engine, chain_id: int, coordinator: str
) -> None:
    bind_database(db_engine, ChainBinding(chain_id=31337, coordinator=COORDINATOR), database="db")
    with pytest.raises(DatabaseBoundElsewhere) as refused:
        bind_database(
            db_engine,
            ChainBinding(chain_id=chain_id, coordinator=coordinator),
            database="database postgresql://oracle@db/node1",
        )
    message = str(refused.value)
    assert message.startswith("The node's database belongs to another chain or contract")
    assert (
        f"database postgresql://oracle@db/node1 holds chain 31337, coordinator {COORDINATOR};"
        in (message)
    )
    assert f"asked for chain {chain_id}, coordinator {coordinator}" in message
    # and the binding itself did not move
    kept = ChainBinding(chain_id=31337, coordinator=COORDINATOR)
    assert bind_database(db_engine, kept, database="db") == kept


def test_the_table_holds_one_binding_at_most(db_engine: Engine) -> None:
    bind_database(db_engine, ChainBinding(chain_id=5, coordinator=COORDINATOR), database="db")
    with pytest.raises(IntegrityError), db_engine.begin() as conn:
        conn.execute(
            text("INSERT INTO node_binding (chain_id, coordinator) VALUES (6, :c)"),
            {"c": OTHER},
        )
