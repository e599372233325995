"""Every event name (SPEC §7), defined once, and the thread-safe bus that carries them.

Publishers call `publish` only after the transaction that caused the event has
committed. Subscribers run in the publisher's thread, so they must be quick
and must not raise: each one hands the event to its own queue or loop.
"""
import dataclasses
import datetime
import logging
import threading

from .states import Status

log = logging.getLogger("daemon.events")


@dataclasses.dataclass(frozen=True)
class EventName:
    """One event: its wire name, what it means, and whether it reaches the webhook and Telegram."""
    name: str
    doc: str
    websocket_only: bool = False


CATALOGUE = {}  # wire name → EventName, in definition order


def _define(name, doc, websocket_only=False):
    CATALOGUE[name] = EventName(name, doc, websocket_only)
    return name


SNAPSHOT = _define("snapshot", "First message of each WebSocket connection: the status (`/api/status`).",
                   websocket_only=True)
DOWNLOAD_QUEUED = _define("download.queued", "A download entered `queued` (new, resumed, retried or back "
                                             "after a stop); data: the download, or a summary for a huge batch.")
DOWNLOAD_STARTED = _define("download.started", "A worker claimed the download (`downloading`); data: the download.")
DOWNLOAD_PROGRESS = _define("download.progress", "Bytes done, total, speed and ETA of a running download, "
                                                 "at most 4 a second per download.", websocket_only=True)
DOWNLOAD_PAUSED = _define("download.paused", "The download was paused; its part is kept; data: the download.")
DOWNLOAD_COMPLETED = _define("download.completed", "The file passed the gate and is in place; data: the download "
                                                   "with duration and average speed.")
DOWNLOAD_FAILED = _define("download.failed", "The download ended failed; data: the download with its `error`.")
DOWNLOAD_CANCELLED = _define("download.cancelled", "The download was cancelled and its part removed.")
MANIFEST_DONE = _define("manifest.done", "Every item of a manifest completed; data: `manifest`, `status`, `items`.")
MANIFEST_FAILED = _define("manifest.failed", "A manifest was rejected or ended with an item not completed; "
                                             "data: `manifest`, `status`, `errors`, `items`.")
MODEL_UPDATE = _define("model.update", "A newer version of a downloaded model was found; data: `modelId`, "
                                       "`modelVersionId`, names, `previous_version_id`.")
LIBRARY_SCAN_PROGRESS = _define("library.scan.progress", "A running library scan's counters (the keys of "
                                                         "`GET /api/library/scan`), at most 4 a second.",
                                websocket_only=True)
LIBRARY_SCAN_DONE = _define("library.scan.done", "A library scan ended; data: its summary.")
UPDATES_SUMMARY = _define("updates.summary", "An update check ended; data: `found`, `applied`, `waiting`, "
                                             "`skipped` and why.")

PROGRESS = DOWNLOAD_PROGRESS
# What the webhook and Telegram may carry (the live-only events stay on the WebSocket).
NOTIFIABLE = [e.name for e in CATALOGUE.values() if not e.websocket_only]
# The event a download's move into each state announces.
FOR_STATE = {Status.QUEUED: DOWNLOAD_QUEUED, Status.DOWNLOADING: DOWNLOAD_STARTED, Status.PAUSED: DOWNLOAD_PAUSED,
             Status.COMPLETED: DOWNLOAD_COMPLETED, Status.FAILED: DOWNLOAD_FAILED,
             Status.CANCELLED: DOWNLOAD_CANCELLED}


@dataclasses.dataclass(frozen=True)
class Event:
    """One published event: its name, its data, and when it happened."""
    name: str
    data: dict
    time: str = dataclasses.field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
                                  .isoformat(timespec="milliseconds").replace("+00:00", "Z"))

    def as_dict(self):
        return {"event": self.name, "time": self.time, "data": self.data}


class Bus:
    """Fan-out of events to subscribers; a failing subscriber never breaks a publisher."""

    def __init__(self):
        self._subscribers = []
        self._lock = threading.Lock()

    def subscribe(self, callback):
        with self._lock:
            self._subscribers = self._subscribers + [callback]

    def publish(self, name, data):
        if name not in CATALOGUE:  # a typo must not become an event nobody listens to
            raise ValueError(f"unknown event {name!r}; define it in daemon/events.py")
        event = Event(name, data)
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:  # a subscriber bug must never reach a worker
                log.exception("event subscriber %r failed on %s", callback, name)
        return event
