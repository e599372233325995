"""The live event feed for WebSocket clients.

Thread model: events are published from OS threads (workers, intake), but
WebSocket sockets belong to the gevent hub in the main thread. A worker must
never touch a gevent object, so `_on_event` only appends to a deque (atomic in
CPython) and calls `send()` on a `loop.async_()` watcher, which libev documents
as safe from any thread; the hub then runs `_flush` and hands each event to
every client's bounded queue. A client that stops reading fills its queue and
is dropped, so nobody waits for it.
"""
import collections
import json
import logging

import gevent
import gevent.queue
from geventwebsocket.exceptions import WebSocketError

from ..events import PROGRESS, Event

log = logging.getLogger("daemon.web.feed")

CLIENT_BACKLOG = 1000
PROGRESS_INTERVAL = 0.25  # at most 4 progress events a second per download


class _Client:
    def __init__(self, ws):
        self.ws = ws
        self.outbox = gevent.queue.Queue(maxsize=CLIENT_BACKLOG)
        self.dead = False


class Feed:
    """Fan-out of bus events (and throttled progress) to WebSocket clients."""

    def __init__(self, bus, progress):
        self.progress = progress
        self.clients = set()
        self._pending = collections.deque()
        self._hub = gevent.get_hub()
        self._watcher = self._hub.loop.async_()
        self._watcher.start(self._flush)
        self._last_progress = {}
        self._ticker = None
        bus.subscribe(self._on_event)

    def start(self):
        self._ticker = gevent.spawn(self._progress_loop)

    def stop(self):
        if self._ticker:
            self._ticker.kill(block=False)
        for client in list(self.clients):
            self._drop(client)

    def _on_event(self, event):
        if event.name == PROGRESS:
            return
        self._pending.append(event)
        self._watcher.send()  # thread-safe wake-up of the hub

    def _flush(self):
        while self._pending:
            event = self._pending.popleft()
            self._broadcast(json.dumps(event.as_dict(), separators=(",", ":")))

    def _broadcast(self, text):
        for client in list(self.clients):
            try:
                client.outbox.put_nowait(text)
            except gevent.queue.Full:
                log.warning("dropping a WebSocket client that stopped reading")
                self._drop(client)

    def _progress_loop(self):
        while True:
            gevent.sleep(PROGRESS_INTERVAL)
            if not self.clients:
                continue
            active = self.progress.snapshot()
            seen = set()
            for item in active:
                seen.add(item["id"])
                key = (item["bytes"], item["total"])
                if self._last_progress.get(item["id"]) == key:
                    continue
                self._last_progress[item["id"]] = key
                self._broadcast(json.dumps(Event(PROGRESS, item).as_dict(), separators=(",", ":")))
            for stale in set(self._last_progress) - seen:
                del self._last_progress[stale]

    def _drop(self, client):
        client.dead = True
        self.clients.discard(client)
        try:
            client.outbox.put_nowait(None)
        except gevent.queue.Full:
            pass
        try:
            client.ws.close()
        except Exception:  # the socket may already be gone
            pass

    def serve(self, ws, snapshot):
        """Run one client until it leaves: the snapshot first, then every event."""
        client = _Client(ws)
        try:
            ws.send(json.dumps(Event("snapshot", snapshot).as_dict(), separators=(",", ":")))
        except WebSocketError:
            return
        self.clients.add(client)
        reader = gevent.spawn(self._read_until_closed, client)
        try:
            while not client.dead:
                text = client.outbox.get()
                if text is None:
                    break
                with gevent.Timeout(30, False):  # a client that cannot take a frame in 30 s is gone
                    ws.send(text)
                    continue
                break
        except (WebSocketError, OSError):
            pass
        finally:
            reader.kill(block=False)
            self._drop(client)

    def _read_until_closed(self, client):
        try:
            while client.ws.receive() is not None:
                pass
        except (WebSocketError, OSError):
            pass
        self._drop(client)
