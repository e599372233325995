"""The worker pool: each step claims one download, fetches it, records the outcome.

Workers are plain OS threads (hashing, socket reads and file writes release
the GIL, so two downloads use both cores); they never touch gevent objects.
"""
import collections
import datetime
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from . import events, sidecars
from .library import dedupe
from .civitai import parse_time
from .errors import Cancelled, DaemonError, EarlyAccess, HashMismatch, PermanentError, TransientError
from .fetch import Job
from .filenames import is_civitai_page as _is_civitai_page
from .gate import part_path
from .models import utcnow
from .states import Status

log = logging.getLogger("daemon.worker")

PROGRESS_DB_INTERVAL = 1.0
API_RETRY_SECONDS = 60


class WorkerPool:
    """`workers` threads around `step()`; woken by queue events, stopped by `stop()`."""

    def __init__(self, settings, queue, fetcher, resolver, spool, progress, bus):
        self.settings = settings
        self.queue = queue
        self.fetcher = fetcher
        self.resolver = resolver
        self.spool = spool
        self.progress = progress
        self.download_dir = Path(settings.download_dir).resolve()
        self.stopping = threading.Event()
        self._wake = threading.Condition()
        self._wake_flag = False
        self._active = {}  # download id → Job (its stop event aborts the fetch)
        self._cancelled = collections.deque()  # ids cancelled while no worker ran them: parts to remove
        self._lock = threading.Lock()
        self.threads = []
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
            if row.parent_id:
                self._settle_child(row)
            else:
                self._download(row)
        finally:
            self.progress.pop(row.id)
            with self._lock:
                self._active.pop(row.id, None)
            self.wake()  # the id may have been resumed meanwhile; let a worker take it
        return True

    def _folder(self, row, model_type):
        subdir = row.subdir
        if subdir is None and model_type:
            subdir = self.settings.type_dirs.get(model_type, self.settings.type_dirs.get("Other", "Other"))
        try:
            folder = (self.download_dir / (subdir or "")).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop raises RuntimeError
            raise PermanentError(f"the folder {subdir!r} cannot be used ({exc}); choose another subdir") from None
        if folder != self.download_dir and self.download_dir not in folder.parents:
            raise PermanentError(f"the folder {subdir!r} leads outside download_dir (a symlink?); "
                                 "choose another subdir")
        return folder

    def _download(self, row):
        context = f"download {row.id}" + (f" (manifest {row.manifest_id})" if row.manifest_id else "")
        entry = dedupe.match(row)
        if entry is not None:
            return self._settle_from_library(row, entry)
        fields = {}
        if self.resolver.wants(row) and (not row.url or _is_civitai_page(row.url)):
            try:
                fields = self.resolver.resolve(row)
            except EarlyAccess as exc:
                return self._park(row, exc)
            except Cancelled:  # shutdown during an API retry wait
                return self._after_stop(row, None)
            except TransientError as exc:
                if row.url:
                    log.warning("%s: Civitai API unreachable (%s); downloading unverified", context, exc)
                elif row.attempts <= self.settings.retries:
                    return self._requeue_later(row, f"{exc}; trying again in {API_RETRY_SECONDS} s")
                else:
                    return self._fail(row, str(exc))
            except DaemonError as exc:
                return self._fail(row, str(exc))
        elif self.resolver.wants(row) and row.civitai_info is None:
            # A Civitai download URL given directly: metadata is welcome but optional.
            try:
                fields = self.resolver.resolve(row)
            except EarlyAccess as exc:
                return self._park(row, exc)
            except Cancelled:
                return self._after_stop(row, None)
            except DaemonError as exc:
                log.warning("%s: no Civitai metadata (%s); downloading unverified", context, exc)
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
        url = fields.get("url") if _is_civitai_page(row.url or "") else (self.queue.private_url(row) or fields.get("url"))
        if not url:
            return self._fail(row, "nothing to download: no URL and the version could not be resolved")
        try:
            folder = self._folder(row, row.model_type)
        except PermanentError as exc:
            return self._fail(row, str(exc))
        job = Job(download_id=row.id, url=url, folder=folder, filename=row.filename,
                  expected_sha256=row.expected_sha256, api_size=row.api_size or api_size,
                  api_filename=api_filename)
        last_write = [0.0]

        def on_name(filename, total):
            self.queue.update(row.id, filename=filename, path=str(folder / filename), total=total)
            self.progress.start(row.id, 0, total, filename)

        def on_progress(done, total):
            self.progress.advance(row.id, done, total)
            now = time.monotonic()
            if now - last_write[0] >= PROGRESS_DB_INTERVAL:
                last_write[0] = now
                self.queue.update(row.id, bytes=done)

        def on_retry(exc, wait):
            self.queue.bump(row.id, retries=1, hash_mismatches=int(isinstance(exc, HashMismatch)))
            log.warning("%s: %s; retrying in %.1f s", context, exc, wait)

        job.on_name, job.on_progress, job.on_retry = on_name, on_progress, on_retry
        with self._lock:
            self._active[row.id] = job
        # A pause or cancel that came before the job was registered found nothing to stop.
        if self.stopping.is_set() or self.queue.get(row.id).state != Status.DOWNLOADING.value:
            job.stop.set()
        started = time.monotonic()
        log.info("%s: fetching %s into %s", context, row.url or "(resolved URL)", folder)
        try:
            result = self.fetcher.fetch(job)
        except Cancelled:
            return self._after_stop(row, job)
        except EarlyAccess as exc:
            return self._park(row, exc)
        except HashMismatch as exc:
            self.queue.bump(row.id, hash_mismatches=1)
            where = getattr(exc, "quarantined", None)
            note = f"; the file was kept in {where}" if where else ""
            return self._fail(row, f"{exc} after {self.settings.retries + 1} attempts{note} (Civitai's published "
                                   "hash may be wrong: check the file and retry, or remove sha256)",
                              sha256=exc.actual)
        except TransientError as exc:  # still failing after the last attempt
            return self._fail(row, f"{exc} (gave up after {self.settings.retries + 1} attempts; retry it later)")
        except DaemonError as exc:
            return self._fail(row, str(exc))
        except Exception as exc:  # a bug must fail one item, not kill the worker
            log.exception("%s: unexpected error", context)
            return self._fail(row, f"internal error: {type(exc).__name__}: {exc}")
        duration = time.monotonic() - started
        row = self.queue.get(row.id)
        if self.settings.sidecars and row.civitai_info:
            sidecars.write(result.path, row.civitai_info, self.fetcher, self.settings)
        finished = self.queue.finish(row.id, Status.COMPLETED, filename=result.filename, path=str(result.path),
                                     sha256=result.sha256, verified=result.verified, bytes=result.bytes,
                                     total=result.bytes, duration=duration, error=None)
        if finished is None:
            log.info("%s: finished, but its state changed meanwhile (%s)", context, self.queue.get(row.id).state)
        else:
            how = "already in place" if result.existed else f"{result.bytes / max(duration, 1e-6) / 1e6:.1f} MB/s"
            log.info("%s: completed %s (%s, sha256 %s%s)", context, result.path, how, result.sha256,
                     "" if result.verified else ", unverified")
        self.spool.maybe_finish(row.manifest_id)

    def _settle_child(self, row):
        """A download of content another download already fetched: link to it."""
        parent = self.queue.get(row.parent_id)
        if parent.state == Status.FAILED.value:
            return self._fail(row, f"same file as download {parent.id}, which failed: {parent.error}")
        if parent.state != Status.COMPLETED.value or not parent.path or not os.path.exists(parent.path):
            self.queue.update(row.id, parent=None)  # download it on its own
            self.queue.finish(row.id, Status.QUEUED)
            return None
        target = self._place(row, Path(parent.path), parent.model_type)
        if target is None:
            return None
        self.queue.finish(row.id, Status.COMPLETED, path=str(target), filename=target.name, sha256=parent.sha256,
                          verified=parent.verified, bytes=parent.bytes, total=parent.bytes, duration=0.0,
                          model_type=parent.model_type, model_name=parent.model_name,
                          version_name=parent.version_name, base_model=parent.base_model)
        log.info("download %s: same content as download %s, linked at %s", row.id, parent.id, target)
        self.spool.maybe_finish(row.manifest_id)

    def _place(self, row, source, model_type):
        """Where the item asked for `source`'s content, linked (else copied) there; None when it failed.

        With no subdir or filename the item completes at `source` itself.
        """
        try:
            folder = self._folder(row, model_type) if (row.subdir or row.filename) else source.parent
        except PermanentError as exc:
            return self._fail(row, str(exc))
        target = folder / (row.filename or source.name)
        if target == source or (target.exists() and os.path.samefile(target, source)):
            return source if target == source else target
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return self._fail(row, f"a different file already exists at {target}; move it away, then retry")
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, part_path(target.parent, target.name))
            os.replace(part_path(target.parent, target.name), target)
        return target

    def _settle_from_library(self, row, entry):
        """The user already has this file (library entry): link it where asked, or complete at once."""
        source = Path(entry.path)
        target = self._place(row, source, entry.model_type)
        if target is None:
            return None
        same = target == source
        self.queue.finish(row.id, Status.COMPLETED, path=str(target), filename=target.name, sha256=entry.sha256,
                          verified=bool(row.expected_sha256), bytes=entry.size, total=entry.size, duration=0.0,
                          model_type=entry.model_type, model_name=entry.model_name, version_name=entry.version_name,
                          base_model=entry.base_model, model_id=row.model_id or entry.model_id,
                          version_id=row.version_id or entry.version_id, civitai_info=entry.civitai_info,
                          error=None)
        how = "already present" if same else f"linked at {target}"
        log.info("download %s: the library has it (%s): %s", row.id, entry.path, how)
        self.spool.maybe_finish(row.manifest_id)

    def _settle_cancelled(self):
        """Remove the part of one download cancelled while no worker ran it; finish its manifest."""
        try:
            download_id = self._cancelled.popleft()
        except IndexError:
            return False
        row = self.queue.get(download_id)
        if row.state == Status.CANCELLED.value:
            if row.path:
                part_path(Path(row.path).parent, Path(row.path).name).unlink(missing_ok=True)
            log.info("download %s cancelled; part removed", row.id)
            self.spool.maybe_finish(row.manifest_id)
        return True

    # -- outcomes ------------------------------------------------------------------
    def _fail(self, row, message, **fields):
        log.error("download %s failed: %s", row.id, message)
        if self.queue.finish(row.id, Status.FAILED, error=message, **fields) is not None:
            self.spool.maybe_finish(row.manifest_id)

    def _park(self, row, exc):
        until = exc.not_before
        if isinstance(until, str):
            until = parse_time(until)
        until = until or utcnow() + datetime.timedelta(hours=1)
        log.info("download %s: %s", row.id, exc)
        self.queue.finish(row.id, Status.QUEUED, error=str(exc), not_before=until)

    def _requeue_later(self, row, message):
        log.warning("download %s: %s", row.id, message)
        self.queue.finish(row.id, Status.QUEUED, error=message,
                          not_before=utcnow() + datetime.timedelta(seconds=API_RETRY_SECONDS))

    def _after_stop(self, row, job):
        current = self.queue.get(row.id)
        if current.state == Status.CANCELLED.value:
            _remove_part(current, job)
            log.info("download %s cancelled; part removed", row.id)
            self.spool.maybe_finish(row.manifest_id)
        elif current.state == Status.PAUSED.value:
            log.info("download %s paused; part kept for resume", row.id)
        elif self.stopping.is_set():  # back to the queue, part kept
            self.queue.finish(row.id, Status.QUEUED, event=events.DOWNLOAD_QUEUED)
            log.info("download %s interrupted by shutdown; will resume", row.id)
        else:  # paused and resumed (or cancelled and retried) before this attempt wound down
            log.info("download %s was %s meanwhile; a worker takes it up again", row.id, current.state)


def _remove_part(row, job):
    """Delete a cancelled download's part (its name is known once the server answered)."""
    if row.filename and job is not None:
        part_path(job.folder, row.filename).unlink(missing_ok=True)

