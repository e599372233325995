"""Regressions from the second attack on the daemon (issue 11, "a fresh attack finds nothing above low")."""
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_hostfiles import png


class HostileApi:
    """A Civitai API that answers every call with one fixed JSON body (status 200)."""

    def __init__(self, body):
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.calls += 1
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("answer", [[1, 2], {"model": {"type": ["Checkpoint"]}, "files": []},
                                    {"id": 5, "files": [{"name": 7, "downloadUrl": "http://127.0.0.1:9/x"}]},
                                    {"files": "abc"}])
def test_malformed_by_hash_answer_fails_the_item_not_intake(make_daemon, answer):
    """A by-hash answer of the wrong shape once raised inside intake: the PNG stayed in inbox/, retried for ever."""
    api = HostileApi(answer)
    try:
        daemon = make_daemon(civitai_base_url=api.url, retries=0)
        daemon.drop("shot.png", png({"parameters": "a castle\nSteps: 20, Model hash: 6ce0161689, Model: base"}))
        folder, result = daemon.result("shot.png", timeout=60)
        assert folder == "failed", result
        text = json.dumps(result)
        assert "6ce0161689" in text and "Civitai" in text, text
        assert daemon.get("/healthz").status_code == 200
        assert "Traceback" not in daemon.logs() + daemon.read_stderr()
    finally:
        api.stop()


def _scan(d):
    from test_library import scan
    return scan(d)


def test_library_preview_is_never_served_through_a_symlink(make_daemon, tmp_path):
    """A `.preview.png` in a library root that links to a file outside was served as the entry's image."""
    root = tmp_path / "models"
    (root / "Lora").mkdir(parents=True)
    (root / "Lora" / "style.safetensors").write_bytes(b"\x00model style" * 100)
    outside = tmp_path / "private.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\nSECRET-OUTSIDE-THE-LIBRARY")
    (root / "Lora" / "style.preview.png").symlink_to(outside)
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False})
    _scan(d)
    items = d.get("/api/library", params={"limit": 100}).json()["items"]
    entry = next(i for i in items if i["path"].endswith("style.safetensors"))
    answer = d.get(f"/api/library/{entry['id']}/preview")
    assert answer.status_code == 404, answer.status_code
    assert b"SECRET" not in answer.content


def test_a_fifo_sidecar_does_not_hang_the_scan(make_daemon, tmp_path):
    """A FIFO named `<model>.civitai.info` blocked the scan in open() for ever (every later scan: 409)."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "a.safetensors").write_bytes(b"\x00model a" * 100)
    os.mkfifo(root / "a.civitai.info")
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False})
    status = _scan(d)
    assert status["state"] == "done", status
    assert d.get("/healthz").status_code == 200


def test_many_compressed_text_chunks_share_one_inflate_cap():
    """40 zTXt bombs of 16 MiB each (a 650 KB PNG) inflated to 730 MB: the cap was per chunk, not per file."""
    import zlib

    from test_hostfiles import chunk

    from daemon.pngmeta import MAX_TEXT, PngError, text_chunks
    bomb = zlib.compress(b"A" * (MAX_TEXT - 1), 9)
    body = b"".join(chunk(b"zTXt", f"k{i}".encode() + b"\x00\x00" + bomb) for i in range(40))
    image = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", b"\x00" * 13) + body + chunk(b"IEND", b"")
    with pytest.raises(PngError, match="in all"):
        text_chunks(image)
    one = b"\x89PNG\r\n\x1a\n" + chunk(b"zTXt", b"workflow\x00\x00" + zlib.compress(b"{}")) + chunk(b"IEND", b"")
    assert text_chunks(one) == {"workflow": "{}"}


def test_a_workflow_node_type_that_is_not_a_string_is_rejected_not_raised(make_daemon):
    """`"type": ["x"]` in a node raised TypeError inside intake: the file stayed in inbox/, retried for ever."""
    d = make_daemon()
    workflow = {"nodes": [{"id": 1, "type": ["sub"], "mode": 0, "properties": {}},
                          {"id": 2, "type": {"a": 1}, "mode": 0, "properties": {}}],
                "definitions": {"subgraphs": [{"id": "sub", "nodes": []}]}}
    d.drop("odd.json", workflow)
    folder, result = d.result("odd.json", timeout=60)
    assert folder == "failed" and "lists no models" in json.dumps(result), result
    assert "Traceback" not in d.logs() + d.read_stderr()


def test_an_image_naming_thousands_of_models_is_refused_before_any_lookup(make_daemon, fake):
    """`Hashes: {…}` with 5,000 entries cost 5,000 Civitai calls on the one intake thread (all inboxes waited)."""
    d = make_daemon()
    hashes = {f"lora:m{i}": f"{i:010x}" for i in range(5000)}
    d.drop("many.png", png({"parameters": f"a castle\nSteps: 20, Hashes: {json.dumps(hashes)}"}))
    folder, result = d.result("many.png", timeout=60)
    assert folder == "failed" and "at most 100" in json.dumps(result), result
    assert not fake.requests_to(prefix="/api/v1/model-versions/by-hash")


def test_a_library_scan_stores_civitai_json_scrubbed_of_tokens_in_urls(make_daemon, fake, tmp_path):
    """The library kept the by-hash version JSON raw: a URL token in it reached the database,
    `.civitai.info` and /api/library (downloads were scrubbed since issue 11 item 16; the scan was not)."""
    import sqlite3
    secret = "LEAKEDTOKEN0123456789"
    fake.add_model(701, "Scrubbed")
    blob = fake.add_version(701, 7011, "v1", data=b"\x00model scrubbed" * 64, filename="scrubbed.safetensors",
                            description=f"https://cdn.example/notes.png?token={secret}")
    root = tmp_path / "models"
    root.mkdir()
    (root / "scrubbed.safetensors").write_bytes(b"\x00model scrubbed" * 64)
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False})
    _scan(d)
    items = d.get("/api/library", params={"limit": 100}).json()["items"]
    entry = next(i for i in items if i["path"].endswith("scrubbed.safetensors"))
    assert entry["modelVersionId"] == 7011, entry
    assert blob["sha256"]
    assert secret not in json.dumps(d.get(f"/api/library/{entry['id']}").json())
    database = next(d.home.glob("*.db"), None) or next(d.home.rglob("*.db"))
    with sqlite3.connect(database) as conn:
        assert not [r for r in conn.execute("SELECT civitai_info FROM library") if secret in (r[0] or "")]
    sidecar = root / "scrubbed.civitai.info"
    assert not sidecar.exists() or secret not in sidecar.read_text()


@pytest.mark.parametrize("info", [{"id": 1, "files": [{"hashes": ["SHA256"]}]}, {"id": 1, "files": 5}])
def test_a_malformed_sidecar_does_not_end_the_scan(make_daemon, tmp_path, info):
    """A `.civitai.info` whose files or hashes have the wrong shape raised out of the sidecar reader."""
    root = tmp_path / "models"
    root.mkdir()
    (root / "odd.safetensors").write_bytes(b"\x00model odd" * 100)
    (root / "odd.civitai.info").write_text(json.dumps(info))
    (root / "fine.safetensors").write_bytes(b"\x00model fine" * 100)
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False})
    status = _scan(d)
    assert status["state"] == "done", status
    paths = [i["path"] for i in d.get("/api/library", params={"limit": 100}).json()["items"]]
    assert any(p.endswith("fine.safetensors") for p in paths) and any(p.endswith("odd.safetensors") for p in paths)
