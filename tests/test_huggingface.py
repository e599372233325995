"""huggingface_token (SPEC §13): Bearer to exactly huggingface_base_url's origin, never to the storage redirect."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import sha

HF_SECRET = "hf_test_secret_token_123"


class FakeHub:
    """A gated repo: /<repo>/resolve/main/<file> needs the Bearer token, then 302s to another origin."""

    def __init__(self, storage_base):
        self.storage_base = storage_base
        self.seen = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                name = self.path.rsplit("/", 1)[-1]
                if self.headers.get("Authorization") != f"Bearer {HF_SECRET}":
                    body = json.dumps({"error": "Access to model org/gated is restricted."}).encode()
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_response(302)
                self.send_header("Location", f"{hub.storage_base}/files/{name}")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(fake):
    # The storage answers on "localhost": another host than the hub, as cdn-lfs.huggingface.co is.
    server = FakeHub(fake.base_url.replace("127.0.0.1", "localhost"))
    yield server
    server.stop()


def test_the_token_goes_to_the_hub_and_not_to_the_storage(make_daemon, fake, hub):
    blob = fake.add_blob("gated.safetensors", size=50_000, safetensors=True)
    daemon = make_daemon(huggingface_base_url=hub.url, huggingface_token=HF_SECRET)
    url = f"{hub.url}/org/gated/resolve/main/gated.safetensors"
    download_id = daemon.post("/api/download", {"url": url, "subdir": "checkpoints"}).json()["id"]
    done = daemon.wait_state(download_id, ("completed", "failed"), 30)
    assert done["state"] == "completed", done["error"]
    assert sha(daemon.home / "downloads" / "checkpoints" / "gated.safetensors") == blob["sha256"]
    assert hub.seen[0]["authorization"] == f"Bearer {HF_SECRET}"
    storage = fake.requests_to(prefix="/files/gated.safetensors")
    assert storage and all("Authorization" not in r.headers and "authorization" not in r.headers for r in storage)
    # another port of the same host is another origin: no token there (the fake Civitai is one)
    assert all(HF_SECRET not in json.dumps(r.headers) for r in fake.requests)
    assert HF_SECRET not in daemon.logs() and HF_SECRET not in json.dumps(daemon.get("/api/downloads").json())
    assert HF_SECRET not in (daemon.home / "logs" / "download.log").read_text()


def test_hf_token_env_overrides_and_a_refusal_says_what_to_do(make_daemon, fake, hub):
    fake.add_blob("gated2.safetensors", size=20_000, safetensors=True)
    url = f"{hub.url}/org/gated/resolve/main/gated2.safetensors"
    without = make_daemon(huggingface_base_url=hub.url)
    failed = without.wait_state(without.post("/api/download", {"url": url}).json()["id"], ("completed", "failed"))
    assert failed["state"] == "failed" and "huggingface_token" in failed["error"] and "HF_TOKEN" in failed["error"]
    without.stop()
    overridden = make_daemon(start=False, huggingface_base_url=hub.url, huggingface_token="wrong-token")
    overridden.start(env={"HF_TOKEN": HF_SECRET})
    done = overridden.wait_state(overridden.post("/api/download", {"url": url}).json()["id"], ("completed", "failed"))
    assert done["state"] == "completed", done["error"]
    assert HF_SECRET not in overridden.logs()
