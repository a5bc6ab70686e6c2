"""Migrations build exactly the schema the models describe, and come down cleanly."""

from __future__ import annotations

import pprint

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL

from oracle.store import Base, current_revision, downgrade, head_revision, make_engine, upgrade
from tests.support.postgres import temporary_database

# What Alembic's comparison skips (CHECK constraints, partial-index predicates), read
# from the catalog in Postgres' own normalised spelling.
CATALOG_QUERIES = {
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type, numeric_precision,
               numeric_scale, is_nullable, column_default,
               col_description(format('%I', table_name)::regclass, ordinal_position)
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> 'alembic_version'
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'alembic_version'
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'alembic_version'
    """,
}


def schema_differences(database_url: str) -> list[object]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def user_tables(database_url: str) -> set[str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def user_sequences(database_url: str) -> set[str]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT sequence_name FROM information_schema.sequences"
                    " WHERE sequence_schema = 'public'"
                )
            )
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def catalog(database_url: str) -> dict[str, set[tuple[object, ...]]]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return {
                name: {tuple(row) for row in connection.execute(text(query))}
                for name, query in CATALOG_QUERIES.items()
            }
    finally:
        engine.dispose()


def test_upgrade_head_matches_the_models(empty_database_url: str) -> None:
    assert current_revision(empty_database_url) is None
    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()
    differences = schema_differences(empty_database_url)
    assert differences == [], pprint.pformat(differences)


def test_downgrade_to_base_leaves_nothing_and_upgrade_works_again(
    empty_database_url: str,
) -> None:
    upgrade(empty_database_url)
    assert user_tables(empty_database_url) == set(Base.metadata.tables)

    downgrade(empty_database_url, "base")
    assert current_revision(empty_database_url) is None
    assert user_tables(empty_database_url) == set()
    assert user_sequences(empty_database_url) == set()

    upgrade(empty_database_url)
    assert current_revision(empty_database_url) == head_revision()
    assert schema_differences(empty_database_url) == []


def test_database_url_fixture_is_migrated(database_url: str) -> None:
    assert current_revision(database_url) == head_revision()
    assert user_tables(database_url) == set(Base.metadata.tables)


def test_upgrade_head_matches_create_all_in_the_catalog(
    empty_database_url: str, postgres_server_url: URL
) -> None:
    upgrade(empty_database_url)
    migrated = catalog(empty_database_url)
    with temporary_database(postgres_server_url) as scratch_url:
        engine = make_engine(scratch_url)
        try:
            Base.metadata.create_all(engine)
        finally:
            engine.dispose()
        modelled = catalog(scratch_url.render_as_string(hide_password=False))
    for part, rows in modelled.items():
        assert migrated[part] == rows, part
    claim_index = next(row for row in migrated["indexes"] if row[1] == "ix_jobs_queued_claim_order")
    assert claim_index[2].endswith(
        "(priority, pay_per_token_wei DESC, deadline, id) WHERE (status = 'queued'::text)"
    )
