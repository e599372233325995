"""The live event feed for WebSocket clients.

Thread model: events are published from OS threads (workers, intake), but
WebSocket sockets belong to the gevent hub in the main thread. A worker must
never touch a gevent object, so `_on_event` only appends to a deque (atomic in
CPython) and calls `send()` on a `loop.async_()` watcher, which libev documents
as safe from any thread; the hub then runs `_flush` and hands each event to
every client's bounded queue without blocking. Each client has its own sending
greenlet, so a slow socket only ever stalls that client. A client whose queue
fills up (it stopped reading), or that cannot take one frame in
`SEND_TIMEOUT` seconds, is dropped: its greenlet is killed and its socket shut
down, so nobody waits for it.
"""
import collections
import json
import logging
import socket

import gevent
import gevent.queue
from geventwebsocket.exceptions import WebSocketError

from ..events import PROGRESS, SNAPSHOT, Event

log = logging.getLogger("daemon.web.feed")

CLIENT_BACKLOG = 1000
SEND_TIMEOUT = 30.0
SEND_BUFFER = 256 * 1024  # kernel buffer per client: a stuck client costs this much, not Linux's 4 MB autotuned
PROGRESS_INTERVAL = 0.25  # at most 4 progress events a second per download


def _raw_socket(ws):
    return getattr(getattr(ws, "handler", None), "socket", None)


def _text(name, data):
    return json.dumps(Event(name, data).as_dict(), separators=(",", ":"))


class _Client:
    def __init__(self, ws):
        self.ws = ws
        self.outbox = gevent.queue.Queue(maxsize=CLIENT_BACKLOG)
        self.greenlet = gevent.getcurrent()
        self.dead = False
        self.aborted = False


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
        self._watcher.stop()

    # -- any thread --------------------------------------------------------
    def _on_event(self, event):
        # Nobody listening: no wake-up of the hub per event (10 % of a 1,000-manifest ingest's Python).
        # A client connecting now is registered before its snapshot is read, and this event's change
        # was committed before it was published, so the snapshot holds it.
        if event.name == PROGRESS or not self.clients:
            return
        self._pending.append(event)
        self._watcher.send()  # thread-safe wake-up of the hub

    # -- the hub (callbacks and greenlets; nothing here may block) -----------
    def _flush(self):
        if not self.clients:  # nobody listening: don't pay for the JSON
            self._pending.clear()
            return
        while self._pending:
            event = self._pending.popleft()
            self._broadcast(json.dumps(event.as_dict(), separators=(",", ":")))

    def _broadcast(self, text):
        for client in list(self.clients):
            try:
                client.outbox.put_nowait(text)
            except gevent.queue.Full:
                log.warning("dropping a WebSocket client that stopped reading (%d events behind)", CLIENT_BACKLOG)
                self._drop(client, abort=True)

    def _progress_loop(self):
        while True:
            gevent.sleep(PROGRESS_INTERVAL)
            try:
                self._progress_tick()
            except Exception:  # never let a bad value end the ticker
                log.exception("progress tick failed")

    def _progress_tick(self):
        if not self.clients:
            self._last_progress.clear()
            return
        seen = set()
        for item in self.progress.snapshot():
            seen.add(item["id"])
            key = (item["bytes"], item["total"])
            if self._last_progress.get(item["id"]) == key:
                continue
            self._last_progress[item["id"]] = key
            self._broadcast(_text(PROGRESS, item))
        for stale in set(self._last_progress) - seen:
            del self._last_progress[stale]

    def _drop(self, client, abort=False):
        """Forget a client at once; never blocks (safe from a loop callback)."""
        if client.dead:
            return
        client.dead = True
        client.aborted = abort
        self.clients.discard(client)
        if client.greenlet is not gevent.getcurrent():
            client.greenlet.kill(block=False)  # wakes it from outbox.get() or a stuck send

    # -- one greenlet per client ---------------------------------------------
    def serve(self, ws, snapshot):
        """Run one client until it leaves: a snapshot event first, then every event.

        `snapshot` is a callable returning the status; the client is registered
        before it is called, so no event between the two is lost (an event may
        also be reflected in the snapshot, which clients tolerate).
        """
        client = _Client(ws)
        sock = _raw_socket(ws)
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            except OSError:
                pass
        self.clients.add(client)
        reader = None
        try:
            text = _text(SNAPSHOT, snapshot())
            reader = gevent.spawn(self._read_until_closed, client)
            while not client.dead:
                sent = False
                with gevent.Timeout(SEND_TIMEOUT, False):
                    ws.send(text)
                    sent = True
                if not sent:  # a frame could not go out in time: the client is gone or stuck
                    client.aborted = True
                    break
                text = client.outbox.get()
        except (WebSocketError, OSError, gevent.GreenletExit):
            pass
        except Exception:
            log.exception("WebSocket client failed")
        finally:
            self._drop(client)
            if reader is not None:
                reader.kill(block=False)
            if client.aborted:
                self._abort(ws)

    @staticmethod
    def _abort(ws):
        # A stuck client may have half a frame in flight: no close frame, just shut the socket so the
        # handler's own close() fails fast instead of waiting for buffer space.
        sock = _raw_socket(ws)
        try:
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_until_closed(self, client):
        try:
            while client.ws.receive() is not None:
                pass
        except Exception:  # closed, reset, or the socket was shut under us
            pass
        self._drop(client)
