"""Completed downloads join the library (SPEC §10), off the publisher's thread and in batches.

The bus calls `on_event` in the worker that finished the download, so it only
queues the id. A thread of its own adopts what gathered every ~100 ms: one
query for those downloads, one for the entries already at their paths, one
transaction for the hash cache and the entries (hand-written upserts). The
download's SHA256 was verified as it was written: nothing is hashed again.
"""
import collections
import logging
import os
import threading
import types

from ..events import DOWNLOAD_COMPLETED
from ..engines import param
from ..models import Download, HashCache, LibraryEntry, UnknownHash, db
from .identity import from_download

log = logging.getLogger("daemon.library")

WINDOW = 0.1   # seconds a burst of completions gathers before it is written
CHUNK = 300    # ids per IN (…) list (SQLite's variable limit)

_DOWNLOAD = ("id", "path", "sha256", "model_id", "version_id", "model_name", "version_name", "model_type",
             "base_model", "civitai_info")
_ENTRY_FIELDS = [f for f in LibraryEntry._meta.sorted_fields if f.name != "id"]
_CACHE_FIELDS = [HashCache.device, HashCache.inode, HashCache.size, HashCache.mtime_ns, HashCache.sha256]


def _names(columns):
    return ", ".join(f'"{c}"' for c in columns)


def _upsert(model, fields, key, keep=()):
    """INSERT … ON CONFLICT (key) DO UPDATE: one statement for SQLite (≥ 3.24) and PostgreSQL alike."""
    columns = [f.column_name for f in fields]
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in key and c not in keep)
    marks = ", ".join([param()] * len(columns))
    return (f'INSERT INTO "{model._meta.table_name}" ({_names(columns)}) VALUES ({marks}) '
            f'ON CONFLICT ({_names(key)}) DO UPDATE SET {updates}')


class Adopter:
    """Queues completed downloads and writes them into the library in batches."""

    def __init__(self, settings, window=WINDOW):
        self.roots = [str(r) for r in settings.library["roots"]]
        self.download_dir = str(settings.download_dir)
        self.window = window
        self._ids = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="library-adopt", daemon=True)
        self._thread.start()

    def on_event(self, event):
        """Bus subscriber (the publisher's thread): queue the id, nothing more."""
        if event.name == DOWNLOAD_COMPLETED and isinstance(event.data, dict):
            self._ids.append(event.data.get("id"))
            self._wake.set()

    def stop(self, timeout=3.0):
        """Adopt what is queued, then end the thread."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self):
        while True:
            self._wake.wait()
            if not self._stopping.is_set():
                self._stopping.wait(self.window)  # let a burst gather: one transaction for all of it
            self._wake.clear()  # before draining: an id queued after this wakes the next round
            batch = []
            while self._ids:
                batch.append(self._ids.popleft())
            if batch:
                try:
                    self.adopt(batch)
                except Exception:  # the next batch must still be adopted
                    log.exception("library: could not add download(s) %s", batch[:20])
            if self._stopping.is_set() and not self._ids:
                return

    # -- one batch ---------------------------------------------------------------
    def adopt(self, ids):
        """Make library entries of these downloads (those with a path and a SHA256 whose file exists)."""
        ids = sorted({i for i in ids if isinstance(i, int)})
        with db.connection_context():
            found = []
            for d in self._downloads(ids):
                try:
                    found.append((d, os.stat(d.path)))
                except OSError:  # moved or deleted since: the next scan will tell
                    continue
            if not found:
                return
            existing = self._entries([d.path for d, _ in found])
            rows, cache, named = {}, [], []
            for d, info in found:
                row = existing.get(d.path) or LibraryEntry(path=d.path, root=self._root(d.path))
                row.size, row.device, row.inode = info.st_size, info.st_dev, info.st_ino
                row.mtime_ns = info.st_mtime_ns
                row.sha256, row.missing = d.sha256, False
                if d.version_id:
                    from_download(row, d)
                    named.append((d.sha256,))
                rows[d.path] = row
                cache.append((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, d.sha256))
            entries = [tuple(f.db_value(row.__data__.get(f.name)) for f in _ENTRY_FIELDS) for row in rows.values()]
            with db.atomic():
                cursor = db.cursor()
                cursor.executemany(_upsert(HashCache, _CACHE_FIELDS, ("device", "inode")), cache)
                cursor.executemany(_upsert(LibraryEntry, _ENTRY_FIELDS, ("path",), keep=("first_seen",)), entries)
                # a hash Civitai names through our download is no longer unknown: twins get identified next scan
                if named:
                    cursor.executemany(f'DELETE FROM "{UnknownHash._meta.table_name}" WHERE "sha256" = {param()}',
                                       named)

    def _root(self, path):
        return next((r for r in self.roots if path.startswith(r.rstrip("/") + "/")), self.download_dir)

    @staticmethod
    def _downloads(ids):
        columns = _names(Download._meta.fields[n].column_name for n in _DOWNLOAD)
        out = []
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            cursor = db.execute_sql(f'SELECT {columns} FROM "{Download._meta.table_name}" WHERE "id" IN '
                                    f'({", ".join([param()] * len(chunk))})', chunk)
            out += [types.SimpleNamespace(**dict(zip(_DOWNLOAD, values))) for values in cursor.fetchall()]
        return [d for d in out if d.path and d.sha256]

    @staticmethod
    def _entries(paths):
        rows = {}
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            # Hand-written (the batch's one read of existing entries; peewee's query building was 7 % of a
            # 1,000-download burst's Python, bench ingest): fresh downloads find none and hydrate nothing.
            rows.update((row.path, row) for row in LibraryEntry.raw(
                f'SELECT * FROM "{LibraryEntry._meta.table_name}" WHERE "path" IN ({", ".join([param()] * len(chunk))})',
                *chunk))
        return rows
