"""The worker pool: each step claims one download and runs it through resolve → fetch → record.

The resolve and fetch stages never change a download's state: each hands back
one `Outcome`, and `_record` is the one place that writes it, logs it and lets
the spool file a finished manifest. A download whose content is already on
disk (a twin's file, a library entry) is settled by placement.py instead of
fetched. Workers are plain OS threads (hashing, socket reads and file writes
release the GIL, so two downloads use both cores); they never touch gevent
objects.
"""
import collections
import datetime
import logging
import threading
import time
from pathlib import Path

from . import events, sidecars
from .library import dedupe
from .errors import Cancelled, DaemonError, EarlyAccess, HashMismatch, PartBusy, PermanentError, TransientError
from .fetch import Job
from .filenames import is_civitai_page as _is_civitai_page
from .models import utcnow
from .outcome import Outcome, until as _until
from .parts import remove_part
from .placement import Placement
from .states import ENDED, Status

log = logging.getLogger("daemon.worker")

PROGRESS_DB_INTERVAL = 1.0
API_RETRY_SECONDS = 60


class WorkerPool:
    """`workers` threads around `step()`; woken by queue events, stopped by `stop()`."""

    def __init__(self, settings, queue, fetcher, resolver, spool, progress, bus, sleep=None):
        self.settings = settings
        self.queue = queue
        self.fetcher = fetcher
        self.resolver = resolver
        self.spool = spool
        self.progress = progress
        self.placement = Placement(settings, queue)
        self.stopping = threading.Event()
        self._wake = threading.Condition()
        self._wake_flag = False
        self._active = {}  # download id → Job (its stop event aborts the fetch)
        self._cancelled = collections.deque()  # ids cancelled while no worker ran them: parts to remove
        self._lock = threading.Lock()
        self.threads = []
        # sleep(seconds, stop_event) → True when stopped: the retry back-off of every fetch
        # waits through it, so the in-process tests run retries without waiting.
        self.sleep = sleep or (lambda seconds, stop: stop.wait(seconds))
        bus.subscribe(self._on_event)

    # -- lifecycle -------------------------------------------------------------
    def start(self):
        for number in range(self.settings.workers):
            thread = threading.Thread(target=self._run, name=f"worker-{number + 1}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout=8.0):
        """Stop claiming, abort running fetches (parts are kept), wait for the threads."""
        self.stopping.set()
        with self._lock:
            for job in self._active.values():
                if job is not None:
                    job.interrupt()
        self.wake()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            stuck = list(self._active)
        for download_id in stuck:
            # A read blocked on a silent server outlives the wait: record the state anyway (the part
            # on disk holds every byte received, so the next start resumes from it).
            if self.queue.finish(download_id, Status.QUEUED, event=events.DOWNLOAD_QUEUED) is not None:
                log.warning("download %s still blocked in a read at shutdown; recorded as queued", download_id)

    def healthy(self):
        return all(t.is_alive() for t in self.threads)

    def active_ids(self):
        """Ids of the downloads this daemon's workers hold (their leases are renewed)."""
        with self._lock:
            return list(self._active)

    def wake(self):
        with self._wake:
            self._wake_flag = True
            self._wake.notify_all()

    def _on_event(self, event):
        if event.name in (events.DOWNLOAD_PAUSED, events.DOWNLOAD_CANCELLED):
            with self._lock:
                job = self._active.get(event.data.get("id"))
                if job is None and event.name == events.DOWNLOAD_CANCELLED:
                    # Queued or paused: no worker will see it stop, so one settles it (part, manifest).
                    self._cancelled.append(event.data.get("id"))
            if job:
                job.interrupt()
            elif event.name == events.DOWNLOAD_CANCELLED:
                self.wake()
        elif event.name == events.DOWNLOAD_QUEUED:
            self.wake()

    def run_until_idle(self, max_steps=10_000):
        """Run steps in this thread until nothing is runnable (rq's burst mode); returns the step count."""
        steps = 0
        while steps < max_steps and self.step():
            steps += 1
        return steps

    def _run(self):
        log.debug("%s started", threading.current_thread().name)
        while not self.stopping.is_set():
            try:
                worked = self.step()
            except Exception:
                log.exception("worker step failed; carrying on")
                worked = False
            if not worked:
                self._sleep()
        log.debug("%s stopped", threading.current_thread().name)

    def _sleep(self):
        wake_at = self.queue.next_wake()
        timeout = 5.0
        if wake_at is not None:
            if wake_at.tzinfo is None:
                wake_at = wake_at.replace(tzinfo=datetime.timezone.utc)
            timeout = max(0.05, min(timeout, (wake_at - utcnow()).total_seconds()))
        with self._wake:
            if not self._wake_flag:
                self._wake.wait(timeout)
            self._wake_flag = False

    # -- one step ----------------------------------------------------------------
    def step(self):
        """Claim one download and carry it to its next state; False when nothing was runnable."""
        if self.stopping.is_set():
            return False
        if self._settle_cancelled():
            return True
        with self._lock:
            busy = list(self._active)
        row = self.queue.claim(exclude=busy)
        if row is None:
            return False
        with self._lock:
            self._active.setdefault(row.id, None)  # reserved until this step ends
        try:
            try:
                outcome = self.placement.settle_child(row) if row.parent_id else self._pipeline(row)
            except Exception as exc:  # a bug must fail one item, not kill the worker
                log.exception("download %s: unexpected error", row.id)
                outcome = Outcome.failed(f"internal error: {type(exc).__name__}: {exc}")
            self._record(row, outcome)
        finally:
            self.progress.pop(row.id)
            with self._lock:
                self._active.pop(row.id, None)
            self.wake()  # the id may have been resumed meanwhile; let a worker take it
        return True

    def _pipeline(self, row):
        entry = dedupe.match(row)
        if entry is not None:
            return self.placement.settle_from_library(row, entry)
        plan = self._resolve(row)
        return plan if isinstance(plan, Outcome) else self._fetch(*plan)

    # -- stage 1: resolve -----------------------------------------------------------
    def _civitai_fields(self, row):
        """What the Civitai API adds to the download ({} when not a Civitai item), or an Outcome."""
        page = not row.url or _is_civitai_page(row.url)
        if not self.resolver.wants(row) or (not page and row.civitai_info is not None):
            return {}
        try:
            return self.resolver.resolve(row)
        except EarlyAccess as exc:
            return Outcome.later(str(exc), _until(exc.not_before))
        except Cancelled:  # shutdown during an API retry wait
            return Outcome.interrupted()
        except TransientError as exc:
            if not page:
                log.warning("download %s: no Civitai metadata (%s); downloading unverified", row.id, exc)
            elif row.url:
                log.warning("download %s: Civitai API unreachable (%s); downloading unverified", row.id, exc)
            elif row.attempts <= self.settings.retries:
                return Outcome.later(f"{exc}; trying again in {API_RETRY_SECONDS} s",
                                     utcnow() + datetime.timedelta(seconds=API_RETRY_SECONDS))
            else:
                return Outcome.failed(str(exc))
            return {}
        except DaemonError as exc:
            if not page:  # a Civitai download URL given directly: metadata is welcome but optional
                log.warning("download %s: no Civitai metadata (%s); downloading unverified", row.id, exc)
                return {}
            return Outcome.failed(str(exc))

    def _resolve(self, row):
        """The Job to fetch and the row it belongs to, or the Outcome that ends this step early."""
        fields = self._civitai_fields(row)
        if isinstance(fields, Outcome):
            return fields
        api_filename = fields.pop("api_filename", None)
        api_sha = fields.pop("api_sha256", None)
        api_size = fields.pop("api_size", None)
        stored = {k: v for k, v in fields.items() if v is not None and k != "url"}
        if fields.get("url") and not row.url:
            stored["url"] = fields["url"]
        if api_sha and not row.expected_sha256:
            stored["expected_sha256"] = api_sha
        if api_size:
            stored["api_size"] = api_size
        if stored:
            self.queue.update(row.id, **stored)
            row = self.queue.get(row.id)
        url = fields.get("url") if _is_civitai_page(row.url or "") else (self.queue.private_url(row)
                                                                          or fields.get("url"))
        if not url:
            return Outcome.failed("nothing to download: no URL and the version could not be resolved")
        try:
            folder = self.placement.folder(row, row.model_type)
        except PermanentError as exc:
            return Outcome.failed(str(exc))
        job = Job(download_id=row.id, url=url, folder=folder, filename=row.filename,
                  expected_sha256=row.expected_sha256, api_size=row.api_size or api_size,
                  api_filename=api_filename)
        return row, job

    # -- stage 2: fetch -------------------------------------------------------------
    def _fetch(self, row, job):
        """Fetch the job's file through the gate; the Outcome says how it went."""
        last_write = [time.monotonic()]  # the first bytes reach the row after a second (a small file's never)

        def on_name(filename, total):
            self.queue.update(row.id, filename=filename, path=str(job.folder / filename), total=total)
            self.progress.start(row.id, 0, total, filename)

        def on_progress(done, total):
            self.progress.advance(row.id, done, total)
            now = time.monotonic()
            if now - last_write[0] >= PROGRESS_DB_INTERVAL:
                last_write[0] = now
                self.queue.update(row.id, bytes=done)

        def on_retry(exc, wait):
            self.queue.bump(row.id, retries=1, hash_mismatches=int(isinstance(exc, HashMismatch)))
            log.warning("download %s: %s; retrying in %.1f s", row.id, exc, wait)

        job.on_name, job.on_progress, job.on_retry = on_name, on_progress, on_retry
        job.sleep = lambda seconds: self._retry_sleep(seconds, job)
        job.on_segments = lambda connections, segments: self.progress.segments(row.id, connections, segments)
        with self._lock:
            self._active[row.id] = job
        # A pause or cancel that came before the job was registered found nothing to stop.
        if self.stopping.is_set() or self.queue.get(row.id).state != Status.DOWNLOADING.value:
            job.stop.set()
        started = time.monotonic()
        log.info("download %s: fetching %s into %s", row.id, row.url or "(resolved URL)", job.folder)
        try:
            result = self.fetcher.fetch(job)
        except Cancelled:
            return Outcome.interrupted(job)
        except EarlyAccess as exc:
            return Outcome.later(str(exc), _until(exc.not_before))
        except PartBusy as exc:  # another daemon still writes it: our claim came from a lapsed lease
            log.warning("download %s: %s; leaving it to that one", row.id, exc)
            return Outcome.later(str(exc), utcnow() + datetime.timedelta(seconds=self.settings.lease))
        except HashMismatch as exc:
            self.queue.bump(row.id, hash_mismatches=1)
            where = getattr(exc, "quarantined", None)
            note = f"; the file was kept in {where}" if where else ""
            return Outcome.failed(f"{exc} after {self.settings.retries + 1} attempts{note} (Civitai's published "
                                  "hash may be wrong: check the file and retry, or remove sha256)",
                                  sha256=exc.actual)
        except TransientError as exc:  # still failing after the last attempt
            return Outcome.failed(f"{exc} (gave up after {self.settings.retries + 1} attempts; retry it later)")
        except DaemonError as exc:
            return Outcome.failed(str(exc))
        duration = time.monotonic() - started
        civitai_info = self.queue.get(row.id).civitai_info if self.settings.sidecars else None
        if civitai_info:
            sidecars.write_missing(result.path, civitai_info, self.settings)
        how = "already in place" if result.existed else f"{result.bytes / max(duration, 1e-6) / 1e6:.1f} MB/s"
        return Outcome.completed(f"{result.path} ({how}, sha256 {result.sha256}"
                                 f"{'' if result.verified else ', unverified'})",
                                 filename=result.filename, path=str(result.path), sha256=result.sha256,
                                 verified=result.verified, bytes=result.bytes, total=result.bytes,
                                 duration=duration, error=None)

    def _retry_sleep(self, seconds, job):
        """The fetch's back-off between attempts, through the injected sleep; a stop ends it."""
        if self.sleep(seconds, job.stop):
            raise Cancelled("stopped while waiting to retry")

    def _settle_cancelled(self):
        """Remove the part of one download cancelled while no worker ran it; finish its manifest."""
        try:
            download_id = self._cancelled.popleft()
        except IndexError:
            return False
        row = self.queue.get(download_id)
        if row.state == Status.CANCELLED.value:
            if row.path:
                remove_part(Path(row.path).parent, Path(row.path).name, row.id)
            self._record(row, Outcome(None, "cancelled; part removed"))
        return True

    # -- stage 3: record ------------------------------------------------------------
    def _record(self, row, outcome):
        """The one place a step's outcome is written: the state, the log line, the manifest."""
        if outcome.stopped:
            outcome = self._after_stop(row, outcome.job)
        if outcome.state is None:
            log.info("download %s %s", row.id, outcome.message)
            current = self.queue.get(row.id)
        else:
            fields = dict(outcome.fields)
            if outcome.state == Status.FAILED or outcome.not_before is not None:
                fields.setdefault("error", outcome.message)  # why it failed, or why it waits
            if outcome.not_before is not None:
                fields["not_before"] = outcome.not_before
            current = self.queue.finish(row.id, outcome.state, event=outcome.event, **fields)
            if current is None:
                current = self.queue.get(row.id)
                log.info("download %s: %s, but its state changed meanwhile (%s)", row.id, outcome.message,
                         current.state)
            elif outcome.state == Status.FAILED:
                log.error("download %s failed: %s", row.id, outcome.message)
            else:
                log.info("download %s %s: %s", row.id, "completed" if outcome.state == Status.COMPLETED
                         else "back in the queue", outcome.message)
        if current.state in {s.value for s in ENDED}:
            self.spool.maybe_finish(row.manifest_id)

    def _after_stop(self, row, job):
        """What a stopped fetch means, from the state the download is in now."""
        current = self.queue.get(row.id).state
        if current == Status.CANCELLED.value:
            _remove_part(row if row.filename else self.queue.get(row.id), job)
            return Outcome(None, "cancelled; part removed")
        if current == Status.PAUSED.value:
            return Outcome(None, "paused; part kept for resume")
        if self.stopping.is_set():  # back to the queue, part kept
            return Outcome(Status.QUEUED, "interrupted by shutdown; will resume", event=events.DOWNLOAD_QUEUED)
        # paused and resumed (or cancelled and retried) before this attempt wound down
        return Outcome(None, f"was {current} meanwhile; a worker takes it up again")


def _remove_part(row, job):
    """Delete a cancelled download's part (its name is known once the server answered)."""
    if row.filename and job is not None:
        remove_part(job.folder, row.filename, row.id)

