"""One download over several connections (SPEC §12): each segment on its own TCP connection,
work stealing, one fresh signed link for all segments, the completed ranges kept beside the
part, and the SHA-256 of the growing prefix (the gate checks it before publication).

The fetcher opens the first request and hands its answer over; this module opens the others.
"""
import errno
import logging
import os
import threading
import time
from urllib.parse import urlsplit

import requests

from . import gate
from .diskio import Writeback, pwrite_all
from .errors import Cancelled, DiskFull, PermanentError, TransientError
from .http import STALL_BYTES
from .prefixhash import PrefixHasher
from .segments import Planner, drop_ranges, save_ranges
from .connshare import Link

log = logging.getLogger("daemon.segmented")

READ_SIZE = 1 << 20     # one preallocated buffer per connection, filled by readinto (no per-chunk allocation)
TICK = 0.25             # how often progress is reported and the stop event looked at
PERSIST_EVERY = 0.5     # seconds between writes of the completed-ranges file
CONNECTION_TRIES = 3    # a connection that fails this often in a row gives up; the others go on


class RangesIgnored(Exception):
    """The server answered a ranged request with the whole file: this connection stops."""


class LinkRefused(Exception):
    """The storage host refused the signed link (401/403): it expired."""

    def __init__(self, generation, status):
        super().__init__(f"the storage link was refused ({status})")
        self.generation = generation


def validator_of(headers, total):
    """What must stay the same between segments: strong ETag, Last-Modified and the total size."""
    etag = headers.get("ETag")
    return {"etag": None if not etag or etag.startswith("W/") else etag,
            "last_modified": headers.get("Last-Modified"), "total": total}


def ranges_supported(status, headers):
    """A 206, or a 200 that says `Accept-Ranges: bytes`."""
    return status == 206 or (status == 200 and headers.get("Accept-Ranges", "").strip().lower() == "bytes")


class Transfer:
    """Downloads the missing ranges of `part` (total known) and leaves its hash in `part.hasher`."""

    def __init__(self, *, job, part, response, url, validator, have, connections, segment_min, timeout,
                 throttle, headers_for, renew_link, new_session, first_end=None, lock=None):
        self.job, self.part = job, part
        self.first = response
        self.link = Link(url, renew_link)
        self.validator = validator
        self.total = validator["total"]
        self.planner = Planner(self.total, have, connections, segment_min, first_end)
        self.first_reach = first_end or self.total  # where the first answer's body ends
        self.connections = connections
        self.timeout = timeout
        self.throttle = throttle
        self.headers_for = headers_for
        self.new_session = new_session
        self._halt = threading.Event()
        self._error = None
        self._errors = []
        self._lock = threading.Lock()
        self._open = set()
        self._active = 0
        self.fd = None
        self.hasher = None
        self._threads = []
        self._lock_part = lock  # callable(fd): hold the part exclusively (two daemons never write one part)
        self._started = self._last_write = time.monotonic()

    # -- the coordinating thread -------------------------------------------------------
    def run(self, slots=None, host=None):
        """Download with as many connections as the plan has segments and `slots` grants for `host`."""
        wanted = min(self.connections, max(1, len(self.planner.segments)))
        self.connections = slots.take(host, wanted) if slots else wanted
        try:
            self._run()
        finally:
            if slots:
                slots.give_back(host, self.connections)

    def _run(self):
        part = self.part
        part.folder.mkdir(parents=True, exist_ok=True)
        # The ranges file comes first: a part is never extended past its prefix without one.
        save_ranges(part.path, self.validator, self.planner.have.spans)
        self.fd = part.open(os.O_RDWR)  # never through a link; the inode publication checks
        try:
            if self._lock_part:
                self._lock_part(self.fd)
            ahead = [s for s in self.planner.have.spans if s[0] > part.offset]
            self.hasher = PrefixHasher(self.fd, part.hasher, part.offset, ahead)
            # The first answer's segment is claimed before any thread runs: no other connection may
            # take it (and fetch again what the first answer is already bringing).
            first = self.planner.claim(0, first=part.offset)
            if first is not None and first.pos != part.offset:
                self.planner.release(first)
                first = None
            starts = [(self.first, first) if first else (None, None)] + [(None, None)] * (self.connections - 1)
            self._threads = threads = [
                threading.Thread(target=self._connection, args=(i, response, seg), daemon=True,
                                 name=f"seg-{self.job.download_id}-{i}")
                for i, (response, seg) in enumerate(starts)]
            for thread in threads:
                thread.start()
            self._watch(threads)
            hashed_at = time.monotonic()
            if self._error is not None:
                raise self._error
            if not self.planner.finished():
                raise self._errors[0] if self._errors else TransientError("segments left unfinished")
            os.fsync(self.fd)
            if self.hasher.prefix != self.total:
                raise TransientError(f"hashed {self.hasher.prefix} of {self.total} bytes", restart=True)
        finally:
            self._halt.set()
            self._close_all()
            for thread in self._threads:
                thread.join(self.timeout)
            os.close(self.fd)
        drop_ranges(part.path)  # complete: the part alone is the truth now
        part.hasher = self.hasher.hasher
        part.offset = self.total
        part.total = self.total
        if self.link.renewals:
            log.info("download %s: the storage link was renewed %d time(s)", self.job.download_id, self.link.renewals)
        # For the bench notes: how far the hash trailed the last byte, and how much it read back.
        log.info("download %s: %d segment(s) over %d connection(s) in %.2f s; hash done %.2f s after the last "
                 "byte, %.0f MiB hashed from the page cache", self.job.download_id, self.planner.claims,
                 self.connections, hashed_at - self._started, max(0.0, hashed_at - self._last_write),
                 self.hasher.reread / (1 << 20))

    def _watch(self, threads):
        saved = list(self.planner.have.spans)
        last_save = time.monotonic()
        while True:
            alive = [t for t in threads if t.is_alive()]
            if not alive:
                break
            alive[0].join(TICK)
            if self.job.stop.is_set():
                self._fail(Cancelled("stopped"))
            now = time.monotonic()
            spans, segments = self.planner.snapshot()
            if spans != saved and now - last_save >= PERSIST_EVERY:
                save_ranges(self.part.path, self.validator, spans)
                saved, last_save = spans, now
            self._report(spans, segments)
        spans, segments = self.planner.snapshot()
        if spans != saved:
            save_ranges(self.part.path, self.validator, spans)
        self._report(spans, segments)

    def _report(self, spans, segments):
        done = sum(b - a for a, b in spans)
        if self.job.on_progress:
            self.job.on_progress(done, self.total)
        on_segments = getattr(self.job, "on_segments", None)
        if on_segments:
            on_segments(self._active, segments)

    def halt(self):
        """Stop every connection now (pause, cancel, shutdown: from another thread)."""
        self._fail(Cancelled("stopped"))

    def _fail(self, exc):
        """Stop every connection; the first error decides the outcome."""
        with self._lock:
            if self._error is None:
                self._error = exc
        self._halt.set()
        self._close_all()

    def _close_all(self):
        with self._lock:
            responses = list(self._open)
        for response in responses:
            try:  # shutdown() wakes a recv() blocked in a connection thread
                response.raw.connection.sock.shutdown(2)
            except (AttributeError, OSError):
                pass

    # -- one connection ------------------------------------------------------------------
    def _connection(self, index, response, seg=None):
        session = None
        reach = self.first_reach if response is not None else None  # where the open answer's body ends
        failures = 0
        buffer = memoryview(bytearray(READ_SIZE))
        writeback = Writeback(self.fd)
        with self._lock:
            self._active += 1
        try:
            while not self._halt.is_set():
                seg = seg or self.planner.claim(index)
                if seg is None:
                    if self.planner.wants_steal() and not self._halt.wait(TICK):
                        continue  # a busy segment may turn out slow: then this connection takes half
                    return
                try:
                    if response is None:
                        session = session or self.new_session()
                        response = self._open_segment(session, seg)
                        reach = seg.end
                    else:
                        self._track(response)
                    self._pump(response, seg, buffer, writeback)
                    # An answer that runs on (the open-ended first one) feeds the next free piece.
                    while (after := self.planner.claim_next(index, seg, reach)) is not None:
                        self.planner.release(seg)
                        seg = after
                        self._pump(response, seg, buffer, writeback)
                    failures = 0
                except RangesIgnored:
                    log.info("download %s: a segment got the whole file instead of its range; one connection "
                             "fewer", self.job.download_id)
                    return
                except LinkRefused as exc:
                    failures += 1
                    if failures >= CONNECTION_TRIES:
                        self._errors.append(TransientError(str(exc)))
                        return
                    self.link.renew(exc.generation)
                except TransientError as exc:
                    if exc.restart:
                        self._fail(exc)
                        return
                    failures += 1
                    self._errors.append(exc)
                    if failures >= CONNECTION_TRIES or self._halt.wait(0.2 * failures):
                        return
                finally:
                    self.planner.release(seg)
                    seg = None
                    if response is not None:
                        self._untrack(response)
                        response.close()
                        response = None
        except BaseException as exc:  # noqa: BLE001 - anything else ends the whole transfer
            self._fail(exc if isinstance(exc, (Cancelled, PermanentError, DiskFull, TransientError))
                       else TransientError(f"segment failed: {exc}"))
        finally:
            writeback.flush()
            with self._lock:
                self._active -= 1
            if session is not None:
                session.close()

    def _track(self, response):
        with self._lock:
            self._open.add(response)

    def _untrack(self, response):
        with self._lock:
            self._open.discard(response)

    def _open_segment(self, session, seg):
        url, generation = self.link.current()
        headers = self.headers_for(url)
        headers["Range"] = f"bytes={seg.pos}-{seg.end - 1}"
        if self.validator["etag"] or self.validator["last_modified"]:
            headers["If-Range"] = self.validator["etag"] or self.validator["last_modified"]
        host = urlsplit(url).hostname
        try:
            response = session.get(url, headers=headers, stream=True, allow_redirects=False,
                                   timeout=(self.timeout, self.timeout))
        except requests.exceptions.RequestException as exc:
            raise TransientError(f"segment connection to {host} failed: {str(exc)[:160]}") from None
        self._track(response)
        status = response.status_code
        if status in (401, 403):
            raise LinkRefused(generation, status)
        if status == 200:
            length = response.headers.get("Content-Length", "")
            seen = validator_of(response.headers, int(length) if length.isdigit() else None)
            if self._changed(seen):
                raise TransientError("the file changed on the server between segments; starting again from zero",
                                     restart=True)
            raise RangesIgnored()
        if status != 206:
            raise TransientError(f"{host} answered {status} to a segment request")
        content_range = response.headers.get("Content-Range", "")
        try:
            span, _, size = content_range.split(" ", 1)[1].partition("/")
            start = int(span.split("-")[0])
            total = int(size)
        except (IndexError, ValueError):
            raise TransientError(f"unreadable Content-Range {content_range!r} on a segment") from None
        if self._changed(validator_of(response.headers, total)):
            raise TransientError("the file changed on the server between segments; starting again from zero",
                                 restart=True)
        if start != seg.pos:
            raise TransientError(f"a segment started at byte {start}, expected {seg.pos}")
        return response

    def _changed(self, seen):
        mine = self.validator
        return any(mine[k] is not None and seen[k] is not None and mine[k] != seen[k] for k in mine)

    def _pump(self, response, seg, buffer, writeback):
        """Receive the segment into `buffer`, write it at its place, feed the prefix hash."""
        reader = body_reader(response)
        read_size = min(READ_SIZE, self.throttle.read_size())
        window_start, window_bytes = time.monotonic(), 0
        while True:
            if self._halt.is_set():
                raise Cancelled("stopped")
            want = min(read_size, seg.end - seg.pos)
            if want <= 0:
                return  # done, or the rest was stolen by a free connection
            try:
                n = reader(buffer[:want])
            except Exception as exc:  # noqa: BLE001 - urllib3 / socket errors mid-body
                if self._halt.is_set():
                    raise Cancelled("stopped") from None
                raise TransientError(f"segment connection lost at byte {seg.pos}: {str(exc)[:120]}") from None
            if not n:
                if self._halt.is_set():
                    raise Cancelled("stopped")
                raise TransientError(f"segment connection closed at byte {seg.pos} (segment ends at {seg.end})")
            offset, count = self.planner.reserve(seg, n)
            if count:
                piece = buffer[:count]
                if offset == 0 and gate.sniff_problem(bytes(piece[:64])):
                    raise PermanentError("the server sent an HTML page instead of the model file")
                try:
                    pwrite_all(self.fd, piece, offset)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise DiskFull(f"disk full while writing {self.part.path.name}; free some space in "
                                       f"{self.part.folder}, then retry") from None
                    raise
                self.planner.commit(offset, count)
                self._last_write = time.monotonic()
                self.hasher.feed(offset, piece)
                writeback.wrote(offset, count)
                self.throttle.take(count, self.job.stop)
            now = time.monotonic()
            window_bytes += n
            if now - window_start >= self.timeout:
                if window_bytes < STALL_BYTES:
                    raise TransientError(f"segment stalled: under 1 KiB in {self.timeout:g} s")
                window_start, window_bytes = now, 0


def body_read(response):
    """Note that `response`'s body was read to its declared end (close_response may keep the connection)."""
    response.read_to_end = True


def close_response(response):
    """Close an answer. A body read to its declared end on a keep-alive connection gives the connection
    back to the session's pool: a burst of small files then reuses one connection instead of a TCP
    handshake and a close each (bench, ingest)."""
    fp = getattr(response.raw, "_fp", None)
    if getattr(response, "read_to_end", False) and fp is not None and not fp.will_close and not fp.chunked:
        fp.close()  # http.client's reader of this body; the socket stays with the connection
        response.raw.release_conn()
    response.close()


def body_reader(response):
    """readinto for the body: straight from http.client's buffered socket (no copy, at most one recv
    per call) when the body has a length, urllib3's read otherwise."""
    fp = getattr(response.raw, "_fp", None)
    inner = getattr(fp, "fp", None)
    if fp is not None and inner is not None and not getattr(fp, "chunked", True) and hasattr(inner, "readinto1"):
        return inner.readinto1
    raw = response.raw

    def read(view):
        chunk = raw.read1(len(view))
        view[:len(chunk)] = chunk
        return len(chunk)
    return read
