"""One URL to one verified file: redirects, Range resume, streaming SHA256, the
publication gate, retries and the shared throttle (SPEC §6).

Nothing here touches the database; the worker passes callbacks in and records
the outcome. The file appears under its final name only after every check.
"""
import dataclasses
import email.utils
import errno
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import struct
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import requests
import tenacity
import urllib3

from . import USER_AGENT
from .errors import TOKEN_HELP, Cancelled, DiskFull, EarlyAccess, HashMismatch, PermanentError, TransientError
from .manifest import sanitize_filename

log = logging.getLogger("daemon.fetch")

READ_SIZE = 4 << 20      # large reads: fewest Python iterations per GiB
WRITE_SLICE = 256 << 10  # small write() calls: much cheaper page-cache writes (research/performance.md §1)
STALL_BYTES = 1024
MAX_REDIRECTS = 10
SNIFF = (b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")


class Throttle:
    """A rate cap shared by all workers: each read reserves the next time slot."""

    def __init__(self, rate):
        self.rate = rate
        self._next = 0.0
        self._lock = threading.Lock()

    def read_size(self):
        # Under a cap every read is one turn of at most 64 KiB: readers take turns of equal size,
        # so the cap is shared fairly. (With large reads each turn was as long as whatever the
        # socket buffer held, and a download with a small buffer stayed starved.)
        return READ_SIZE if not self.rate else max(16 << 10, min(64 << 10, self.rate // 64))

    # Time a reader spends between its slots (hashing, writing, waking up) is credited up to this
    # many seconds; without it a single download lost that time every slot and ran at ~0.88 × cap
    # (bench/RESULTS.md). It also bounds the burst after an idle spell to SLACK × rate.
    SLACK = 0.1

    def take(self, amount, stop):
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now - self.SLACK, self._next)
            self._next = start + amount / self.rate
            wait = self._next - now
        if wait > 0 and stop.wait(wait):
            raise Cancelled("stopped")


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
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    response: object = dataclasses.field(default=None, repr=False)  # the body being read, if any

    def interrupt(self):
        """Stop the fetch now, also when it is blocked reading a silent server (from another thread)."""
        self.stop.set()
        try:
            # shutdown() wakes a recv() blocked in the worker thread; close() alone would not.
            self.response.raw.connection.sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass  # no body open (or already closed): the stop event is enough


@dataclasses.dataclass
class Result:
    path: Path
    filename: str
    sha256: str
    verified: bool
    bytes: int
    existed: bool = False


@dataclasses.dataclass
class _Partial:
    """State carried between attempts: the part file and the hash of its bytes."""
    filename: str | None
    hasher: object = None
    offset: int = 0
    etag: str | None = None
    total: int | None = None
    existing_sha: str | None = None  # hash of a file already at the final name


def content_disposition_name(header):
    """The file name in a Content-Disposition header (filename* before filename)."""
    if not header:
        return None
    star = None
    plain = None
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        key = key.strip().lower()
        value = value.strip()
        if key == "filename*":
            charset, _, rest = value.partition("'")
            _, _, encoded = rest.partition("'")
            try:
                star = unquote(encoded.strip('"'), encoding=charset or "utf-8", errors="strict")
            except (LookupError, UnicodeDecodeError):
                star = None
        elif key == "filename":
            plain = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
            try:  # http.client decodes raw header bytes as Latin-1; Civitai sends UTF-8
                plain = plain.encode("latin-1").decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                pass
    return sanitize_filename(star) or sanitize_filename(plain)


def name_from_signed_url(url):
    """A name carried in a signed storage URL (R2 response-content-disposition, B2 b2ContentDisposition)."""
    query = parse_qs(urlsplit(url).query)
    for key in ("response-content-disposition", "b2ContentDisposition"):
        if key in query:
            name = content_disposition_name(query[key][0])
            if name:
                return name
    return None


def name_from_url(url):
    segment = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return sanitize_filename(segment)


def _retry_after(response):
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), 3600.0)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
        return max(0.0, min(when - time.time(), 3600.0))
    except (TypeError, ValueError):
        return None


def _json_body(response):
    try:
        body = response.json() if len(response.content) < 65536 else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def safetensors_problem(path, size):
    """Why the file is not a parseable .safetensors, or None."""
    if size < 8:
        return "too small to be a .safetensors file"
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length == 0 or length > 100 * 2**20 or 8 + length > size:
            return f"header length {length} does not fit a {size}-byte file"
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            return "header is not JSON"
    if not isinstance(header, dict):
        return "header is not a JSON object"
    return None


class Fetcher:
    """Downloads jobs with retries; shared by all worker threads."""

    def __init__(self, settings, throttle, civitai_hosts):
        self.settings = settings
        self.throttle = throttle
        self.civitai_hosts = {h.lower() for h in civitai_hosts}
        self.token = settings.civitai_token
        self._local = threading.local()
        self.quarantine = Path(settings.download_dir) / ".quarantine"

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no .netrc credentials sneaking onto storage hosts
            session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
            self._local.session = session
        return session

    # -- the retry loop ------------------------------------------------------
    def fetch(self, job):
        """Download `job` to its final path and return a Result, or raise a DaemonError."""
        in_place = self._already_in_place(job)
        if in_place is not None:
            return in_place
        partial = _Partial(filename=job.filename)
        settings = self.settings

        def wait(retry_state):
            exc = retry_state.outcome.exception()
            if getattr(exc, "retry_after", None) is not None:
                return exc.retry_after
            base = settings.backoff * (2 ** (retry_state.attempt_number - 1))
            return min(settings.backoff_max, base) * random.uniform(0.75, 1.25)

        def sleep(seconds):
            if job.stop.wait(seconds):
                raise Cancelled("stopped while waiting to retry")

        def before_sleep(retry_state):
            exc = retry_state.outcome.exception()
            if getattr(exc, "restart", False):
                self._discard(job, partial)
            if job.on_retry:
                job.on_retry(exc, retry_state.next_action.sleep if retry_state.next_action else 0)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(settings.retries + 1),
            wait=wait, sleep=sleep, before_sleep=before_sleep, reraise=True,
            retry=tenacity.retry_if_exception_type(TransientError))
        try:
            return retrying(self._attempt, job, partial)
        except HashMismatch as exc:
            self._quarantine(job, partial, exc)
            raise

    def _already_in_place(self, job):
        """The expected file already at a name known before any request: done without downloading."""
        if not job.expected_sha256:
            return None
        for name in dict.fromkeys(n for n in (job.filename, job.api_filename) if n):
            target = job.folder / name
            if target.is_file() and _hash_file(target) == job.expected_sha256:
                # A part beside it is left over from a crash between linking it into place and removing it.
                part_path(job.folder, name).unlink(missing_ok=True)
                return Result(target, name, job.expected_sha256, True, target.stat().st_size, existed=True)
            if name == job.filename and target.exists():
                # The name was asked for explicitly, so no server answer can change the outcome.
                raise PermanentError(f"a different file already exists at {target}; move it away or choose "
                                     "another filename, then retry")
        return None

    # -- one attempt -----------------------------------------------------------
    def _attempt(self, job, partial):
        if job.stop.is_set():  # paused, cancelled or shutting down before the first byte
            raise Cancelled("stopped")
        response, final_url = self._open(job, partial)
        job.response = response
        try:
            if job.stop.is_set():  # interrupted while the request was on its way
                raise Cancelled("stopped")
            return self._receive(job, partial, response, final_url)
        finally:
            job.response = None
            response.close()

    def _headers_for(self, url):
        host = (urlsplit(url).hostname or "").lower()
        headers = {}
        if self.token and host in self.civitai_hosts:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _open(self, job, partial):
        """GET the original URL, following redirects by hand (auth stays on Civitai's hosts)."""
        if partial.filename and partial.hasher is None:
            self._load_part(job, partial)
        url = job.url
        via_civitai = False  # a redirect from Civitai leads to its (expiring) storage
        for _ in range(MAX_REDIRECTS + 1):
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("http", "https"):
                raise PermanentError(f"the server redirected to an unsupported address ({scheme}:); "
                                     "only http and https downloads are possible")
            on_civitai = (urlsplit(url).hostname or "").lower() in self.civitai_hosts
            headers = self._headers_for(url)
            if partial.offset:
                headers["Range"] = f"bytes={partial.offset}-"
                if partial.etag:
                    headers["If-Range"] = partial.etag
            try:
                response = self._session().get(url, headers=headers, stream=True, allow_redirects=False,
                                               timeout=(self.settings.timeout, self.settings.timeout))
            except requests.exceptions.SSLError as exc:
                raise TransientError(f"TLS error talking to {urlsplit(url).hostname}: {_short(exc)}") from None
            except requests.exceptions.ConnectionError as exc:
                raise TransientError(f"cannot connect to {urlsplit(url).hostname}: {_short(exc)}") from None
            except requests.exceptions.Timeout:
                raise TransientError(f"no answer from {urlsplit(url).hostname} within {self.settings.timeout:g} s") from None
            except requests.exceptions.RequestException as exc:
                raise PermanentError(f"bad request to {urlsplit(url).hostname}: {_short(exc)}") from None
            except (urllib3.exceptions.LocationParseError, ValueError, UnicodeError) as exc:
                # e.g. a host name label over 63 characters: the address itself is unusable.
                raise PermanentError(f"unusable address {url.split('?')[0][:120]!r}: {_short(exc)}") from None
            if response.is_redirect:
                location = response.headers.get("Location", "")
                response.close()
                if "reason=download-auth" in location or urlsplit(location).path.rstrip("/") == "/login":
                    raise PermanentError(TOKEN_HELP)
                via_civitai = via_civitai or on_civitai
                url = urljoin(url, location)
                continue
            self._check_status(response, url, from_storage=via_civitai and not on_civitai)
            return response, url
        raise PermanentError(f"too many redirects (more than {MAX_REDIRECTS}) starting at {job.url.split('?')[0]}")

    def _check_status(self, response, url, from_storage):
        status = response.status_code
        if status in (200, 206, 416):
            return
        body = _json_body(response) or {}
        message = str(body.get("message") or body.get("error") or "")
        response.close()
        host = urlsplit(url).hostname
        if status == 429:
            raise TransientError(f"rate limited by {host} (429)", retry_after=_retry_after(response))
        if status >= 500:
            raise TransientError(f"{host} answered {status}", retry_after=_retry_after(response))
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

    def _receive(self, job, partial, response, final_url):
        status = response.status_code
        headers = response.headers
        if status == 416:
            return self._after_416(job, partial, headers)
        ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype in ("text/html", "application/xhtml+xml"):
            raise PermanentError("the server sent an HTML page instead of the model file (usually Civitai's login "
                                 f"or maintenance page); {TOKEN_HELP}, or try again later")
        if ctype == "application/json":
            body = _json_body(response) or {}
            raise PermanentError(f"the server sent a JSON error instead of the file: "
                                 f"{body.get('message') or body.get('error') or 'unknown error'}")
        if status == 200 and partial.offset:
            log.info("download %s: server ignored the Range request; starting again from zero", job.download_id)
            self._discard(job, partial)
        total = None
        if status == 206:
            content_range = headers.get("Content-Range", "")
            try:
                span, _, size = content_range.split(" ", 1)[1].partition("/")
                start = int(span.split("-")[0])
                total = int(size) if size != "*" else None
            except (IndexError, ValueError):
                raise TransientError(f"unreadable Content-Range {content_range!r}", restart=True) from None
            if start != partial.offset:
                raise TransientError(f"server resumed at byte {start}, expected {partial.offset}", restart=True)
        elif headers.get("Content-Length", "").isdigit():
            total = int(headers["Content-Length"])
        if not partial.filename:
            partial.filename = (job.filename or content_disposition_name(headers.get("Content-Disposition"))
                                or name_from_signed_url(final_url) or job.api_filename
                                or name_from_url(final_url) or name_from_url(job.url) or f"download-{job.download_id}")
            self._load_part(job, partial)
            if partial.offset:  # a part from an earlier run we did not know the name of
                self._discard(job, partial)
        target = job.folder / partial.filename
        if target.exists():
            existing = _hash_file(target)
            if job.expected_sha256 and existing == job.expected_sha256:
                self._discard(job, partial)
                return Result(target, partial.filename, existing, True, target.stat().st_size, existed=True)
            if job.expected_sha256:
                raise PermanentError(f"a different file already exists at {target}; move it away or choose "
                                     "another filename, then retry")
            partial.existing_sha = existing
        if total is not None and job.api_size and total != job.api_size:
            raise TransientError(f"the server announced {total} bytes but Civitai lists {job.api_size}")
        partial.total = total
        partial.etag = headers.get("ETag") if not headers.get("ETag", "").startswith("W/") else None
        if job.on_name:
            job.on_name(partial.filename, total)
        if total is not None:
            self._check_space(job, total - partial.offset)
        self._stream(job, partial, response)
        return self._publish(job, partial)

    def _after_416(self, job, partial, headers):
        size = headers.get("Content-Range", "").rpartition("/")[2]
        if partial.offset and size.isdigit() and int(size) == partial.offset:
            partial.total = partial.offset
            return self._publish(job, partial)
        raise TransientError("the server refused the resume range (416)", restart=True)

    def _check_space(self, job, needed):
        job.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(job.folder).free
        if needed > free - (16 << 20):
            raise DiskFull(f"disk full: {_size(needed)} needed in {job.folder} but only {_size(free)} free; "
                           "free some space, then retry")

    def _stream(self, job, partial, response):
        part = self._part_path(job, partial)
        job.folder.mkdir(parents=True, exist_ok=True)
        raw = response.raw
        hasher = partial.hasher
        timeout = self.settings.timeout
        window_start, window_bytes = time.monotonic(), 0
        read_size = self.throttle.read_size()
        first = partial.offset == 0
        with open(part, "ab", buffering=0) as handle:
            while True:
                if job.stop.is_set():
                    raise Cancelled("stopped")
                try:
                    chunk = raw.read1(read_size)
                except Exception as exc:  # urllib3 / socket errors mid-body
                    if job.stop.is_set():  # job.interrupt() shut the socket down
                        raise Cancelled("stopped") from None
                    if isinstance(exc, (requests.exceptions.ReadTimeout, TimeoutError)) or "timed out" in str(exc):
                        raise TransientError(f"no data for {timeout:g} s") from None
                    raise TransientError(f"connection lost after {_size(partial.offset)}: {_short(exc)}") from None
                if not chunk:
                    if job.stop.is_set():  # an interrupted read ends like a clean EOF: not a complete file
                        raise Cancelled("stopped")
                    break
                if first:
                    first = False
                    head = chunk[:64].lstrip().lower()
                    if head.startswith(SNIFF):
                        raise PermanentError("the server sent an HTML page instead of the model file (usually "
                                             f"Civitai's login or maintenance page); {TOKEN_HELP}")
                hasher.update(chunk)
                view = memoryview(chunk)
                try:
                    for start in range(0, len(view), WRITE_SLICE):
                        handle.write(view[start:start + WRITE_SLICE])
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        self._truncate_to_hashed(part, partial)
                        remaining = (partial.total or 0) - partial.offset
                        raise DiskFull(f"disk full while writing {part.name}: {_size(max(remaining, len(chunk)))} "
                                       f"more needed in {job.folder}; free some space, then retry") from None
                    raise
                partial.offset += len(chunk)
                if partial.total is not None and partial.offset > partial.total:
                    raise TransientError("the server sent more bytes than it announced", restart=True)
                if job.on_progress:
                    job.on_progress(partial.offset, partial.total)
                self.throttle.take(len(chunk), job.stop)
                now = time.monotonic()
                window_bytes += len(chunk)
                if now - window_start >= timeout:
                    if window_bytes < STALL_BYTES:
                        raise TransientError(f"download stalled: under 1 KiB in {timeout:g} s")
                    window_start, window_bytes = now, 0
            os.fsync(handle.fileno())
        if partial.total is not None and partial.offset < partial.total:
            raise TransientError(f"connection closed after {_size(partial.offset)} of {_size(partial.total)}")

    def _publish(self, job, partial):
        """The publication gate: size, format, hash; then link into place without overwriting."""
        part = self._part_path(job, partial)
        size = partial.offset
        if partial.total is not None and size != partial.total:
            raise TransientError(f"size mismatch: got {size} bytes, expected {partial.total}", restart=True)
        if job.api_size and size != job.api_size:
            raise TransientError(f"size mismatch: got {size} bytes, Civitai lists {job.api_size}", restart=True)
        if size == 0:
            raise TransientError("the server sent an empty file", restart=True)
        if partial.filename.lower().endswith(".safetensors"):
            problem = safetensors_problem(part, size)
            if problem and not job.expected_sha256:
                raise TransientError(f"not a valid .safetensors file ({problem})", restart=True)
        digest = partial.hasher.hexdigest()
        if job.expected_sha256 and digest != job.expected_sha256:
            raise HashMismatch(job.expected_sha256, digest)
        target = job.folder / partial.filename
        existing = partial.existing_sha
        if existing is not None or target.exists():
            existing = existing or _hash_file(target)
            part.unlink(missing_ok=True)
            if existing == digest:
                return Result(target, partial.filename, digest, bool(job.expected_sha256), size, existed=True)
            raise PermanentError(f"a different file already exists at {target}; move it away or choose another "
                                 "filename, then retry")
        _link_into_place(part, target)
        return Result(target, partial.filename, digest, bool(job.expected_sha256), size)

    # -- part file helpers -------------------------------------------------------
    def _part_path(self, job, partial):
        return part_path(job.folder, partial.filename)

    def _load_part(self, job, partial):
        """Hash an existing part once so a resume can continue the same hash."""
        partial.hasher = hashlib.sha256()
        partial.offset = 0
        part = self._part_path(job, partial)
        if part.exists():
            with open(part, "rb") as handle:
                while True:
                    block = handle.read(READ_SIZE)
                    if not block:
                        break
                    partial.hasher.update(block)
                    partial.offset += len(block)

    def _discard(self, job, partial):
        if partial.filename:
            self._part_path(job, partial).unlink(missing_ok=True)
        partial.hasher = hashlib.sha256()
        partial.offset = 0
        partial.etag = None

    def _truncate_to_hashed(self, part, partial):
        with open(part, "r+b") as handle:
            handle.truncate(partial.offset)

    def _quarantine(self, job, partial, exc):
        part = self._part_path(job, partial) if partial.filename else None
        if part and part.exists():
            self.quarantine.mkdir(parents=True, exist_ok=True)
            target = self.quarantine / fit_name(partial.filename, f".{exc.actual[:12]}")
            os.replace(part, target)
            exc.quarantined = target
            log.warning("download %s: kept the mismatching file in %s (expected %s, got %s)",
                        job.download_id, target, exc.expected, exc.actual)


def fit_name(filename, suffix):
    """`filename + suffix`, shortened (the same way every time) to fit the 255-byte name limit."""
    name = filename + suffix
    if len(name.encode()) <= 255:
        return name
    tag = "~" + hashlib.sha256(filename.encode()).hexdigest()[:12]
    keep = filename.encode()[:255 - len(tag) - len(suffix.encode())].decode("utf-8", "ignore")
    return keep + tag + suffix


def part_path(folder, filename):
    """Where `filename` is downloaded to before it passes the publication gate."""
    return Path(folder) / fit_name(filename, ".part")


def _link_into_place(part, target):
    """Rename without ever replacing an existing file."""
    try:
        os.link(part, target)
    except FileExistsError:
        raise PermanentError(f"a file appeared at {target} while downloading; move it away, then retry") from None
    except OSError:
        if target.exists():  # file systems without hard links: check, then rename
            raise PermanentError(f"a file already exists at {target}; move it away, then retry") from None
        os.replace(part, target)
        return
    part.unlink()


def _hash_file(path):
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(READ_SIZE):
            hasher.update(block)
    return hasher.hexdigest()


def _short(exc):
    text = str(exc)
    if "Max retries exceeded" in text or "Failed to establish" in text:
        text = text.split("Caused by")[-1] if "Caused by" in text else text
    return text[:200]


def _size(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
