"""Network faults, crashes and shutdowns against the real daemon process (SPEC §6)."""
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

from conftest import sha, wait_for

MB = 1_000_000


def gets(fake, host="files"):
    return [r for r in fake.requests_to(host) if r.method == "GET"]


def range_start(request):
    value = request.headers.get("Range")
    return int(value.split("=")[1].split("-")[0]) if value else 0


def only_id(daemon):
    return wait_for(lambda: daemon.get("/api/downloads").json()["items"], 20, message="a download")[0]["id"]


def test_dropped_connection_resumes_with_range(make_daemon, fake):
    blob = fake.add_blob("drop.bin", size=3 * MB)
    fake.faults.drop_after = 1 * MB
    fake.faults.drop_times = 2
    daemon = make_daemon()
    daemon.drop("drop.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("drop.json")
    assert folder == "done", result
    assert sha(result["items"][0]["path"]) == blob["sha256"]
    requests = gets(fake)
    assert len(requests) == 3
    assert [range_start(r) for r in requests] == [0, 1 * MB, 2 * MB]
    assert [r.status for r in requests] == [200, 206, 206]
    assert daemon.download(result["items"][0]["id"])["retries"] == 2


def test_5xx_then_ok(make_daemon, fake):
    blob = fake.add_blob("busy.bin", size=100_000)
    fake.faults.status_5xx = 2
    daemon = make_daemon()
    daemon.drop("busy.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("busy.json")
    assert folder == "done", result
    assert [r.status for r in gets(fake)] == [503, 503, 200]


def test_429_retry_after_is_honoured(make_daemon, fake):
    blob = fake.add_blob("limited.bin", size=100_000)
    fake.faults.status_429 = 1
    fake.faults.retry_after = 2
    daemon = make_daemon()
    daemon.drop("limited.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("limited.json")
    assert folder == "done", result
    first, second = gets(fake)
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 1.95  # backoff is 0.05 s: only Retry-After explains the wait


def test_server_ignoring_range_restarts_from_zero(make_daemon, fake):
    blob = fake.add_blob("norange.bin", size=2 * MB)
    fake.faults.drop_after = 1 * MB
    fake.faults.ignore_range = True
    daemon = make_daemon()
    daemon.drop("norange.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("norange.json")
    assert folder == "done", result
    path = Path(result["items"][0]["path"])
    assert path.stat().st_size == blob["size"] and sha(path) == blob["sha256"]
    first, second = gets(fake)
    assert second.headers.get("Range") == f"bytes={1 * MB}-" and second.status == 200


def test_corrupt_once_is_retried(make_daemon, fake):
    blob = fake.add_blob("flip.bin", size=500_000)
    fake.faults.corrupt_times = 1
    daemon = make_daemon()
    daemon.drop("flip.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("flip.json")
    assert folder == "done", result
    requests = gets(fake)
    assert len(requests) == 2
    assert "Range" not in requests[1].headers  # a mismatch restarts from zero
    assert sha(result["items"][0]["path"]) == blob["sha256"]
    metrics = daemon.get("/api/metrics").json()
    assert metrics["hash_mismatches"] == 1


def test_always_corrupt_is_quarantined(make_daemon, fake):
    blob = fake.add_blob("rotten.bin", size=300_000)
    fake.faults.corrupt_times = -1
    daemon = make_daemon(retries=2)
    daemon.drop("rotten.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("rotten.json")
    assert folder == "failed"
    item = result["items"][0]
    assert item["status"] == "failed"
    assert len(gets(fake)) == 3
    downloads = daemon.home / "downloads"
    assert not (downloads / "rotten.bin").exists()
    assert not list(downloads.glob("rotten.bin*.part"))
    quarantined = list((downloads / ".quarantine").iterdir())
    assert len(quarantined) == 1
    actual = sha(quarantined[0])
    assert actual != blob["sha256"]
    assert blob["sha256"] in item["error"] and actual in item["error"]
    assert item["sha256"] == actual and item["verified"] is False
    row = daemon.download(item["id"])
    assert row["state"] == "failed" and row["expected_sha256"] == blob["sha256"]


def test_stall_times_out_and_resumes(make_daemon, fake):
    blob = fake.add_blob("stall.bin", size=1 * MB)
    fake.faults.stall_after = 400_000
    fake.faults.stall_seconds = 20
    daemon = make_daemon(timeout=2)
    daemon.drop("stall.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("stall.json", timeout=30)
    assert folder == "done", result
    first, second = gets(fake)
    assert range_start(second) == 400_000
    assert 1.5 <= second.time - first.time < 10


def test_dripping_server_counts_as_timeout(make_daemon, fake):
    blob = fake.add_blob("drip.bin", size=200_000)
    fake.faults.rate = 300  # bytes/s: under 1 KiB in each 2 s window... once the window is full
    daemon = make_daemon(timeout=2, retries=1)
    download_id = daemon.post("/api/download", {"url": blob["url"]}).json()["id"]
    wait_for(lambda: len(gets(fake)) >= 2, 20, message="a retry after the drip")
    fake.faults.rate = None
    row = daemon.wait_state(download_id, ("completed", "failed"), timeout=30)
    assert row["state"] == "completed", row
    assert range_start(gets(fake)[1]) > 0


def test_expired_storage_url_asks_civitai_again(make_daemon, fake):
    fake.add_model(300, "Expiring", "Checkpoint")
    info = fake.add_version(300, 3001, "v1", size=3 * MB)
    fake.faults.rate = 2 * MB
    fake.faults.drop_after = 1 * MB
    fake.faults.expire_seconds = 0.8  # the first signed URL is dead by the time the resume comes
    daemon = make_daemon()
    daemon.drop("expire.json", {"modelVersionId": 3001})
    folder, result = daemon.result("expire.json")
    assert folder == "done", result
    assert sha(result["items"][0]["path"]) == info["sha256"]
    entries = [r for r in fake.requests_to("api", "/api/download/models/3001")]
    storage = gets(fake, "storage")
    assert len(entries) >= 2, "the resume must ask the original URL again"
    signatures = {r.path.split("X-Amz-Signature=")[1] for r in storage}
    assert len(signatures) >= 2
    assert any(range_start(r) > 0 and r.status == 206 for r in storage)


def test_kill_9_then_restart_resumes(make_daemon, fake):
    size = 100 * MB
    blob = fake.add_blob("crash.bin", size=size)
    fake.faults.rate = 20 * MB
    daemon = make_daemon()
    daemon.drop("crash.json", {"url": blob["url"], "sha256": blob["sha256"]})
    part = daemon.home / "downloads" / f"crash.bin.{only_id(daemon)}.part"
    wait_for(lambda: part.exists() and part.stat().st_size >= size // 2, 60, message="half the file")
    daemon.kill()
    kept = part.stat().st_size
    assert kept < size
    assert (daemon.home / "processing" / "crash.json").exists()
    fake.faults.rate = None
    before = len(gets(fake))
    daemon.start()
    folder, result = daemon.result("crash.json", timeout=90)
    assert folder == "done", result
    assert sha(result["items"][0]["path"]) == blob["sha256"]
    after = gets(fake)[before:]
    refetched = sum(size - range_start(r) for r in after if r.status in (200, 206))
    assert refetched <= size - kept
    assert refetched < size * 0.6  # well under half plus the 10 % allowance
    assert kept - range_start(after[-1]) < size * 0.10


def test_sigterm_keeps_part_and_restart_resumes(make_daemon, fake):
    size = 20 * MB
    blob = fake.add_blob("term.bin", size=size)
    fake.faults.rate = 5 * MB
    daemon = make_daemon()
    port = daemon.port
    daemon.drop("term.json", {"url": blob["url"], "sha256": blob["sha256"]})
    download_id = only_id(daemon)
    part = daemon.home / "downloads" / f"term.bin.{download_id}.part"
    wait_for(lambda: part.exists() and part.stat().st_size >= 3 * MB, 30, message="part growing")
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=12) == 0
    assert time.monotonic() - started < 10
    kept = part.stat().st_size
    assert 0 < kept < size
    assert (daemon.home / "processing" / "term.json").exists()
    with sqlite3.connect(daemon.home / "completed.db") as conn:
        (state,) = conn.execute("SELECT state FROM downloads WHERE id = ?", (download_id,)).fetchone()
    assert state == "queued"
    assert f"active_port: {port}" in daemon.config_path.read_text()

    fake.faults.rate = None
    before = len(gets(fake))
    daemon.start()
    assert daemon.port == port
    folder, result = daemon.result("term.json")
    assert folder == "done", result
    assert sha(result["items"][0]["path"]) == blob["sha256"]
    after = gets(fake)[before:]
    assert len(after) == 1 and range_start(after[0]) == kept and after[0].status == 206
    assert json.loads((daemon.home / "done" / "term.result.json").read_text())["items"][0]["bytes"] == size


def test_sigterm_during_a_stalled_read_still_records_queued(make_daemon, fake):
    blob = fake.add_blob("hang.bin", size=2 * MB)
    fake.faults.stall_after = 500_000
    fake.faults.stall_seconds = 60
    daemon = make_daemon(timeout=30)
    download_id = daemon.post("/api/download", {"url": blob["url"], "sha256": blob["sha256"]}).json()["id"]
    part = daemon.home / "downloads" / f"hang.bin.{download_id}.part"
    wait_for(lambda: part.exists() and part.stat().st_size >= 500_000, 20, message="stalled at 500 kB")
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=12) == 0
    assert time.monotonic() - started < 10
    with sqlite3.connect(daemon.home / "completed.db") as conn:
        (state,) = conn.execute("SELECT state FROM downloads WHERE id = ?", (download_id,)).fetchone()
    assert state == "queued"
    assert part.stat().st_size == 500_000
    fake.faults.stall_after = None
    daemon.start()
    row = daemon.wait_state(download_id, "completed", timeout=30)
    assert row["sha256"] == blob["sha256"]
    assert range_start(gets(fake)[-1]) == 500_000


def test_complete_part_answered_416_is_published(make_daemon, fake):
    blob = fake.add_blob("whole.bin", size=300_000)
    daemon = make_daemon(start=False)
    part = daemon.home / "downloads" / "whole.bin.part"  # an old-style part: adopted by the download of that name
    part.parent.mkdir(parents=True)
    part.write_bytes(Path(blob["path"]).read_bytes())
    daemon.start()
    daemon.drop("whole.json", {"url": blob["url"], "sha256": blob["sha256"], "filename": "whole.bin"})
    folder, result = daemon.result("whole.json")
    assert folder == "done", result
    [request] = gets(fake)
    assert request.status == 416 and range_start(request) == 300_000
    assert sha(daemon.home / "downloads" / "whole.bin") == blob["sha256"]
    assert not part.exists() and not list(part.parent.glob("whole.bin*.part"))


def test_crash_after_linking_leaves_no_part_behind(make_daemon, fake):
    # kill -9 between linking the verified part into place and removing the part.
    blob = fake.add_blob("linked.bin", size=200_000)
    daemon = make_daemon(start=False)
    downloads = daemon.home / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "linked.bin").write_bytes(Path(blob["path"]).read_bytes())
    os.link(downloads / "linked.bin", downloads / "linked.bin.part")
    daemon.start()
    daemon.drop("linked.json", {"url": blob["url"], "sha256": blob["sha256"], "filename": "linked.bin"})
    assert daemon.result("linked.json")[0] == "done"
    assert sorted(p.name for p in downloads.iterdir()) == ["linked.bin"]
    assert gets(fake) == []


def test_stale_parts_restart_from_zero(make_daemon, fake):
    longer = fake.add_blob("longer.bin", size=100_000)
    other = fake.add_blob("other.bin", size=300_000)
    daemon = make_daemon(start=False)
    downloads = daemon.home / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "longer.bin.part").write_bytes(b"x" * 150_000)  # longer than the file: 416
    (downloads / "other.bin.part").write_bytes(b"y" * 100_000)   # wrong bytes: hash mismatch
    daemon.start()
    daemon.drop("stale.json", {"items": [
        {"url": longer["url"], "sha256": longer["sha256"], "filename": "longer.bin"},
        {"url": other["url"], "sha256": other["sha256"], "filename": "other.bin"}]})
    folder, result = daemon.result("stale.json")
    assert folder == "done", result
    assert sha(downloads / "longer.bin") == longer["sha256"]
    assert sha(downloads / "other.bin") == other["sha256"]
    by_name = {}
    for request in gets(fake):
        by_name.setdefault(request.path, []).append((request.status, request.headers.get("Range")))
    assert by_name["/files/longer.bin"] == [(416, "bytes=150000-"), (200, None)]
    assert by_name["/files/other.bin"] == [(206, "bytes=100000-"), (200, None)]


def test_pause_during_a_stalled_read_takes_effect_at_once(make_daemon, fake):
    blob = fake.add_blob("frozen.bin", size=2 * MB)
    fake.faults.stall_after = 600_000
    fake.faults.stall_seconds = 60
    small = fake.add_blob("next.bin", size=10_000)
    daemon = make_daemon(timeout=30, workers=1)
    download_id = daemon.post("/api/download", {"url": blob["url"], "sha256": blob["sha256"]}).json()["id"]
    part = daemon.home / "downloads" / f"frozen.bin.{download_id}.part"
    wait_for(lambda: part.exists() and part.stat().st_size >= 600_000, 20, message="stalled")
    next_id = daemon.post("/api/download", {"url": small["url"]}).json()["id"]
    assert daemon.post(f"/api/downloads/{download_id}/pause").status_code == 200
    # The only worker is free again long before the 30 s read timeout.
    daemon.wait_state(next_id, "completed", timeout=8)
    assert daemon.download(download_id)["state"] == "paused"
    assert part.stat().st_size == 600_000
    fake.faults.stall_after = None
    assert daemon.post(f"/api/downloads/{download_id}/resume").status_code == 200
    row = daemon.wait_state(download_id, "completed", timeout=30)
    assert row["sha256"] == blob["sha256"]
    assert range_start(gets(fake)[-1]) == 600_000
