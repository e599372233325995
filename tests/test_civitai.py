"""Civitai integration against the real daemon process and the fake Civitai (SPEC §5, §6, §9)."""
import datetime
import hashlib
import hmac
import http.client
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import sha, wait_for

SECRET = "hook-secret-123"


def test_version_only_item_lands_verified_with_sidecars_and_webhook(fake, make_daemon, hook):
    """The issue's "done when": {"modelVersionId": N} → verified file in its type folder, sidecars, webhook."""
    fake.add_model(4201, "Realistic Vision", "Checkpoint")
    info = fake.add_version(4201, 130072, "v2.0", size=300_000, base_model="SDXL 1.0")
    d = make_daemon(webhook_url=hook.url + "/hook", webhook_secret=SECRET)
    d.drop("one.json", {"modelVersionId": 130072})
    folder, result = d.result("one.json")
    assert folder == "done", result
    item = result["items"][0]
    path = Path(item["path"])
    assert path == d.home / "downloads" / "Stable-diffusion" / info["filename"]
    assert item["verified"] is True and item["sha256"] == info["sha256"] == sha(path)

    row = d.download(item["id"])
    assert (row["modelId"], row["modelVersionId"]) == (4201, 130072)
    assert (row["model_name"], row["version_name"], row["base_model"], row["model_type"]) == \
        ("Realistic Vision", "v2.0", "SDXL 1.0", "Checkpoint")

    stem = path.name.rsplit(".", 1)[0]
    sidecar = json.loads((path.parent / f"{stem}.civitai.info").read_text())
    assert sidecar["id"] == 130072 and sidecar["model"]["name"] == "Realistic Vision"
    preview = path.parent / f"{stem}.preview.png"
    assert preview.read_bytes().startswith(b"\x89PNG")
    assert not list(path.parent.glob("*.part"))

    completed = wait_for(lambda: hook.events("download.completed"), 10, message="download.completed webhook")
    assert completed[0]["data"]["id"] == item["id"]
    assert wait_for(lambda: hook.events("manifest.done"), 10, message="manifest.done webhook")
    for post in hook.posts:
        assert post["headers"]["Content-Type"] == "application/json"
        expected = "sha256=" + hmac.new(SECRET.encode(), post["body"], hashlib.sha256).hexdigest()
        assert post["headers"]["X-Civitai-Daemon-Signature"] == expected
    names = [e["event"] for e in hook.events()]
    assert "download.progress" not in names
    assert names.index("download.queued") < names.index("download.started") < names.index("download.completed")
    d.stop()
    for name in ("download.log", "error.log"):
        assert SECRET.encode() not in (d.home / "logs" / name).read_bytes()


def test_model_only_newest_by_published_at_and_type_folders(fake, make_daemon):
    fake.add_model(300, "Tiny LoRA", "LORA")
    fake.add_version(300, 3001, "v1", size=70_000, published_at="2026-01-01T00:00:00.000Z")
    newest = fake.add_version(300, 3002, "v2", size=80_000, published_at="2026-03-01T00:00:00.000Z")
    fake.reorder(300, [3001, 3002])  # list position says v1; publishedAt says v2
    fake.add_model(400, "Neg Embedding", "TextualInversion")
    emb = fake.add_version(400, 4001, "v1", size=66_000, filename="negemb.pt")
    fake.add_model(500, "Some VAE", "VAE")
    vae = fake.add_version(500, 5001, "v1", size=66_000, filename="vae.pt")
    d = make_daemon(type_dirs={"VAE": "my-vae"})
    d.drop("m.json", {"items": [{"modelId": 300}, {"air": "urn:air:sd1:embedding:civitai:400@4001"},
                                {"modelVersionId": 5001, "subdir": "chosen"}]})
    folder, result = d.result("m.json")
    assert folder == "done", result
    paths = [Path(i["path"]) for i in result["items"]]
    downloads = d.home / "downloads"
    assert paths[0] == downloads / "Lora" / newest["filename"] and sha(paths[0]) == newest["sha256"]
    assert paths[1] == downloads / "embeddings" / "negemb.pt" and sha(paths[1]) == emb["sha256"]
    assert paths[2] == downloads / "chosen" / "vae.pt" and sha(paths[2]) == vae["sha256"]  # subdir wins
    assert all(i["verified"] for i in result["items"])
    row = d.download(result["items"][0]["id"])
    assert (row["modelId"], row["modelVersionId"], row["model_type"]) == (300, 3002, "LORA")


@pytest.mark.parametrize("url", ["https://civitai.com/models/4201?modelVersionId=130072",
                                 "https://civitai.red/models/4201/realistic-vision?modelVersionId=130072"])
def test_civitai_page_url_resolves_through_configured_api(fake, make_daemon, url):
    """A civitai.com / civitai.red page URL cannot be reached in tests: it resolves through civitai_base_url."""
    fake.add_model(4201, "Realistic Vision", "Checkpoint")
    info = fake.add_version(4201, 130072, "v2.0", size=100_000)
    fake.add_version(4201, 130080, "v2.1", size=90_000)
    d = make_daemon()
    r = d.post("/api/download", {"url": url})
    assert r.status_code == 202, r.text
    row = d.wait_state(r.json()["id"], {"completed", "failed"})
    assert row["state"] == "completed", row
    assert row["modelVersionId"] == 130072 and row["sha256"] == info["sha256"] and row["verified"]
    assert not [x for x in fake.requests if "civitai.com" in x.headers.get("Host", "")]


def test_token_goes_to_api_host_never_to_storage(fake, make_daemon):
    fake.add_model(77, "Locked LoRA", "LORA")
    info = fake.add_version(77, 770, "v1", size=120_000, require_auth=True)
    d = make_daemon(start=False)
    d.start(env={"CIVITAI_API_TOKEN": "good-token"})
    r = d.post("/api/download", {"modelVersionId": 770})
    row = d.wait_state(r.json()["id"], {"completed", "failed"})
    assert row["state"] == "completed" and row["sha256"] == info["sha256"], row
    api = fake.requests_to("api", "/api/")
    storage = fake.requests_to("storage")
    assert api and storage
    assert all(x.headers.get("Authorization") == "Bearer good-token" for x in api)
    assert all("Authorization" not in x.headers and "token=" not in x.path for x in storage)
    assert all("token=" not in x.path for x in api)
    d.stop()
    for name in ("download.log", "error.log"):
        assert b"good-token" not in (d.home / "logs" / name).read_bytes()


@pytest.mark.parametrize("case", ["no-token", "bad-token", "disabled", "html", "deleted", "archived"])
def test_clear_messages_and_no_file(fake, make_daemon, case):
    fake.add_model(88, "Trouble", "Checkpoint")
    fake.add_version(88, 880, "v1", size=80_000, require_auth=case in ("no-token", "bad-token"),
                     downloads_disabled=case == "disabled", archived=case == "archived", deleted=case == "deleted")
    config = {"civitai_token": "wrong-token"} if case == "bad-token" else {}
    d = make_daemon(**config)
    if case == "html":
        fake.faults.html_200 = True
    r = d.post("/api/download", {"modelVersionId": 880})
    row = d.wait_state(r.json()["id"], {"completed", "failed"}, timeout=30)
    assert row["state"] == "failed"
    error = row["error"]
    expected = {"no-token": "needs a Civitai API token: set civitai_token in config.yaml or",
                "bad-token": "refused the token", "disabled": "disabled downloads",
                "html": "HTML page instead of the model file", "deleted": "deleted",
                "archived": "archived"}[case]
    assert expected in error, error
    if case == "no-token":
        assert "CIVITAI_API_TOKEN" in error
    downloads = d.home / "downloads"
    assert not [p for p in downloads.rglob("*") if p.is_file()], list(downloads.rglob("*"))
    assert row["attempts"] == 1  # failed at once, not retried


class _BrowserProxy:
    """Forwards every request to the fake with a browser User-Agent and answers verbatim (no redirects
    followed): the fake then plays Civitai's browser-style 307 to the login page."""

    def __init__(self, fake):
        self.fake = fake

    def start(self):
        fake = self.fake

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "user-agent")}
                headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) Chrome/126 Safari/537.36"
                conn.request("GET", self.path, headers=headers)
                answer = conn.getresponse()
                body = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                conn.close()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_browser_style_login_redirect_is_a_clear_failure(fake, make_daemon):
    fake.add_model(89, "Members Only", "Checkpoint")
    fake.add_version(89, 890, "v1", size=80_000, require_auth=True)
    proxy = _BrowserProxy(fake)
    base = proxy.start()
    try:
        d = make_daemon(civitai_base_url=base)
        r = d.post("/api/download", {"modelVersionId": 890})
        row = d.wait_state(r.json()["id"], {"completed", "failed"}, timeout=30)
    finally:
        proxy.stop()
    assert row["state"] == "failed"
    assert "needs a Civitai API token" in row["error"], row["error"]
    entry = [x for x in fake.requests_to("api", "/api/download/models/890")]
    assert entry and all(x.status == 307 and "mozilla" in x.headers["User-Agent"].lower() for x in entry)
    assert not fake.requests_to("api", "/login") and not fake.requests_to("storage")
    assert not [p for p in (d.home / "downloads").rglob("*") if p.is_file()]


def test_early_access_parks_then_downloads_by_itself(fake, make_daemon):
    d = make_daemon()  # started first: a slow start under load must not eat the early-access window
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)
    stamp = until.strftime("%Y-%m-%dT%H:%M:%S.") + f"{until.microsecond // 1000:03d}Z"
    fake.add_model(91, "Fresh LoRA", "LORA")
    info = fake.add_version(91, 910, "v1", size=90_000, early_access_until=stamp)
    d.drop("ea.json", {"modelVersionId": 910})
    row = wait_for(lambda: (x := d.get("/api/downloads").json()["items"]) and x[0]["not_before"] and x[0],
                   10, message="parked download")
    assert row["state"] == "queued" and "early access" in row["error"]
    parked_at = time.time()
    folder, result = d.result("ea.json", timeout=30)
    assert folder == "done", result
    assert time.time() - parked_at < 15
    assert sha(result["items"][0]["path"]) == info["sha256"]
    assert datetime.datetime.now(datetime.timezone.utc) >= until


def test_api_down_with_known_url_downloads_unverified(fake, make_daemon):
    fake.add_model(95, "Offline API", "Checkpoint")
    info = fake.add_version(95, 950, "v1", size=70_000)
    d = make_daemon(retries=1)
    fake.faults.api_5xx = -1
    r = d.post("/api/download", {"url": f"{fake.base_url}/api/download/models/950", "modelVersionId": 950})
    row = d.wait_state(r.json()["id"], {"completed", "failed"}, timeout=30)
    assert row["state"] == "completed", row
    assert row["verified"] is False and row["sha256"] == info["sha256"]
    assert "unverified" in d.logs()


def test_fake_base_download_url_is_read_as_a_version(fake, make_daemon):
    """A download URL on civitai_base_url's host names its version: it gets the API's hash and folder."""
    fake.add_model(96, "By URL", "LORA")
    info = fake.add_version(96, 960, "v1", size=70_000)
    d = make_daemon()
    r = d.post("/api/download", {"url": f"{fake.base_url}/api/download/models/960"})
    row = d.wait_state(r.json()["id"], {"completed", "failed"}, timeout=30)
    assert row["state"] == "completed", row
    assert row["verified"] is True and row["modelVersionId"] == 960 and row["model_type"] == "LORA"
    assert Path(row["path"]).parent.name == "Lora" and row["sha256"] == info["sha256"]


def test_file_choice_newest_version_and_url_ids():
    """Pure helpers: the file a download URL asks for, the newest version, ids in Civitai URLs."""
    from daemon.civitai import chosen_file, describe, ids_from_url, newest_version

    version = {"id": 130072, "modelId": 4201, "name": "v2.0", "model": {"name": "X", "type": "Checkpoint"},
               "files": [{"id": 1, "name": "x_v20.safetensors", "type": "Model", "primary": True, "sizeKB": 2.0,
                          "metadata": {"format": "SafeTensor", "size": "pruned", "fp": "fp16"},
                          "hashes": {"SHA256": "A" * 64}},
                         {"id": 2, "name": "x_v20_trainingData.zip", "type": "Training Data", "sizeKB": 1.0,
                          "metadata": {}, "hashes": {"SHA256": "B" * 64}}]}
    assert chosen_file(version)["id"] == 1
    assert chosen_file(version, "https://civitai.com/api/download/models/130072?type=Training%20Data")["id"] == 2
    assert chosen_file(version, "https://civitai.com/api/download/models/130072?fileId=9") is None
    fields = describe(version, url="https://civitai.com/api/download/models/130072?type=Training%20Data")
    assert fields["api_sha256"] == "b" * 64 and fields["api_size"] == 1024
    assert fields["api_filename"] == "x_v20_trainingData.zip" and fields["model_type"] == "Checkpoint"

    model = {"modelVersions": [{"id": 1, "publishedAt": "2026-01-01T00:00:00.000Z"},
                               {"id": 3, "publishedAt": "2026-05-01T00:00:00.000Z"},
                               {"id": 2, "createdAt": "2026-03-01T00:00:00.000Z"}]}
    assert newest_version(model)["id"] == 3
    assert newest_version({"modelVersions": []}) is None

    hosts = {"127.0.0.1", "civitai.com", "civitai.red"}
    assert ids_from_url("https://civitai.red/models/4201/name?modelVersionId=130072", hosts) == (4201, 130072)
    assert ids_from_url("http://127.0.0.1:9/api/download/models/55?type=VAE", hosts) == (None, 55)
    assert ids_from_url("https://www.civitai.com/models/7", hosts) == (7, None)
    assert ids_from_url("https://example.org/api/download/models/55", hosts) == (None, None)
