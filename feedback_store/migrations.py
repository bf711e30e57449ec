"""Numbered migrations: migrations/NNNN_name.sql, applied in order, each in a transaction."""
from importlib.resources import files

import duckdb

from .connection import transaction


def available() -> list[tuple[int, str]]:
    scripts = []
    for entry in files("feedback_store").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            scripts.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(scripts)


LATEST_VERSION = max(number for number, _ in available())


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
        " AND table_catalog = current_database()"
    ).fetchone()[0]
    if not exists:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER, applied_wall_ns BIGINT)"
    )
    version = current_version(con)
    # Every number not yet applied, not only those above the highest: migrations written
    # in parallel can land out of order (a file at 5 must not hide a later-landed 3).
    applied = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for number, script in available():
        if number in applied:
            continue
        with transaction(con):
            con.execute(script)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, epoch_ns(now()))", [number]
            )
        version = max(version, number)
    return version
