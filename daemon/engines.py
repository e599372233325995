"""The database engines behind the models: SQLite with writers queued on a lock, PostgreSQL for a fleet,
the connections each thread keeps, and `db`, the proxy the models use (bound to one engine at open)."""
import re
import threading

import peewee


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


_COLUMN_PLANS = {}  # (model, column names) → per column (field name, python_value), or None: not a field


def model_rows(model, sql, params=()):
    """Instances of `model` for hand-written SQL, as `model.raw` builds them but without its per-query
    work: peewee resolved every column to its field on each query, a third of the cost of a small
    download's row reads (bench, ingest). The plan of each column list is worked out once."""
    cursor = db.execute_sql(hand_sql(sql), params)
    names = tuple(column[0] for column in cursor.description)
    plan = _COLUMN_PLANS.get((model, names))
    if plan is None:
        plan = []
        for name in names:
            field = model._meta.columns.get(name) or model._meta.fields.get(name)
            plan.append((field.name, field.python_value) if field is not None else None)
        _COLUMN_PLANS[(model, names)] = plan
    rows = []
    for values in cursor.fetchall():
        instance = model(__no_default__=True)
        data = instance.__data__
        for name, step, value in zip(names, plan, values):
            if step is None:  # not a column of the model (an expression): an attribute, as peewee does
                setattr(instance, name, value)
            else:
                data[step[0]] = step[1](value) if value is not None else value
        instance._dirty.clear()
        rows.append(instance)
    return rows


class _Proxy(peewee.DatabaseProxy):
    """The engine chosen at open; its own connection_context (kept connections), not the proxy's."""
    __slots__ = peewee.DatabaseProxy.__slots__  # Proxy checks names against the class's own list

    def connection_context(self):
        return self.obj.connection_context()


db = _Proxy()
