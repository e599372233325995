"""The manifest folders: inbox → processing → done | failed, and result files.

This is the only module that moves manifest files. Folder names are states.
"""
import logging
import os
import stat
import threading
import time
from pathlib import Path

from . import events
from .engines import is_postgres
from .errors import ManifestError
from .manifest import parse_manifest
from .models import iso, utcnow
from .spoolfiles import (CLAIM, CLAIM_PREFIX, claim_name, free_name, is_manifest_name, move_file, node_tag, place,
                         sniff_suffix, stem, write_json_atomic)
from .states import ManifestStatus, Status

log = logging.getLogger("daemon.spool")

FILE_RETRY_SECONDS = 5.0


class Spool:
    """Takes manifests in, enqueues their items, and files them away when done."""

    def __init__(self, settings, queue, bus, parse=None):
        self.inbox = Path(settings.inbox_dir)
        self.processing = Path(settings.processing_dir)
        self.done = Path(settings.done_dir)
        self.failed = Path(settings.failed_dir)
        self.queue = queue
        self.bus = bus
        self.parse = parse or (lambda name, data: parse_manifest(data))  # intake.Intake.parse in the daemon
        # Intake and completion take separate locks so a burst of new manifests never waits for
        # finished ones being filed (and the other way round); placing a file under a free name
        # in done/ or failed/ is the only step both do, under its own short lock.
        self._lock = threading.Lock()
        self._finish_lock = threading.Lock()
        self._place_lock = threading.Lock()
        self._finished = set()  # manifest ids filed away by this process
        for folder in (self.inbox, self.processing, self.done, self.failed):
            folder.mkdir(parents=True, exist_ok=True)

    # -- intake ----------------------------------------------------------------
    def read(self, path):
        """The bytes of an inbox file without following symlinks or blocking (a FIFO swapped in is refused)."""
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ManifestError(["manifest: not a regular file; only regular files in inbox/ are read"])
        with os.fdopen(fd, "rb") as handle:
            return handle.read(64 << 20)

    def accept(self, path, items=None, problems=None):
        """Take one inbox file, already parsed by the watcher: reject it whole when there are
        `problems`, else move it to processing/ and enqueue its `items`."""
        path = Path(path)
        with self._lock:
            claimed = self._claim(path, path.name)
            if claimed is None:
                return None  # gone: another daemon sharing this inbox took it
            record = self._take(claimed, path.name, items, problems)
        # A workflow whose models are all present (or unresolvable) ends at once; any other manifest
        # ends with its last item's worker (no count query per manifest for nothing).
        if record is not None and not problems and all(item.present or item.error for item in items or ()):
            self.maybe_finish(record.id)
        return record

    def _take(self, claimed, name, items, problems):
        """Place a claimed file (under self._lock) in processing/ and enqueue it, or reject it."""
        try:
            if problems:
                return self._reject(claimed, problems, name)
            target = place(claimed, self.processing, name)
        except FileNotFoundError:  # held past the lease, so another daemon recovered it (recover_claims)
            log.warning("manifest %s: taken over by another daemon while this one placed it", name)
            return None
        # One transaction for the record and its items: a crash between them is still handled by resume().
        record, ids = self.queue.enqueue_manifest(target, items)
        # DEBUG: at 1,000 manifests a second the INFO line per manifest was a hot path (bench, ingest).
        log.debug("manifest %s: accepted with %d item(s): ids %s", target, len(items), _ids_text(ids))
        return record

    def _claim(self, path, name):
        """Rename a file to a private claim of this node: of daemons trying at once, exactly one succeeds."""
        private = self.processing / claim_name(self.queue.node, name)
        try:
            os.rename(path, private)
        except FileNotFoundError:
            return None
        return private

    # -- claims a crash left behind ------------------------------------------------
    def recover_claims(self, live_nodes=None, startup=False):
        """Take again the claims (inbox files renamed to `.claim-*`, not yet placed) that no live daemon holds.

        A daemon holds its claim for the moment between two renames, so one still there is a crash's. With
        SQLite, at start-up, every claim is (one daemon). In a fleet: this node's own at its start, those of
        a node not in `live_nodes` (its heartbeat is older than the lease), and any older than the lease.
        Re-claiming is a rename too, so of daemons recovering at once exactly one takes each claim.
        """
        if not is_postgres() and not startup:
            return 0
        live = {node_tag(n) for n in live_nodes or ()}
        recovered = 0
        for entry in list(os.scandir(self.processing)):
            match = CLAIM.match(entry.name)
            if match is not None and self._abandoned(match["owner"], entry, live, startup):
                recovered += self._recover(Path(entry.path), match)
        return recovered

    def _abandoned(self, owner, entry, live, startup):
        if not is_postgres():
            return True  # SQLite: one daemon, and it is starting
        mine = node_tag(self.queue.node)
        if owner == mine and startup:
            return True  # this node's previous run left it
        if owner not in (None, mine) and owner not in live:
            return True  # its node stopped sending heartbeats
        return time.time() - entry.stat(follow_symlinks=False).st_ctime > self.queue.lease  # rename sets ctime

    def _recover(self, path, match):
        try:
            regular = stat.S_ISREG(os.lstat(path).st_mode)
            name = match["name"] or f"recovered-{match['uuid']}{sniff_suffix(path) if regular else '.json'}"
        except FileNotFoundError:
            return 0  # another daemon recovered it first
        claimed = self._claim(path, name)
        if claimed is None:
            return 0
        if self._already_placed(claimed):  # the crash fell between placing's link and unlink
            os.unlink(claimed)
            log.warning("manifest %s: removed a leftover claim of a manifest already placed", name)
            return 1
        items, problems = [], ["manifest: not a regular file; only regular files in inbox/ are read"]
        if regular:
            try:
                items, problems = self.parse(name, self.read(claimed)), None
            except (ManifestError, OSError) as exc:
                problems = exc.problems if isinstance(exc, ManifestError) else [f"manifest: {exc.strerror or exc}"]
        with self._lock:
            record = self._take(claimed, name, items, problems)
        log.warning("manifest %s: recovered from a claim a stopped daemon left in processing/", name)
        if record is not None and not problems:
            self.maybe_finish(record.id)
        return 1

    def _already_placed(self, path):
        """True when processing/ or failed/ holds another name for this very file (same device and inode)."""
        seen = os.lstat(path)
        if seen.st_nlink < 2:
            return False
        for folder in (self.processing, self.failed):
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.inode() == seen.st_ino and not entry.name.startswith(CLAIM_PREFIX) \
                            and entry.stat(follow_symlinks=False).st_dev == seen.st_dev:
                        return True
        return False

    def _reject(self, path, errors, name=None):
        with self._place_lock:
            target = free_name(self.failed, name or path.name)
            result = {"manifest": target, "status": ManifestStatus.FAILED.value, "finished_at": iso(utcnow()),
                      "errors": errors, "items": []}
            write_json_atomic(self.failed / f"{stem(target)}.result.json", result)
            place(path, self.failed, target)
        record = self.queue.create_manifest(target, status=ManifestStatus.FAILED, errors=errors)
        self.queue.finish_manifest(record.id, ManifestStatus.FAILED, target, errors)
        log.error("manifest %s rejected: %s", target, "; ".join(errors))
        self.bus.publish(events.MANIFEST_FAILED, {"manifest": target, "status": ManifestStatus.FAILED.value,
                                                  "errors": errors, "items": []})
        return record

    def resume(self, live_nodes=None):
        """At start: claims a crash left are recovered, and manifests in processing/ that the database does
        not know yet are enqueued.

        A crash can also fall between the steps of intake (recorded, not yet enqueued) or of
        completion (every item ended, manifest not yet moved); both are finished here.
        """
        self.recover_claims(live_nodes, startup=True)
        for record in self.queue.open_manifests():
            if self._owns(record) and self.queue.manifest_items(record.id):
                self.maybe_finish(record.id)
        self.adopt_orphans(startup=True)

    def adopt_orphans(self, startup=False):
        """Enqueue the manifests in processing/ that the database does not know (with SQLite: at start).

        In a fleet the daemon that placed a file records it milliseconds later, so only a file older than
        the lease is an orphan — a daemon starting meanwhile took a live one a second time — and it is
        renamed to a claim first, so of daemons adopting at once exactly one gets it.
        """
        shared = is_postgres()
        if shared or startup:
            candidates = [p for p in sorted(self.processing.iterdir())
                          if is_manifest_name(p.name) and (not shared or self._older_than_lease(p))]
        else:
            candidates = []
        if not candidates:
            return
        records = {}
        for record in self.queue.open_manifests():
            records.setdefault(record.name, []).append(record)
        for path in candidates:
            # Known: another daemon's, or ours — at start only if enqueued (an empty one is a crash's: reused),
            # on a heartbeat at all (no item queries for every old manifest every few seconds).
            if any(not self._owns(r) or not startup or self.queue.manifest_items(r.id)
                   for r in records.get(path.name, ())):
                continue
            if shared:
                path = self._retake(path)
                if path is None:
                    continue  # another daemon adopted it first
            self._adopt(path)

    def _older_than_lease(self, path):
        try:
            return time.time() - path.lstat().st_ctime > self.queue.lease  # placing (a link) sets ctime
        except FileNotFoundError:
            return False

    def _retake(self, path):
        """A file in processing/ renamed to this node's claim and placed again: the path, or None if gone."""
        claimed = self._claim(path, path.name)
        if claimed is None:
            return None
        with self._lock:
            return self.processing / place(claimed, self.processing, path.name)

    def _adopt(self, path):
        try:
            items = self.parse(path.name, self.read(path))
        except (ManifestError, OSError) as exc:
            problems = exc.problems if isinstance(exc, ManifestError) else [str(exc)]
            with self._lock:
                self._reject(path, problems)
            return
        # A record without items: a crash fell between recording and enqueueing; it is reused.
        records = [r for r in self.queue.open_manifests() if r.name == path.name and self._owns(r)]
        record = records[0] if records else self.queue.create_manifest(path.name, items=len(items))
        self.queue.enqueue(items, manifest=record)
        log.info("manifest %s: resumed from processing/", path.name)

    def _owns(self, record):
        """A manifest stays with the daemon that took it (SPEC §14); with SQLite every one is ours."""
        return not is_postgres() or record.node in (None, self.queue.node)

    def finish_own(self):
        """Fleet mode: file away this daemon's manifests whose items other daemons finished."""
        for record in self.queue.open_manifests():
            if self._owns(record):
                self.maybe_finish(record.id)

    # -- completion --------------------------------------------------------------
    def maybe_finish(self, manifest_id):
        """File a manifest away once all its items have ended."""
        if manifest_id is None:
            return
        with self._finish_lock:
            # A count first: every item's end calls this, and loading all rows each time is quadratic.
            if manifest_id in self._finished or self.queue.manifest_pending(manifest_id):
                return
            record = self.queue.open_manifest(manifest_id)
            if record is None or not self._owns(record):
                return  # already finished by another worker, or another daemon's to file away
            self._finished.add(manifest_id)
            rows = self.queue.manifest_items(manifest_id)
            ok = bool(rows) and all(r.state == Status.COMPLETED.value for r in rows)
            status = ManifestStatus.DONE if ok else ManifestStatus.FAILED
            folder = self.done if ok else self.failed
            source = self.processing / record.name
            items = [{"index": r.manifest_index, "id": r.id, "status": r.state, "path": r.path,
                      "sha256": r.sha256, "verified": bool(r.verified), "bytes": r.bytes,
                      "error": r.error, **({"source": r.source} if r.source else {})} for r in rows]
            try:
                with self._place_lock:
                    target = free_name(folder, record.name)
                    result = {"manifest": target, "status": status.value, "finished_at": iso(utcnow()),
                              "errors": [], "items": items}
                    # Result first, then the manifest: a host app waiting for the manifest finds its result too.
                    write_json_atomic(folder / f"{stem(target)}.result.json", result)
                    if source.exists():
                        move_file(source, folder / target)
            except OSError as exc:  # disk full, say: stay in processing/ and try again later
                self._finished.discard(manifest_id)
                (folder / f"{stem(target)}.result.json").unlink(missing_ok=True)
                log.error("manifest %s: cannot file it in %s (%s); trying again in %d s", record.name, folder,
                          exc.strerror or exc, FILE_RETRY_SECONDS)
                timer = threading.Timer(FILE_RETRY_SECONDS, self.maybe_finish, [manifest_id])
                timer.daemon = True
                timer.start()
                return
            self.queue.finish_manifest(manifest_id, status, target)
        log.info("manifest %s: %s (%d item(s))", target, status, len(items))
        name = events.MANIFEST_DONE if ok else events.MANIFEST_FAILED
        self.bus.publish(name, {"manifest": target, "status": status.value, "items": items,
                                                 "errors": []})


def _ids_text(ids):
    if len(ids) <= 10:
        return ", ".join(map(str, ids))
    return f"{ids[0]}…{ids[-1]}"
