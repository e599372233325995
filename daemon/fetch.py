"""One URL to one file: attempts with retries, redirects, Range resume, status mapping and the
streaming loop with its SHA256 (SPEC §6). The gate (`gate.py`) decides whether the part is published.

Nothing here touches the database; the worker passes callbacks in and records the outcome.
"""
import dataclasses
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from . import connshare, gate, http, pipeline, segmented
from .errors import (TOKEN_HELP, Cancelled, DiskFull, EarlyAccess, HashMismatch, PartBusy, PermanentError,
                     TransientError)
from .filenames import content_disposition_name, name_from_signed_url, name_from_url
from .gate import Result  # noqa: F401 - Result is part of this module's interface
from .parts import Part, remember_validator
from .http import STALL_BYTES
from .segments import RangeSet, first_request_end
from .throttle import Throttle  # noqa: F401 - re-exported for callers that build a Fetcher
from .units import size_text

log = logging.getLogger("daemon.fetch")

MAX_REDIRECTS = 10
IMPLAUSIBLE_SIZE = 10**13  # 10 TB: far beyond any model file; a Content-Length above it is a broken server


@dataclasses.dataclass
class Job:
    """What the worker asks of the fetcher."""
    download_id: int
    url: str
    folder: Path
    filename: str | None
    expected_sha256: str | None = None
    api_size: int | None = None
    api_filename: str | None = None
    on_name: object = None          # callback(filename, total) once the name is known
    on_progress: object = None      # callback(bytes, total) per chunk; must be cheap
    on_retry: object = None         # callback(exception, wait_seconds)
    on_segments: object = None      # callback(connections, [{start, end, done}]) while segmented
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    sleep: object = None            # the back-off's sleep(seconds) (default: waits on stop); tests inject one
    response: object = dataclasses.field(default=None, repr=False)  # the body being read, if any
    transfer: object = dataclasses.field(default=None, repr=False)  # the segmented transfer running, if any

    def interrupt(self):
        """Stop the fetch now, also when it is blocked reading a silent server (from another thread)."""
        self.stop.set()
        if self.transfer is not None:  # segmented: every connection stops at once
            self.transfer.halt()
        try:
            # shutdown() wakes a recv() blocked in the worker thread; close() alone would not.
            self.response.raw.connection.sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass  # no body open (or already closed): the stop event is enough


def _json_body(response, timeout):
    """A small JSON object from an error answer; the body is read at most 64 KiB far and `timeout` s long."""
    data, whole = http.read_body(response, http.ERROR_BODY_LIMIT, timeout, deadline=timeout)
    if not whole:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class Fetcher:
    """Downloads jobs with retries; shared by all worker threads."""

    def __init__(self, settings, throttle, civitai, credentials=None):
        self.settings = settings
        self.throttle = throttle
        self.civitai = civitai  # http.Origins: where the token may go and Civitai's rules apply
        self.token = settings.civitai_token
        self.credentials = credentials or http.Credentials().grant(
            civitai, {"Authorization": f"Bearer {self.token}"} if self.token else {})
        self._sessions = http.Sessions()
        self.huggingface = http.Origins([getattr(settings, "huggingface_base_url", None) or "https://huggingface.co"])
        self.slots = connshare.HostSlots(settings.max_connections_per_host)
        self.quarantine = Path(settings.download_dir) / ".quarantine"

    def _session(self):
        return self._sessions.get()

    # -- the retry loop ------------------------------------------------------
    def fetch(self, job):
        """Download `job` to its final path and return a Result, or raise a DaemonError."""
        found = gate.in_place(job.folder, (job.filename, job.api_filename), job.expected_sha256, job.filename,
                              job.download_id)
        if found is not None:
            return found
        part = Part(folder=job.folder, filename=job.filename, download_id=job.download_id,
                    adopt_legacy=bool(job.filename))

        def before_sleep(retry_state):
            exc = retry_state.outcome.exception()
            if getattr(exc, "restart", False):
                part.discard()
            if job.on_retry:
                job.on_retry(exc, retry_state.next_action.sleep if retry_state.next_action else 0)

        retrying = http.retrying(self.settings.retries + 1, self.settings.backoff, self.settings.backoff_max,
                                 job.stop, before_sleep=before_sleep, sleep=job.sleep)
        try:
            return retrying(self._attempt, job, part)
        except HashMismatch as exc:
            gate.quarantine(part, self.quarantine, exc, job.download_id)
            raise

    # -- one attempt -----------------------------------------------------------
    def _attempt(self, job, part):
        if job.stop.is_set():  # paused, cancelled or shutting down before the first byte
            raise Cancelled("stopped")
        response, final_url = self._open(job, part)
        job.response = response
        try:
            if job.stop.is_set():  # interrupted while the request was on its way
                raise Cancelled("stopped")
            return self._receive(job, part, response, final_url)
        finally:
            job.response = None
            segmented.close_response(response)

    def _open(self, job, part):
        """GET the original URL, following redirects by hand (auth stays on Civitai's origins)."""
        if part.filename and part.hasher is None:
            part.load()
        url = job.url
        via_civitai = False  # a redirect from Civitai leads to its (expiring) storage
        for _ in range(MAX_REDIRECTS + 1):
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                raise PermanentError(f"the server redirected to an unsupported address ({scheme}:); "
                                     "only http and https downloads are possible")
            on_civitai = url in self.civitai
            headers = self.credentials.headers_for(url)
            part.asked_end = self._first_end(job, part)
            if part.offset or part.asked_end:
                headers["Range"] = f"bytes={part.offset}-{'' if part.asked_end is None else part.asked_end - 1}"
                kept = part.validator or {}
                etag = part.etag or kept.get("etag") or kept.get("last_modified")  # stored across a restart
                if etag:
                    headers["If-Range"] = etag
            host = urlsplit(url).hostname
            try:
                response = self._session().get(url, headers=headers, stream=True, allow_redirects=False,
                                               timeout=(self.settings.timeout, self.settings.timeout))
            except (requests.exceptions.SSLError, requests.exceptions.ConnectionError,
                    requests.exceptions.Timeout) as exc:
                raise TransientError(http.network_problem(exc, host, self.settings.timeout)) from None
            except requests.exceptions.RequestException as exc:
                raise PermanentError(f"bad request to {host}: {_short(exc)}") from None
            except (urllib3.exceptions.LocationParseError, ValueError, UnicodeError) as exc:
                # e.g. a host name label over 63 characters: the address itself is unusable.
                raise PermanentError(f"unusable address {url.split('?')[0][:120]!r}: {_short(exc)}") from None
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                if "reason=download-auth" in location or urlsplit(location).path.rstrip("/") == "/login":
                    raise PermanentError(self._login_help(url))
                via_civitai = via_civitai or on_civitai
                url = urljoin(url, location)
                continue
            self._check_status(response, url, from_storage=via_civitai and not on_civitai)
            return response, url
        raise PermanentError(f"too many redirects (more than {MAX_REDIRECTS}) starting at {job.url.split('?')[0]}")

    def _first_end(self, job, part):
        """Where a bounded first request stops when the download will be segmented (the size is known
        from Civitai or from the ranges of an earlier run), else None. A bounded request is read to its
        end, so nothing it brought is fetched again."""
        size = (part.validator or {}).get("total") or job.api_size
        if not size or part.offset >= size or part.ranges_ignored:
            return None
        have = part.have or RangeSet([(0, part.offset)] if part.offset else [])
        return first_request_end(size, have, self.settings.connections, self.settings.segment_min)

    def _renew_link(self, job):
        """A fresh signed storage link: Civitai's redirect for `job.url`, without fetching the file."""
        url = job.url
        for _ in range(MAX_REDIRECTS + 1):
            if url not in self.civitai:
                return url
            try:
                response = self._session().get(url, headers=self.credentials.headers_for(url), stream=True,
                                               allow_redirects=False, timeout=(self.settings.timeout,) * 2)
            except requests.exceptions.RequestException as exc:
                raise TransientError(http.network_problem(exc, urlsplit(url).hostname, self.settings.timeout)) from None
            response.close()
            if not response.is_redirect:
                return url
            url = urljoin(url, response.headers.get("Location", ""))
        raise TransientError("too many redirects while asking for a fresh storage link")

    def _check_status(self, response, url, from_storage):
        status = response.status_code
        if status in (200, 206, 416):
            return
        body = _json_body(response, self.settings.timeout) or {}
        message = str(body.get("message") or body.get("error") or "")
        response.close()
        host = urlsplit(url).hostname
        wait = http.retry_after(response.headers.get("Retry-After"))
        if status == 429:
            raise TransientError(f"rate limited by {host} (429)", retry_after=wait)
        if status >= 500:
            raise TransientError(f"{host} answered {status}", retry_after=wait)
        if status == 403 and body.get("error") == "Early Access":
            raise EarlyAccess("this version is in early access until "
                              f"{body.get('deadline') or 'a later date'}; the daemon waits and retries by itself",
                              body.get("deadline"))
        if status in (401, 403) and from_storage:
            # Signed storage URLs expire (Civitai's last 1-24 h); ask Civitai for a fresh one.
            raise TransientError(f"the storage link expired or was refused ({status})")
        if status == 401 and "disabled downloads" in message:
            raise PermanentError("the creator of this model has disabled downloads of this file; "
                                 "it can only be used on Civitai's site")
        if status in (401, 403) and url in self.huggingface:
            raise PermanentError(f"Hugging Face refused the download ({status}: {message or 'unauthorized'}); a "
                                 "gated or private model needs huggingface_token (or HF_TOKEN) from an account "
                                 "that accepted the model's terms on its page")
        if status in (401, 403) and url not in self.civitai:
            # Not Civitai: its token would not help, and saying so would send the user the wrong way.
            raise PermanentError(f"{host} refused access ({status}{': ' + message if message else ''}); the link "
                                 "may need a login there or may have expired: check it in a browser, then retry")
        if status in (401, 403):
            if self.token and status == 403:
                raise PermanentError(f"Civitai refused the download (403: {message or 'forbidden'}); your token "
                                     "has no access to this file (private, club or paid content)")
            if self.token:
                raise PermanentError(f"Civitai refused the token (401: {message or 'unauthorized'}); check that "
                                     "civitai_token / CIVITAI_API_TOKEN is a current API key")
            raise PermanentError(TOKEN_HELP)
        if status == 404:
            raise PermanentError(f"not found (404) at {host}: the file or model version does not exist or was "
                                 "removed; check the URL or version id")
        if status == 410:
            raise PermanentError(f"gone (410) at {host}: {message or 'the model was archived'}; it can no longer "
                                 "be downloaded")
        raise PermanentError(f"{host} answered {status} {message}".strip())

    def _receive(self, job, part, response, final_url):
        status = response.status_code
        headers = response.headers
        if status == 416:
            return self._after_416(job, part, headers)
        ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype in ("text/html", "application/xhtml+xml"):
            raise PermanentError("the server sent an HTML page instead of the model file (usually Civitai's login "
                                 f"or maintenance page); {self._login_help(job.url)}, or try again later")
        if ctype == "application/json" or ctype.endswith("+json"):
            body = _json_body(response, self.settings.timeout) or {}
            raise PermanentError(f"the server sent a JSON error instead of the file: "
                                 f"{body.get('message') or body.get('error') or 'unknown error'}")
        if status == 200 and (part.offset or part.have or part.asked_end is not None):
            part.ranges_ignored = True  # from now on one connection reads the whole file
            part.asked_end = None
            if part.offset or part.have:
                log.info("download %s: server ignored the Range request; starting again from zero", job.download_id)
                part.discard()
        total = None
        if status == 206:
            content_range = headers.get("Content-Range", "")
            try:
                span, _, size = content_range.split(" ", 1)[1].partition("/")
                start = int(span.split("-")[0])
                total = int(size) if size != "*" else None
            except (IndexError, ValueError):
                raise TransientError(f"unreadable Content-Range {content_range!r}", restart=True) from None
            if start != part.offset:
                raise TransientError(f"server resumed at byte {start}, expected {part.offset}", restart=True)
            if part.asked_end is not None:
                part.asked_end = min(part.asked_end, int(span.split("-")[1]) + 1)
            seen = segmented.validator_of(headers, total)
            if part.validator and any(part.validator.get(k) not in (None, seen[k]) and seen[k] is not None
                                      for k in seen):
                raise TransientError("the file changed on the server since the last attempt; starting again "
                                     "from zero", restart=True)
        elif headers.get("Content-Length", "").isdigit():
            total = int(headers["Content-Length"])
        if not part.filename:
            part.filename = (job.filename or content_disposition_name(headers.get("Content-Disposition"))
                             or name_from_signed_url(final_url) or job.api_filename
                             or name_from_url(final_url) or name_from_url(job.url) or f"download-{job.download_id}")
            part.load()
            if part.offset or os.path.lexists(part.path):  # from an earlier run that did not know the name:
                part.discard()                            # this answer starts at byte zero
        target = part.target
        if os.path.lexists(target):
            if gate.regular_file(target) is None:
                raise gate.file_in_the_way(target)
            existing = gate.hash_file(target)
            if job.expected_sha256 and existing == job.expected_sha256:
                part.discard()
                return Result(target, part.filename, existing, True, target.stat().st_size, existed=True)
            if job.expected_sha256:
                raise gate.file_in_the_way(target)
            part.existing_sha = existing
        if total is not None and job.api_size and total != job.api_size:
            raise TransientError(f"the server announced {total} bytes but Civitai lists {job.api_size}")
        part.total = total
        part.etag = headers.get("ETag") if not headers.get("ETag", "").startswith("W/") else None
        if job.on_name:
            job.on_name(part.filename, total)
        if total is not None:
            self._check_space(job, total - part.offset)
        job.folder.mkdir(parents=True, exist_ok=True)
        if total is not None and self._segments_wanted(status, headers, total, part):
            self._segmented(job, part, response, final_url, headers, total)
        else:
            fd = part.open(os.O_WRONLY)
            if not part.offset:  # a fresh part: its validator is kept beside it for If-Range after a restart
                remember_validator(part, segmented.validator_of(headers, total), fd)
            try:
                lock_part(fd, part)
                self._stream(job, part, response, fd)
            finally:
                os.close(fd)
        return gate.publish(part, job.expected_sha256, job.api_size)

    def _segments_wanted(self, status, headers, total, part):
        """A bounded first request or a part with holes must go on in segments; any other answer from a
        server with ranges does when the file is big enough to split."""
        if status == 206 and (part.asked_end is not None or part.have is not None):
            return True
        if part.ranges_ignored or not segmented.ranges_supported(status, headers) or part.offset >= total:
            return False
        have = RangeSet([(0, part.offset)] if part.offset else [])
        return first_request_end(total, have, self.settings.connections, self.settings.segment_min) is not None

    def _segmented(self, job, part, response, final_url, headers, total):
        validator = part.validator or segmented.validator_of(headers, total)
        have = part.have or RangeSet([(0, part.offset)] if part.offset else [])
        job.transfer = segmented.Transfer(
            job=job, part=part, response=response, url=final_url, validator=validator, have=have,
            connections=self.settings.connections, segment_min=self.settings.segment_min,
            timeout=self.settings.timeout, throttle=self.throttle, headers_for=self.credentials.headers_for,
            renew_link=lambda: self._renew_link(job), new_session=http.new_session,
            first_end=part.asked_end, lock=lambda fd: lock_part(fd, part, check_size=False))
        try:
            job.transfer.run(self.slots, urlsplit(final_url).hostname)
        finally:
            job.transfer = None
        part.have = part.validator = None

    def _login_help(self, url):
        """What to do about a login page: Civitai's token for Civitai, else check the link."""
        if url in self.civitai:
            return TOKEN_HELP
        return "the link may need a login or may have expired: check it in a browser"

    def _after_416(self, job, part, headers):
        size = headers.get("Content-Range", "").rpartition("/")[2]
        if part.offset and size.isdigit() and int(size) == part.offset:
            part.total = part.offset
            return gate.publish(part, job.expected_sha256, job.api_size)
        raise TransientError("the server refused the resume range (416)", restart=True)

    def _check_space(self, job, needed):
        job.folder.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(job.folder)
        free = usage.free
        if needed > IMPLAUSIBLE_SIZE and needed > usage.total:
            # Not a full disk: no model file is that large, so freeing space would not help.
            raise PermanentError(f"the server announced {size_text(needed)} for this file, an impossible size for a "
                                 f"model (more than the whole disk at {job.folder}, {size_text(usage.total)}); "
                                 "the link or the server is wrong")
        if needed > free - (16 << 20):
            raise DiskFull(f"disk full: {size_text(needed)} needed in {job.folder} but only {size_text(free)} free; "
                           "free some space, then retry")

    def _stream(self, job, part, response, fd):
        """Read `response` into the part open as `fd` through a Pipeline (receiving here, hashing and
        writing in its thread); `part.offset` counts the bytes hashed and written. Returns at a complete
        body, raises at a stall, a short body, a full disk or a stop."""
        reader = segmented.body_reader(response)
        timeout = self.settings.timeout
        window_start, window_bytes = time.monotonic(), 0
        read_size = self.throttle.read_size()
        fill = pipeline.FILL if not self.throttle.rate else 1  # under a cap every read is handed over at once
        received = part.offset
        pipe = pipeline.Pipeline(fd, part.offset, part.hasher, name=f"write-{job.download_id}",
                                 size=None if part.total is None else part.total - part.offset)
        index = None
        try:
            index, view, filled = *pipe.take(), 0
            while True:
                if job.stop.is_set():
                    raise Cancelled("stopped")
                want = min(read_size, len(view) - filled)
                if part.total is not None:
                    want = min(want, part.total - received)  # the body ends there (the connection may stay open)
                try:
                    got = reader(view[filled:filled + want]) if want > 0 else 0
                except Exception as exc:  # noqa: BLE001 - urllib3 / socket errors mid-body
                    if job.stop.is_set():  # job.interrupt() shut the socket down
                        raise Cancelled("stopped") from None
                    if isinstance(exc, (requests.exceptions.ReadTimeout, TimeoutError)) or "timed out" in str(exc):
                        raise TransientError(f"no data for {timeout:g} s") from None
                    raise TransientError(f"connection lost after {size_text(received)}: {_short(exc)}") from None
                if got:
                    if received == 0 and filled == 0 and gate.sniff_problem(bytes(view[:min(got, 1024)]),
                                                                            part.filename):
                        part.discard()  # an error page, not the start of the file: nothing to resume
                        raise PermanentError("the server sent an HTML page instead of the model file (usually "
                                             f"Civitai's login or maintenance page); {self._login_help(job.url)}")
                    filled += got
                    received += got
                    if job.on_progress:
                        job.on_progress(received, part.total)
                    self.throttle.take(got, job.stop)
                elif job.stop.is_set():  # an interrupted read ends like a clean EOF: not a complete file
                    raise Cancelled("stopped")
                # Hand over a full enough buffer, and whatever came when the socket ran dry (a stalled
                # server's last bytes reach the disk instead of waiting in memory).
                if not got or filled >= fill or filled == len(view) or got < want:
                    pipe.hand_over(index, filled)
                    index = None
                    if not got:
                        if part.total is not None and received == part.total:
                            segmented.body_read(response)
                        break
                    index, view, filled = *pipe.take(), 0
                now = time.monotonic()
                window_bytes += got
                if now - window_start >= timeout:
                    if window_bytes < STALL_BYTES:
                        raise TransientError(f"download stalled: under 1 KiB in {timeout:g} s")
                    window_start, window_bytes = now, 0
            pipe.finish()
            os.fsync(fd)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise DiskFull(f"disk full while writing {part.path.name}: "
                           f"{size_text(max((part.total or 0) - pipe.written, 1))} more needed in {job.folder}; "
                           "free some space, then retry") from None
        finally:
            if index is not None:  # what arrived before a stop or a lost connection is good: keep it
                pipe.hand_over(index, filled)
            pipe.abandon()
            part.offset = pipe.written
            if pipe.error is not None:  # a failed write may have left bytes past the hashed ones
                os.ftruncate(fd, part.offset)
        if part.total is not None and part.offset < part.total:
            raise TransientError(f"connection closed after {size_text(part.offset)} of {size_text(part.total)}")


def _short(exc):
    text = str(exc)
    if "Max retries exceeded" in text or "Failed to establish" in text:
        text = text.split("Caused by")[-1] if "Caused by" in text else text
    return text[:200]


def lock_part(fd, part, check_size=True):
    """Hold an exclusive lock on the part while writing it: two daemons never write one part (SPEC §14).

    The lock ends with the handle. Bytes another writer added after this attempt hashed the part
    mean the hash no longer matches it: the next attempt hashes the part again.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PartBusy(f"{part.path.name} is being written by another process (another daemon of the fleet?)") \
            from None
    if check_size and os.fstat(fd).st_size != part.offset:
        part.hasher = None
        raise TransientError(f"{part.path.name} changed size under us; hashing it again")
