"""Alembic environment: always run against the connection `Database.open()` hands over."""

from alembic import context

from gureum.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
