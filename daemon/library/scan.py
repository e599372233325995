"""The library scan: walk, hash, import sidecars, identify, record — in its own OS thread.

A scan only reads model files; it writes the database and, with `sidecars:
true`, missing sidecars beside identified files (never over an existing one).
"""
import json
import logging
import threading
import time

from .. import sidecars
from ..events import LIBRARY_SCAN_DONE, LIBRARY_SCAN_PROGRESS
from ..models import Download, LibraryEntry, LibraryScan, db, iso, utcnow
from ..states import Status
from . import hashcache, hashing, sidecars_in, store, walk
from .adopt import Adopter
from .identify import Identifier, Pacer, fresh_unknowns, remember_unknown
from .identity import apply_version, clear_identity, from_download

log = logging.getLogger("daemon.library")

PROGRESS_INTERVAL = 0.25  # at most 4 progress events a second
MAX_ERRORS_IN_EVENT = 100


def _blank(scan_id):
    return {"id": scan_id, "state": "running", "phase": "walking", "files": 0, "files_done": 0, "bytes": 0,
            "bytes_done": 0, "rate": 0.0, "eta": None, "new": 0, "changed": 0, "missing": 0, "identified": 0,
            "unknown": 0, "hashed": 0, "api_calls": 0, "started_at": iso(utcnow()), "finished_at": None, "errors": []}


def _under(path, starts):
    return any(path == start or path.startswith(start.rstrip("/") + "/") for _, start in starts)


class Scanner:
    """Starts scans (one at a time), reports their progress, keeps completed downloads in the library."""

    def __init__(self, settings, client, bus):
        self.settings = settings
        self.config = settings.library
        self.client = client
        self.bus = bus
        self.stop_event = threading.Event()
        self.pacer = Pacer(stop=self.stop_event)
        self._lock = threading.Lock()
        self._progress_lock = threading.Lock()
        self._status = None
        self._thread = None
        self.adopter = Adopter(settings)  # completed downloads join the library
        bus.subscribe(self.adopter.on_event)

    # -- control ---------------------------------------------------------------
    def recover(self):
        """At start: a scan left running by a crash is recorded as failed."""
        with db.connection_context():
            LibraryScan.update(state="failed", finished_at=utcnow()).where(LibraryScan.state == "running").execute()

    def start(self, paths=None):
        """(scan id, True) for a new scan, or (running id, False) to join it; ValueError for a stray PATH."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self._status["id"], False
            starts = walk.starts_for(self.config["roots"], paths)
            with db.connection_context():
                record = LibraryScan.create()
            self._status = _blank(record.id)
            self._thread = threading.Thread(target=self._run, args=(record.id, starts, bool(paths)),
                                            name=f"library-scan-{record.id}", daemon=True)
            self._thread.start()
            return record.id, True

    def run_blocking(self):
        """Run a full scan (or wait for the running one) and return its summary."""
        self.start()
        thread = self._thread
        if thread is not None:
            thread.join()
        return self.status()

    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout=3.0):
        self.stop_event.set()
        self.adopter.stop(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self):
        """The running or last scan (SPEC §10 keys), or {"state": "idle"} before the first."""
        if self._status is not None:
            with self._progress_lock:
                return json.loads(json.dumps(self._status))
        with db.connection_context():
            last = LibraryScan.select().order_by(LibraryScan.id.desc()).first()
        if last is None:
            return {"state": "idle"}
        summary = json.loads(last.summary or "{}")
        summary.update(id=last.id, state=last.state, started_at=iso(last.started_at),
                       finished_at=iso(last.finished_at))
        return summary

    # -- progress -----------------------------------------------------------------
    def _advance(self, files=0, nbytes=0, force=False):
        with self._progress_lock:
            status = self._status
            status["files_done"] += files
            status["bytes_done"] += nbytes
            now = time.monotonic()
            if self._hash_started is not None:
                self._hashed += nbytes
                elapsed = now - self._hash_started
                if elapsed > 0.05:
                    status["rate"] = round(self._hashed / elapsed, 1)
                left = status["bytes"] - status["bytes_done"]
                status["eta"] = round(left / status["rate"], 1) if status["rate"] else None
            if not force and now - self._last_event < PROGRESS_INTERVAL:
                return
            self._last_event = now
            data = dict(status, errors=status["errors"][:MAX_ERRORS_IN_EVENT])
        self.bus.publish(LIBRARY_SCAN_PROGRESS, data)

    def _set(self, **fields):
        with self._progress_lock:
            self._status.update(fields)

    # -- the scan -------------------------------------------------------------------
    def _run(self, scan_id, starts, partial):
        self._hash_started, self._hashed, self._last_event = None, 0, 0.0
        started = time.monotonic()
        try:
            self._scan(starts)
            state = "failed" if self.stop_event.is_set() else "done"
            if state == "failed":
                self._status["errors"].append({"path": None, "error": "scan stopped: the daemon is shutting down"})
        except Exception as exc:  # a bug must end this scan, not the daemon
            log.exception("library scan %s failed", scan_id)
            state = "failed"
            self._status["errors"].append({"path": None, "error": f"internal error: {type(exc).__name__}: {exc}"})
        self._set(state=state, phase="done", finished_at=iso(utcnow()), eta=0 if state == "done" else None)
        summary = self.status()
        with db.connection_context():
            LibraryScan.update(state=state, finished_at=utcnow(), summary=json.dumps(summary)).where(
                LibraryScan.id == scan_id).execute()
        log.info("library scan %s %s in %.1f s: %d file(s), %d new, %d changed, %d missing, %d identified, "
                 "%d unknown, %d API call(s), %d error(s)", scan_id, state, time.monotonic() - started,
                 summary["files"], summary["new"], summary["changed"], summary["missing"], summary["identified"],
                 summary["unknown"], summary["api_calls"], len(summary["errors"]))
        self.bus.publish(LIBRARY_SCAN_DONE, summary)

    def _scan(self, starts):
        errors = []
        # by path: a PATH given twice, or a file and its folder, is one file
        found = list({f.path: f for f in walk.walk(starts, self.config["extensions"], errors)}.values())
        self._set(files=len(found), bytes=sum(f.size for f in found), errors=errors, phase="hashing")
        shas = self._hash(found)
        self._set(phase="identifying")
        index = store.load_index()
        unknown = fresh_unknowns()
        dirty, retry = self._compare(found, index, shas, unknown)
        identifier = Identifier(self.client, self.pacer)
        self._identify(dirty + retry, identifier, unknown)
        dirty += [row for row in retry if row.version_id]  # unchanged unknown files written only when identified
        self._set(api_calls=identifier.calls)
        for problem in identifier.problems:
            self._status["errors"].append({"path": None, "error": problem})
        store.save(dirty)
        remember_unknown((), known={row.sha256 for row in dirty if row.version_id})  # named now, not unknown
        seen = {f.path for f in found}
        gone = [known.id for path, known in index.items()
                if path not in seen and not known.missing and _under(path, starts)]
        store.mark_missing(gone)
        versions = {path: known.version_id for path, known in index.items()}
        versions.update((row.path, row.version_id) for row in dirty)
        identified = sum(1 for f in found if versions.get(f.path))
        self._set(missing=len(gone), identified=identified, unknown=len(found) - identified, phase="sidecars")
        if self.settings.sidecars:
            self._write_sidecars([row for row in dirty if row.version_id and row.civitai_info])
        self._advance()  # the last report only if its turn has come: the done event follows at once

    def _hash(self, found):
        """{(device, inode): sha256} for every readable file, from the cache or hashed now."""
        cache = hashcache.load_all()
        shas, todo, per_key = {}, {}, {}
        cached_files = cached_bytes = 0
        for f in found:
            per_key[f.key] = per_key.get(f.key, 0) + 1
            sha = hashcache.lookup(cache, f)
            if sha:
                shas[f.key] = sha
                cached_files += 1
                cached_bytes += f.size
            elif f.key not in todo:
                todo[f.key] = f
        self._advance(files=cached_files, nbytes=cached_bytes)
        self._hash_started = time.monotonic()
        fresh = []
        by_path = {f.path: f for f in todo.values()}
        results = hashing.hash_many(list(by_path.values()), self.config["hash_threads"],
                                    on_bytes=lambda n: self._advance(nbytes=n), stop=self.stop_event)
        for path, sha, error in results:
            f = by_path[path]
            if sha:
                shas[f.key] = sha
                fresh.append((f.device, f.inode, f.size, f.mtime_ns, sha))
            else:
                with self._progress_lock:
                    self._status["errors"].append({"path": path, "error": f"cannot read: {error}"})
            self._advance(files=per_key[f.key])
        hashcache.store(fresh)
        self._set(hashed=len(fresh))
        return shas

    def _compare(self, found, index, shas, unknown):
        """Entries to write (new, changed, reappeared) and unchanged unknown entries worth another try.

        Only those are loaded whole: an unchanged file costs a tuple compare, no query, no write.
        """
        todo, retry_ids = [], []  # todo: (known entry or None, Found, sha256)
        new = changed = 0
        for f in found:
            sha = shas.get(f.key)
            known = index.get(f.path)
            if known is None:
                new += 1
            elif (known.size, known.mtime_ns, known.device, known.inode) != (f.size, f.mtime_ns, f.device, f.inode):
                changed += 1
            elif not known.missing and known.sha256 == sha:
                if sha and not known.version_id and (f.sidecars or sha not in unknown):
                    retry_ids.append(known.id)  # a sidecar lies beside it, or its week as unknown is over
                continue
            todo.append((known, f, sha))
        rows = store.load_rows([known.id for known, _, _ in todo if known] + retry_ids)
        dirty = []
        for known, f, sha in todo:
            row = rows[known.id] if known else LibraryEntry(path=f.path, root=f.root, source="unknown")
            if row.sha256 != sha:
                clear_identity(row)
            row.root, row.size, row.device, row.inode, row.mtime_ns = f.root, f.size, f.device, f.inode, f.mtime_ns
            row.sha256, row.missing = sha, False
            dirty.append(row)
        self._set(new=new, changed=changed)
        return dirty, [rows[i] for i in retry_ids]

    def _identify(self, dirty, identifier, unknown):
        """Identify rows: our downloads, sidecars, twins in the library, then Civitai in bulk."""
        pending = [row for row in dirty if row.sha256 and not row.version_id]
        if not pending:
            return
        with db.connection_context():
            downloads = {}
            shas = list({row.sha256 for row in pending})
            for start in range(0, len(shas), 300):
                for d in Download.select().where(Download.sha256.in_(shas[start:start + 300])
                                                 & (Download.state == Status.COMPLETED.value)
                                                 & Download.version_id.is_null(False)):
                    downloads.setdefault(d.sha256, d)
        twins = store.twins(shas)
        ask = []
        for row in pending:
            d = downloads.get(row.sha256)
            if d is not None:
                from_download(row, d)
                continue
            if self._from_sidecars(row):
                continue
            twin = twins.get(row.sha256)
            if twin is not None:
                apply_version(row, json.loads(twin[0]), twin[1])
                continue
            ask.append(row)
        ask_hashes = {row.sha256 for row in ask if row.sha256 not in unknown}
        known, asked = identifier.known_ids(ask_hashes) if ask_hashes else ({}, set())
        remember_unknown(asked - set(known), known=known)
        for row in ask:
            if row.sha256 in known:
                row.model_id, row.version_id = known[row.sha256]
                row.source = "civitai"
        details = {row.sha256 for row in pending if row.version_id and not row.civitai_info}
        versions = identifier.versions(details) if details else {}
        for row in pending:
            version = versions.get(row.sha256)
            if version is not None and row.version_id in (None, version.get("id")):
                apply_version(row, version, row.source if row.source != "unknown" else "civitai")

    @staticmethod
    def _from_sidecars(row):
        """Identify from a sidecar that vouches for this file; True when one did."""
        for car in sidecars_in.read(row.path):
            if not car.version_id or not car.accepts(row.sha256, row.mtime_ns or 0):
                continue
            if car.version:
                apply_version(row, car.version, "sidecar")
            else:
                row.version_id, row.model_id, row.source = car.version_id, car.model_id, "sidecar"
                for key, value in car.fields.items():
                    if value and not getattr(row, key):
                        setattr(row, key, value)
            return True
        return False

    def _write_sidecars(self, rows):
        for row in rows:
            if self.stop_event.is_set():
                return
            try:
                sidecars.write_missing(row.path, row.civitai_info, self.settings)
            except Exception:  # a sidecar is a courtesy: never the end of a scan
                log.exception("library: sidecars for %s", row.path)
