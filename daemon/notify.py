"""Background senders for the webhook and Telegram (SPEC §7).

The bus subscriber only appends to a bounded queue; each target has its own
thread, so a dead or slow receiver never slows a download nor the other
target. When a queue is full the oldest event is dropped (logged once).
"""
import collections
import hashlib
import hmac
import json
import logging
import threading
import time

import requests

from . import events as ev, http
from .errors import Cancelled, DaemonError, PermanentError, TransientError
from .states import Status
from .units import size_text

log = logging.getLogger("daemon.notify")

ATTEMPTS = 3
TIMEOUT = 10
BACKLOG = 10_000
NOTIFIABLE = frozenset(ev.NOTIFIABLE)  # the live-only events stay on the WebSocket


def sign(secret, body):
    """The X-Civitai-Daemon-Signature value: sha256=<hex HMAC-SHA256 of the body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _took(seconds):
    if seconds < 10:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def telegram_text(event):
    """A short readable message for one event."""
    data = event.data
    name = data.get("model_name")
    title = f"{name} — {data.get('version_name')}" if name and data.get("version_name") else (name or "")
    if event.name == ev.DOWNLOAD_COMPLETED:
        took = data.get("duration")
        lines = ["✅ Download completed", title, f"File: {data.get('filename')}", f"Size: {size_text(data['bytes']) if data.get('bytes') else '?'}"]
        if took is not None:
            lines.append(f"Time: {_took(took)}")
        if not data.get("verified"):
            lines.append("Hash: not verified (no published SHA256)")
    elif event.name == ev.DOWNLOAD_FAILED:
        lines = ["❌ Download failed", title, f"File: {data.get('filename') or data.get('url')}",
                 f"Why: {data.get('error')}"]
    elif event.name == ev.DOWNLOAD_CANCELLED:
        lines = ["🚫 Download cancelled", title, f"File: {data.get('filename') or data.get('url')}"]
    elif event.name in (ev.MANIFEST_DONE, ev.MANIFEST_FAILED):
        items = data.get("items") or []
        failed = [i for i in items if i.get("status") != Status.COMPLETED.value]
        lines = [f"📄 Manifest {data.get('manifest')}: {data.get('status')}",
                 f"{len(items) - len(failed)} completed, {len(failed)} not"]
        lines += [f"• {e}" for e in (data.get("errors") or [])[:5]]
        lines += [f"• item {i.get('index')}: {i.get('error')}" for i in failed[:5]]
    elif event.name == ev.MODEL_UPDATE:
        lines = ["🆕 Model update", f"{data.get('model_name')} (model {data.get('modelId')})",
                 f"Version {data.get('previous_version_id')} → {data.get('modelVersionId')} "
                 f"{data.get('version_name') or ''}".rstrip()]
        if data.get("reason") == "re-uploaded":
            lines.append("The same version was re-uploaded with a new file.")
        if data.get("download_id"):
            lines.append(f"Downloading it (download {data['download_id']}).")
    elif event.name == ev.UPDATES_SUMMARY:
        skipped = data.get("skipped") or {}
        lines = [f"🔎 Update check: {data.get('found', 0)} update(s) found",
                 f"{data.get('applied', 0)} downloading, {data.get('waiting', 0)} waiting for early access"]
        lines += [f"• {n} not applied: {why}" for why, n in sorted(skipped.items())]
    else:
        lines = [f"{event.name}: {title or data.get('filename') or data.get('id') or ''}".rstrip(": ")]
    return "\n".join(line for line in lines if line)


class _Channel:
    """One target: a bounded queue, one thread, 3 attempts with back-off, failures logged once."""

    def __init__(self, name, build, wanted, backoff):
        self.name = name
        self.build = build          # event → (url, body bytes, headers)
        self.wanted = wanted        # event → bool
        self.backoff = backoff
        self._queue = collections.deque(maxlen=BACKLOG)
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._failing = False
        self._dropping = False
        self._thread = None
        self._session = http.new_session()  # no proxy or .netrc surprises for a secret-bearing POST

    def offer(self, event):
        if not self.wanted(event):
            return
        with self._cv:
            if len(self._queue) == self._queue.maxlen and not self._dropping:
                self._dropping = True
                log.warning("%s backlog full (%d events); dropping the oldest", self.name, BACKLOG)
            self._queue.append(event)
            self._cv.notify()

    def start(self):
        self._thread = threading.Thread(target=self._run, name=f"notify-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, deadline):
        self._deadline = deadline
        self._stop.set()
        with self._cv:
            self._cv.notify()

    def join(self, deadline):
        if self._thread:
            self._thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self):
        while True:
            with self._cv:
                while not self._queue and not self._stop.is_set():
                    self._cv.wait()
                if not self._queue or time.monotonic() > self._deadline:
                    return
                event = self._queue.popleft()
                if not self._queue:
                    self._dropping = False
            try:
                url, body, headers = self.build(event)
                self._post(url, body, headers)
            except Exception:  # a bug here must never stop later notifications
                log.exception("%s: could not send %s", self.name, event.name)

    def _post(self, url, body, headers):
        def sleep(seconds):
            # The back-off waits on the stop event: shutdown is never stuck behind a retry (but what is
            # queued is still delivered until the stop deadline).
            if self._stop.wait(seconds) and time.monotonic() > self._deadline:
                raise Cancelled("stopping")

        def once():
            try:
                response = self._session.post(url, data=body, headers=headers, timeout=TIMEOUT)
            except requests.RequestException as exc:
                raise TransientError(type(exc).__name__) from None
            response.close()
            if response.status_code < 300:
                return True
            problem = f"answered {response.status_code}"
            if 400 <= response.status_code < 500 and response.status_code != 429:
                raise PermanentError(problem)  # the request itself is wrong; repeating it cannot help
            raise TransientError(problem)

        try:
            http.retrying(ATTEMPTS, 2 * self.backoff, 8.0, self._stop, jitter=False, sleep=sleep)(once)
        except DaemonError as exc:
            if not self._failing:
                self._failing = True
                log.error("%s failed (%s after %d attempt(s)); events are dropped until it answers again",
                          self.name, exc, ATTEMPTS)
            return False
        if self._failing:
            self._failing = False
            log.info("%s delivers again", self.name)
        return True


class Notifier:
    """Delivers events to the webhook and Telegram, each from its own background thread."""

    def __init__(self, settings, bus):
        self.settings = settings
        self.secret = settings.webhook_secret
        backoff = max(0.05, float(settings.backoff))
        self.channels = []
        if settings.webhook_url:
            self.channels.append(_Channel("webhook", self._webhook_request(settings.webhook_url),
                                          lambda e: True, backoff))
        telegram = settings.telegram or {}
        token, chat = telegram.get("bot_token"), telegram.get("chat_id")
        if token and chat is not None:
            events = set(telegram.get("events") or [])
            url = f"{settings.telegram_api_base.rstrip('/')}/bot{token}/sendMessage"
            self.channels.append(_Channel("telegram", self._telegram_request(url, chat),
                                          lambda e: e.name in events, backoff))
        self.enabled = bool(self.channels)
        if self.enabled:
            bus.subscribe(self._on_event)

    def _webhook_request(self, url):
        def build(event):
            body = json.dumps(event.as_dict(), separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"}
            if self.secret:
                headers["X-Civitai-Daemon-Signature"] = sign(self.secret, body)
            return url, body, headers
        return build

    @staticmethod
    def _telegram_request(url, chat):
        def build(event):
            body = json.dumps({"chat_id": chat, "text": telegram_text(event),
                               "disable_web_page_preview": True}).encode()
            return url, body, {"Content-Type": "application/json"}
        return build

    def _on_event(self, event):
        if event.name not in NOTIFIABLE:
            return
        for channel in self.channels:
            channel.offer(event)

    def start(self):
        for channel in self.channels:
            channel.start()

    def stop(self, timeout=2.0):
        """Deliver what is queued within `timeout`, then stop."""
        deadline = time.monotonic() + timeout
        for channel in self.channels:
            channel.stop(deadline)
        for channel in self.channels:
            channel.join(deadline)
