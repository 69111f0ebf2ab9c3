"""The revisions, oldest first (Alembic reads them by path and skips this file)."""
