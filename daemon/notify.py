"""The background sender for the webhook and Telegram (SPEC §7).

Subscribes to the bus and only appends to a bounded queue; one thread POSTs.
A dead or slow receiver never slows a download: when the queue is full the
oldest event is dropped (and logged once).
"""
import collections
import hashlib
import hmac
import json
import logging
import threading
import time

import requests

from .fetch import USER_AGENT

log = logging.getLogger("daemon.notify")

ATTEMPTS = 3
TIMEOUT = 10
BACKLOG = 10_000


def sign(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _size(n):
    if not n:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000


def telegram_text(event):
    """A short readable message for one event."""
    data = event.data
    name = data.get("model_name")
    title = f"{name} — {data.get('version_name')}" if name and data.get("version_name") else (name or "")
    if event.name == "download.completed":
        took = data.get("duration")
        lines = ["✅ Download completed", title, f"File: {data.get('filename')}", f"Size: {_size(data.get('bytes'))}"]
        if took is not None:
            lines.append(f"Time: {took:.0f} s")
    elif event.name == "download.failed":
        lines = ["❌ Download failed", title, f"File: {data.get('filename') or data.get('url')}",
                 f"Why: {data.get('error')}"]
    elif event.name.startswith("manifest."):
        failed = [i for i in data.get("items", []) if i.get("status") != "completed"]
        lines = [f"📄 Manifest {data.get('manifest')}: {data.get('status')}",
                 f"{len(data.get('items', [])) - len(failed)} completed, {len(failed)} not"]
        lines += [f"• {e}" for e in (data.get("errors") or [])[:5]]
        lines += [f"• item {i.get('index')}: {i.get('error')}" for i in failed[:5]]
    elif event.name == "model.update":
        lines = ["🆕 Model update", f"{data.get('model_name')} (model {data.get('modelId')})",
                 f"Version {data.get('previous_version_id')} → {data.get('modelVersionId')} "
                 f"{data.get('version_name') or ''}".rstrip()]
    else:
        lines = [event.name, json.dumps(data)[:300]]
    return "\n".join(line for line in lines if line)


class Notifier:
    """Delivers events to the webhook and Telegram from one background thread."""

    def __init__(self, settings, bus):
        self.settings = settings
        self.webhook = settings.webhook_url
        self.secret = settings.webhook_secret
        telegram = settings.telegram or {}
        self.telegram_token = telegram.get("bot_token")
        self.telegram_chat = telegram.get("chat_id")
        self.telegram_events = set(telegram.get("events") or [])
        self.telegram_base = settings.telegram_api_base
        self._queue = collections.deque(maxlen=BACKLOG)
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = None
        self._deadline = float("inf")
        self._failing = {}  # target → True while it fails (log once, not per attempt)
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.headers["User-Agent"] = USER_AGENT
        self.enabled = bool(self.webhook or (self.telegram_token and self.telegram_chat is not None))
        if self.enabled:
            bus.subscribe(self._on_event)

    def _on_event(self, event):
        if event.name == "download.progress" or event.name == "download.paused":
            return
        with self._cv:
            if len(self._queue) == self._queue.maxlen:
                log.warning("notification backlog full; dropping the oldest event")
            self._queue.append(event)
            self._cv.notify()

    def start(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
            self._thread.start()

    def stop(self, timeout=2.0):
        """Deliver what is queued within `timeout`, then stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        with self._cv:
            self._cv.notify()
        if self._thread:
            self._thread.join(timeout)

    def _run(self):
        while True:
            with self._cv:
                while not self._queue and not self._stop.is_set():
                    self._cv.wait()
                if not self._queue:
                    return
                event = self._queue.popleft()
            if self._stop.is_set() and time.monotonic() > getattr(self, "_deadline", 0):
                return
            try:
                self._deliver(event)
            except Exception:
                log.exception("notification of %s failed", event.name)

    def _deliver(self, event):
        if self.webhook:
            body = json.dumps(event.as_dict(), separators=(",", ":")).encode()
            headers = {"Content-Type": "application/json"}
            if self.secret:
                headers["X-Civitai-Daemon-Signature"] = sign(self.secret, body)
            self._post("webhook", self.webhook, body, headers)
        if self.telegram_token and self.telegram_chat is not None and event.name in self.telegram_events:
            body = json.dumps({"chat_id": self.telegram_chat, "text": telegram_text(event),
                               "disable_web_page_preview": True}).encode()
            url = f"{self.telegram_base}/bot{self.telegram_token}/sendMessage"
            self._post("telegram", url, body, {"Content-Type": "application/json"})

    def _post(self, target, url, body, headers):
        problem = None
        for attempt in range(ATTEMPTS):
            if attempt:
                if self._stop.wait(min(8, 2 ** attempt)) and time.monotonic() > self._deadline:
                    break
            try:
                response = self._session.post(url, data=body, headers=headers, timeout=TIMEOUT)
                if response.status_code < 300:
                    if self._failing.pop(target, None):
                        log.info("%s delivers again", target)
                    return True
                problem = f"answered {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    break
            except requests.RequestException as exc:
                problem = type(exc).__name__
        if not self._failing.get(target):
            log.error("%s unreachable (%s after %d attempts); events are dropped until it answers again",
                      target, problem, ATTEMPTS)
            self._failing[target] = True
        return False
