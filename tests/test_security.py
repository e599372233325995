"""Security: secrets never leak, tokens are required and compared in constant time,
and slow or silent WebSocket clients cannot hurt downloads or the API.
"""
import http.server
import json
import secrets
import socket
import statistics
import threading
import time

import pytest
import requests
import websocket

from conftest import wait_for


class Receiver:
    """A local HTTP endpoint that records every POST (the webhook and the fake Telegram API)."""

    def __init__(self):
        self.posts = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append((self.path, dict(self.headers.items()), body))
                payload = b'{"ok": true, "result": {}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def _scan(blobs, secrets_by_name):
    """{secret name: [where it was found]} over (where, bytes) pairs."""
    found = {}
    for where, data in blobs:
        for name, value in secrets_by_name.items():
            if value.encode() in data:
                found.setdefault(name, []).append(where)
    return found


def test_secrets_never_leak(make_daemon, fake, receiver):
    """A full run with every secret set leaves none of them in logs, database, files, webhooks or the API."""
    civitai_token = "civ-" + secrets.token_hex(20)
    url_token = "url-" + secrets.token_hex(20)
    values = {
        "civitai_token": civitai_token,
        "api_token": "api-" + secrets.token_hex(20),
        "viewer_token": "view-" + secrets.token_hex(20),
        "webhook_secret": "hook-" + secrets.token_hex(20),
        "telegram.bot_token": f"{secrets.randbelow(10**9) + 10**9}:AA" + secrets.token_hex(16),
        "token in a URL": url_token,
    }
    fake.valid_tokens.add(civitai_token)
    fake.add_model(900, "Private Lora", "LORA")
    fake.add_version(900, 901, "v1", size=300_000, require_auth=True)
    fake.add_model(910, "Public Model", "Checkpoint")
    fake.add_version(910, 911, "v1", size=200_000)
    plain = fake.add_blob("plain.bin", size=50_000)
    daemon = make_daemon(
        log_level="DEBUG", civitai_token=civitai_token, api_token=values["api_token"],
        viewer_token=values["viewer_token"], webhook_url=receiver.url + "/hook",
        webhook_secret=values["webhook_secret"], telegram_api_base=receiver.url,
        telegram={"bot_token": values["telegram.bot_token"], "chat_id": 42,
                  "events": ["download.completed", "download.failed", "manifest.failed", "model.update"]})
    responses = []

    def call(method, path, body=None, token=values["api_token"]):
        response = requests.request(method, daemon.url + path, json=body, timeout=20,
                                    headers={"Authorization": f"Bearer {token}"})
        responses.append((f"{method} {path}", response.content + json.dumps(dict(response.headers)).encode()))
        return response

    daemon.drop("secret.json", {"items": [{"modelVersionId": 901}, {"modelVersionId": 911},
                                          {"modelVersionId": 999999}]})  # the last one fails (404)
    with_token = call("POST", "/api/download", {"url": f"{plain['url']}?token={url_token}&x=1"})
    assert with_token.status_code == 202, with_token.text
    folder, result = daemon.result("secret.json", timeout=60)
    assert folder == "failed" and [i["status"] for i in result["items"]] == ["completed", "completed", "failed"]
    assert daemon.wait_state(with_token.json()["id"], "completed", timeout=30)
    fake.add_version(910, 912, "v2", size=210_000)  # an update for the check to find
    check = call("POST", "/api/updates/check")
    assert check.status_code == 200, check.text
    wait_for(lambda: any(json.loads(b).get("event") == "model.update" for p, _, b in receiver.posts
                         if p == "/hook"), timeout=30, message="the model.update webhook")
    for path in ["/api/status", "/api/downloads?limit=100", "/api/completed", "/api/metrics", "/api/manifests",
                 "/api/updates", "/api/openapi.json", "/healthz", "/metrics", "/gui", "/api/downloads/1",
                 "/api/downloads/2", "/api/downloads/3", "/api/downloads/4", "/api/downloads/5"]:
        call("GET", path)
    call("GET", "/api/status", token=values["viewer_token"])
    call("GET", "/api/status", token="wrong")
    ws = websocket.create_connection(daemon.url.replace("http", "ws") + f"/ws/downloads?token={values['api_token']}",
                                     timeout=10)
    responses.append(("WS snapshot", ws.recv().encode()))
    ws.close()
    wait_for(lambda: any(p == "/hook" and json.loads(b)["event"] == "download.completed" for p, _, b in receiver.posts)
             and any("/sendMessage" in p for p, _, _ in receiver.posts), timeout=20, message="notifications")
    db_files = [(f"live {p.name}", p.read_bytes()) for p in daemon.home.glob("completed.db*")]
    assert daemon.stop() == 0
    home = daemon.home
    blobs = list(responses) + db_files
    blobs += [(str(p.relative_to(home)), p.read_bytes()) for p in (home / "logs").rglob("*") if p.is_file()]
    blobs += [(str(p.relative_to(home)), p.read_bytes()) for p in home.glob("completed.db*")]
    blobs += [(str(p.relative_to(home)), p.read_bytes()) for p in (home / "done").glob("*.result.json")]
    blobs += [(str(p.relative_to(home)), p.read_bytes()) for p in (home / "failed").glob("*.result.json")]
    blobs += [(str(p.relative_to(home)), p.read_bytes()) for p in (home / "downloads").rglob("*") if p.is_file()
              and not p.name.endswith((".safetensors", ".bin"))]  # sidecars (model bytes are random)
    blobs += [("stderr", (home / "stderr.txt").read_bytes())]
    blobs += [(f"webhook {json.loads(b)['event']}", b + json.dumps(h).encode())
              for p, h, b in receiver.posts if p == "/hook"]
    blobs += [("telegram body", b) for p, _, b in receiver.posts if p != "/hook"]
    sidecar_count = len([p for p in (home / "downloads").rglob("*.civitai.info")])
    assert sidecar_count >= 2, "no sidecars were written, so they were not checked"
    assert len([b for w, b in blobs if w.startswith("webhook")]) >= 5
    assert _scan(blobs, values) == {}
    # The scan itself works: config.yaml holds the configured secrets.
    config = [("config.yaml", (home / "config.yaml").read_bytes())]
    assert set(_scan(config, values)) == set(values) - {"token in a URL"}
    # The Civitai token went only to Civitai's host, only as a header; the storage host never saw it.
    for request in fake.requests:
        assert civitai_token not in request.path
        if request.host == "storage":
            assert "Authorization" not in request.headers
    assert any(r.headers.get("Authorization") == f"Bearer {civitai_token}" for r in fake.requests_to("api"))
    assert all(b"Authorization" not in b for _, _, b in receiver.posts)


def test_tokens_are_required(make_daemon):
    api_token, viewer_token = secrets.token_hex(16), secrets.token_hex(16)
    daemon = make_daemon(api_token=api_token, viewer_token=viewer_token)
    base = daemon.url

    def status(method, path, token=None, scheme="Bearer", **kwargs):
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        return requests.request(method, base + path, headers=headers, timeout=10, **kwargs)

    for path in ["/api/status", "/api/downloads", "/api/downloads/1", "/api/metrics", "/api/openapi.json"]:
        for token, scheme in [(None, "Bearer"), ("", "Bearer"), ("wrong", "Bearer"), (api_token[:-1], "Bearer"),
                              (api_token + "x", "Bearer"), (api_token, "Basic"), (api_token.upper(), "Bearer")]:
            response = status("GET", path, token, scheme)
            assert response.status_code == 401, (path, token, scheme, response.status_code)
            assert "error" in response.json()
        assert status("GET", path + "?token=" + api_token).status_code == 401  # query tokens: WebSocket only
    assert status("GET", "/api/status", api_token).status_code == 200
    assert status("GET", "/api/status", viewer_token).status_code == 200
    assert status("POST", "/api/download", None, json={"url": "http://127.0.0.1:9/x"}).status_code == 401
    assert status("POST", "/api/download", viewer_token, json={"url": "http://127.0.0.1:9/x"}).status_code == 403
    assert status("POST", "/api/updates/check", "nope").status_code == 401
    assert requests.get(base + "/healthz", timeout=5).status_code == 200
    ws_url = base.replace("http", "ws") + "/ws/downloads"
    for url, header in [(ws_url, None), (ws_url + "?token=wrong", None), (ws_url, ["Authorization: Bearer x"])]:
        with pytest.raises(websocket.WebSocketBadStatusException) as caught:
            websocket.create_connection(url, header=header, timeout=5)
        assert caught.value.status_code == 401
    for url in (ws_url + f"?token={viewer_token}", ws_url + f"?token={api_token}"):
        ws = websocket.create_connection(url, timeout=5)
        assert json.loads(ws.recv())["event"] == "snapshot"
        ws.close()


def test_token_comparison_leaks_no_timing(make_daemon):
    """Median 401 latency for wrong tokens sharing 63 of 64 characters ≈ for entirely different ones."""
    token = secrets.token_hex(32)
    daemon = make_daemon(api_token=token, log_level="INFO")
    session = requests.Session()
    url = daemon.url + "/api/status"
    near = [token[:-1] + ("0" if token[-1] != "0" else "1")]
    far = [secrets.token_hex(32) for _ in range(8)]
    for _ in range(50):  # warm up the connection and the server
        session.get(url, headers={"Authorization": f"Bearer {far[0]}"}, timeout=5)
    samples = {"near": [], "far": []}
    for round_number in range(400):
        for kind in (("near", "far") if round_number % 2 else ("far", "near")):
            wrong = near[0] if kind == "near" else far[round_number % len(far)]
            started = time.perf_counter()
            response = session.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=5)
            samples[kind].append(time.perf_counter() - started)
            assert response.status_code == 401
    near_median, far_median = statistics.median(samples["near"]), statistics.median(samples["far"])
    print(f"401 median: near {near_median * 1e6:.0f} µs, far {far_median * 1e6:.0f} µs")
    assert abs(near_median - far_median) < max(0.0003, 0.15 * min(near_median, far_median))
    # And keep-alive answers are quick (Nagle + delayed ACK once added 40 ms to every response).
    assert max(near_median, far_median) < 0.02


def test_websocket_crowd_does_not_hurt_downloads(make_daemon, fake):
    """20 reading WebSocket clients and 5 that never read: downloads finish, the API stays quick."""
    token = secrets.token_hex(16)
    daemon = make_daemon(api_token=token, workers=2, log_level="INFO")
    ws_url = daemon.url.replace("http", "ws") + f"/ws/downloads?token={token}"
    stalled = [websocket.create_connection(ws_url, timeout=5,
                                           sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 1024),))
               for _ in range(5)]  # never read from again
    seen = [set() for _ in range(20)]
    connected = []
    stop = threading.Event()

    def reader(index):
        ws = websocket.create_connection(ws_url, timeout=2)
        connected.append(index)
        try:
            while not stop.is_set():
                try:
                    event = json.loads(ws.recv())
                except websocket.WebSocketTimeoutException:
                    continue
                if event["event"] == "download.completed":
                    seen[index].add(event["data"]["id"])
        except (websocket.WebSocketException, OSError):
            pass
        finally:
            ws.close()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(20)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(connected) == 20, timeout=20, message="20 WebSocket readers connected")
    items = []
    for number in range(100):
        blob = fake.add_blob(f"crowd-{number}.bin", size=30_000 + number)
        items.append({"url": blob["url"], "sha256": blob["sha256"]})
    big = fake.add_blob("crowd-big.bin", size=3_000_000)
    items.append({"url": big["url"], "sha256": big["sha256"]})
    headers = {"Authorization": f"Bearer {token}"}
    ids = requests.post(daemon.url + "/api/batch", json={"items": items}, headers=headers, timeout=10).json()["ids"]
    slowest = 0.0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        started = time.monotonic()
        counts = requests.get(daemon.url + "/api/status", headers=headers, timeout=10).json()["counts"]
        slowest = max(slowest, time.monotonic() - started)
        if counts["completed"] == len(ids):
            break
        time.sleep(0.1)
    assert counts["completed"] == len(ids), counts
    wait_for(lambda: all(len(s) == len(ids) for s in seen), timeout=20, message="every reader saw every completion")
    stop.set()
    for thread in threads:
        thread.join(5)
    for ws in stalled:
        ws.close()
    print(f"slowest /api/status with 25 WebSocket clients: {slowest:.3f} s")
    assert slowest < 1.0
    assert requests.get(daemon.url + "/healthz", timeout=5).json() == {"ok": True}


def test_browser_cross_site_requests_are_refused(make_daemon):
    """With no api_token (the default), a web page the user visits must not drive the local API."""
    daemon = make_daemon(log_level="INFO")
    # A cross-site HTML form can send text/plain without a CORS preflight.
    forged = requests.post(daemon.url + "/api/download", data='{"url": "http://127.0.0.1:9/evil.ckpt"}',
                           headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}, timeout=5)
    assert forged.status_code == 403, forged.text
    # DNS rebinding: the browser sends the attacker's host name to 127.0.0.1.
    rebound = requests.get(daemon.url + "/api/status", headers={"Host": f"evil.example:{daemon.port}"}, timeout=5)
    assert rebound.status_code in (403, 421), rebound.status_code
    # The daemon's own page (same origin) and non-browser clients (no Origin) still work.
    same = requests.post(daemon.url + "/api/download", json={"url": "http://127.0.0.1:9/ok.bin"},
                         headers={"Origin": f"http://127.0.0.1:{daemon.port}"}, timeout=5)
    assert same.status_code == 202, same.text
    assert requests.get(f"http://localhost:{daemon.port}/api/status", timeout=5).status_code == 200


def test_cross_site_checks_give_way_to_a_token(make_daemon):
    """With api_token set, pages cannot learn the token, so a proxy's public Host name is fine."""
    daemon = make_daemon(api_token="t" * 32, log_level="INFO")
    response = requests.post(daemon.url + "/api/download", json={"url": "http://127.0.0.1:9/ok.bin"},
                             headers={**daemon.headers(), "Host": "models.example.org",
                                      "Origin": "https://models.example.org"}, timeout=5)
    assert response.status_code == 202, response.text


def test_a_refusal_with_api_token_set_says_what_to_do(make_daemon):
    """With api_token set, the Host/Origin refusal tells a client that sent no token from one that sent a wrong
    one, never echoes what it sent, and never claims the daemon has no api_token."""
    daemon = make_daemon(api_token="t" * 32, log_level="INFO")
    rebound = {"Host": f"models.example.org:{daemon.port}"}
    cases = {None: "no token was sent: send Authorization: Bearer <api_token>",
             "wrong-token-456": "the token sent is not the api_token: send Authorization: Bearer <api_token>"}
    for sent, advice in cases.items():
        auth = {"Authorization": f"Bearer {sent}"} if sent else {}
        refused = requests.get(daemon.url + "/api/status", headers={**rebound, **auth}, timeout=5)
        assert refused.status_code == 403 and advice in refused.json()["error"], refused.text
        forged = requests.post(daemon.url + "/api/download", json={"url": "http://127.0.0.1:9/x.bin"}, timeout=5,
                               headers={"Origin": "http://evil.example", **auth})
        assert forged.status_code == 403 and advice in forged.json()["error"], forged.text
        for body in (refused.text, forged.text):
            assert "without an api_token" not in body and "wrong-token-456" not in body
    assert daemon.get("/api/downloads").json()["total"] == 0


def test_a_viewer_token_alone_keeps_the_cross_site_protection(make_daemon):
    """Issue 11 item 5: only the admin token exempts a request from the Origin/Host checks."""
    viewer = "v" * 32
    daemon = make_daemon(viewer_token=viewer, log_level="INFO")
    forged = requests.post(daemon.url + "/api/download", data='{"url": "http://127.0.0.1:9/evil.ckpt"}',
                           headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}, timeout=5)
    assert forged.status_code == 403, forged.text
    rebound = requests.get(daemon.url + "/api/status", headers={"Host": f"evil.example:{daemon.port}"}, timeout=5)
    assert rebound.status_code == 403, rebound.status_code
    with_viewer = requests.get(daemon.url + "/api/status", timeout=5, headers={
        "Host": f"evil.example:{daemon.port}", "Authorization": f"Bearer {viewer}"})
    assert with_viewer.status_code == 403
    ws_url = daemon.url.replace("http", "ws") + "/ws/downloads"
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(ws_url, timeout=10, origin="http://evil.example")
    assert daemon.get("/api/downloads").json()["total"] == 0
    # The daemon's own page still works.
    same = requests.post(daemon.url + "/api/download", json={"url": "http://127.0.0.1:9/ok.bin"},
                         headers={"Origin": f"http://127.0.0.1:{daemon.port}"}, timeout=5)
    assert same.status_code == 202, same.text


def test_prometheus_metrics_follow_the_api_rules(make_daemon):
    """Issue 11 item 20: /metrics wants the token when api_token is set and passes the Host check; /healthz
    alone is open."""
    token = "m" * 32
    daemon = make_daemon(api_token=token, log_level="INFO")
    assert requests.get(daemon.url + "/metrics", timeout=5).status_code == 401
    scraped = requests.get(daemon.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert scraped.status_code == 200 and "civitai_daemon_downloads" in scraped.text
    assert requests.get(daemon.url + "/healthz", timeout=5).status_code == 200
    open_daemon = make_daemon(log_level="INFO")
    rebound = requests.get(open_daemon.url + "/metrics", headers={"Host": f"evil.example:{open_daemon.port}"},
                           timeout=5)
    assert rebound.status_code == 403
    assert requests.get(open_daemon.url + "/metrics", timeout=5).status_code == 200
