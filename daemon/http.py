"""The one HTTP layer: sessions, Retry-After, which credential goes to which origin, the retry policy,
bounded body reads, and network failures said in words."""
import datetime
import email.utils
import math
import random
import threading
import time
from urllib.parse import urlsplit

import requests
import tenacity

from . import USER_AGENT
from .errors import Cancelled, TransientError
from .filenames import CIVITAI_HOSTS

RETRY_AFTER_CAP = 3600.0    # an absurd Retry-After must not park a download for days
ERROR_BODY_LIMIT = 64 << 10  # an error page is read at most this far
STALL_BYTES = 1024           # under this many bytes in `timeout` seconds counts as a stall (SPEC §6)
DEFAULT_PORTS = {"http": 80, "https": 443}


def new_session(**headers):
    """A session that ignores the environment (no proxies, no .netrc credentials), names the daemon
    in User-Agent and asks for identity encoding (no decompression bombs, byte counts are real)."""
    session = requests.Session()
    session.trust_env = False
    session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    session.headers.update(headers)
    return session


class Sessions(threading.local):
    """One session per thread (requests sessions are not thread-safe)."""

    def __init__(self, **headers):
        self._headers = headers
        self._session = None

    def get(self):
        if self._session is None:
            self._session = new_session(**self._headers)
        return self._session


def retry_after(value, cap=RETRY_AFTER_CAP):
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP date), capped; None if unusable."""
    if not value or not isinstance(value, str):
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, min(seconds, cap))


def origin(url):
    """(scheme, host, port) of a URL with the default port filled in, or None when it has none."""
    try:
        parts = urlsplit(url or "")
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower().rstrip(".")
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port


class Origins:
    """A set of exact scheme://host:port origins: `url in origins` matches all three, never a look-alike."""

    def __init__(self, urls):
        self._set = {o for o in map(origin, urls) if o}

    def __contains__(self, url):
        return origin(url) in self._set

    def __repr__(self):
        return "Origins(%s)" % ", ".join(sorted(f"{s}://{h}:{p}" for s, h, p in self._set))


def civitai_origins(base_url):
    """Civitai's own origins: the configured base URL's, and https on civitai.com and civitai.red."""
    return Origins([base_url, *(f"https://{host}" for host in CIVITAI_HOSTS)])


class Credentials:
    """Which credential headers go to which origins; a URL outside every grant gets none (a storage host,
    another port, plain http to an https host)."""

    def __init__(self):
        self._grants = []

    def grant(self, origins, headers):
        """Send `headers` to every URL in `origins` (ignored when `headers` is empty)."""
        if headers:
            self._grants.append((origins, dict(headers)))
        return self

    def headers_for(self, url):
        """The credential headers `url` may receive (a new dict)."""
        headers = {}
        for origins, granted in self._grants:
            if url in origins:
                headers.update(granted)
        return headers


def civitai_credentials(base_url, token):
    """The Civitai token as a Bearer header, for Civitai's origins only (SPEC §4)."""
    return Credentials().grant(civitai_origins(base_url), {"Authorization": f"Bearer {token}"} if token else {})


def backoff_wait(backoff, backoff_max, jitter=True):
    """Exponential back-off (doubling from `backoff` up to `backoff_max`), a server's Retry-After wins."""
    def wait(state):
        exc = state.outcome.exception()
        if getattr(exc, "retry_after", None) is not None:
            return exc.retry_after
        base = min(backoff_max, backoff * 2 ** (state.attempt_number - 1))
        return base * random.uniform(0.75, 1.25) if jitter else base
    return wait


def stoppable_sleep(stop):
    """A tenacity sleep that waits on `stop`: shutdown is never stuck behind a retry."""
    def sleep(seconds):
        if stop.wait(seconds):
            raise Cancelled("stopped while waiting to retry")
    return sleep


def retrying(attempts, backoff, backoff_max, stop, before_sleep=None, jitter=True, sleep=None,
             retry_on=TransientError):
    """The one retry policy: `attempts` tries, back-off with jitter, only `retry_on` errors retried."""
    return tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts),
                             wait=backoff_wait(backoff, backoff_max, jitter),
                             sleep=sleep or stoppable_sleep(stop), before_sleep=before_sleep, reraise=True,
                             retry=tenacity.retry_if_exception_type(retry_on))


def read_body(response, limit, timeout, deadline=None):
    """Up to `limit` bytes of a streamed body: (data, whole). Stops early at a stall (under 1 KiB in
    `timeout` s) or after `deadline` s; `whole` is False when the body was cut."""
    raw = response.raw
    data = bytearray()
    started = window_start = time.monotonic()
    window_bytes = 0
    while True:
        try:
            chunk = raw.read1(min(64 << 10, limit + 1 - len(data)))
        except Exception:  # a reset or a read timeout: what arrived is all there is
            return bytes(data), False
        if not chunk:
            return bytes(data), True
        data += chunk
        if len(data) > limit:
            return bytes(data[:limit]), False
        now = time.monotonic()
        window_bytes += len(chunk)
        if deadline is not None and now - started >= deadline:
            return bytes(data), False
        if now - window_start >= timeout:
            if window_bytes < STALL_BYTES:
                return bytes(data), False
            window_start, window_bytes = now, 0


def network_problem(exc, host, timeout):
    """A failed connection said in words, with what to do (never the library's raw repr)."""
    text = f"{exc!r} {exc}"
    if isinstance(exc, requests.exceptions.SSLError) or "SSL" in text or "CERTIFICATE" in text.upper():
        return (f"secure connection (TLS) to {host} failed: its certificate or protocol was refused; check the "
                "URL, the system clock and the CA certificates")
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in text:
        return f"no answer from {host} within {timeout:g} s; check the network connection or try again later"
    if any(s in text for s in ("NameResolutionError", "Failed to resolve", "Name or service not known",
                               "nodename nor servname", "getaddrinfo failed", "Temporary failure in name")):
        return f"the host name {host} was not found (DNS); check the URL and that this machine is online"
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return f"{host} refused the connection (nothing listens there); check the URL or try again later"
    if "Network is unreachable" in text or "No route to host" in text:
        return f"{host} is unreachable from this machine (no network route); check the network connection"
    if "BadStatusLine" in text:
        return (f"the server at {host} did not speak HTTP (another kind of server on that port?); cannot connect "
                "to it as a web server: check the URL and port")
    if "reset" in text.lower() or "RemoteDisconnected" in text or "aborted" in text.lower():
        return f"{host} closed the connection unexpectedly; the daemon tries again"
    return f"cannot connect to {host}; check the network connection and the URL"
