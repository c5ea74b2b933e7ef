"""Alembic migrations of the executor's tables (version table `alembic_version_executor`)."""
