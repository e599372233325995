"""Reliability: crash loops, a full disk, an unusable database, concurrent writers.

Every test runs the real daemon process against the local fake Civitai and
checks the end state on disk and in the SQLite file (opened read-only after
the daemon stopped), not only what the API says.
"""
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import sha, wait_for

MB = 1_000_000


def files_under(folder):
    return sorted(p for p in Path(folder).rglob("*") if p.is_file())


def model_files(folder):
    """Downloaded files, leaving out sidecars."""
    return [p for p in files_under(folder)
            if not p.name.endswith((".civitai.info", ".preview.png", ".preview.jpeg", ".preview.jpg"))]


def read_db(path):
    """Rows of the downloads and manifests tables, read-only (the daemon must be stopped)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        downloads = [dict(r) for r in conn.execute("SELECT * FROM downloads ORDER BY id")]
        manifests = [dict(r) for r in conn.execute("SELECT * FROM manifests ORDER BY id")]
    finally:
        conn.close()
    return downloads, manifests


# -- crash loops ---------------------------------------------------------------

CRASH_SIZE = 24 * MB
CRASH_RATE = 5 * MB  # bytes/s per response: the three files take ~10 s with two workers


def _crash_setup(fake):
    fake.add_model(700, "Crash Loop", "Checkpoint")
    infos = {vid: fake.add_version(700, vid, f"v{vid}", size=CRASH_SIZE) for vid in (701, 702, 703)}
    fake.faults.rate = CRASH_RATE
    return infos


def _crash_loop(make_daemon, fake, how, seed):
    rng = random.Random(seed)
    infos = _crash_setup(fake)
    daemon = make_daemon(workers=2, timeout=5, sidecars=False)
    daemon.drop("crash.json", {"items": [{"modelVersionId": vid} for vid in infos]})
    stops = []
    mid_download = 0  # kills that hit a download in flight (a .part on disk)
    for round_number in range(10):
        time.sleep(rng.uniform(0.4, 1.4))
        mid_download += any(p.name.endswith(".part") for p in files_under(daemon.home / "downloads"))
        if how == "kill":
            daemon.kill()
        else:
            started = time.monotonic()
            code = daemon.stop(signal.SIGTERM, timeout=15)
            took = time.monotonic() - started
            stops.append(round(took, 2))
            assert code == 0, f"round {round_number}: SIGTERM exit code {code}\n{daemon.read_stderr()[-2000:]}"
            assert took < 10, f"round {round_number}: SIGTERM took {took:.1f} s"
        daemon.start()
    folder, result = daemon.result("crash.json", timeout=90)
    assert daemon.stop() == 0
    print(f"{how}: {mid_download} of 10 stops hit a download in flight")
    assert mid_download >= 5
    assert folder == "done", result
    assert [item["status"] for item in result["items"]] == ["completed"] * 3, result
    # Every file verified, once, under its final name.
    downloads = daemon.home / "downloads"
    found = model_files(downloads)
    assert len(found) == 3, found
    assert not [p for p in files_under(downloads) if p.name.endswith(".part")]
    assert not (downloads / ".quarantine").exists() or not files_under(downloads / ".quarantine")
    expected = {info["sha256"]: info["filename"] for info in infos.values()}
    assert {sha(p): p.name for p in found} == expected
    for item in result["items"]:
        assert item["verified"] is True and item["bytes"] == CRASH_SIZE
        assert Path(item["path"]).is_file() and item["sha256"] in expected
    # The database: exactly one completed row per version, one manifest record, done.
    rows, manifests = read_db(daemon.home / "completed.db")
    assert sorted(r["version_id"] for r in rows) == [701, 702, 703], rows
    assert all(r["state"] == "completed" and r["verified"] for r in rows), rows
    assert len({r["path"] for r in rows}) == 3
    assert [(m["name"], m["status"]) for m in manifests] == [("crash.json", "done")], manifests
    assert not list((daemon.home / "processing").iterdir())
    # Resume, not restart: the bytes served stay close to the bytes needed.
    fresh = [r for r in fake.requests_to("storage") if "Range" not in r.headers]
    assert len(fresh) <= 3 + 2, f"{len(fresh)} downloads restarted from byte 0"
    return stops


def test_crash_loop_sigkill(make_daemon, fake):
    """SIGKILL at ten random moments during three downloads: nothing lost, nothing doubled."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print(f"CRASH_SEED={seed}")
    _crash_loop(make_daemon, fake, "kill", seed)


def test_crash_loop_sigterm(make_daemon, fake):
    """SIGTERM at ten random moments: exit 0 within 10 s each time, then the same end state."""
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    print(f"CRASH_SEED={seed}")
    stops = _crash_loop(make_daemon, fake, "term", seed)
    print("SIGTERM stop times (s):", stops)


# -- disk full -------------------------------------------------------------------

def _mount_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return done.returncode == 0


def _can_mount(tmp_path):
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    probe = tmp_path / "probe"
    if not _mount_tmpfs(probe, "1m"):
        return False
    subprocess.run(["umount", str(probe)], check=False)
    return True


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs as download_dir (real ENOSPC); grow() frees space by remounting it larger."""
    if not _can_mount(tmp_path):
        pytest.skip("mounting a tmpfs needs root; test_disk_full_injected covers ENOSPC without it")
    home = tmp_path / "home"
    downloads = home / "downloads"
    assert _mount_tmpfs(downloads, "24m")

    class Disk:
        path = downloads

        @staticmethod
        def grow(size="96m"):
            subprocess.run(["mount", "-o", f"remount,size={size}", str(downloads)], check=True)

    yield home, Disk
    subprocess.run(["umount", "-l", str(downloads)], check=False)


SIZE_TEXT = re.compile(r"\d+(\.\d+)? (B|KB|MB|GB)")


@pytest.mark.parametrize("known_size", [True, False], ids=["size-known", "no-content-length"])
def test_disk_full_tmpfs(make_daemon, fake, small_disk, known_size):
    """A real ENOSPC on a small tmpfs: a clear failure, no final file, still serving, retry completes."""
    home, disk = small_disk
    big = fake.add_blob("big.bin", size=30 * MB)
    small = fake.add_blob("small.bin", size=100_000)
    fake.faults.no_content_length = not known_size
    daemon = make_daemon(home=home, workers=1)
    response = daemon.post("/api/download", {"url": big["url"], "sha256": big["sha256"], "filename": "big.bin"})
    download_id = response.json()["id"]
    failed = daemon.wait_state(download_id, "failed", timeout=60)
    assert "disk full" in failed["error"], failed
    assert SIZE_TEXT.search(failed["error"]), failed["error"]
    assert not (disk.path / "big.bin").exists()
    # The daemon keeps serving: health, the API, and no stuck worker (after freeing a little room).
    assert daemon.get("/healthz").json() == {"ok": True}
    assert daemon.get("/api/status").status_code == 200
    for part in disk.path.glob("*.part"):
        part.unlink()  # the user frees space
    disk.grow()
    other = daemon.post("/api/download", {"url": small["url"], "sha256": small["sha256"]}).json()["id"]
    assert daemon.wait_state(other, "completed", timeout=30)["verified"]
    retried = daemon.post(f"/api/downloads/{download_id}/retry")
    assert retried.status_code == 200, retried.text
    done = daemon.wait_state(download_id, "completed", timeout=60)
    assert done["verified"] and sha(disk.path / "big.bin") == big["sha256"]
    assert not list(disk.path.glob("*.part"))


def test_disk_full_keeps_part_for_resume(make_daemon, fake, small_disk):
    """ENOSPC mid-write keeps the hashed part; retry after growing the disk resumes with Range."""
    home, disk = small_disk
    big = fake.add_blob("resume.bin", size=30 * MB)
    fake.faults.no_content_length = True  # no size up front: the write itself hits ENOSPC
    daemon = make_daemon(home=home, workers=1)
    download_id = daemon.post("/api/download", {"url": big["url"], "sha256": big["sha256"]}).json()["id"]
    failed = daemon.wait_state(download_id, "failed", timeout=60)
    assert "disk full" in failed["error"]
    parts = list(disk.path.glob("*.part"))
    assert parts and parts[0].stat().st_size > 10 * MB
    assert not (disk.path / "resume.bin").exists()
    fake.clear_requests()
    disk.grow()
    assert daemon.post(f"/api/downloads/{download_id}/retry").status_code == 200
    done = daemon.wait_state(download_id, "completed", timeout=60)
    assert done["verified"] and sha(disk.path / "resume.bin") == big["sha256"]
    assert any("Range" in r.headers for r in fake.requests_to("files")), "the retry did not resume"


@pytest.mark.parametrize("size", [3 * MB, 600 << 10], ids=["pipelined", "inline"])  # inline: a body <= one buffer
def test_disk_full_injected(tmp_path, fake, monkeypatch, size):
    """Injected ENOSPC (no tmpfs needed): the fetcher raises DiskFull naming the space, no final file."""
    import errno
    import threading

    from daemon import diskio
    from daemon import fetch as fetch_mod
    from daemon.errors import DiskFull
    from daemon.http import civitai_origins

    blob = fake.add_blob("inj.bin", size=size)
    limit = size // 3

    class Settings:
        timeout = 5
        retries = 1
        backoff = 0.01
        backoff_max = 0.01
        download_dir = tmp_path
        civitai_token = None
        connections = 4
        max_connections_per_host = 4
        segment_min = 64 << 20

    real_pwrite = diskio.pwrite
    written = [0]

    def full_pwrite(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part") and written[0] + len(data) > limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(diskio, "pwrite", full_pwrite)
    fetcher = fetch_mod.Fetcher(Settings, fetch_mod.Throttle(0), civitai_origins(fake.base_url))
    job = fetch_mod.Job(download_id=1, url=blob["url"], folder=tmp_path / "out", filename="inj.bin",
                        expected_sha256=blob["sha256"], stop=threading.Event())
    with pytest.raises(DiskFull) as caught:
        fetcher.fetch(job)
    assert "disk full" in str(caught.value) and SIZE_TEXT.search(str(caught.value))
    assert not (tmp_path / "out" / "inj.bin").exists()
    part = tmp_path / "out" / "inj.bin.1.part"  # download 1 owns it
    assert part.stat().st_size <= limit  # truncated to what was hashed: a clean resume point
    monkeypatch.undo()
    result = fetcher.fetch(fetch_mod.Job(download_id=1, url=blob["url"], folder=tmp_path / "out",
                                         filename="inj.bin", expected_sha256=blob["sha256"]))
    assert result.verified and sha(result.path) == blob["sha256"]


# -- the database ------------------------------------------------------------------

def _start_expecting_exit(daemon, timeout=30):
    daemon.write_config()
    daemon.start(wait=False)
    try:
        code = daemon.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait()
        raise AssertionError(f"daemon kept running; stderr: {daemon.read_stderr()[-2000:]}")
    daemon.proc.stdout.close()
    return code, daemon.read_stderr()


def test_locked_database_exits_2(make_daemon):
    """Another process holds an exclusive lock: a clear message and exit 2, no second queue."""
    first = make_daemon()
    assert first.stop() == 0
    db_path = first.home / "completed.db"
    holder = sqlite3.connect(db_path, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        code, stderr = _start_expecting_exit(first)
        took = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert code == 2, stderr
    assert "locked" in stderr and str(db_path) in stderr, stderr
    assert "Traceback" not in stderr
    assert took < 20


@pytest.mark.parametrize("kind", ["garbage", "bad-header"])
def test_corrupt_database_exits_2(make_daemon, kind):
    """A corrupt database file: a clear message and exit 2; the file is left exactly as it was."""
    daemon = make_daemon(start=False)
    db_path = daemon.home / "completed.db"
    if kind == "garbage":
        content = random.Random(7).randbytes(64 * 1024)
    else:  # looks like SQLite at first glance, but the pages are nonsense
        content = b"SQLite format 3\x00" + random.Random(8).randbytes(64 * 1024 - 16)
    db_path.write_bytes(content)
    code, stderr = _start_expecting_exit(daemon)
    assert code == 2, stderr
    assert str(db_path) in stderr and "Traceback" not in stderr, stderr
    assert db_path.read_bytes() == content
    assert not (daemon.home / "completed.db-wal").exists() or not (daemon.home / "completed.db-wal").stat().st_size


def test_concurrent_writes_under_load(make_daemon, fake):
    """Four workers, many small files, API readers at the same time: no 'database is locked'."""
    items = []
    for number in range(120):
        blob = fake.add_blob(f"small-{number}.bin", size=20_000 + number)
        items.append({"url": blob["url"], "sha256": blob["sha256"]})
    daemon = make_daemon(workers=4, log_level="DEBUG")
    for chunk in range(4):
        daemon.drop(f"load-{chunk}.json", {"items": items[chunk * 30:(chunk + 1) * 30]})
    slowest = 0.0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        started = time.monotonic()
        counts = daemon.get("/api/status").json()["counts"]
        daemon.get("/api/downloads?limit=200")
        slowest = max(slowest, time.monotonic() - started)
        if counts["completed"] + counts["failed"] >= 120:
            break
    for chunk in range(4):
        folder, result = daemon.result(f"load-{chunk}.json", timeout=30)
        assert folder == "done", result
    assert daemon.stop() == 0
    text = daemon.logs() + (daemon.home / "logs" / "error.log").read_text()
    assert "database is locked" not in text
    assert "Traceback" not in text
    rows, _ = read_db(daemon.home / "completed.db")
    assert len(rows) == 120 and all(r["state"] == "completed" for r in rows)
    print(f"slowest status+list round trip under load: {slowest:.3f} s")


def test_filing_a_manifest_survives_a_full_and_foreign_done_folder(make_daemon, fake, tmp_path):
    """Issue 11 item 13: done/ on another file system (EXDEV) and full (ENOSPC): the manifest waits in
    processing/, is filed once space is back (copy + unlink across file systems), and no temp file stays."""
    if not _can_mount(tmp_path):
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root (CI runs as root)")
        pytest.skip("mounting a tmpfs needs root")
    done = tmp_path / "done-fs"
    assert _mount_tmpfs(done, "1m")
    try:
        filler = done / "filler"
        with open(filler, "wb") as handle:  # fill it to the last byte
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        blob = fake.add_blob("filed.bin", size=5000)
        daemon = make_daemon(done_dir=str(done))
        daemon.drop("filed.json", {"url": blob["url"], "sha256": blob["sha256"]})
        wait_for(lambda: "cannot file it" in daemon.logs(), 30, message="the failed filing logged")
        assert (daemon.home / "processing" / "filed.json").exists()
        filler.unlink()
        wait_for(lambda: (done / "filed.result.json").exists() and (done / "filed.json").exists(), 30,
                 message="filed once space is back")
        assert not (daemon.home / "processing" / "filed.json").exists()
        assert not [p.name for p in done.iterdir() if p.name.endswith(".tmp")]
        assert json.loads((done / "filed.result.json").read_text())["status"] == "done"
        assert daemon.get("/api/manifests").json()["items"][0]["status"] == "done"
    finally:
        subprocess.run(["umount", "-l", str(done)], check=False)
