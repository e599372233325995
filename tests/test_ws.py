"""The live WebSocket feed of the real daemon process (SPEC §7, §8): real sockets, real downloads."""
import datetime
import json
import socket
import threading
import time

import pytest
import websocket

from conftest import wait_for


def ws_url(daemon, token=None):
    url = daemon.url.replace("http://", "ws://") + "/ws/downloads"
    return url + (f"?token={token}" if token else "")


def connect(daemon, token=None, **kwargs):
    return websocket.create_connection(ws_url(daemon, token), timeout=10, **kwargs)


def receive(ws):
    return json.loads(ws.recv())


def server_time(event):
    return datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


class Listener(threading.Thread):
    """Reads one WebSocket in the background until `until(event)` is true or the socket closes."""

    def __init__(self, daemon, until, token=None):
        super().__init__(daemon=True)
        self.ws = connect(daemon, token)
        self.until = until
        self.events = []
        self.error = None
        self.done = threading.Event()
        self.start()

    def run(self):
        try:
            while True:
                event = json.loads(self.ws.recv())
                event["_received"] = time.monotonic()
                self.events.append(event)
                if self.until(event):
                    break
        except Exception as exc:  # recorded; the test asserts on it
            self.error = exc
        finally:
            self.done.set()

    def close(self):
        self.ws.close()

    def of(self, download_id, name=None):
        return [e for e in self.events if isinstance(e["data"], dict) and e["data"].get("id") == download_id
                and (name is None or e["event"] == name)]


def completed(download_id):
    return lambda event: event["event"] in ("download.completed", "download.failed") \
        and event["data"].get("id") == download_id


@pytest.fixture
def daemon(make_daemon):
    return make_daemon()


def test_snapshot_first_then_every_event(daemon, fake):
    ws = connect(daemon)
    first = receive(ws)
    assert first["event"] == "snapshot" and set(first) == {"event", "time", "data"}
    assert set(first["data"]) >= {"version", "uptime", "workers", "throttle", "counts", "active"}
    assert first["data"]["counts"]["queued"] == 0
    ws.close()

    blob = fake.add_blob("feed.bin", size=1_000_000)
    fake.faults.rate = 400_000  # about 2.5 s: progress events have time to happen
    listener = Listener(daemon, until=lambda e: e["event"] == "download.completed")
    download_id = daemon.post("/api/download", {"url": blob["url"], "sha256": blob["sha256"]}).json()["id"]
    assert listener.done.wait(30) and listener.error is None, listener.error

    names = [e["event"] for e in listener.events]
    assert names[0] == "snapshot"
    mine = listener.of(download_id)
    order = [e["event"] for e in mine]
    assert order[0] == "download.queued" and order[1] == "download.started" and order[-1] == "download.completed"
    assert set(order[2:-1]) == {"download.progress"}, order
    progress = [e["data"] for e in mine if e["event"] == "download.progress"]
    assert len(progress) >= 3, order
    for p in progress:
        assert set(p) >= {"id", "bytes", "total", "speed", "eta"}
        assert p["total"] == 1_000_000 and 0 <= p["bytes"] <= 1_000_000
    assert [p["bytes"] for p in progress] == sorted(p["bytes"] for p in progress)
    assert any(p["speed"] > 0 and p["eta"] is not None for p in progress)
    done = mine[-1]["data"]
    assert done["state"] == "completed" and done["sha256"] == blob["sha256"] and done["bytes"] == 1_000_000
    for event in mine:
        assert set(event) >= {"event", "time", "data"} and event["time"].endswith("Z")
    listener.close()


def test_progress_is_at_most_four_a_second(daemon, fake):
    blobs = [fake.add_blob(f"rate{i}.bin", size=1_200_000) for i in range(2)]
    fake.faults.rate = 400_000  # two downloads of about 3 s each, side by side
    ids = []
    finished = []

    def both_done(event):
        if event["event"] == "download.completed":
            finished.append(event["data"]["id"])
        return len(finished) == 2

    listener = Listener(daemon, until=both_done)
    for blob in blobs:
        ids.append(daemon.post("/api/download", {"url": blob["url"]}).json()["id"])
    assert listener.done.wait(40) and listener.error is None, listener.error
    for download_id in ids:
        events = listener.of(download_id, "download.progress")
        assert len(events) >= 6, len(events)
        stamps = [server_time(e) for e in events]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert min(gaps) >= 0.2, gaps
        for start in stamps:  # any one-second window holds at most 4
            assert sum(1 for t in stamps if start <= t < start + 1.0) <= 4
        received = [e["_received"] for e in events]
        for start in received:  # and so does what the client actually got (allowing for delivery jitter)
            assert sum(1 for t in received if start <= t < start + 1.0) <= 5


def test_twenty_clients_all_get_everything(daemon, fake):
    size, rate = 800_000, 400_000
    blob = fake.add_blob("twenty.bin", size=size)
    fake.faults.rate = rate
    holder = {}
    listeners = [Listener(daemon, until=lambda e: completed(holder.get("id"))(e)) for _ in range(20)]
    wait_for(lambda: all(lst.events for lst in listeners), 10, message="20 snapshots")
    started = time.monotonic()
    holder["id"] = daemon.post("/api/download", {"url": blob["url"]}).json()["id"]
    for listener in listeners:
        assert listener.done.wait(30) and listener.error is None, listener.error
    took = time.monotonic() - started
    assert took < size / rate * 1.5 + 1.5, f"the download took {took:.1f} s with 20 clients"
    reference = [e["event"] for e in listeners[0].of(holder["id"]) if e["event"] != "download.progress"]
    assert reference == ["download.queued", "download.started", "download.completed"]
    for listener in listeners:
        assert [e["event"] for e in listener.of(holder["id"]) if e["event"] != "download.progress"] == reference
        assert listener.of(holder["id"], "download.progress")
        listener.close()


def test_a_client_that_never_reads_holds_nobody_up(daemon, fake):
    # The stuck client asks for a tiny receive buffer and never calls recv(): the daemon's sends to it back up.
    stuck = connect(daemon, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    size, rate = 1_000_000, 500_000
    slow_blob = fake.add_blob("busy.bin", size=size)
    small = [fake.add_blob(f"small{i}.bin", size=2000) for i in range(150)]
    fake.faults.rate = rate
    holder = {}
    reader = Listener(daemon, until=lambda e: completed(holder.get("id"))(e))
    wait_for(lambda: reader.events, 10, message="snapshot")
    started = time.monotonic()
    holder["id"] = daemon.post("/api/download", {"url": slow_blob["url"], "priority": 5}).json()["id"]
    # plenty of events with long (kilobyte) URLs for the stuck client to choke on
    pad = "p" * 3000
    ids = daemon.post("/api/batch", [{"url": f"{b['url']}?pad={pad}"} for b in small]).json()["ids"]
    assert reader.done.wait(40) and reader.error is None, reader.error
    took = time.monotonic() - started
    assert took < size / rate * 1.5 + 2, f"the download took {took:.1f} s next to a stuck client"
    mine = [e["event"] for e in reader.of(holder["id"]) if e["event"] != "download.progress"]
    assert mine == ["download.queued", "download.started", "download.completed"]
    queued = {e["data"]["id"] for e in reader.events if e["event"] == "download.queued"}
    assert set(ids) <= queued, "the reading client got every queued event"
    # the daemon keeps serving: a new client gets its snapshot at once
    fresh = connect(daemon)
    assert receive(fresh)["event"] == "snapshot"
    fresh.close()
    reader.close()
    stuck.close()


def test_tokens_on_the_websocket(make_daemon, fake):
    daemon = make_daemon(api_token="feed-token", viewer_token="feed-viewer")
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect(daemon)
    assert refused.value.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as wrong:
        connect(daemon, token="nope")
    assert wrong.value.status_code == 401

    ws = connect(daemon, token="feed-token")
    snapshot = receive(ws)
    assert snapshot["event"] == "snapshot" and snapshot["data"]["role"] == "admin"
    header = websocket.create_connection(ws_url(daemon), timeout=10, header=["Authorization: Bearer feed-token"])
    assert receive(header)["event"] == "snapshot"
    viewer = connect(daemon, token="feed-viewer")
    assert receive(viewer)["data"]["role"] == "viewer"

    blob = fake.add_blob("tok.bin", size=1000)
    download_id = daemon.post("/api/download", {"url": blob["url"]}).json()["id"]
    for client in (ws, header, viewer):
        while True:
            event = receive(client)
            if event["event"] == "download.completed" and event["data"]["id"] == download_id:
                break
        client.close()
    assert "feed-token" not in daemon.logs() and "feed-viewer" not in daemon.logs()


def test_plain_http_on_the_feed_route_is_a_json_error(daemon):
    import requests
    response = requests.get(daemon.url + "/ws/downloads", timeout=5)
    assert response.status_code == 400 and "WebSocket" in response.json()["error"]
