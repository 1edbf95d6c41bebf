from tests.controller.dbfixtures import any_db_url, pg_url, sqlite_url

__all__ = ["any_db_url", "pg_url", "sqlite_url"]
