"""Fleet-wide pacing of Civitai REST calls: one a second for all daemons sharing a PostgreSQL database.

The next free slot lives in a `pacing` row: each caller locks it (`SELECT …
FOR UPDATE`), takes the slot, moves it on, commits, then sleeps until its
slot. Slots are measured on the database server's clock, so the hosts' clocks
need not agree. With SQLite (one machine) a pacer does nothing: the update
check and library lookups pace their own calls, and resolution stays as fast
as it always was.
"""
import time

from .engines import is_postgres
from .models import Pace, db


class Pacer:
    """At most one call per `interval` seconds under `key`, for the whole fleet."""

    def __init__(self, key="civitai-api", interval=1.0):
        self.key = key
        self.interval = interval

    def wait(self, stop=None):
        """Block until this caller's slot; returns False when `stop` was set meanwhile."""
        if not is_postgres():
            return True
        delay = self._reserve_shared()
        if delay <= 0:
            return True
        if stop is not None:
            return not stop.wait(delay)
        time.sleep(delay)
        return True

    def _reserve_shared(self):
        with db.connection_context():
            with db.atomic():
                db.execute_sql('INSERT INTO "pacing" ("key", "next_at") VALUES (%s, 0) ON CONFLICT DO NOTHING',
                               (self.key,))
                now, next_at = db.execute_sql(
                    'SELECT extract(epoch from clock_timestamp())::float8, "next_at" FROM "pacing" '
                    'WHERE "key" = %s FOR UPDATE', (self.key,)).fetchone()
                slot = max(now, next_at)
                Pace.update(next_at=slot + self.interval).where(Pace.key == self.key).execute()
        return slot - now
