"""Alembic environment of the registry: migrates on the connection `kairos.core.db.migrate` hands over."""

from alembic import context

from kairos.core.db import run_migrations
from kairos.registry.models import Base

run_migrations(context, Base.metadata)
