"""Opening the database (an SQLite file, or a PostgreSQL URL for a fleet) and bringing its schema up to
date, keeping every row; what cannot be used is a ConfigError that says what to do."""
import sqlite3
from urllib.parse import urlsplit

import peewee
from playhouse import migrate as pw_migrate

from .engines import Database, PgDatabase, db, hide_password
from .errors import ConfigError
from .models import TABLES
from .settings import is_postgres_url


def migrate_schema(database, tables=None):
    """Create missing tables and add missing columns, keeping every row (SQLite and PostgreSQL)."""
    tables = TABLES if tables is None else tables
    migrator = pw_migrate.SchemaMigrator.from_database(database)
    existing = set(database.get_tables())
    operations = []
    for model in tables:
        table = model._meta.table_name
        if table not in existing:
            continue
        have = {column.name for column in database.get_columns(table)}
        for field in model._meta.sorted_fields:
            if field.column_name in have:
                continue
            # Added as nullable: old rows get the default (when there is one), new rows get it from
            # the model. A NOT NULL constraint would need SQLite to rebuild the table.
            column = field.clone()
            column.null = True
            operations.append(migrator.add_column(table, field.column_name, column))
            if field.default is not None:
                operations.append(migrator.apply_default(table, field.column_name, field))
    with database.atomic():
        # Missing tables first (a new column may reference one), then the columns, then any
        # index that is still missing (IF NOT EXISTS: the existing ones are kept).
        database.create_tables([m for m in tables if m._meta.table_name not in existing], safe=True)
        pw_migrate.migrate(*operations)
        database.create_tables(tables, safe=True)


_SCHEMA_LOCK = 0x6369766974616900  # pg_advisory_lock key ("civitai"): one daemon migrates at a time


def open_postgres(url, password_hidden):
    """Connect to PostgreSQL and bring the schema up to date; errors are ConfigErrors without the password."""
    url = "postgresql://" + url.split("://", 1)[1]
    # timezone=UTC: timestamps are stored without a zone and read back as UTC (as with SQLite).
    db.initialize(PgDatabase(url, options="-c timezone=UTC", connect_timeout=10))
    try:
        db.connect(reuse_if_open=True)
        # Several daemons may start together on an empty database: one creates, the others wait.
        db.execute_sql("SELECT pg_advisory_lock(%s)", (_SCHEMA_LOCK,))
        try:
            migrate_schema(db)
        finally:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))
    except peewee.PeeweeException as exc:
        db.close()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        password = urlsplit(url).password
        if password:
            first = first.replace(password, "***")
        raise ConfigError(f"database {password_hidden}: cannot use it ({first}); check the URL in 'database', "
                          "that PostgreSQL runs and that the user may create tables") from None
    return db


def open_database(path, password_hidden=None):
    """Open (or create) the database (a file, or a PostgreSQL URL); a locked or corrupt one is a ConfigError."""
    if is_postgres_url(str(path)):
        return open_postgres(str(path), password_hidden or hide_password(str(path)))
    db.initialize(Database(None))
    db.init(str(path), pragmas={"journal_mode": "wal", "synchronous": "normal", "foreign_keys": 1},
            timeout=5)
    try:
        db.connect(reuse_if_open=True)
        result = db.execute_sql("PRAGMA quick_check").fetchone()
        if not result or result[0] != "ok":
            raise peewee.DatabaseError(result[0] if result else "quick_check failed")
        migrate_schema(db)
        # WAL lets reads past another writer's lock; only a write probe finds a held database.
        db.execute_sql("BEGIN IMMEDIATE")
        db.execute_sql("ROLLBACK")
    except (peewee.OperationalError, peewee.DatabaseError, sqlite3.DatabaseError) as exc:
        db.close()
        text = str(exc)
        if "locked" in text:
            raise ConfigError(f"database {path} is locked by another process (is another civitai-daemon running "
                              "with the same config?); stop it or set 'database' to another file") from None
        raise ConfigError(f"database {path} is unreadable ({text}); restore it from a backup or move it away "
                          "to start with an empty queue") from None
    return db
