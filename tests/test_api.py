"""The REST API of the real daemon process over real HTTP (SPEC §8)."""
import json
import statistics
import time

import pytest
import requests

from conftest import DaemonProcess, wait_for
from fakeciv import FakeCivitai

STATES = ["queued", "downloading", "paused", "completed", "failed", "cancelled"]
DOWNLOAD_FIELDS = {"id", "state", "filename", "path", "url", "sha256", "verified", "bytes", "total", "priority",
                   "manifest", "modelId", "modelVersionId", "error", "created_at", "finished_at"}


def start_daemon(home, fake, **config):
    base = {"civitai_base_url": fake.base_url, "backoff": 0.05, "backoff_max": 0.5, "timeout": 5, "retries": 1,
            "log_level": "DEBUG", "workers": 2}
    base.update(config)
    home.mkdir(parents=True, exist_ok=True)
    return DaemonProcess(home, base).start()


@pytest.fixture(scope="module")
def shared_fake(tmp_path_factory):
    server = FakeCivitai(tmp_path_factory.mktemp("fake")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory, shared_fake):
    """One daemon without tokens, shared by the read-mostly tests of this module."""
    daemon = start_daemon(tmp_path_factory.mktemp("api"), shared_fake)
    yield daemon
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.read_stderr(), daemon.read_stderr()[-3000:]


@pytest.fixture
def slow(shared_fake):
    """Bodies from the fake at 200 KB/s for the length of one test."""
    shared_fake.faults.rate = 200_000
    yield shared_fake
    shared_fake.faults.rate = None


def assert_error(response, status):
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "Traceback" not in response.text
    return body["error"]


def assert_page(body, limit=50, offset=0):
    assert set(body) >= {"items", "total", "limit", "offset"}
    assert (body["limit"], body["offset"]) == (limit, offset)
    assert isinstance(body["items"], list) and isinstance(body["total"], int)
    ids = [item["id"] for item in body["items"] if "id" in item]
    assert ids == sorted(ids, reverse=True), "newest (highest id) first"


# -- plain routes -----------------------------------------------------------------------------------------------

def test_root_redirects_to_the_gui(api):
    r = requests.get(api.url + "/", allow_redirects=False, timeout=5)
    assert r.status_code == 302
    assert r.headers["Location"] in ("gui", "/gui", api.url + "/gui")
    page = requests.get(api.url + "/", timeout=5)
    assert page.status_code == 200 and page.url == api.url + "/gui"
    assert page.headers["Content-Type"].startswith("text/html") and "civitai-daemon" in page.text
    slash = requests.get(api.url + "/gui/", allow_redirects=False, timeout=5)
    assert slash.status_code == 302 and slash.headers["Location"] == "../gui"
    assert requests.get(api.url + "/gui/", timeout=5).url == api.url + "/gui"


def test_static_files_are_served_locally(api):
    for path, kind in [("/static/client.js", "javascript"), ("/static/main.js", "javascript"),
                       ("/static/format.js", "javascript"),
                       ("/static/bootstrap/css/bootstrap.min.css", "text/css"),
                       ("/static/bootstrap/js/bootstrap.bundle.min.js", "javascript")]:
        r = requests.get(api.url + path, timeout=5)
        assert r.status_code == 200 and kind in r.headers["Content-Type"], path
    assert_error(requests.get(api.url + "/static/nope.js", timeout=5), 404)
    assert_error(requests.get(api.url + "/static/../config.yaml", timeout=5), 404)


def test_healthz(api):
    r = requests.get(api.url + "/healthz", timeout=5)
    assert r.status_code == 200 and r.json() == {"ok": True}


def test_prometheus_metrics(api):
    r = requests.get(api.url + "/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    for state in STATES:
        assert f'civitai_daemon_downloads{{state="{state}"}}' in text
    for name in ("civitai_daemon_bytes", "civitai_daemon_retries", "civitai_daemon_hash_mismatches",
                 "civitai_daemon_active_downloads", "civitai_daemon_queue_length"):
        assert f"# TYPE {name}" in text


def test_status_shape(api):
    status = api.get("/api/status").json()
    assert set(status) >= {"version", "uptime", "workers", "throttle", "counts", "active"}
    assert status["workers"] == 2 and status["throttle"] == 0 and status["uptime"] >= 0
    assert set(status["counts"]) == set(STATES)
    assert all(isinstance(n, int) for n in status["counts"].values())
    assert isinstance(status["active"], list)
    # The GUI and the CLI take the states and actions from here, not from copies of their own.
    assert status["states"] == STATES
    assert status["actions"] == {"pause": ["downloading", "queued"], "resume": ["paused"],
                                 "cancel": ["downloading", "paused", "queued"], "retry": ["cancelled", "failed"]}


def test_openapi_route(api):
    doc = api.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/status" in doc["paths"]


# -- downloads ----------------------------------------------------------------------------------------------------

def test_download_lifecycle_and_history(api, shared_fake):
    blob = shared_fake.add_blob("life.bin", size=300_000)
    r = api.post("/api/download", {"url": blob["url"], "sha256": blob["sha256"], "priority": 3})
    assert r.status_code == 202, r.text
    assert set(r.json()) == {"id"}
    download_id = r.json()["id"]
    done = api.wait_state(download_id, "completed", 30)
    assert DOWNLOAD_FIELDS <= set(done)
    assert done["filename"] == "life.bin" and done["bytes"] == 300_000 and done["total"] == 300_000
    assert done["sha256"] == blob["sha256"] and done["verified"] is True and done["priority"] == 3
    assert done["path"].endswith("life.bin") and done["finished_at"] and done["error"] is None

    completed = api.get("/api/completed").json()
    assert_page(completed)
    entry = next(item for item in completed["items"] if item["id"] == download_id)
    assert entry["state"] == "completed" and entry["duration"] >= 0
    assert entry["average_speed"] is None or entry["average_speed"] >= 0
    assert entry["path"] == done["path"] and entry["sha256"] == blob["sha256"]

    metrics = api.get("/api/metrics").json()
    assert set(metrics) >= {"downloads", "completed", "failed", "bytes", "average_speed", "retries",
                            "hash_mismatches", "success_rate"}
    assert metrics["completed"] >= 1 and metrics["bytes"] >= 300_000 and 0 <= metrics["success_rate"] <= 1

    for action in ("resume", "pause", "cancel", "retry"):
        error = assert_error(api.post(f"/api/downloads/{download_id}/{action}"), 409)
        assert "completed" in error


def test_batch_shapes(api, shared_fake):
    blobs = [shared_fake.add_blob(f"batch{i}.bin", size=10_000) for i in range(4)]
    r = api.post("/api/batch", {"items": [{"url": blobs[0]["url"]}, {"url": blobs[1]["url"]}]})
    assert r.status_code == 202 and len(r.json()["ids"]) == 2, r.text
    r2 = api.post("/api/batch", [{"url": blobs[2]["url"]}])
    assert r2.status_code == 202 and len(r2.json()["ids"]) == 1
    r3 = api.post("/api/batch", {"url": blobs[3]["url"], "filename": "renamed.bin"})
    assert r3.status_code == 202 and len(r3.json()["ids"]) == 1
    ids = r.json()["ids"] + r2.json()["ids"] + r3.json()["ids"]
    assert ids == sorted(ids)
    for download_id in ids:
        api.wait_state(download_id, "completed", 30)
    assert api.download(ids[-1])["filename"] == "renamed.bin"


def test_list_filters_and_pages(api, shared_fake):
    blobs = [shared_fake.add_blob(f"page{i}.bin", size=1000) for i in range(3)]
    ids = api.post("/api/batch", [{"url": b["url"]} for b in blobs]).json()["ids"]
    for download_id in ids:
        api.wait_state(download_id, "completed", 30)
    everything = api.get("/api/downloads?limit=1000").json()
    assert_page(everything, limit=1000)
    assert everything["total"] == len(everything["items"]) >= 3
    first = api.get("/api/downloads?limit=2&offset=0").json()
    second = api.get("/api/downloads?limit=2&offset=2").json()
    assert_page(first, 2, 0)
    assert_page(second, 2, 2)
    assert [d["id"] for d in first["items"] + second["items"]] == [d["id"] for d in everything["items"][:4]]
    done = api.get("/api/downloads?state=completed&limit=1000").json()
    assert done["total"] >= 3 and all(d["state"] == "completed" for d in done["items"])
    assert api.get("/api/downloads?state=paused").json()["items"] == [] or \
        all(d["state"] == "paused" for d in api.get("/api/downloads?state=paused").json()["items"])
    beyond = api.get("/api/downloads?offset=100000").json()
    assert beyond["items"] == [] and beyond["total"] == everything["total"]


def test_pause_resume_cancel_retry(api, slow):
    blob = slow.add_blob("actions.bin", size=3_000_000)
    download_id = api.post("/api/download", {"url": blob["url"]}).json()["id"]
    wait_for(lambda: api.download(download_id)["bytes"] > 0, 15, message="bytes flowing")

    paused = api.post(f"/api/downloads/{download_id}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused", paused.text
    assert_error(api.post(f"/api/downloads/{download_id}/pause"), 409)
    assert_error(api.post(f"/api/downloads/{download_id}/retry"), 409)
    # the worker lets go of the paused attempt before we resume (a quicker resume is a worker matter)
    wait_for(lambda: f"download {download_id} paused; part kept" in api.logs(), 10, message="pause handled")

    resumed = api.post(f"/api/downloads/{download_id}/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] in ("queued", "downloading")
    api.wait_state(download_id, "downloading", 15)

    cancelled = api.post(f"/api/downloads/{download_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert_error(api.post(f"/api/downloads/{download_id}/cancel"), 409)
    assert_error(api.post(f"/api/downloads/{download_id}/resume"), 409)
    # the worker lets go of the cancelled attempt (and deletes its part) before we ask for another one
    wait_for(lambda: f"download {download_id} cancelled; part removed" in api.logs(), 10, message="cancel handled")

    retried = api.post(f"/api/downloads/{download_id}/retry")
    assert retried.status_code == 200 and retried.json()["state"] in ("queued", "downloading")
    api.wait_state(download_id, "downloading", 15)
    assert api.post(f"/api/downloads/{download_id}/cancel").status_code == 200
    assert api.wait_state(download_id, "cancelled", 10)["state"] == "cancelled"
    wait_for(lambda: api.logs().count(f"download {download_id} cancelled; part removed") == 2, 10,
             message="second cancel handled")


def test_manifests_and_updates(api, shared_fake):
    blob = shared_fake.add_blob("manifested.bin", size=2000)
    api.drop("api-one.json", {"items": [{"url": blob["url"]}]})
    folder, result = api.result("api-one.json", 30)
    assert folder == "done", result
    page = api.get("/api/manifests").json()
    assert_page(page)
    entry = next(m for m in page["items"] if m["manifest"] == "api-one.json")
    assert entry["status"] == "done" and entry["errors"] == [] and entry["received_at"] and entry["finished_at"]
    assert set(entry) >= {"manifest", "status", "items", "errors", "received_at", "finished_at"}
    download = api.download(result["items"][0]["id"])
    assert download["manifest"] == "api-one.json"
    listed = api.get("/api/downloads?limit=1000").json()["items"]
    assert next(d for d in listed if d["id"] == download["id"])["manifest"] == "api-one.json"

    updates = api.get("/api/updates").json()
    assert_page(updates)
    check = api.post("/api/updates/check")
    assert check.status_code == 200 and isinstance(check.json(), dict), check.text


# -- errors -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,status", [
    ("GET", "/api/downloads/abc", 400),
    ("GET", "/api/downloads/-1", 400),
    ("GET", "/api/downloads/0", 400),
    ("GET", "/api/downloads/1.5", 400),
    ("GET", "/api/downloads/%C2%B2", 400),
    ("GET", "/api/downloads/99999999999999999999999", 400),
    ("GET", "/api/downloads?limit=abc", 400),
    ("GET", "/api/downloads?limit=0", 400),
    ("GET", "/api/downloads?limit=-5", 400),
    ("GET", "/api/downloads?limit=100000", 400),
    ("GET", "/api/downloads?offset=x", 400),
    ("GET", "/api/downloads?limit=", 400),
    ("GET", "/api/library?limit=&q=", 400),
    ("GET", "/api/downloads?state=bogus", 400),
    ("GET", "/api/completed?limit=abc", 400),
    ("GET", "/api/manifests?offset=-1", 400),
    ("GET", "/api/updates?limit=1e3", 400),
    ("POST", "/api/downloads/abc/cancel", 400),
    ("GET", "/api/downloads/987654", 404),
    ("POST", "/api/downloads/987654/cancel", 404),
    ("POST", "/api/downloads/987654/resume", 404),
    ("POST", "/api/downloads/1/explode", 404),
    ("GET", "/api/nothing-here", 404),
    ("GET", "/nothing-here", 404),
    ("GET", "/api/downloads/1/cancel", 405),
    ("GET", "/api/downloads/retry-failed", 405),
    ("DELETE", "/api/downloads", 405),
    ("PUT", "/api/download", 405),
])
def test_error_statuses(api, method, path, status):
    response = requests.request(method, api.url + path, timeout=10)
    message = assert_error(response, status)
    if status == 400:
        assert any(word in message for word in ("id", "limit", "offset", "state")), message


TEN_MB = "x" * (10 * 1024 * 1024)


def nested(depth):
    return "[" * depth + "]" * depth


MALFORMED = [
    ("empty body", b""),
    ("whitespace", b"   \n"),
    ("not JSON", b"url=https://example.com/x"),
    ("truncated JSON", b'{"url": "https://example.com/x"'),
    ("not UTF-8", b'{"url": "\xff\xfe"}'),
    ("null", b"null"),
    ("number", b"42"),
    ("string", b'"https://example.com/x"'),
    ("empty object", b"{}"),
    ("no source", b'{"sha256": "' + b"a" * 64 + b'"}'),
    ("url wrong type", b'{"url": 5}'),
    ("url list", b'{"url": ["https://example.com/x"]}'),
    ("url not http", b'{"url": "ftp://example.com/x"}'),
    ("url file", b'{"url": "file:///etc/passwd"}'),
    ("url broken ipv6", b'{"url": "http://[::1/x"}'),
    ("url bad port", b'{"url": "http://example.com:99999999/x"}'),
    ("modelVersionId string", b'{"modelVersionId": "130072"}'),
    ("modelVersionId float", b'{"modelVersionId": 1.5}'),
    ("modelVersionId bool", b'{"modelVersionId": true}'),
    ("modelVersionId negative", b'{"modelVersionId": -1}'),
    ("modelVersionId huge", b'{"modelVersionId": 123456789012345678901234567890}'),
    ("modelId huge", b'{"modelId": 99999999999999999999}'),
    ("air huge ids", b'{"air": "urn:air:sdxl:lora:civitai:99999999999999999999@99999999999999999999"}'),
    ("air wrong", b'{"air": "not-an-air"}'),
    ("air object", b'{"air": {"x": 1}}'),
    ("sha256 short", b'{"url": "https://example.com/x", "sha256": "abc"}'),
    ("sha256 number", b'{"url": "https://example.com/x", "sha256": 12}'),
    ("filename slash", b'{"url": "https://example.com/x", "filename": "../etc/passwd"}'),
    ("filename dotdot", b'{"url": "https://example.com/x", "filename": ".."}'),
    ("filename NUL", b'{"url": "https://example.com/x", "filename": "a\\u0000b"}'),
    ("filename object", b'{"url": "https://example.com/x", "filename": {"a": 1}}'),
    ("filename empty", b'{"url": "https://example.com/x", "filename": ""}'),
    ("priority huge", b'{"url": "https://example.com/x", "priority": 1e300}'),
    ("priority big int", b'{"url": "https://example.com/x", "priority": 10000000000000000000000}'),
    ("priority string", b'{"url": "https://example.com/x", "priority": "high"}'),
    ("priority NaN", b'{"url": "https://example.com/x", "priority": NaN}'),
    ("subdir absolute", b'{"url": "https://example.com/x", "subdir": "/etc"}'),
    ("subdir dotdot", b'{"url": "https://example.com/x", "subdir": "a/../../b"}'),
    ("subdir list", b'{"url": "https://example.com/x", "subdir": ["a"]}'),
    ("unknown field", b'{"url": "https://example.com/x", "colour": "red"}'),
    ("nested junk", b'{"url": {"a": [{"b": {"c": [1, 2, {"d": null}]}}]}}'),
    ("deep nesting", nested(100_000).encode()),
    ("nested but parseable", ('{"modelId": ' + nested(900) + "}").encode()),
    ("items not a list", b'{"items": {"url": "https://example.com/x"}}'),
    ("items empty", b'{"items": []}'),
    ("items of junk", b'{"items": [1, "two", null, [3]]}'),
    ("10 MB url", json.dumps({"url": "https://example.com/" + TEN_MB}).encode()),
    ("10 MB filename", json.dumps({"url": "https://example.com/x", "filename": TEN_MB}).encode()),
    ("10 MB string body", json.dumps(TEN_MB).encode()),
]


@pytest.mark.parametrize("route", ["/api/download", "/api/batch"])
@pytest.mark.parametrize("name,body", MALFORMED, ids=[name for name, _ in MALFORMED])
def test_malformed_bodies(api, route, name, body):
    before = sum(api.get("/api/status").json()["counts"].values())
    response = requests.post(api.url + route, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    message = assert_error(response, 400)
    assert len(message) < 5000
    assert sum(api.get("/api/status").json()["counts"].values()) == before, "nothing was enqueued"


def test_download_rejects_a_list_and_a_manifest(api):
    message = assert_error(api.post("/api/download", [{"url": "https://example.com/x"}]), 400)
    assert "one item" in message
    message = assert_error(api.post("/api/download", {"items": [{"url": "https://example.com/x"}]}), 400)
    assert "/api/batch" in message


def test_errors_name_the_field(api):
    message = assert_error(api.post("/api/download", {"url": "https://example.com/x", "sha256": "abc"}), 400)
    assert "sha256" in message and "64" in message
    message = assert_error(api.post("/api/batch", {"items": [{"url": "https://example.com/x"},
                                                             {"modelVersionId": "x"}]}), 400)
    assert "items[1].modelVersionId" in message


def test_body_over_the_limit_is_refused(api):
    big = b'{"url": "' + b"x" * (33 * 1024 * 1024) + b'"}'
    response = requests.post(api.url + "/api/batch", data=big, timeout=60)
    assert 400 <= response.status_code < 500 and "error" in response.json()


# -- tokens -------------------------------------------------------------------------------------------------------

READS = ["/api/status", "/api/downloads", "/api/downloads/1", "/api/completed", "/api/metrics", "/api/manifests",
         "/api/updates", "/api/openapi.json"]
WRITES = [("/api/download", {"url": "https://example.com/x"}), ("/api/batch", [{"url": "https://example.com/x"}]),
          ("/api/downloads/1/cancel", None), ("/api/downloads/1/pause", None), ("/api/downloads/1/resume", None),
          ("/api/downloads/1/retry", None), ("/api/updates/check", None)]


def test_tokens(tmp_path, shared_fake):
    daemon = start_daemon(tmp_path / "secured", shared_fake, api_token="s3cret-admin", viewer_token="just-looking")
    try:
        url = daemon.url
        bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
        # open routes
        assert requests.get(url + "/healthz", timeout=5).status_code == 200
        assert requests.get(url + "/gui", timeout=5).status_code == 200
        assert requests.get(url + "/static/client.js", timeout=5).status_code == 200
        # /metrics follows the API's rules (issue 11 item 20): a read route, so the viewer token will do
        assert_error(requests.get(url + "/metrics", timeout=5), 401)
        assert requests.get(url + "/metrics", headers=bearer("just-looking"), timeout=5).status_code == 200
        for path in READS:
            assert_error(requests.get(url + path, timeout=5), 401)
            assert_error(requests.get(url + path, headers=bearer("wrong"), timeout=5), 401)
            assert_error(requests.get(url + path, headers={"Authorization": "s3cret-admin"}, timeout=5), 401)
            assert_error(requests.get(url + path + "?token=s3cret-admin", timeout=5), 401)  # only on the WebSocket
        for path, body in WRITES:
            assert_error(requests.post(url + path, json=body, timeout=5), 401)
            assert_error(requests.post(url + path, json=body, headers=bearer("just-looking"), timeout=5), 403)

        status = requests.get(url + "/api/status", headers=bearer("s3cret-admin"), timeout=5)
        assert status.status_code == 200 and status.json()["role"] == "admin"
        viewer = requests.get(url + "/api/status", headers=bearer("just-looking"), timeout=5)
        assert viewer.status_code == 200 and viewer.json()["role"] == "viewer"
        assert requests.get(url + "/api/downloads", headers=bearer("just-looking"), timeout=5).status_code == 200

        blob = shared_fake.add_blob("secured.bin", size=1000)
        added = requests.post(url + "/api/download", json={"url": blob["url"]}, headers=bearer("s3cret-admin"),
                              timeout=5)
        assert added.status_code == 202
        assert requests.get(url + f"/api/downloads/{added.json()['id']}", headers=bearer("just-looking"),
                            timeout=5).status_code == 200
        assert_error(requests.post(url + f"/api/downloads/{added.json()['id']}/cancel",
                                   headers=bearer("just-looking"), timeout=5), 403)
        for response in [status, viewer, added]:
            assert "s3cret-admin" not in response.text and "just-looking" not in response.text
    finally:
        assert daemon.stop() == 0
    logs = daemon.logs() + daemon.read_stderr()
    assert "s3cret-admin" not in logs and "just-looking" not in logs


# -- performance --------------------------------------------------------------------------------------------------

def test_fast_with_ten_thousand_rows(tmp_path, shared_fake):
    """GET /api/status and one page of downloads stay fast with 10,000 rows in the database."""
    import datetime

    from daemon import models
    from daemon.database import open_database
    home = tmp_path / "big"
    home.mkdir()
    open_database(home / "completed.db")
    now = datetime.datetime.now(datetime.timezone.utc)
    with models.db.atomic():
        manifest = models.ManifestRecord.create(name="big.json", status="done", items=10_000)
        rows = [{"state": STATES[3 + i % 3], "url": f"https://example.com/f{i}.bin", "filename": f"f{i}.bin",
                 "path": f"/x/f{i}.bin", "bytes": 1000, "total": 1000, "manifest": manifest.id,
                 "manifest_index": i, "created_at": now, "finished_at": now, "duration": 1.0}
                for i in range(10_000)]
        for start in range(0, len(rows), 500):
            models.Download.insert_many(rows[start:start + 500]).execute()
    models.db.close()

    daemon = start_daemon(home, shared_fake)
    try:
        def timed(path):
            times = []
            for _ in range(5):
                started = time.perf_counter()
                response = daemon.get(path)
                times.append(time.perf_counter() - started)
                assert response.status_code == 200
            return statistics.median(times), response.json()

        took, status = timed("/api/status")
        assert sum(status["counts"].values()) == 10_000
        assert took < 0.25, f"GET /api/status took {took:.3f} s"
        took, page = timed("/api/downloads?limit=50")
        assert page["total"] == 10_000 and len(page["items"]) == 50 and page["items"][0]["id"] == 10_000
        assert page["items"][0]["manifest"] == "big.json"
        assert took < 0.25, f"GET /api/downloads?limit=50 took {took:.3f} s"
        took, page = timed("/api/downloads?state=failed&limit=50&offset=3000")
        assert took < 0.25, f"a filtered, offset page took {took:.3f} s"
        took, _ = timed("/api/completed?limit=50")
        assert took < 0.25, f"GET /api/completed took {took:.3f} s"
    finally:
        daemon.stop()


def test_concurrent_requests_keep_their_own_status(api):
    """Handlers yield while the database works; each answer must still carry its own status and body."""
    from concurrent.futures import ThreadPoolExecutor
    cases = [("/api/status", 200, "version"), ("/api/downloads/987654", 404, "error"),
             ("/api/downloads?limit=abc", 400, "error"), ("/api/metrics", 200, "success_rate"),
             ("/api/downloads?limit=5", 200, "items")] * 40

    def fetch(case):
        path, status, key = case
        response = requests.get(api.url + path, timeout=20)
        return response.status_code == status and key in response.json() and \
            response.headers["Content-Type"].startswith("application/json")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(fetch, cases))
    assert all(results), f"{results.count(False)} of {len(results)} answers were mixed up"
