"""The controller's database: engine/session, models, migrations (queries live with their owners)."""

from controller.db.engine import make_engine, make_session_factory
from controller.db.migrate import DatabaseNotMigrated, check_database_migrated, upgrade_database

__all__ = [
    "DatabaseNotMigrated",
    "check_database_migrated",
    "make_engine",
    "make_session_factory",
    "upgrade_database",
]
