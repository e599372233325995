"""Events and the thread-safe bus every component publishes to (SPEC §7).

Publishers call `publish` only after the transaction that caused the event has
committed. Subscribers run in the publisher's thread, so they must be quick
and must not raise: each one hands the event to its own queue or loop.
"""
import dataclasses
import datetime
import logging
import threading

log = logging.getLogger("daemon.events")

DOWNLOAD_EVENTS = ("download.queued", "download.started", "download.completed", "download.failed",
                   "download.cancelled", "download.paused")
PROGRESS = "download.progress"


@dataclasses.dataclass(frozen=True)
class Event:
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
        event = Event(name, data)
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:  # a subscriber bug must never reach a worker
                log.exception("event subscriber %r failed on %s", callback, name)
        return event
