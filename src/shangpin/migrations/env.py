"""Alembic environment for the operational database (tables defined in shangpin.storage.db).

`shangpin.storage.db.init_db` runs the migrations programmatically and hands over its open connection in
`config.attributes["connection"]`, so the same code serves SQLite files, in-memory SQLite and PostgreSQL.
Without one (the alembic command line), the URL comes from the `sqlalchemy.url` option or SHANGPIN_DB_URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alembic import context
from sqlalchemy import create_engine

from shangpin.storage.db import Base, default_db_url, normalize_db_url

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return normalize_db_url(config.get_main_option("sqlalchemy.url") or default_db_url())


def run_migrations_offline() -> None:
    """Write the migration SQL instead of running it (`alembic upgrade head --sql`)."""
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the connection given by the caller, or on a new one."""
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(_url())
        try:
            with engine.begin() as own_connection:
                _run(own_connection)
        finally:
            engine.dispose()
    else:
        _run(connection)


def _run(connection: Connection) -> None:
    # Batch mode lets later migrations alter columns on SQLite, which has no ALTER COLUMN.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
