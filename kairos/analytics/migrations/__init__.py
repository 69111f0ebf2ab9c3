"""Alembic scripts for the analytics schema, shipped in the package and run at ``start()``
(kairos/analytics/migrate.py); no alembic.ini.

A new revision: copy ``versions/0001_llm_calls.py`` to the next number, set ``revision`` and
``down_revision``, write ``upgrade``/``downgrade`` (``op.batch_alter_table`` for anything SQLite
cannot ``ALTER``), and change ``kairos/analytics/schema.py`` to match (a test compares them).
"""
