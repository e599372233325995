"""The database as a queue: enqueue, claim, record, recover, query.

Every state change goes through `_set_state`, which checks the transition
table, commits, and only then publishes the event. Two documented exceptions:
`claim` (choosing the row and moving it must be one statement, or two workers
take the same download) and `recover` (one bulk statement at start, before any
subscriber cares). Both check their one move against the table too.
"""
import datetime
import json
import logging

import peewee

from . import events
from .engines import hand_sql as _sql, is_postgres, model_rows
from .enqueue import insert_items
from .errors import InvalidTransition, NotFound
from .models import Download, ManifestRecord, db, iso, utcnow
from .redact import join_url, redact_text, split_url
from .states import ENDED, TRANSITIONS, ManifestStatus, Status, check_action, check_transition

log = logging.getLogger("daemon.queue")

_CLAIM_SQL = """
UPDATE "downloads" SET "state" = ?, "started_at" = ?, "error" = NULL, "not_before" = NULL,
       "attempts" = "attempts" + 1, "node" = ?, "lease_until" = ?
WHERE "id" = (
    SELECT d."id" FROM "downloads" AS d
    WHERE d."state" = ?
      AND (d."parent_id" IS NULL OR EXISTS (
           SELECT 1 FROM "downloads" AS p WHERE p."id" = d."parent_id" AND p."state" IN (?, ?, ?)))
      AND (d."not_before" IS NULL OR d."not_before" <= ?)
      AND d."id" NOT IN ({busy})
    ORDER BY d."priority" DESC, d."id" LIMIT 1{skip_locked})
  AND "state" = ?
RETURNING *"""

def _set_clause(values):
    """`"col" = ?, …` and its parameters for plain field values, or None when one needs peewee."""
    fields = Download._meta.fields
    if any(name not in fields or isinstance(value, peewee.Node) for name, value in values.items()):
        return None
    return (", ".join(f'"{fields[name].column_name}" = ?' for name in values),
            [fields[name].db_value(value) for name, value in values.items()])


def _update_returning(download_id, states, values):
    """UPDATE one download if its state is in `states`, RETURNING the row (a list of 0 or 1 rows).

    Hand-written: each download's end runs it, and peewee spent more Python building the
    statement than SQLite spent running it (bench, ingest). Expressions go through peewee.
    """
    clause = _set_clause(values) if states else None
    if clause is None:
        change = (Download.update(**values).where((Download.id == download_id) & Download.state.in_(states))
                  .returning(Download))
        return list(change.execute())
    sql = (f'UPDATE "downloads" SET {clause[0]} WHERE "id" = ? AND "state" IN ({", ".join("?" * len(states))}) '
           'RETURNING *')
    return model_rows(Download, sql, (*clause[1], download_id, *states))


class Queue:
    """Queue operations over the Download table; publishes events on `bus`."""

    def __init__(self, bus, views, sealer, node=None, lease=60):
        self.bus = bus
        self.sealer = sealer  # seals the secret part of URLs (redact.Sealer)
        self.views = views  # rows → the dicts events carry (daemon.views.Views)
        self.progress = views.progress  # live in-memory progress, id → dict
        self.node = node    # this daemon's name, recorded on its claims and manifests
        self.lease = lease  # fleet mode: seconds a claim lasts unless renewed

    # -- manifests -------------------------------------------------------
    def create_manifest(self, name, items=0, status=ManifestStatus.PROCESSING, errors=()):
        with db.connection_context():
            record = ManifestRecord.create(name=name, items=items, status=ManifestStatus(status).value,
                                           errors=json.dumps(list(errors)), node=self.node)
        self.views.remember_manifest(record)
        return record

    def finish_manifest(self, manifest_id, status, final_name, errors=()):
        # Hand-written SQL here and below: every manifest's end runs these, and peewee spent more
        # Python building them than SQLite spent running them (bench, ingest).
        with db.connection_context():
            db.execute_sql(_sql('UPDATE "manifests" SET "status" = ?, "finished_at" = ?, "final_name" = ?, '
                                '"errors" = ? WHERE "id" = ?'),
                           (ManifestStatus(status).value, ManifestRecord.finished_at.db_value(utcnow()), final_name,
                            json.dumps(list(errors)), manifest_id))

    def open_manifests(self):
        with db.connection_context():
            rows = list(ManifestRecord.select().where(ManifestRecord.status == ManifestStatus.PROCESSING.value))
        for row in rows:
            self.views.remember_manifest(row)
        return rows

    def open_manifest(self, manifest_id):
        """The manifest record if it is still processing, else None."""
        with db.connection_context():
            return next(iter(model_rows(ManifestRecord, 'SELECT * FROM "manifests" WHERE "id" = ? AND "status" = ?',
                                        (manifest_id, ManifestStatus.PROCESSING.value))), None)

    def manifest_items(self, manifest_id):
        with db.connection_context():
            return model_rows(Download, 'SELECT * FROM "downloads" WHERE "manifest_id" = ? ORDER BY "manifest_index"',
                              (manifest_id,))

    def manifest_pending(self, manifest_id):
        """How many of a manifest's items have not ended yet."""
        ended = [s.value for s in ENDED]
        with db.connection_context():
            return db.execute_sql(_sql('SELECT COUNT(*) FROM "downloads" WHERE "manifest_id" = ? AND "state" NOT IN '
                                       f'({", ".join("?" * len(ended))})'), (manifest_id, *ended)).fetchone()[0]

    # -- enqueue ---------------------------------------------------------
    def enqueue(self, items, manifest=None, civitai_url=None):
        """Insert items (manifest.Item) as queued downloads; returns their ids.

        One short write transaction even for 10,000 items: twins are found with a few bulk
        queries and in memory, and rows go in with executemany (row-by-row creates held the
        write lock for seconds, so workers' claims hit "database is locked").
        """
        with db.connection_context():
            with db.atomic("IMMEDIATE"):
                rows = insert_items(items, manifest.id if manifest else None, self._store_url)
        return self._announce(rows)

    def enqueue_manifest(self, name, items):
        """A manifest record and its items in one transaction (intake wrote them in three); (record, ids)."""
        with db.connection_context():
            with db.atomic("IMMEDIATE"):
                record = ManifestRecord(name=name, items=len(items), status=ManifestStatus.PROCESSING.value,
                                        errors="[]", node=self.node, received_at=utcnow())
                # Hand-written, as the items below: peewee's create() was 2 % of a burst's Python.
                record.id = db.execute_sql(_sql(
                    'INSERT INTO "manifests" ("name", "status", "items", "errors", "received_at", "node") '
                    'VALUES (?, ?, ?, ?, ?, ?) RETURNING "id"'),
                    (name, record.status, record.items, record.errors,
                     ManifestRecord.received_at.db_value(record.received_at), self.node)).fetchone()[0]
                rows = insert_items(items, record.id, self._store_url)
        self.views.remember_manifest(record)
        return record, self._announce(rows)

    def _announce(self, rows):
        """The events for rows just committed; their ids."""
        if len(rows) <= 200:
            for row, data in zip(rows, self.views.downloads(rows)):
                self.bus.publish(events.FOR_STATE[Status(row.state)], data)
        elif rows:  # a huge batch: one summary event instead of thousands
            self.bus.publish(events.DOWNLOAD_QUEUED, {"id": rows[0].id, "count": len(rows),
                                                 "first_id": rows[0].id, "last_id": rows[-1].id})
        return [row.id for row in rows]

    # -- worker side -----------------------------------------------------
    def claim(self, exclude=()):
        """Atomically take the next runnable download (highest priority, oldest).

        `exclude`: ids a worker is still busy with (a download paused and resumed
        quickly is queued again before its old attempt has wound down).
        """
        check_transition(Status.QUEUED, Status.DOWNLOADING)
        now = utcnow()
        busy = [int(i) for i in exclude]
        ended = tuple(s.value for s in ENDED)
        # In PostgreSQL, SKIP LOCKED lets daemons claiming at once each take a different row (without it
        # the loser re-checks the winner's row, finds it taken and claims nothing).
        sql = _CLAIM_SQL.format(busy=", ".join("?" * len(busy)) or "-1",  # never NOT IN (NULL)
                                skip_locked=" FOR UPDATE SKIP LOCKED" if is_postgres() else "")
        lease_until = now + datetime.timedelta(seconds=self.lease) if is_postgres() else None
        # One UPDATE … RETURNING statement: atomic on its own. A child waits until its parent ended
        # (a correlated EXISTS: a primary-key lookup per candidate, not a scan of every ended row).
        params = (Status.DOWNLOADING.value, now, self.node, lease_until, Status.QUEUED.value, *ended, now, *busy,
                  Status.QUEUED.value)
        with db.connection_context():
            rows = model_rows(Download, sql, params)
        if not rows:
            return None
        row = rows[0]
        self.bus.publish(events.DOWNLOAD_STARTED, self.views.download(row))
        return row

    def next_wake(self):
        """The earliest not_before among waiting items, or None."""
        with db.connection_context():
            row = (Download.select(peewee.fn.MIN(Download.not_before))
                   .where((Download.state == Status.QUEUED.value) & Download.not_before.is_null(False)).scalar())
        return row

    def update(self, download_id, **fields):
        """A single-statement update that changes no state (progress, metadata)."""
        clause = _set_clause(fields) if fields else None
        with db.connection_context():
            if clause is None:
                Download.update(**fields).where(Download.id == download_id).execute()
            else:  # hand-written: every download runs it once or more (see _update_returning)
                db.execute_sql(_sql(f'UPDATE "downloads" SET {clause[0]} WHERE "id" = ?'), (*clause[1], download_id))

    def bump(self, download_id, retries=0, hash_mismatches=0):
        with db.connection_context():
            Download.update(retries=Download.retries + retries,
                            hash_mismatches=Download.hash_mismatches + hash_mismatches
                            ).where(Download.id == download_id).execute()

    def finish(self, download_id, state, expect=(Status.DOWNLOADING,), **fields):
        """Move a download to `state` if it is still in one of `expect`; returns the row or None."""
        state = Status(state)
        if state in ENDED:
            fields.setdefault("finished_at", utcnow())
        return self._set_state(download_id, state, expect=expect, **fields)

    def _set_state(self, download_id, state, expect=None, event=None, **fields):
        sources = {s for s in Status if state in TRANSITIONS[s] or s == state}
        if fields.get("error"):  # an error may quote a URL: its password or token never reaches the row
            fields["error"] = redact_text(fields["error"])
        if expect is not None:
            sources &= set(expect)
        with db.connection_context():
            rows = _update_returning(download_id, sorted(s.value for s in sources), {"state": state.value, **fields})
            if not rows:  # not found, not in an expected state, or an illegal move: say which
                row = Download.get_or_none(Download.id == download_id)
                if row is None:
                    raise NotFound(f"no download with id {download_id}")
                if expect is not None and Status(row.state) not in expect:
                    return None
                check_transition(row.state, state)
                return None
        row = rows[0]
        name = event or events.FOR_STATE[state]
        if self.progress is not None and state != Status.DOWNLOADING:
            self.progress.pop(download_id, None)
        try:
            data = self.views.download(row)
        except Exception:  # committed already: a broken view must not stop the caller's next steps
            log.exception("download %s: cannot describe it for the %s event", download_id, name)
            data = {"id": row.id, "state": row.state}
        self.bus.publish(name, data)
        return row

    def action(self, download_id, action):
        """A user action (pause/resume/cancel/retry); raises NotFound or InvalidTransition."""
        with db.connection_context():
            row = Download.get_or_none(Download.id == download_id)
        if row is None:
            raise NotFound(f"no download with id {download_id}")
        target = check_action(action, row.state)
        fields = {}
        if action == "retry":
            fields = {"error": None, "finished_at": None, "not_before": None}
        if action == "cancel":
            fields = {"finished_at": utcnow()}
        result = self._set_state(download_id, target, expect={Status(row.state)}, **fields)
        if result is None:  # the state moved under us; report the conflict
            raise InvalidTransition(f"download {download_id} changed state; try again")
        return self.views.download(result)

    def retry_failed(self):
        """Retry every failed download (after an outage); returns the ids moved back to queued."""
        with db.connection_context():
            ids = [r.id for r in Download.select(Download.id).where(Download.state == Status.FAILED.value)]
        retried = []
        for download_id in ids:
            try:
                self.action(download_id, "retry")
            except InvalidTransition:  # moved meanwhile (retried by hand, say): nothing to do
                continue
            retried.append(download_id)
        return retried

    def recover(self):
        """At start: downloads left `downloading` by a stop or crash go back to queued (no events).

        In a fleet only this node's claims (and lapsed ones): the other daemons' are theirs.
        """
        check_transition(Status.DOWNLOADING, Status.QUEUED)
        where = Download.state == Status.DOWNLOADING.value
        if is_postgres():
            where &= (Download.node == self.node) | (Download.lease_until < utcnow())
        with db.connection_context():
            return Download.update(state=Status.QUEUED.value, lease_until=None).where(where).execute()

    def renew(self, ids):
        """Fleet mode: extend the lease of this node's claims on `ids`."""
        if not ids:
            return 0
        with db.connection_context():
            return (Download.update(lease_until=utcnow() + datetime.timedelta(seconds=self.lease))
                    .where(Download.id.in_(list(ids)) & (Download.node == self.node)
                           & (Download.state == Status.DOWNLOADING.value)).execute())

    def reclaim_lapsed(self):
        """Fleet mode: claims whose lease ran out (their daemon died) go back to the queue; their ids."""
        with db.connection_context():
            rows = list(Download.update(state=Status.QUEUED.value, lease_until=None)
                        .where((Download.state == Status.DOWNLOADING.value) & (Download.lease_until < utcnow()))
                        .returning(Download).execute())
        for row in rows:
            log.warning("download %s: the lease of node %s ran out; back in the queue", row.id, row.node)
            self.bus.publish(events.DOWNLOAD_QUEUED, self.views.download(row))
        return [row.id for row in rows]

    def _store_url(self, url):
        """The columns of a URL: public part, sealed secret part, dedupe key."""
        public, secret = split_url(url)
        return {"url": public, "url_secret": self.sealer.seal(secret), "url_key": self.sealer.url_key(url)}

    def private_url(self, row):
        """The URL to fetch for a download: the public part joined with its unsealed secret part."""
        return join_url(row.url, self.sealer.open(row.url_secret))

    # -- queries ---------------------------------------------------------
    def get(self, download_id):
        with db.connection_context():
            # Hand-written SQL on the hot paths: peewee spends more Python building a query than
            # SQLite spends running it (research in bench/RESULTS.md, ingest).
            row = next(iter(model_rows(Download, 'SELECT * FROM "downloads" WHERE "id" = ?', (download_id,))), None)
        if row is None:
            raise NotFound(f"no download with id {download_id}")
        return row

    def list(self, state=None, limit=50, offset=0, completed_only=False):
        with db.connection_context():
            query = Download.select()
            if completed_only:
                query = query.where(Download.state == Status.COMPLETED.value)
            elif state:
                query = query.where(Download.state == state)
            total = query.count()
            rows = list(query.order_by(Download.id.desc()).limit(limit).offset(offset))
        return self.views.downloads(rows), total

    def counts(self):
        counts = {s.value: 0 for s in Status}
        with db.connection_context():
            for state, count in (Download.select(Download.state, peewee.fn.COUNT(Download.id))
                                 .group_by(Download.state).tuples()):
                counts[state] = count
        return counts

    def metrics(self):
        with db.connection_context():
            row = Download.select(
                peewee.fn.COUNT(Download.id),
                peewee.fn.SUM(peewee.Case(None, [(Download.state == Status.COMPLETED.value, 1)], 0)),
                peewee.fn.SUM(peewee.Case(None, [(Download.state == Status.FAILED.value, 1)], 0)),
                peewee.fn.SUM(peewee.Case(None, [(Download.state == Status.COMPLETED.value, Download.bytes)], 0)),
                peewee.fn.SUM(peewee.Case(None, [((Download.state == Status.COMPLETED.value) & Download.parent.is_null(),
                                                  Download.duration)], 0)),
                peewee.fn.SUM(peewee.Case(None, [((Download.state == Status.COMPLETED.value) & Download.parent.is_null(),
                                                  Download.bytes)], 0)),
                peewee.fn.SUM(Download.retries), peewee.fn.SUM(Download.hash_mismatches),
            ).tuples().first()
        downloads, completed, failed, total_bytes, seconds, timed_bytes, retries, mismatches = [v or 0 for v in row]
        ended = completed + failed
        return {
            "downloads": downloads, "completed": completed, "failed": failed, "bytes": total_bytes,
            "average_speed": round(timed_bytes / seconds, 1) if seconds else 0.0,
            "retries": retries, "hash_mismatches": mismatches,
            "success_rate": round(completed / ended, 4) if ended else 1.0,
        }

    def manifests(self, limit=50, offset=0):
        with db.connection_context():
            query = ManifestRecord.select()
            total = query.count()
            rows = list(query.order_by(ManifestRecord.id.desc()).limit(limit).offset(offset))
        return [{"id": r.id, "manifest": r.name, "status": r.status, "items": r.items,
                 "errors": json.loads(r.errors or "[]"), "received_at": iso(r.received_at),
                 "finished_at": iso(r.finished_at), "final_name": r.final_name} for r in rows], total

