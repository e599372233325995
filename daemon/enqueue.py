"""New download rows for a batch of items: twins found, ids allocated, rows inserted (SPEC §5, §8).

Runs inside the caller's write transaction (queue.Queue.enqueue and enqueue_manifest), so the
twin lookups and the inserts see one state of the table. Hand-written SQL throughout: every
manifest of a burst runs it, and peewee's query building cost more than SQLite's work.
"""
import os

from .engines import hand_sql as _sql, is_postgres, param
from .models import Download, db, utcnow
from .states import Status

# What a new item may attach to as a twin; a completed one only while its file is still there.
ACTIVE = [Status.DOWNLOADING.value, Status.COMPLETED.value, Status.QUEUED.value, Status.PAUSED.value]

# A transaction-scoped advisory lock: enqueues of the fleet take turns, so twins are found across daemons.
_ENQUEUE_LOCK = 0x6369766974616901


def _ended_fields(item, now):
    """Row fields for an item that ends at intake (SPEC §13): already present, or unresolvable; else {}."""
    if item.error:
        return {"state": Status.FAILED.value, "error": item.error, "finished_at": now}
    if item.present:
        try:
            size = os.path.getsize(item.present)
        except OSError:
            size = 0
        return {"state": Status.COMPLETED.value, "path": item.present, "bytes": size, "total": size,
                "finished_at": now, "duration": 0.0, "error": None}
    return {}


def insert_items(items, manifest_id, store_url):
    """The rows for `items`, inserted inside the caller's write transaction; `store_url(url)` gives a
    URL's columns (public part, sealed secret part, dedupe key)."""
    rows = []
    now = utcnow()
    if is_postgres():
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (_ENQUEUE_LOCK,))
    ids = iter(_new_ids(len(items)))
    # Stored split: the public URL in clear, its secret part sealed; dedupe on the whole URL.
    urls = {item.url: store_url(item.url) for item in items if item.url}
    by_sha, by_version, by_url = _twin_index(
        {i.sha256 for i in items if i.sha256}, {i.version_id for i in items if i.version_id},
        {urls[i.url]["url_key"] for i in items if i.url})
    for item in items:
        stored = urls.get(item.url, {})
        key = stored.get("url_key")
        # A known hash decides alone against other versions (a re-upload is different content);
        # the same URL is the same content unless both name different hashes.
        same_url, url_hash = by_url.get(key, (None, None))
        if item.sha256:
            found = [by_sha.get(item.sha256), same_url if url_hash in (None, item.sha256) else None]
        else:
            found = [by_version.get(item.version_id), same_url]
        parent = min((f for f in found if f is not None), default=None)
        ended = _ended_fields(item, now)
        if ended:
            parent = None
        fields = {"state": Status.QUEUED.value, **ended}
        next_id = next(ids)
        row = Download(id=next_id, **stored, filename=item.filename,
                       subdir=item.subdir, expected_sha256=item.sha256, priority=item.priority,
                       manifest=manifest_id, manifest_index=item.index,
                       model_id=item.model_id, version_id=item.version_id, parent=parent,
                       created_at=now, source=item.source, **fields)
        # the first of its content: later twins attach to it (one ended at intake has nothing to share)
        if parent is None and not ended:
            if item.sha256:
                by_sha.setdefault(item.sha256, next_id)
            elif item.version_id:
                by_version.setdefault(item.version_id, next_id)
            if key:
                by_url.setdefault(key, (next_id, item.sha256))
        rows.append(row)
    # executemany: peewee's insert_many spends ~0.3 ms of Python per row building SQL.
    fields = list(Download._meta.sorted_fields)
    sql = 'INSERT INTO "{}" ({}) VALUES ({})'.format(
        Download._meta.table_name, ", ".join(f'"{f.column_name}"' for f in fields),
        ", ".join([param()] * len(fields)))
    defaults = {f.name: f.default() if callable(f.default) else f.default for f in fields}
    db.cursor().executemany(sql, [tuple(f.db_value(r.__data__.get(f.name, defaults[f.name]))
                                        for f in fields) for r in rows])
    return rows


def _new_ids(count):
    """`count` download ids no other writer takes: the sequence in PostgreSQL (ids are fleet-wide)."""
    if not is_postgres():  # under SQLite's write lock, MAX(id) cannot move
        first = (db.execute_sql('SELECT MAX("id") FROM "downloads"').fetchone()[0] or 0) + 1
        return range(first, first + count)
    cursor = db.execute_sql("SELECT nextval(pg_get_serial_sequence('downloads', 'id')) "
                            "FROM generate_series(1, %s)", (count,))
    return [row[0] for row in cursor.fetchall()]


def _twin_index(shas, versions, urls):
    """Earliest active, parentless download per SHA256, version id and URL key (for enqueue's dedupe);
    by URL also its expected hash."""
    active, completed = set(ACTIVE), Status.COMPLETED.value
    by_sha, by_version, by_url = {}, {}, {}

    def lookup(values, where, keys):
        values = list(values)
        for start in range(0, len(values), 400):
            chunk = set(values[start:start + 400])
            marks = ", ".join("?" * len(chunk))
            # Only the key columns in SQL, parent and state checked here: with "parent_id IS NULL" in the
            # WHERE, SQLite searched the parent index (every parentless row) for each manifest, so intake
            # slowed as the table grew (bench, ingest: 11 s for the first 1,000 manifests, 20 s at 5,000 rows).
            # Hand-written: every manifest runs it, and peewee's SQL building was 5 % of a burst's Python.
            sql = _sql('SELECT "id", "expected_sha256", "sha256", "version_id", "url_key", "parent_id", "state", '
                       f'"path" FROM "downloads" WHERE {where.format(marks)} ORDER BY "id" DESC')
            params = list(chunk) * where.count("{0}")
            for row in db.execute_sql(sql, params).fetchall():
                row_id, expected, sha256, version_id, url_key, parent_id, state, path = row
                if parent_id is not None or state not in active:
                    continue
                if state == completed and not (path and os.path.exists(path)):
                    continue  # its file was deleted: a child would only find it gone and queue itself again
                for target, key, value in keys(row_id, expected, sha256, version_id, url_key):
                    if key in chunk:
                        target[key] = value  # descending ids: the earliest wins

    lookup(shas, '"expected_sha256" IN ({0}) OR "sha256" IN ({0})',
           lambda i, expected, sha256, version, url: [(by_sha, expected, i), (by_sha, sha256, i)])
    lookup(versions, '"version_id" IN ({0})', lambda i, expected, sha256, version, url: [(by_version, version, i)])
    lookup(urls, '"url_key" IN ({0})', lambda i, expected, sha256, version, url: [(by_url, url, (i, expected))])
    return by_sha, by_version, by_url
