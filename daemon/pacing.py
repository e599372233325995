"""Fleet-wide pacing of Civitai REST calls: one a second for all daemons sharing a PostgreSQL database.

A caller takes the fleet's turn by locking the `pacing` row (`SELECT … FOR
UPDATE`), waits until `next_at`, makes its call *while still holding the
lock*, and only once Civitai has answered sets `next_at` one interval on and
commits. The next call therefore starts a full interval after this one was
answered, however late this caller was: a reservation made ahead of time
gave that up whenever a caller stalled between its slot and its request
(load, a slow commit), and two calls reached Civitai 0.33 s apart. Times are
the database server's clock, so the hosts' clocks need not agree.

A holder that hangs cannot block the fleet for long: its transaction may sit
idle at most `hold` seconds (PostgreSQL then ends the session and the lock
goes). Waiting for the lock gives up every second to look at `stop`.

With SQLite (one machine) a pacer does nothing: the update check and library
lookups pace their own calls, and resolution stays as fast as it always was.
"""
import contextlib
import threading

import peewee

from .engines import is_postgres
from .models import db

LOCK_TIMEOUT = "55P03"  # SQLSTATE of "canceling statement due to lock timeout"


class Pacer:
    """At most one call per `interval` seconds under `key`, for the whole fleet."""

    def __init__(self, key="civitai-api", interval=1.0, hold=120.0):
        self.key = key
        self.interval = interval
        self.hold = hold  # longest a turn may last: the wait plus a call with its timeouts

    @contextlib.contextmanager
    def turn(self, stop=None):
        """`with pacer.turn(stop) as ok:` make the call when `ok`; False when `stop` was set meanwhile.

        The call's own exceptions pass through; the turn still counts (the request may have reached Civitai).
        """
        if not is_postgres():
            yield True
            return
        stop = stop or threading.Event()
        failure = None
        with db.connection_context():
            with db.atomic():
                ok = self._take(stop)
                try:
                    yield ok
                except BaseException as exc:  # kept for after the commit: a failed call was a call too
                    failure = exc
                if ok:
                    db.execute_sql('UPDATE "pacing" SET "next_at" = extract(epoch from clock_timestamp())::float8 + %s '
                                   'WHERE "key" = %s', (self.interval, self.key))
        if failure is not None:
            raise failure

    def _take(self, stop):
        """Lock the row (stoppable) and wait for `next_at`, read on the server's clock once the lock is held."""
        db.execute_sql('INSERT INTO "pacing" ("key", "next_at") VALUES (%s, 0) ON CONFLICT DO NOTHING', (self.key,))
        db.execute_sql(f"SET LOCAL idle_in_transaction_session_timeout = {int(self.hold * 1000)}")
        db.execute_sql("SET LOCAL lock_timeout = 1000")
        while True:
            if stop.is_set():
                return False
            try:
                with db.atomic():  # a savepoint: a lock timeout undoes only this try
                    next_at, = db.execute_sql('SELECT "next_at" FROM "pacing" WHERE "key" = %s FOR UPDATE',
                                              (self.key,)).fetchone()
                break
            except peewee.OperationalError as exc:
                if getattr(getattr(exc, "orig", None), "sqlstate", None) != LOCK_TIMEOUT:  # peewee keeps psycopg's
                    raise
        db.execute_sql("SET LOCAL lock_timeout TO DEFAULT")  # for the rest of a caller's own transaction, if any
        # A separate statement: a clock read in the locking SELECT may date from before the wait.
        now, = db.execute_sql("SELECT extract(epoch from clock_timestamp())::float8").fetchone()
        delay = next_at - now
        return not (delay > 0 and stop.wait(delay))
