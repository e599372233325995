"""The library (SPEC §10) against the real daemon, real files and the fake Civitai."""
import datetime
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from conftest import ROOT, sha, wait_for

IDS = "/api/v1/model-versions/by-hash/ids"
DETAILS = "/api/v1/model-versions/by-hash"


def content(tag):
    """Small, distinct bytes for one model file."""
    return b"\x00model " + hashlib.sha256(tag.encode()).digest() * 4 + tag.encode()


def put(path, data, mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def snapshot(*roots):
    """{path: (sha256, mtime_ns)} of every model file under the roots (symlinks not followed)."""
    out = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder) / name
                if name.endswith((".safetensors", ".ckpt")) and not path.is_symlink():
                    out[str(path)] = (sha(path), os.stat(path).st_mtime_ns)
    return out


def scan(d, body=None):
    answer = d.post("/api/library/scan", body or {})
    assert answer.status_code == 202, answer.text
    scan_id = answer.json()["scan"]
    return wait_for(lambda: (s := d.get("/api/library/scan").json())["id"] == scan_id
                    and s["state"] != "running" and s, 120, message=f"scan {scan_id}")


def entries(d, **params):
    params.setdefault("limit", 1000)
    return d.get("/api/library", params=params).json()


class Library:
    """A library folder with every situation of the issue, and the fake Civitai knowing what it should."""

    def __init__(self, fake, base):
        self.root = base / "models"
        self.outside = base / "elsewhere"
        self.expect = {}  # file name → (modelId, versionId) Civitai will name
        old = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
        # 120 models with a newer version on Civitai; the library has the older one, known only by hash.
        for m in range(1, 121):
            fake.add_model(m, f"Model {m}", "LORA" if m % 2 else "Checkpoint")
            data = content(f"old-{m}")
            fake.add_version(m, m * 10, "v1", data=data, base_model="SD 1.5")
            fake.add_version(m, m * 10 + 1, "v2", data=content(f"new-{m}"), base_model="SD 1.5")
            put(self.root / "Lora" / f"m{m}.safetensors", data)
            self.expect[f"m{m}.safetensors"] = (m, m * 10)
        # 60 up-to-date models known only by hash.
        for m in range(121, 181):
            fake.add_model(m, f"Model {m}", "TextualInversion")
            data = content(f"only-{m}")
            fake.add_version(m, m * 10, "v1", data=data, base_model="SDXL 1.0")
            put(self.root / "embeddings" / f"e{m}.safetensors", data)
            self.expect[f"e{m}.safetensors"] = (m, m * 10)
        # Each sidecar kind, ten files each (models 181-220).
        kinds = ["civitai.info", "cm-info", "metadata", "sha256"]
        for i, m in enumerate(range(181, 221)):
            kind = kinds[i // 10]
            fake.add_model(m, f"Sidecar {m}", "LORA")
            data = content(f"side-{m}")
            fake.add_version(m, m * 10, "v1", data=data, base_model="Pony")
            path = put(self.root / "side" / f"s{m}.safetensors", data, mtime=old)
            stem = path.with_name(f"s{m}")
            digest = hashlib.sha256(data).hexdigest()
            if kind == "civitai.info":
                Path(f"{stem}.civitai.info").write_text(json.dumps(fake.version_json(m * 10)))
            elif kind == "cm-info":
                hashes = {"SHA256": digest.upper()} if i != 10 else {}
                Path(f"{stem}.cm-info.json").write_text(json.dumps(
                    {"ModelId": m, "VersionId": m * 10, "ModelName": f"Sidecar {m}", "VersionName": "v1",
                     "ModelType": "LORA", "BaseModel": "Pony", "Hashes": hashes}))
                if i == 10:  # no hash and older than its file: ignored, so this one is looked up by hash
                    os.utime(f"{stem}.cm-info.json", (old - 86400, old - 86400))
            elif kind == "metadata":
                Path(f"{stem}.metadata.json").write_text(json.dumps(
                    {"file_name": f"s{m}", "model_name": f"Sidecar {m}", "sha256": digest, "base_model": "Pony",
                     "civitai": {"id": m * 10, "modelId": m, "name": "v1", "baseModel": "Pony",
                                 "model": {"name": f"Sidecar {m}", "type": "LORA"}}}))
            else:
                Path(f"{stem}.sha256").write_text(digest.upper() + "\n")
            self.expect[f"s{m}.safetensors"] = (m, m * 10)
        # 40 files Civitai does not know.
        for u in range(40):
            put(self.root / "Other" / f"unknown{u}.ckpt", content(f"unknown-{u}"))
        # A symlinked folder (linked twice) outside the root: its 20 files are adopted once.
        for m in range(221, 241):
            fake.add_model(m, f"Linked {m}", "VAE")
            data = content(f"linked-{m}")
            fake.add_version(m, m * 10, "v1", data=data, base_model="SD 1.5")
            put(self.outside / "vae" / f"l{m}.safetensors", data)
            self.expect[f"l{m}.safetensors"] = (m, m * 10)
        os.symlink(self.outside / "vae", self.root / "VAE")
        os.symlink(self.outside / "vae", self.root / "VAE-again")
        os.symlink("..", self.root / "Lora" / "loop")  # a symlink loop
        # Files a scan must skip.
        put(self.root / ".replaced" / "2026-01-01" / "old.safetensors", content("replaced"))
        put(self.root / ".quarantine" / "bad.safetensors", content("quarantine"))
        put(self.root / "Lora" / "half.safetensors.part", content("part"))
        put(self.root / "Lora" / "notes.txt", b"not a model")
        # An unreadable file: chmod 000 for an ordinary user; as root (who reads anything) a link to a
        # file whose reads fail with EIO.
        self.unreadable = self.root / "broken.safetensors"
        if os.geteuid() == 0:
            os.symlink("/proc/self/mem", self.unreadable)
        else:
            put(self.unreadable, b"secret").chmod(0)
        self.models = 120 + 60 + 40 + 40 + 20  # identified + unknown, readable


@pytest.fixture
def library(fake, tmp_path):
    return Library(fake, tmp_path)


def test_first_scan_identifies_everything_in_bulk_and_a_rescan_does_nothing(fake, make_daemon, library, tmp_path):
    before = snapshot(library.root, library.outside)
    d = make_daemon(library={"roots": [str(library.root)], "scan_on_start": False},
                    update_check={"enabled": False, "time": "04:00", "auto_download": False})
    assert d.get("/api/library/scan").json() == {"state": "idle"}
    fake.clear_requests()

    first = scan(d)
    assert first["state"] == "done", first
    assert first["files"] == library.models + 1  # + the unreadable one
    assert first["hashed"] == library.models
    assert first["new"] == library.models + 1
    assert (first["identified"], first["unknown"]) == (library.models - 40, 41)
    assert [e["path"] for e in first["errors"]] == [str(library.unreadable)]
    # 260 hashes asked in one call; 230 version JSONs in three (the ten .civitai.info files need none).
    assert fake.calls("POST", IDS) == 1 and fake.calls("POST", DETAILS) == 3
    assert first["api_calls"] == 4
    assert [r.path for r in fake.requests_to("api", "/api/") if r.method == "GET"] == []  # never one GET per file
    asked = json.loads(fake.requests_to("api", IDS)[0].body)
    assert len(asked) == 120 + 60 + 10 + 1 + 40 + 20

    listed = entries(d)
    assert listed["total"] == library.models + 1
    by_name = {Path(e["path"]).name: e for e in listed["items"]}
    for name, (model_id, version_id) in library.expect.items():
        entry = by_name[name]
        assert (entry["modelId"], entry["modelVersionId"]) == (model_id, version_id), entry
        assert entry["model_name"] and entry["type"] and entry["base_model"], entry
    assert {by_name[f"s{m}.safetensors"]["source"] for m in range(181, 201) if m != 191} == {"sidecar"}
    assert by_name["s191.safetensors"]["source"] == "civitai"  # its stale sidecar was ignored
    assert by_name["m1.safetensors"]["source"] == "civitai" and by_name["m1.safetensors"]["type"] == "LORA"
    assert by_name["unknown3.ckpt"]["source"] == "unknown" and by_name["unknown3.ckpt"]["modelId"] is None
    assert by_name["l230.safetensors"]["path"].startswith(str(library.root / "VAE"))
    assert sum(1 for e in listed["items"] if Path(e["path"]).name.startswith("l2")) == 20  # linked once
    assert not any(".replaced" in e["path"] or ".quarantine" in e["path"] for e in listed["items"])
    one = d.get(f"/api/library/{by_name['e150.safetensors']['id']}").json()
    assert one["sha256"] == hashlib.sha256(content("only-150")).hexdigest() and one["size"] > 0

    # Filters: type (any case), q, state; counts by type and base model.
    assert entries(d, type="lora")["total"] == 60 + 40
    assert entries(d, q="Model 77")["total"] == 1
    assert entries(d, state="unknown")["total"] == 41
    assert listed["counts"]["by_type"]["VAE"] == 20 and listed["counts"]["by_base_model"]["Pony"] == 40
    assert d.get("/api/library", params={"state": "gone"}).status_code == 400
    assert d.get("/api/library/abc").status_code == 400 and d.get("/api/library/99999").status_code == 404

    # Missing sidecars were written beside identified files; existing ones were left alone.
    lora = library.root / "Lora"
    assert json.loads((lora / "m5.civitai.info").read_text())["id"] == 50
    assert (lora / "m5.preview.png").read_bytes()[:4] == b"\x89PNG"
    assert d.get(f"/api/library/{by_name['m5.safetensors']['id']}/preview").headers["Content-Type"] == "image/png"
    side = library.root / "side"
    assert not (side / "s181.cm-info.json").exists()
    assert (side / "s191.cm-info.json").exists()
    assert not (library.root / "Other" / "unknown1.civitai.info").exists()

    # A rescan with no changes hashes nothing and calls nothing.
    fake.clear_requests()
    second = scan(d)
    assert (second["hashed"], second["new"], second["changed"], second["missing"]) == (0, 0, 0, 0), second
    assert second["api_calls"] == 0 and fake.requests_to("api") == []  # no lookups, no previews
    assert second["identified"] == first["identified"]

    # A renamed file keeps its hash and identity; a changed file is hashed again; a deleted one is missing.
    os.rename(lora / "m7.safetensors", lora / "m7-renamed.safetensors")
    with open(library.root / "Other" / "unknown5.ckpt", "ab") as handle:
        handle.write(b"more")
    (library.root / "Other" / "unknown6.ckpt").unlink()
    third = scan(d)
    assert (third["hashed"], third["new"], third["changed"], third["missing"]) == (1, 1, 1, 2), third
    assert fake.calls("POST", IDS) == 1 and fake.calls("POST", DETAILS) == 0  # only the changed file's new hash
    assert json.loads(fake.requests_to("api", IDS)[0].body) == [sha(library.root / "Other" / "unknown5.ckpt").upper()]
    renamed = entries(d, q="m7-renamed")["items"][0]
    assert (renamed["modelVersionId"], renamed["sha256"]) == (70, hashlib.sha256(content("old-7")).hexdigest())
    gone = {Path(e["path"]).name for e in entries(d, state="missing")["items"]}
    assert gone == {"m7.safetensors", "unknown6.ckpt"}

    # Unknown hashes are asked again only once their week has passed.
    with sqlite3.connect(d.home / "completed.db") as con:
        stale = [row[0] for row in con.execute("SELECT sha256 FROM unknown_hashes ORDER BY sha256 LIMIT 5")]
        con.execute("UPDATE unknown_hashes SET asked_at = '2020-01-01 00:00:00+00:00' WHERE sha256 IN (?,?,?,?,?)",
                    stale)
    fake.clear_requests()
    fourth = scan(d)
    assert fourth["hashed"] == 0 and fourth["api_calls"] == 1
    assert sorted(json.loads(fake.requests_to("api", IDS)[0].body)) == sorted(h.upper() for h in stale)

    # Not one model file's bytes or mtime changed (bar the two the test itself changed).
    after = snapshot(library.root, library.outside)
    touched = {str(lora / "m7.safetensors"), str(library.root / "Other" / "unknown5.ckpt"),
               str(library.root / "Other" / "unknown6.ckpt")}
    assert len(before) == library.models + 2  # + the two skipped ones in .replaced/ and .quarantine/
    for path, state in before.items():
        if path not in touched:
            assert after[path] == state, path
    assert after[str(lora / "m7-renamed.safetensors")] == before[str(lora / "m7.safetensors")]


def test_update_check_covers_adopted_files_and_enqueue_dedupes_against_the_library(fake, make_daemon, library):
    d = make_daemon(library={"roots": [str(library.root)]},
                    update_check={"enabled": False, "time": "04:00", "auto_download": False})
    done = wait_for(lambda: (s := d.get("/api/library/scan").json())["state"] == "done" and s, 120,
                    message="the scan_on_start scan")
    assert done["identified"] == library.models - 40

    summary = requests.post(d.url + "/api/updates/check", timeout=120).json()
    found = sorted((u["modelId"], u["previous_version_id"], u["modelVersionId"]) for u in summary["updates"])
    assert found == [(m, m * 10, m * 10 + 1) for m in range(1, 121)]

    # The library has the file of version 1230 (model 123): by hash, linked into the asked folder, no download.
    fake.clear_requests()
    owned = library.root / "embeddings" / "e123.safetensors"
    linked = d.post("/api/download", {"modelVersionId": 1230, "sha256": sha(owned), "subdir": "again"}).json()["id"]
    row = d.wait_state(linked, {"completed", "failed"})
    assert row["state"] == "completed", row
    assert os.path.samefile(row["path"], owned) and Path(row["path"]).parent.name == "again"
    # By version, no folder asked for: the file is already in place.
    present = d.post("/api/download", {"modelVersionId": 1240}).json()["id"]
    row = d.wait_state(present, {"completed", "failed"})
    assert row["state"] == "completed" and row["path"] == str(library.root / "embeddings" / "e124.safetensors")
    assert fake.requests_to("storage") == [] and fake.requests_to("api", "/api/download") == []

    # A completed download becomes a library entry at once.
    new = d.post("/api/download", {"modelVersionId": 11}).json()["id"]
    row = d.wait_state(new, {"completed", "failed"})
    assert row["state"] == "completed", row
    adopted = wait_for(lambda: entries(d, q=Path(row["path"]).name)["items"], 10, message="library entry")
    assert adopted[0]["source"] == "downloaded" and adopted[0]["modelVersionId"] == 11


def test_scan_cli_and_conflicts(fake, make_daemon, library, tmp_path):
    d = make_daemon(library={"roots": [str(library.root)], "scan_on_start": False, "hash_threads": 2})
    cli = [sys.executable, "-m", "daemon.cli", "scan", "--config", str(d.config_path)]
    outside = subprocess.run(cli + [str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert outside.returncode == 2 and "outside every library root" in outside.stderr
    first = d.post("/api/library/scan")
    assert first.status_code == 202
    again = d.post("/api/library/scan")  # may be running still, or already done
    assert again.status_code in (202, 409)
    if again.status_code == 409:
        assert again.json()["scan"] == first.json()["scan"] and "already running" in again.json()["error"]
    joined = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert joined.returncode == 0, joined.stderr
    assert "identified" in joined.stdout and str(library.unreadable) in joined.stderr
    only = subprocess.run(cli + [str(library.root / "embeddings")], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert only.returncode == 0 and "60 file(s)" in only.stdout, only.stdout
    assert d.get("/api/library/scan").json()["files"] == 60


def test_library_routes_are_in_the_openapi_document_and_answers_match_it(fake, make_daemon, library):
    import re
    import schemathesis
    from daemon.web import openapi
    from daemon.web.app import WebApp

    class Settings:
        api_token = viewer_token = None
        library = {"roots": []}

    doc = openapi.document("x")
    described = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    for route in WebApp(Settings(), None, None, None, library=object()).app.routes:
        if route.rule.startswith(("/api/library", "/api/updates/apply")):
            assert (route.method, re.sub(r"<(\w+)(:[^>]*)?>", r"{\1}", route.rule)) in described, route.rule

    d = make_daemon(library={"roots": [str(library.root)], "scan_on_start": False})
    schema = schemathesis.openapi.from_dict(d.get("/api/openapi.json").json())

    def check(method, path, template=None, status=200, **kwargs):
        response = requests.request(method, d.url + path, timeout=10, **kwargs)
        assert response.status_code == status, (path, response.text[:300])
        schema[template or path.split("?")[0]][method].validate_response(response)
        return response

    check("GET", "/api/library/scan")
    check("POST", "/api/library/scan", status=202, json={})
    wait_for(lambda: d.get("/api/library/scan").json()["state"] == "done", 120, message="scan")
    check("GET", "/api/library/scan")
    first = check("GET", "/api/library?limit=5&type=lora&state=identified").json()["items"][0]
    check("GET", f"/api/library/{first['id']}", "/api/library/{entry_id}")
    check("GET", f"/api/library/{first['id']}/preview", "/api/library/{entry_id}/preview")
    check("GET", "/api/library/0", "/api/library/{entry_id}", status=400)
    check("GET", "/api/library/77777", "/api/library/{entry_id}", status=404)
    check("GET", "/api/library?limit=abc", status=400)
    check("POST", "/api/library/scan", status=404, json={"paths": ["/etc"]})
    check("POST", "/api/library/scan", status=400, json={"paths": [""]})
    check("POST", "/api/library/scan", status=400, json=[None])


def test_a_failed_lookup_is_retried_once_and_never_loses_the_other_results(fake, make_daemon, tmp_path):
    root = tmp_path / "models"
    for m in range(1, 6):
        fake.add_model(m, f"Flaky {m}", "LORA")
        data = content(f"flaky-{m}")
        fake.add_version(m, m * 10, "v1", data=data)
        path = put(root / f"f{m}.safetensors", data)
        if m <= 2:  # identified by their sidecars: these need only the detail lookup
            path.with_name(f"f{m}.cm-info.json").write_text(json.dumps(
                {"ModelId": m, "VersionId": m * 10, "Hashes": {"SHA256": hashlib.sha256(data).hexdigest()}}))
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False})
    fake.clear_requests()
    fake.faults.api_5xx = 1  # the first call fails once: tried again, all is well
    first = scan(d)
    assert first["identified"] == 5 and first["api_calls"] == 3, first
    assert [r.status for r in fake.requests_to("api", IDS)] == [503, 200]

    for m in range(6, 9):  # three more known by hash only; the lookup of their hashes fails twice
        fake.add_model(m, f"Flaky {m}", "LORA")
        fake.add_version(m, m * 10, "v1", data=content(f"flaky-{m}"))
        put(root / f"f{m}.safetensors", content(f"flaky-{m}"))
    put(root / "g.safetensors", content("flaky-1"))  # a copy of f1: identified from the library, no call
    fake.faults.api_5xx = 2
    second = scan(d)
    assert second["state"] == "done" and (second["identified"], second["unknown"]) == (6, 3), second
    assert any("failed twice" in e["error"] for e in second["errors"] if e["path"] is None), second["errors"]
    # Not recorded as unknown: the next scan asks for them again, and finds them.
    third = scan(d)
    assert (third["identified"], third["unknown"], third["api_calls"]) == (9, 0, 2), third


def test_a_fifo_named_like_a_model_or_swapped_in_mid_scan_is_reported_and_never_blocks(fake, make_daemon, tmp_path):
    """A FIFO named `x.safetensors` is reported, not opened. A file swapped after the walk saw it (for a FIFO,
    or for another file) is opened without blocking, checked against the walk's device and inode, and
    reported; the scan finishes and the files around them are still recorded."""
    root = tmp_path / "models"
    root.mkdir()
    os.mkfifo(root / "x.safetensors")
    big = root / "a-big.safetensors"  # hashed first (one thread, name order): the window for the swaps
    with open(big, "wb") as handle:
        handle.truncate(1 << 30)  # sparse: a second or two of hashing, no disk
    victim, changed = put(root / "b-victim.safetensors", content("victim")), put(root / "c-changed.safetensors",
                                                                                 content("changed"))
    kept = put(root / "d-kept.safetensors", content("kept"))
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False, "hash_threads": 1})
    assert d.post("/api/library/scan", {}).status_code == 202
    hashing = wait_for(lambda: (s := d.get("/api/library/scan").json())["bytes_done"] > 0 and s, 60, interval=0.01,
                       message="hashing under way")
    assert hashing["files_done"] == 0 and hashing["files"] == 4, hashing  # the walk saw b and c as files
    os.unlink(victim)
    os.mkfifo(victim)
    replacement = put(root / ".c.tmp", content("another file"))
    os.replace(replacement, changed)
    status = wait_for(lambda: (s := d.get("/api/library/scan").json())["state"] != "running" and s, 60,
                      message="the scan to finish")
    assert status["state"] == "done", status
    errors = {e["path"]: e["error"] for e in status["errors"]}
    assert "not a regular file" in errors[str(root / "x.safetensors")]
    assert "not a regular file" in errors[str(victim)]
    assert "replaced by another file" in errors[str(changed)]
    recorded = {e["path"]: e for e in entries(d)["items"]}
    assert recorded[str(kept)]["sha256"] == hashlib.sha256(content("kept")).hexdigest()
    assert recorded[str(big)]["size"] == 1 << 30
    assert d.get("/healthz").status_code == 200
