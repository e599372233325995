"""Hostile servers and hostile manifests against the real daemon.

The raw-socket servers here do what the fake Civitai cannot: an endless body,
a redirect loop, redirects to file:// and other schemes, one byte a minute,
a dripping body, silence after accept, a non-HTTP greeting. Each download
must end in a clear failure or a correct result, no worker may stay stuck,
and nothing may appear under a final name unless it verified.
"""
import hashlib
import json
import os
import socket
import threading
import time

import pytest
import requests

from conftest import sha as sha_of_file, wait_for


class RawServer:
    """A loopback TCP server; `handler(conn, request_head, stop)` answers each connection in a thread."""

    def __init__(self, handler):
        self.handler = handler
        self.stop_event = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def url(self, path="/file.bin"):
        return f"http://127.0.0.1:{self.port}{path}"

    def _accept(self):
        while not self.stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.handler(conn, head.decode("latin-1"), self.stop_event)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def close(self):
        self.stop_event.set()
        self.sock.close()


def payload():
    data = os.urandom(200_000)
    return data, hashlib.sha256(data).hexdigest()  # distinct content: no deduplication between cases


def _head(length, extra=""):
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode()


def endless(data):
    """The announced body, then zeros forever (until the client hangs up)."""
    def handler(conn, head, stop):
        conn.sendall(_head(len(data)) + data)
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            conn.sendall(b"\x00" * 65536)
    return handler


def byte_a_minute(data):
    def handler(conn, head, stop):
        conn.sendall(_head(len(data)) + data[:1])
        while not stop.wait(60):
            conn.sendall(b"x")
    return handler


def drip(data):
    """One byte every 0.2 s: never a read timeout, but far under 1 KiB per `timeout`."""
    def handler(conn, head, stop):
        conn.sendall(_head(len(data)))
        for index in range(len(data)):
            if stop.wait(0.2):
                return
            conn.sendall(data[index:index + 1])
    return handler


def announce(data, delta):
    """Content-Length off by `delta`, the real body, then hang up."""
    def handler(conn, head, stop):
        conn.sendall(_head(len(data) + delta) + data)
        conn.shutdown(socket.SHUT_RDWR)
    return handler


def silent(conn, head, stop):
    stop.wait(60)


def not_http(conn, head, stop):
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n" + os.urandom(512))


def _redirect(location):
    return f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()


def redirect_to(location):
    def handler(conn, head, stop):
        conn.sendall(_redirect(location))
    return handler


def redirect_loop(conn, head, stop):
    path = head.split(" ", 2)[1]
    number = int(path.rsplit("/", 1)[-1]) if path.rsplit("/", 1)[-1].isdigit() else 0
    target = f"/loop/{(number + 1) % 3}"  # a cycle of three URLs
    conn.sendall(_redirect(target))


@pytest.fixture
def servers():
    made = []

    def make(handler):
        server = RawServer(handler)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def test_hostile_servers(make_daemon, fake, servers):
    """Each hostile server ends in a clear failure or a correct file; afterwards a good file still downloads."""
    good = fake.add_blob("good.bin", size=300_000)
    data = {name: payload() for name in ("endless", "minute", "drip", "silent", "garbage", "long", "short")}
    cases = {
        # name: (url, sha256 or None, expected state, words the error must contain)
        "endless": (servers(endless(data["endless"][0])).url(), data["endless"][1], "completed", None),
        "byte-a-minute": (servers(byte_a_minute(data["minute"][0])).url(), data["minute"][1], "failed",
                          ["no data for 2 s"]),
        "drip": (servers(drip(data["drip"][0])).url(), data["drip"][1], "failed", ["stalled"]),
        "silent": (servers(silent).url(), data["silent"][1], "failed", ["no answer"]),
        "not-http": (servers(not_http).url(), data["garbage"][1], "failed", ["connect"]),
        "redirect-loop": (servers(redirect_loop).url("/loop/0"), None, "failed", ["too many redirects"]),
        "redirect-file": (servers(redirect_to("file:///etc/passwd")).url(), None, "failed", ["file:"]),
        "redirect-ftp": (servers(redirect_to("ftp://127.0.0.1/x.bin")).url(), None, "failed", ["ftp:"]),
        "redirect-js": (servers(redirect_to("javascript:alert(1)")).url(), None, "failed", ["javascript:"]),
        "tls-to-plain": (f"https://127.0.0.1:{fake.port}/files/good.bin", good["sha256"], "failed", ["TLS"]),
        "dns": ("http://no-such-host.invalid/model.bin", None, "failed", ["no-such-host.invalid"]),
        "too-long-announced": (servers(announce(data["long"][0], 5000)).url(), data["long"][1], "failed",
                               ["connection closed after", "of 205.0 KB"]),
        "too-short-announced": (servers(announce(data["short"][0], -5000)).url(), data["short"][1], "failed",
                                ["SHA256 mismatch"]),
    }
    daemon = make_daemon(workers=4, timeout=2, retries=1, backoff=0.05, backoff_max=0.2, sidecars=False)
    ids = {}
    for name, (url, sha, _, _) in cases.items():
        item = {"url": url, "filename": f"{name}.bin"}
        if sha:
            item["sha256"] = sha
        response = daemon.post("/api/download", item)
        assert response.status_code == 202, response.text
        ids[name] = response.json()["id"]
    ended = {}

    def all_ended():
        for name, download_id in ids.items():
            if name not in ended:
                row = daemon.download(download_id)
                if row["state"] in ("completed", "failed"):
                    ended[name] = row
        return len(ended) == len(ids)

    wait_for(all_ended, timeout=90, interval=0.2, message="every hostile download to end")
    downloads = daemon.home / "downloads"
    report = {}
    for name, (url, sha, state, words) in cases.items():
        row = ended[name]
        report[name] = (row["state"], row["error"])
        assert row["state"] == state, (name, row["state"], row["error"])
        if state == "failed":
            for word in words:
                assert word in (row["error"] or ""), (name, row["error"])
            assert not (downloads / f"{name}.bin").exists(), name
        else:
            assert row["verified"] and sha_of_file(downloads / f"{name}.bin") == sha
    for name, (state, error) in report.items():
        print(f"{name:22} {state:10} {error}")
    assert not [p for p in downloads.rglob("*") if p.is_file() and p.name.endswith(".part")
                and not p.name.startswith(("byte-a-minute", "drip", "silent", "too-long"))]
    # No thread stuck: healthy, nothing active, and a good file still downloads.
    assert daemon.get("/healthz").json() == {"ok": True}
    status = daemon.get("/api/status").json()
    assert status["counts"]["downloading"] == 0 and status["active"] == []
    final = daemon.post("/api/download", {"url": good["url"], "sha256": good["sha256"]}).json()["id"]
    assert daemon.wait_state(final, "completed", timeout=30)["verified"]
    assert daemon.stop() == 0


# -- hostile manifests, end to end -----------------------------------------------------

def test_symlink_in_inbox_is_not_followed(make_daemon, fake, tmp_path):
    blob = fake.add_blob("victim.bin", size=1000)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    secret = outside / "target.json"
    secret.write_text(json.dumps({"items": [{"url": blob["url"]}]}))
    before = secret.read_bytes()
    daemon = make_daemon()
    (daemon.home / "inbox" / "evil.json").symlink_to(secret)
    folder, result = daemon.result("evil.json", timeout=20)
    assert folder == "failed"
    assert result["items"] == [] and any("symbolic link" in e for e in result["errors"]), result
    assert secret.read_bytes() == before and secret.is_file() and not secret.is_symlink()
    assert (daemon.home / "failed" / "evil.json").is_symlink()  # the link moved, not its target
    assert daemon.get("/api/status").json()["counts"]["queued"] == 0
    assert not fake.requests_to("files")


def test_subdir_symlink_leading_outside_is_refused(make_daemon, fake, tmp_path):
    blob = fake.add_blob("escape.bin", size=1000)
    outside = tmp_path / "outside"
    outside.mkdir()
    daemon = make_daemon()
    (daemon.home / "downloads" / "escape").symlink_to(outside)
    daemon.drop("escape.json", {"items": [{"url": blob["url"], "subdir": "escape"},
                                         {"url": blob["url"], "subdir": "escape/deeper", "filename": "x.bin"}]})
    folder, result = daemon.result("escape.json", timeout=20)
    assert folder == "failed"
    for item in result["items"]:
        assert item["status"] == "failed" and "outside download_dir" in item["error"], item
    assert list(outside.iterdir()) == []


def test_500_manifests_at_once(make_daemon, fake):
    blob = fake.add_blob("tiny.bin", size=2000)
    daemon = make_daemon(workers=2, log_level="INFO")
    inbox = daemon.home / "inbox"
    staging = daemon.home / "staging"
    staging.mkdir()
    for number in range(500):
        (staging / f"m{number:03}.json").write_text(json.dumps({"url": blob["url"], "sha256": blob["sha256"]}))
    started = time.monotonic()
    for path in staging.iterdir():
        os.replace(path, inbox / path.name)  # as close to "at once" as a file system allows

    def finished():
        return len(list((daemon.home / "done").glob("m*.result.json"))) + \
            len(list((daemon.home / "failed").glob("m*.result.json")))

    wait_for(lambda: finished() == 500, timeout=150, interval=0.5, message="500 results")
    took = time.monotonic() - started
    assert len(list((daemon.home / "done").glob("m???.json"))) == 500
    assert not list(inbox.iterdir()) and not list((daemon.home / "processing").iterdir())
    assert len(fake.requests_to("files")) == 1, "the same content was downloaded more than once"
    assert daemon.get("/api/status").json()["counts"]["completed"] == 500
    print(f"500 manifests processed in {took:.1f} s")


def test_10000_item_manifest_keeps_api_responsive(make_daemon, fake):
    blob = fake.add_blob("one.bin", size=1000)
    daemon = make_daemon(workers=2, log_level="INFO")
    daemon.drop("huge.json", {"items": [{"url": blob["url"], "sha256": blob["sha256"]}] * 10_000})
    latencies = []
    deadline = time.monotonic() + 60
    total = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        response = requests.get(daemon.url + "/api/status", timeout=10)
        latencies.append(time.monotonic() - started)
        assert response.status_code == 200
        counts = response.json()["counts"]
        total = sum(counts.values())
        if total == 10_000 and counts["completed"] >= 200:
            break
        time.sleep(0.1)
    assert total == 10_000, f"only {total} of 10000 items scheduled"
    # A few more seconds of workers settling the deduplicated items while the API answers.
    for _ in range(20):
        started = time.monotonic()
        assert requests.get(daemon.url + "/api/status", timeout=10).status_code == 200
        latencies.append(time.monotonic() - started)
        time.sleep(0.1)
    latencies.sort()
    print(f"/api/status during a 10000-item manifest: median {latencies[len(latencies) // 2]:.3f} s, "
          f"max {latencies[-1]:.3f} s over {len(latencies)} calls")
    assert latencies[-1] < 1.5, latencies[-5:]
    assert len(fake.requests_to("files")) == 1
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    assert "database is locked" not in daemon.logs()
