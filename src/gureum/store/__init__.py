"""Metadata store: one SQLAlchemy Core schema over SQLite (embedded) or PostgreSQL (cluster)."""

from gureum.store.database import Database

__all__ = ["Database"]
