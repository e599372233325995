"""Peewee models and database set-up: SQLite in WAL mode, or PostgreSQL for a fleet (SPEC §14)."""
import datetime
import re
import sqlite3
import threading
from urllib.parse import urlsplit

import peewee
from playhouse import migrate as pw_migrate

from .errors import ConfigError
from .settings import is_postgres_url
from .states import ManifestStatus, Status

def hide_password(url):
    """A database URL with its password masked (for messages and the API)."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://[^/@:]*:)[^@/]*@", r"\1***@", url, flags=re.I)


class _KeepOpen:
    """A connection context that leaves the thread's connection open.

    Every thread here is long-lived (workers, intake, the hub's thread pool), so
    one connection per thread is reused; opening one per query (and running the
    pragmas each time) cost a fifth of the CPU of ingesting small manifests.
    """

    def __init__(self, database):
        self.database = database

    def __enter__(self):
        self.database.connect(reuse_if_open=True)

    def __exit__(self, *exc):
        return False


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


class Database(peewee.SqliteDatabase):
    """SQLite with writers queued on a lock in this process.

    SQLite's own busy handler sleeps 1, 2, 5, 10 … 100 ms between tries, so
    five threads writing small transactions spent most of their time asleep;
    a Python lock hands the write lock over at once. Readers (WAL) never wait.
    """

    _write_lock = threading.RLock()
    _held = threading.local()

    def connection_context(self):
        return _KeepOpen(self)

    def execute_sql(self, sql, params=None):
        if self.in_transaction() or not sql.lstrip()[:7].upper().startswith(_WRITES):
            return super().execute_sql(sql, params)
        with self._write_lock:
            return super().execute_sql(sql, params)

    def begin(self, lock_type=None):
        self._write_lock.acquire()
        self._held.depth = getattr(self._held, "depth", 0) + 1
        try:
            super().begin(lock_type)
        except BaseException:
            self._release()
            raise

    def _release(self):
        if getattr(self._held, "depth", 0) > 0:
            self._held.depth -= 1
            self._write_lock.release()

    def commit(self):
        try:
            return super().commit()
        finally:
            self._release()

    def rollback(self):
        try:
            return super().rollback()
        finally:
            self._release()


class _KeepOpenOrReconnect(_KeepOpen):
    """A kept connection that a server restart or network cut broke is replaced by a new one."""

    def __enter__(self):
        conn = None if self.database.is_closed() else self.database.connection()
        if conn is not None and (conn.broken or conn.closed):  # psycopg marks it when a statement failed
            self.database.close()
        self.database.connect(reuse_if_open=True)


class PgDatabase(peewee.PostgresqlDatabase):
    """PostgreSQL (psycopg 3) for fleet mode; one connection per thread, kept open like SQLite's."""

    def connection_context(self):
        return _KeepOpenOrReconnect(self)

    def begin(self, isolation_level=None):
        # Callers write atomic("IMMEDIATE") for SQLite's write lock; PostgreSQL's row locks need none.
        if isinstance(isolation_level, str) and isolation_level.upper() in ("IMMEDIATE", "EXCLUSIVE", "DEFERRED"):
            isolation_level = None
        return super().begin(isolation_level)


def is_postgres():
    return isinstance(db.obj, peewee.PostgresqlDatabase)


def param():
    """The engine's query placeholder, for the hand-written SQL on hot paths ("?" or "%s")."""
    return db.obj.param


def hand_sql(text):
    """Hand-written SQL with "?" placeholders in the engine's own style."""
    return text if param() == "?" else text.replace("?", param())


class _Proxy(peewee.DatabaseProxy):
    """The engine chosen at open; its own connection_context (kept connections), not the proxy's."""
    __slots__ = peewee.DatabaseProxy.__slots__  # Proxy checks names against the class's own list

    def connection_context(self):
        return self.obj.connection_context()


db = _Proxy()


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(value):
    """ISO 8601 text for a stored datetime (stored as UTC), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BaseModel(peewee.Model):
    class Meta:
        database = db


class ManifestRecord(BaseModel):
    name = peewee.CharField(index=True)         # file name as it was in inbox/
    status = peewee.CharField(default=ManifestStatus.PROCESSING.value, index=True)
    items = peewee.IntegerField(default=0)
    errors = peewee.TextField(default="[]")     # JSON list
    received_at = peewee.DateTimeField(default=utcnow)
    finished_at = peewee.DateTimeField(null=True)
    final_name = peewee.CharField(null=True)    # name in done/ or failed/ (may carry a suffix)
    node = peewee.CharField(null=True)          # fleet mode: the daemon that took it (and finishes it)

    class Meta:
        table_name = "manifests"


class Download(BaseModel):
    state = peewee.CharField(default=Status.QUEUED.value, index=True)
    url = peewee.TextField(null=True)           # secrets removed
    url_secret = peewee.TextField(null=True)    # the removed secret part, sealed (redact.Sealer)
    url_key = peewee.CharField(null=True, index=True)  # keyed hash of the full URL: the dedupe key
    filename = peewee.CharField(null=True)
    subdir = peewee.CharField(null=True)
    path = peewee.TextField(null=True)
    sha256 = peewee.CharField(null=True, index=True)  # the hash of the bytes we have (indexed: enqueue's dedupe)
    expected_sha256 = peewee.CharField(null=True, index=True)
    verified = peewee.BooleanField(default=False)
    bytes = peewee.BigIntegerField(default=0)
    total = peewee.BigIntegerField(null=True)
    priority = peewee.IntegerField(default=0)
    manifest = peewee.ForeignKeyField(ManifestRecord, null=True, backref="downloads", on_delete="SET NULL")
    manifest_index = peewee.IntegerField(null=True)
    model_id = peewee.IntegerField(null=True, index=True)
    version_id = peewee.IntegerField(null=True, index=True)
    model_name = peewee.CharField(null=True)
    version_name = peewee.CharField(null=True)
    base_model = peewee.CharField(null=True)
    model_type = peewee.CharField(null=True)
    api_size = peewee.BigIntegerField(null=True)
    civitai_info = peewee.TextField(null=True)  # the version's API JSON, for sidecars
    error = peewee.TextField(null=True)
    not_before = peewee.DateTimeField(null=True)
    attempts = peewee.IntegerField(default=0)
    retries = peewee.IntegerField(default=0)
    hash_mismatches = peewee.IntegerField(default=0)
    parent = peewee.ForeignKeyField("self", null=True, backref="children", on_delete="SET NULL")
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    finished_at = peewee.DateTimeField(null=True)
    duration = peewee.FloatField(null=True)
    source = peewee.CharField(null=True)        # where a workflow or image named it (SPEC §13)
    node = peewee.CharField(null=True)          # the daemon that claimed it last
    lease_until = peewee.DateTimeField(null=True)  # fleet mode: the claim lapses after this unless renewed

    class Meta:
        table_name = "downloads"
        indexes = ((("state", "priority", "id"), False),)


class ModelUpdate(BaseModel):
    model_id = peewee.IntegerField(index=True)
    version_id = peewee.IntegerField()
    model_name = peewee.CharField(null=True)
    version_name = peewee.CharField(null=True)
    previous_version_id = peewee.IntegerField(null=True)
    sha256 = peewee.CharField(null=True)
    reason = peewee.CharField(default="new version")
    detected_at = peewee.DateTimeField(default=utcnow)
    state = peewee.CharField(default="pending")  # states.UpdateState
    download = peewee.ForeignKeyField(Download, null=True, on_delete="SET NULL")
    not_before = peewee.DateTimeField(null=True)          # when a waiting update can start
    base_model = peewee.CharField(null=True)
    previous_base_model = peewee.CharField(null=True)
    size = peewee.BigIntegerField(null=True)              # the new file's bytes (API size)
    previous_path = peewee.TextField(null=True)           # the file the update replaces (replace mode)
    subdir = peewee.TextField(null=True)                  # where the new version goes
    filename = peewee.CharField(null=True)
    mode = peewee.CharField(null=True)                    # alongside | replace, once applied
    replace_state = peewee.CharField(null=True)           # null | moving | done (intent recorded first)
    replaced_to = peewee.TextField(null=True)             # where the old file went in .replaced/

    class Meta:
        table_name = "updates"
        indexes = ((("model_id", "version_id", "sha256"), True),)


class LibraryEntry(BaseModel):
    """One model file under a library root (SPEC §10): one row per path."""
    path = peewee.TextField(unique=True)          # absolute, as found under its root
    root = peewee.TextField()
    size = peewee.BigIntegerField(default=0)
    device = peewee.BigIntegerField(null=True)
    inode = peewee.BigIntegerField(null=True)
    mtime_ns = peewee.BigIntegerField(null=True)
    sha256 = peewee.CharField(null=True, index=True)
    model_id = peewee.IntegerField(null=True, index=True)
    version_id = peewee.IntegerField(null=True, index=True)
    model_name = peewee.CharField(null=True)
    version_name = peewee.CharField(null=True)
    model_type = peewee.CharField(null=True)
    base_model = peewee.CharField(null=True)
    published_at = peewee.CharField(null=True)    # the version's publishedAt (else createdAt), ISO text
    source = peewee.CharField(default="unknown")  # downloaded | sidecar | civitai | unknown
    civitai_info = peewee.TextField(null=True)    # the version JSON, for sidecars and the update check
    missing = peewee.BooleanField(default=False)
    download = peewee.ForeignKeyField(Download, null=True, on_delete="SET NULL")
    first_seen = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "library"


class HashCache(BaseModel):
    """SHA256 by (device, inode), valid while size and mtime_ns match: renames keep it."""
    device = peewee.BigIntegerField()
    inode = peewee.BigIntegerField()
    size = peewee.BigIntegerField()
    mtime_ns = peewee.BigIntegerField()
    sha256 = peewee.CharField()

    class Meta:
        table_name = "hash_cache"
        primary_key = peewee.CompositeKey("device", "inode")


class UnknownHash(BaseModel):
    """A SHA256 Civitai did not know when last asked (asked again after 7 days)."""
    sha256 = peewee.CharField(primary_key=True)
    asked_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "unknown_hashes"


class LibraryScan(BaseModel):
    state = peewee.CharField(default="running")
    summary = peewee.TextField(default="{}")      # the GET /api/library/scan body when it ended
    started_at = peewee.DateTimeField(default=utcnow)
    finished_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "library_scans"


class ModelPolicy(BaseModel):
    """A per-model update policy override (SPEC §11): notify, alongside, replace or ignore."""
    model_id = peewee.IntegerField(primary_key=True)
    policy = peewee.CharField()

    class Meta:
        table_name = "model_policies"


class RpcTask(BaseModel):
    """What an aria2 client sent for a download (SPEC §13), so it finds its task again by dir + out."""
    download = peewee.ForeignKeyField(Download, primary_key=True, on_delete="CASCADE")
    dir = peewee.TextField(null=True)           # as the client sent it
    out = peewee.TextField(null=True)
    hidden = peewee.BooleanField(default=False)  # aria2.removeDownloadResult: off the RPC's stopped list

    class Meta:
        table_name = "rpc_tasks"


class Node(BaseModel):
    """A daemon of the fleet and when it was last alive (GET /api/nodes)."""
    name = peewee.CharField(unique=True)
    started_at = peewee.DateTimeField(default=utcnow)
    last_heartbeat = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "nodes"


class Pace(BaseModel):
    """A fleet-wide schedule: the next free slot (epoch seconds, the database's clock) per key."""
    key = peewee.CharField(primary_key=True)
    next_at = peewee.DoubleField(default=0.0)

    class Meta:
        table_name = "pacing"


class DailyRun(BaseModel):
    """A job run once per day for the fleet: the first daemon to insert (job, day) runs it."""
    job = peewee.CharField()
    day = peewee.CharField()
    node = peewee.CharField(null=True)
    started_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "daily_runs"
        indexes = ((("job", "day"), True),)


TABLES = [ManifestRecord, Download, ModelUpdate, RpcTask, LibraryEntry, HashCache, UnknownHash, LibraryScan,
          ModelPolicy, Node, Pace, DailyRun]


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
