"""Core daemon behaviour end to end: manifests in, verified files out (SPEC §5, §6).

Every test runs the real daemon process against tests/fakeciv.py and talks to
it only through files, HTTP and its SQLite database.
"""
import datetime
import json
import os
import sqlite3
from pathlib import Path


from conftest import sha, wait_for

MB = 1_000_000


def storage_gets(fake):
    return [r for r in fake.requests_to("storage") if r.method == "GET"]


def db_rows(daemon, sql, *args):
    with sqlite3.connect(daemon.home / "completed.db", timeout=5) as conn:
        return conn.execute(sql, args).fetchall()


def assert_iso(text):
    assert datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None


# -- the "done when" test ---------------------------------------------------------


def test_three_50mb_files_land_verified(make_daemon, fake):
    fake.add_model(100, "Big Model", "Checkpoint")
    versions = {vid: fake.add_version(100, vid, f"v{vid}", size=50 * MB) for vid in (1001, 1002, 1003)}
    daemon = make_daemon()
    manifest = {"items": [{"modelVersionId": vid, "sha256": info["sha256"].upper(), "subdir": "big"}
                          for vid, info in versions.items()]}
    daemon.drop("three.json", manifest)

    folder, result = daemon.result("three.json", timeout=120)

    assert folder == "done"
    assert (daemon.home / "done" / "three.json").exists()
    assert not (daemon.home / "processing" / "three.json").exists()
    assert result["manifest"] == "three.json"
    assert result["status"] == "done"
    assert result["errors"] == []
    assert_iso(result["finished_at"])
    assert [item["index"] for item in result["items"]] == [0, 1, 2]
    for item, info in zip(result["items"], versions.values()):
        assert set(item) >= {"index", "id", "status", "path", "sha256", "verified", "bytes", "error"}
        path = Path(item["path"])
        assert path.is_absolute()
        assert path == (daemon.home / "downloads" / "big" / info["filename"]).resolve()
        assert item["status"] == "completed"
        assert item["verified"] is True
        assert item["error"] is None
        assert item["bytes"] == 50 * MB == path.stat().st_size
        assert item["sha256"] == info["sha256"] == sha(path)
        assert not list(path.parent.glob(f"{path.name}*.part"))  # no part of any download left
        assert daemon.download(item["id"])["state"] == "completed"
    # Each file went through a 307 to the storage host, which never saw the Authorization header.
    entry = [r for r in fake.requests_to("api", "/api/download/models/") if r.method == "GET"]
    assert {r.status for r in entry} == {307}
    assert all("Authorization" not in r.headers for r in storage_gets(fake))
    assert all(r.headers.get("User-Agent", "").startswith("civitai-daemon/") for r in fake.requests)


# -- names ------------------------------------------------------------------------


DISPOSITIONS = [
    ("attachment; filename*=UTF-8''%C3%BCn%C3%AFcode%20star.bin; filename=\"fallback.bin\"", "ünïcode star.bin"),
    ("attachment; filename=\"plain name.bin\"", "plain name.bin"),
    ("attachment; filename=\"ünïcode_lora.safetensors\"", "ünïcode_lora.safetensors"),  # raw UTF-8 bytes
    ("attachment; filename=\"../../evil.bin\"", "evil.bin"),
]


def test_content_disposition_names_the_file(make_daemon, fake):
    daemon = make_daemon()
    blobs = [fake.add_blob(f"served-{n}", size=40_000, content_disposition=disposition)
             for n, (disposition, _) in enumerate(DISPOSITIONS)]
    for n, blob in enumerate(blobs):
        daemon.drop(f"cd{n}.json", {"url": blob["url"], "sha256": blob["sha256"]})
    for n, (blob, (_, expected)) in enumerate(zip(blobs, DISPOSITIONS)):
        folder, result = daemon.result(f"cd{n}.json")
        assert folder == "done", result
        path = Path(result["items"][0]["path"])
        assert path.name == expected
        assert path.parent == (daemon.home / "downloads").resolve()
        assert sha(path) == blob["sha256"]


def test_signed_url_name_and_no_auth_on_storage(make_daemon, fake):
    fake.add_model(200, "Ünïcode LoRA", "LORA")
    info = fake.add_version(200, 2001, "v1", size=300_000, filename="ünïcode_lora_v1.safetensors")
    daemon = make_daemon(civitai_token="good-token")
    daemon.drop("lora.json", {"modelVersionId": 2001})
    folder, result = daemon.result("lora.json")
    assert folder == "done", result
    item = result["items"][0]
    # No sha256 in the manifest: taken from the API, so the file is verified; LORA → Lora/.
    assert item["verified"] is True and item["sha256"] == info["sha256"]
    assert Path(item["path"]) == (daemon.home / "downloads" / "Lora" / "ünïcode_lora_v1.safetensors").resolve()
    entry = [r for r in fake.requests_to("api", "/api/download/models/2001")]
    assert entry and all(r.headers.get("Authorization") == "Bearer good-token" for r in entry)
    assert storage_gets(fake) and all("Authorization" not in r.headers for r in storage_gets(fake))
    assert all("token=" not in r.path for r in fake.requests)


def test_longest_file_names_download_and_quarantine(make_daemon, fake):
    good = fake.add_blob("good.bin", size=300_000)
    bad = fake.add_blob("bad.bin", size=300_000)
    long_ascii = "x" * 251 + ".bin"        # 255 bytes: its ".part" sibling would be 260
    long_utf8 = "é" * 125 + ".bin"         # 254 bytes
    daemon = make_daemon(retries=1)
    fake.faults.corrupt_times = 0
    daemon.drop("long.json", {"items": [
        {"url": good["url"], "sha256": good["sha256"], "filename": long_ascii},
        {"url": good["url"] + "?again", "filename": long_utf8}]})
    folder, result = daemon.result("long.json")
    assert folder == "done", result
    assert sha(daemon.home / "downloads" / long_ascii) == good["sha256"]
    assert sha(daemon.home / "downloads" / long_utf8) == good["sha256"]
    fake.faults.corrupt_times = -1
    daemon.drop("longbad.json", {"url": bad["url"], "sha256": bad["sha256"], "filename": "y" * 251 + ".bin"})
    folder, result = daemon.result("longbad.json")
    assert folder == "failed"
    assert "SHA256 mismatch" in result["items"][0]["error"]
    assert len(list((daemon.home / "downloads" / ".quarantine").iterdir())) == 1
    assert not (daemon.home / "downloads" / ("y" * 251 + ".bin")).exists()


# -- never overwrite / no duplicate work ------------------------------------------


def test_same_sha_already_in_place_completes_without_download(make_daemon, fake):
    blob = fake.add_blob("model.bin", size=200_000)
    daemon = make_daemon(start=False)
    target = daemon.home / "downloads" / "model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(Path(blob["path"]).read_bytes())
    daemon.start()
    daemon.drop("again.json", {"url": blob["url"], "sha256": blob["sha256"], "filename": "model.bin"})
    folder, result = daemon.result("again.json")
    assert folder == "done", result
    assert result["items"][0]["sha256"] == blob["sha256"]
    assert Path(result["items"][0]["path"]) == target.resolve()
    # The daemon may have asked for headers, but never received the body a second time.
    served = [r for r in fake.requests_to("files") if r.method == "GET"]
    assert all(r.status != 200 or r.headers.get("Range") for r in served) or not served, served


def test_civitai_file_already_in_place_is_not_downloaded(make_daemon, fake):
    fake.add_model(400, "Present", "LORA")
    info = fake.add_version(400, 4001, "v1", size=200_000)
    daemon = make_daemon(start=False)
    target = daemon.home / "downloads" / "Lora" / info["filename"]
    target.parent.mkdir(parents=True)
    target.write_bytes(Path(info["path"]).read_bytes())
    daemon.start()
    daemon.drop("present.json", {"modelVersionId": 4001})
    folder, result = daemon.result("present.json")
    assert folder == "done", result
    assert Path(result["items"][0]["path"]) == target.resolve()
    assert result["items"][0]["verified"] is True
    assert storage_gets(fake) == []
    assert not fake.requests_to("api", "/api/download/")


def test_same_content_twice_in_one_manifest_is_linked(make_daemon, fake):
    blob = fake.add_blob("twin.bin", size=500_000)
    daemon = make_daemon()
    daemon.drop("twins.json", {"items": [
        {"url": blob["url"], "sha256": blob["sha256"], "subdir": "a"},
        {"url": blob["url"] + "?copy=1", "sha256": blob["sha256"], "subdir": "b", "filename": "copy.bin"}]})
    folder, result = daemon.result("twins.json")
    assert folder == "done", result
    first, second = (Path(item["path"]) for item in result["items"])
    assert first == (daemon.home / "downloads" / "a" / "twin.bin").resolve()
    assert second == (daemon.home / "downloads" / "b" / "copy.bin").resolve()
    assert sha(second) == blob["sha256"] and result["items"][1]["sha256"] == blob["sha256"]
    assert os.path.samefile(first, second)
    assert len([r for r in fake.requests_to("files") if r.method == "GET"]) == 1


def test_different_content_at_name_fails_and_keeps_existing(make_daemon, fake):
    blob = fake.add_blob("model.bin", size=200_000)
    daemon = make_daemon(start=False)
    target = daemon.home / "downloads" / "model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"precious user data")
    daemon.start()
    daemon.drop("conflict.json", {"url": blob["url"], "sha256": blob["sha256"], "filename": "model.bin"})
    folder, result = daemon.result("conflict.json")
    assert folder == "failed"
    item = result["items"][0]
    assert item["status"] == "failed"
    assert "already exists" in item["error"] and str(target.resolve()) in item["error"]
    assert target.read_bytes() == b"precious user data"
    assert not list(target.parent.glob("model.bin*.part"))


def test_different_content_without_expected_hash_fails_too(make_daemon, fake):
    blob = fake.add_blob("model.bin", size=200_000)
    daemon = make_daemon(start=False)
    target = daemon.home / "downloads" / "model.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"precious user data")
    daemon.start()
    daemon.drop("conflict.json", {"url": blob["url"], "filename": "model.bin"})
    folder, result = daemon.result("conflict.json")
    assert folder == "failed"
    assert "already exists" in result["items"][0]["error"]
    assert target.read_bytes() == b"precious user data"
    assert not list(target.parent.glob("model.bin*.part"))


def test_same_manifest_twice_downloads_once(make_daemon, fake):
    blob = fake.add_blob("twice.bin", size=2 * MB)
    fake.faults.rate = 4 * MB  # slow enough that the second manifest arrives while the first runs
    daemon = make_daemon()
    manifest = {"items": [{"url": blob["url"], "sha256": blob["sha256"]}]}
    daemon.drop("twice.json", manifest)
    wait_for(lambda: (daemon.home / "processing" / "twice.json").exists()
             or (daemon.home / "done" / "twice.json").exists(), 20, message="first manifest taken")
    daemon.drop("twice.json", manifest)
    wait_for(lambda: len(list((daemon.home / "done").glob("twice*.result.json"))) == 2, 60,
             message="both manifests in done/")
    results = [json.loads(p.read_text()) for p in (daemon.home / "done").glob("twice*.result.json")]
    assert sorted(r["status"] for r in results) == ["done", "done"]
    assert len(list((daemon.home / "done").glob("twice*.json"))) == 4  # two manifests, two results
    paths = {r["items"][0]["path"] for r in results}
    assert paths == {str((daemon.home / "downloads" / "twice.bin").resolve())}
    served = [r for r in fake.requests_to("files") if r.method == "GET" and r.status in (200, 206)]
    assert len(served) == 1, [(r.path, r.status, r.headers.get("Range")) for r in served]


def test_same_manifest_twice_after_completion_downloads_once(make_daemon, fake):
    blob = fake.add_blob("later.bin", size=300_000)
    daemon = make_daemon()
    manifest = {"url": blob["url"]}  # no hash: the URL decides it is the same file
    daemon.drop("later.json", manifest)
    assert daemon.result("later.json")[0] == "done"
    daemon.drop("later.json", manifest)
    wait_for(lambda: len(list((daemon.home / "done").glob("later*.result.json"))) == 2, 30,
             message="second manifest in done/")
    served = [r for r in fake.requests_to("files") if r.method == "GET" and r.status in (200, 206)]
    assert len(served) == 1


# -- scheduling -------------------------------------------------------------------


def test_priority_orders_the_queue(make_daemon, fake):
    blobs = {p: fake.add_blob(f"p{p}.bin", size=50_000) for p in (0, 5, 1, 9, 5)}
    blocker = fake.add_blob("blocker.bin", size=1 * MB)
    daemon = make_daemon(workers=1)
    # Keep the single worker busy so all the others queue up behind it.
    fake.faults.rate = 2 * MB
    daemon.drop("blocker.json", {"url": blocker["url"], "priority": 100})
    wait_for(lambda: any(r.path.startswith("/files/blocker") for r in fake.requests), 20, message="blocker started")
    items = [{"url": fake.add_blob(f"n{i}-{p}.bin", size=50_000)["url"], "priority": p}
             for i, p in enumerate([0, 5, 1, 9, 5, -3])]
    daemon.drop("prio.json", {"items": items})
    folder, result = daemon.result("prio.json", timeout=60)
    assert folder == "done", result
    order = [r.path.split("/files/")[1].split(".")[0] for r in fake.requests_to("files")
             if r.method == "GET" and not r.path.startswith("/files/blocker")]
    seen = list(dict.fromkeys(order))
    assert seen == ["n3-9", "n1-5", "n4-5", "n2-1", "n0-0", "n5--3"], seen
    assert blobs  # the unused blobs only vary the fake's storage


def test_small_files_in_a_row_reuse_one_connection(make_daemon, fake):
    """A body read to its end gives its connection back (keep-alive): a burst of small files costs no
    TCP handshake each. A body cut short (or an error answer) never leaves its connection for reuse."""
    blobs = [fake.add_blob(f"k{i}.bin", size=20_000 + i) for i in range(6)]
    daemon = make_daemon(workers=1)
    daemon.drop("keep.json", {"items": [{"url": b["url"], "sha256": b["sha256"]} for b in blobs]})
    folder, result = daemon.result("keep.json", timeout=60)
    assert folder == "done", result
    gets = [r for r in fake.requests_to("files") if r.method == "GET"]
    assert len(gets) == 6
    assert len({r.port for r in gets}) == 1, [r.port for r in gets]

    # A connection dropped mid-body is not reused: the retry opens a new one and the file verifies.
    cut = fake.add_blob("cut.bin", size=200_000)
    fake.faults.drop_after = 50_000
    daemon.drop("cut.json", {"url": cut["url"], "sha256": cut["sha256"]})
    folder, result = daemon.result("cut.json", timeout=60)
    assert folder == "done" and result["items"][0]["verified"] is True, result
    cut_gets = [r for r in fake.requests_to("files") if r.method == "GET" and r.path.startswith("/files/cut")]
    assert len(cut_gets) >= 2 and len({r.port for r in cut_gets}) == len(cut_gets)


def test_throttle_caps_the_rate(make_daemon, fake):
    blob = fake.add_blob("slow.bin", size=10 * MB)
    daemon = make_daemon(throttle="5MB")
    assert daemon.get("/api/status").json()["throttle"] == 5 * MB
    daemon.drop("slow.json", {"url": blob["url"], "sha256": blob["sha256"]})
    download_id = wait_for(lambda: daemon.get("/api/downloads").json()["items"], 20)[0]["id"]
    row = daemon.wait_state(download_id, "completed", timeout=60)
    assert row["duration"] >= 1.7, row
    assert daemon.result("slow.json")[0] == "done"


def test_throttle_is_shared_fairly(make_daemon, fake):
    """Two downloads under one cap progress at about the same rate (neither is starved)."""
    blobs = [fake.add_blob(f"fair{i}.bin", size=6 * MB) for i in range(2)]
    daemon = make_daemon(throttle="4MB", workers=2)
    daemon.drop("fair.json", {"items": [{"url": b["url"], "sha256": b["sha256"]} for b in blobs]})

    def both_running():
        active = daemon.get("/api/status").json()["active"]
        return len(active) == 2 and all(a["bytes"] > 0 for a in active) and active

    start = {a["id"]: a["bytes"] for a in wait_for(both_running, 20, message="two throttled downloads running")}

    def shares_after_4mb():  # a window of bytes, not of time: ~1 s at the cap, longer under load
        active = daemon.get("/api/status").json()["active"]
        grown = [a["bytes"] - start.get(a["id"], 0) for a in active]
        return len(grown) == 2 and sum(grown) >= 4 * MB and sorted(grown)

    shares = wait_for(shares_after_4mb, 30, message="4 MB more between the two downloads")
    assert shares[0] >= 0.6 * shares[1], shares
    assert daemon.result("fair.json", 60)[0] == "done"


def test_impossible_size_is_said_as_such_not_as_disk_full(make_daemon, fake):
    """An exabyte announced is a wrong link or server, not a full disk: freeing space would not help."""
    blob = fake.add_blob("huge.bin", size=10_000)
    fake.faults.wrong_length = 10**18  # advertises about an exabyte
    daemon = make_daemon(retries=1)
    daemon.drop("huge.json", {"url": blob["url"]})
    folder, result = daemon.result("huge.json")
    assert folder == "failed"
    error = result["items"][0]["error"]
    assert "announced" in error and "impossible size" in error, error
    assert "disk full" not in error and "free some space" not in error
    assert len([r for r in fake.requests_to("files") if r.method == "GET"]) == 1  # not retried
    assert not list((daemon.home / "downloads").glob("huge.bin*"))


# -- queue actions over the API ---------------------------------------------------


def _start_slow(daemon, fake, name="act.bin", size=4 * MB, rate=1 * MB):
    blob = fake.add_blob(name, size=size)
    fake.faults.rate = rate
    download_id = daemon.post("/api/download", {"url": blob["url"], "sha256": blob["sha256"]}).json()["id"]
    part = daemon.home / "downloads" / f"{name}.{download_id}.part"  # each download owns its part
    wait_for(lambda: part.exists() and part.stat().st_size > 200_000, 30, message="part growing")
    return blob, download_id, part


def test_pause_keeps_part_and_resume_uses_range(make_daemon, fake):
    daemon = make_daemon()
    blob, download_id, part = _start_slow(daemon, fake)
    response = daemon.post(f"/api/downloads/{download_id}/pause")
    assert response.status_code == 200, response.text
    daemon.wait_state(download_id, "paused")
    # Once the worker logged the pause it has let go of the file: the part must then stay put.
    wait_for(lambda: f"download {download_id} paused; part kept" in daemon.logs(), 10, message="worker let go")
    size = part.stat().st_size
    assert 0 < size < blob["size"]
    assert daemon.post(f"/api/downloads/{download_id}/resume").status_code == 200
    fake.faults.rate = None
    row = daemon.wait_state(download_id, "completed", timeout=60)
    assert row["sha256"] == blob["sha256"] and row["verified"] is True
    ranges = [r.headers.get("Range") for r in fake.requests_to("files") if r.method == "GET"]
    assert ranges[0] is None
    start = int(ranges[-1].split("=")[1].split("-")[0])
    assert start >= size > 0
    assert sha(daemon.home / "downloads" / "act.bin") == blob["sha256"]


def test_cancel_deletes_part_and_manifest_fails(make_daemon, fake):
    daemon = make_daemon()
    blob = fake.add_blob("cancel.bin", size=4 * MB)
    fake.faults.rate = 1 * MB
    daemon.drop("cancel.json", {"url": blob["url"]})
    download_id = wait_for(lambda: daemon.get("/api/downloads").json()["items"], 20)[0]["id"]
    part = daemon.home / "downloads" / f"cancel.bin.{download_id}.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 100_000, 30, message="part growing")
    assert daemon.post(f"/api/downloads/{download_id}/cancel").status_code == 200
    daemon.wait_state(download_id, "cancelled")
    folder, result = daemon.result("cancel.json")
    assert folder == "failed"
    assert result["status"] == "failed"
    assert result["items"][0]["status"] == "cancelled"
    wait_for(lambda: not part.exists(), 10, message="part removed")
    assert not (daemon.home / "downloads" / "cancel.bin").exists()
    # A cancelled download can be retried, and then completes.
    fake.faults.rate = None
    assert daemon.post(f"/api/downloads/{download_id}/retry").status_code == 200
    row = daemon.wait_state(download_id, "completed")
    assert row["sha256"] == blob["sha256"]


def test_cancel_paused_download_deletes_part(make_daemon, fake):
    daemon = make_daemon()
    blob = fake.add_blob("pc.bin", size=4 * MB)
    fake.faults.rate = 1 * MB
    daemon.drop("pc.json", {"url": blob["url"]})
    download_id = wait_for(lambda: daemon.get("/api/downloads").json()["items"], 20)[0]["id"]
    part = daemon.home / "downloads" / f"pc.bin.{download_id}.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 100_000, 30, message="part growing")
    assert daemon.post(f"/api/downloads/{download_id}/pause").status_code == 200
    daemon.wait_state(download_id, "paused")
    # The worker lets go of a paused download; only then is it cancelled.
    wait_for(lambda: not daemon.get("/api/status").json()["active"], 10, message="worker released it")
    wait_for(lambda: f"download {download_id} paused; part kept" in daemon.logs(), 10, message="worker let go")
    assert part.exists()
    assert daemon.post(f"/api/downloads/{download_id}/cancel").status_code == 200
    daemon.wait_state(download_id, "cancelled")
    wait_for(lambda: not part.exists(), 10, message="part of the paused download removed")
    folder, result = daemon.result("pc.json", timeout=20)
    assert folder == "failed" and result["items"][0]["status"] == "cancelled"


def test_cancel_queued_item_finishes_its_manifest(make_daemon, fake):
    blocker = fake.add_blob("blocker.bin", size=3 * MB)
    small = fake.add_blob("small.bin", size=10_000)
    daemon = make_daemon(workers=1)
    fake.faults.rate = 2 * MB
    blocker_id = daemon.post("/api/download", {"url": blocker["url"]}).json()["id"]
    daemon.wait_state(blocker_id, "downloading")
    daemon.drop("queued.json", {"items": [{"url": small["url"]}, {"url": small["url"], "filename": "copy.bin"}]})
    wait_for(lambda: daemon.get("/api/downloads").json()["total"] == 3, 20, message="manifest enqueued")
    first, second = sorted(d["id"] for d in daemon.get("/api/downloads").json()["items"] if d["id"] != blocker_id)
    assert daemon.download(first)["state"] == "queued"
    assert daemon.post(f"/api/downloads/{first}/cancel").status_code == 200
    assert daemon.post(f"/api/downloads/{second}/cancel").status_code == 200
    folder, result = daemon.result("queued.json", timeout=20)
    assert folder == "failed"
    assert [i["status"] for i in result["items"]] == ["cancelled", "cancelled"]
    assert not any(r.path.startswith("/files/small") for r in fake.requests)


def test_retry_failed_download(make_daemon, fake):
    daemon = make_daemon(retries=0)
    download_id = daemon.post("/api/download", {"url": f"{fake.base_url}/files/missing.bin"}).json()["id"]
    row = daemon.wait_state(download_id, "failed")
    assert "404" in row["error"]
    assert daemon.post(f"/api/downloads/{download_id}/resume").status_code == 409
    fake.add_blob("missing.bin", size=10_000)
    assert daemon.post(f"/api/downloads/{download_id}/retry").status_code == 200
    daemon.wait_state(download_id, "completed")
    assert daemon.post(f"/api/downloads/{download_id}/cancel").status_code == 409
    assert daemon.post("/api/downloads/99999/pause").status_code == 404


# -- logs -------------------------------------------------------------------------


def test_logs_record_work_and_failures(make_daemon, fake):
    ok = fake.add_blob("ok.bin", size=10_000)
    daemon = make_daemon(retries=0)
    daemon.drop("ok.json", {"url": ok["url"]})
    daemon.drop("bad.json", {"url": f"{fake.base_url}/files/nope.bin"})
    assert daemon.result("ok.json")[0] == "done"
    assert daemon.result("bad.json")[0] == "failed"
    logs = daemon.home / "logs"
    download_log = (logs / "download.log").read_text()
    error_log = wait_for(lambda: (logs / "error.log").read_text(), 10, message="error.log written")
    assert "ok.json" in download_log and "completed" in download_log
    assert "bad.json" in download_log  # everything goes to download.log, failures included
    assert "failed" in error_log and "404" in error_log
    stamped = [line for line in error_log.splitlines() if line[:4].isdigit()]
    assert stamped and all(" ERROR " in line for line in stamped)  # errors only
