"""The library across time, against the real daemon (SPEC §10): the rescan before the scheduled update check,
scan progress on the WebSocket at most 4 a second with the done event always last, unknown files identified
later by what appears meanwhile; and completed downloads joining the library (in process, on both engines)."""
import collections
import datetime
import hashlib
import json
import os

import requests

from conftest import wait_for
from daemon.manifest import parse_manifest
from test_library import DETAILS, IDS, content, entries, put, scan
from test_ws import Listener, server_time


def test_the_scheduled_check_rescans_first_and_an_on_demand_check_does_not(fake, make_daemon, tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    old = content("sched-old")
    fake.add_model(1, "Old Lora", "LORA")
    fake.add_version(1, 10, "v1", data=old, base_model="SD 1.5")
    fake.add_version(1, 11, "v2", data=content("sched-new"), base_model="SD 1.5")
    # The daily check's time, a few seconds from now ("HH:MM:SS"; local time, as the daemon reads it).
    at = datetime.datetime.now() + datetime.timedelta(seconds=25)
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False, "rescan": "daily"},
                    update_check={"enabled": True, "time": at.strftime("%H:%M:%S"), "auto_download": False})
    assert "daily update check at " + at.strftime("%H:%M:%S") in d.logs()
    # The user drops in a model the daemon has never seen.
    put(root / "Lora" / "old.safetensors", old)

    # On demand: no rescan first, so the new file is not covered yet.
    summary = requests.post(d.url + "/api/updates/check", timeout=60).json()
    assert summary["updates"] == [] and summary["checked"] == 0, summary
    assert d.get("/api/library/scan").json() == {"state": "idle"}
    assert datetime.datetime.now() < at, "the daemon started too slowly for this test's schedule"

    # The scheduled check: the rescan adopts the file, then the check finds its newer version.
    updates = wait_for(lambda: d.get("/api/updates").json()["items"], 90, message="the scheduled update check")
    assert [(u["modelId"], u["previous_version_id"], u["modelVersionId"]) for u in updates] == [(1, 10, 11)]
    last = d.get("/api/library/scan").json()
    assert (last["state"], last["new"], last["identified"]) == ("done", 1, 1), last
    assert last["started_at"] >= at.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")[:19]
    assert last["finished_at"] <= updates[0]["detected_at"]


def test_scan_progress_is_at_most_four_a_second_and_the_done_event_always_arrives(fake, make_daemon, tmp_path):
    root = tmp_path / "models"
    # Sparse files (no disk used) hashed by one thread keep the scan busy for seconds, with a progress
    # report every 4 MiB read; many small files add one report per file.
    for i in range(3):
        (root / "big").mkdir(parents=True, exist_ok=True)
        with open(root / "big" / f"huge{i}.safetensors", "wb") as handle:
            handle.truncate(3 << 30)
    for i in range(300):
        put(root / "small" / f"m{i:03d}.safetensors", content(f"progress-{i}"))
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False, "hash_threads": 1})
    listener = Listener(d, until=lambda event: event["event"] == "library.scan.done")
    try:
        scan_id = d.post("/api/library/scan").json()["scan"]
        assert listener.done.wait(300) and listener.error is None, listener.error
    finally:
        listener.close()

    done = listener.events[-1]
    assert done["event"] == "library.scan.done" and done["data"]["id"] == scan_id, done
    assert (done["data"]["state"], done["data"]["files"], done["data"]["files_done"]) == ("done", 303, 303)
    assert done["data"] == d.get("/api/library/scan").json()
    progress = [server_time(e) for e in listener.events if e["event"] == "library.scan.progress"]
    assert all(e["data"]["id"] == scan_id for e in listener.events if e["event"] == "library.scan.progress")
    span = progress[-1] - progress[0]
    assert span >= 2.0, f"the scan reported for only {span:.2f} s: too short to count per second"
    assert len(progress) >= 2 * span, (len(progress), span)  # progress kept coming all along
    per_second = collections.Counter(int(t) for t in progress)
    assert max(per_second.values()) <= 4, per_second
    # Any five in a row span a second (server times are in ms, hence the 2 ms of slack).
    assert min(b - a for a, b in zip(progress, progress[4:])) >= 0.998
    assert server_time(done) >= progress[-1]


def test_completed_downloads_join_the_library_on_both_engines(core, fake):
    from daemon.library import store
    from daemon.library.adopt import Adopter
    from daemon.models import LibraryEntry, db
    parts = core()
    adopter = Adopter(parts.settings, window=0.5)
    parts.bus.subscribe(adopter.on_event)
    fake.add_model(5, "Adopted Model", "LORA")
    fake.add_version(5, 50, "v1", size=20_000, base_model="Pony")
    blobs = [fake.add_blob(f"plain{i}.bin", size=1000 + i) for i in range(3)]
    ids = parts.queue.enqueue(parse_manifest(json.dumps({"items": [{"modelVersionId": 50}] + [
        {"url": b["url"], "sha256": b["sha256"]} for b in blobs]}).encode()))
    assert parts.pool.run_until_idle() == 4
    adopter.stop()  # adopts what is queued, then ends
    with db.connection_context():
        by_path = {row.path: row for row in LibraryEntry.select()}
    downloads = {i: parts.queue.get(i) for i in ids}
    assert sorted(by_path) == sorted(d.path for d in downloads.values())
    rows = {i: by_path[d.path] for i, d in downloads.items()}
    for download_id, row in rows.items():
        d = downloads[download_id]
        info = os.stat(d.path)
        assert (row.path, row.sha256, row.size, row.inode, row.mtime_ns, row.missing) == (
            d.path, d.sha256, info.st_size, info.st_ino, info.st_mtime_ns, False)
        assert row.root == str(parts.settings.download_dir)
    civitai = rows[ids[0]]
    assert (civitai.source, civitai.model_id, civitai.version_id, civitai.model_name, civitai.model_type,
            civitai.base_model) == ("downloaded", 5, 50, "Adopted Model", "LORA", "Pony")
    assert json.loads(civitai.civitai_info)["id"] == 50
    assert civitai.download_id == ids[0]
    assert {(rows[i].source, rows[i].version_id) for i in ids[1:]} == {("unknown", None)}

    # Adopting again updates the entry at that path in place: same id, first_seen kept.
    old = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    with db.connection_context():
        LibraryEntry.update(source="unknown", model_id=None, version_id=None, first_seen=old).where(
            LibraryEntry.id == civitai.id).execute()
    adopter.adopt([ids[0], 99999])  # an unknown id is passed over
    with db.connection_context():
        again = LibraryEntry.get(LibraryEntry.path == civitai.path)
        assert LibraryEntry.select().count() == 4
    assert (again.id, again.source, again.version_id) == (civitai.id, "downloaded", 50)
    assert again.first_seen.replace(tzinfo=datetime.timezone.utc) == old

    # A scan that found the file before the adopter wrote it does not fail on the path: the adopter's entry stays.
    store.save([LibraryEntry(path=civitai.path, root=civitai.root, sha256=civitai.sha256, source="unknown")])
    with db.connection_context():
        kept = LibraryEntry.get(LibraryEntry.path == civitai.path)
    assert (kept.id, kept.source, kept.version_id) == (civitai.id, "downloaded", 50)


def test_unknown_files_are_identified_by_a_sidecar_or_a_download_that_appears_later(fake, make_daemon, tmp_path):
    root = tmp_path / "models"
    lone, side, twin = content("later-lone"), content("later-side"), content("later-twin")
    for name, data in (("lone", lone), ("side", side), ("twin", twin)):
        put(root / "Lora" / f"{name}.safetensors", data)
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False},
                    update_check={"enabled": False, "time": "04:00", "auto_download": False})
    first = scan(d)
    assert (first["unknown"], first["api_calls"]) == (3, 1), first

    # Meanwhile: Stability Matrix leaves a sidecar beside one file; Civitai publishes the twin's model, and
    # the daemon downloads it elsewhere.
    (root / "Lora" / "side.cm-info.json").write_text(json.dumps(
        {"ModelId": 8, "VersionId": 80, "ModelName": "Side", "VersionName": "v1", "ModelType": "LORA",
         "Hashes": {"SHA256": hashlib.sha256(side).hexdigest().upper()}}))
    fake.add_model(9, "Twin Model", "LORA")
    fake.add_version(9, 90, "v1", data=twin, base_model="Pony")
    download = d.post("/api/download", {"modelVersionId": 90, "subdir": "fetched"}).json()["id"]
    assert d.wait_state(download, {"completed", "failed"})["state"] == "completed"
    wait_for(lambda: entries(d, q="/fetched/")["items"], 10, message="the download's library entry")

    # The rescan asks no hash again (the lone file's week as unknown is not over) and still names both;
    # its one call fetches the version JSON the Stability Matrix sidecar lacks.
    fake.clear_requests()
    second = scan(d)
    assert (second["hashed"], fake.calls("POST", IDS), fake.calls("POST", DETAILS)) == (0, 0, 1), second
    assert second["api_calls"] == 1
    by_name = {e["path"].rsplit("/", 1)[1]: e for e in entries(d)["items"] if "/Lora/" in e["path"]}
    assert (by_name["side.safetensors"]["source"], by_name["side.safetensors"]["modelVersionId"]) == ("sidecar", 80)
    assert (by_name["twin.safetensors"]["source"], by_name["twin.safetensors"]["modelVersionId"]) == ("downloaded", 90)
    assert by_name["twin.safetensors"]["model_name"] == "Twin Model"
    assert (by_name["lone.safetensors"]["source"], by_name["lone.safetensors"]["modelVersionId"]) == ("unknown", None)
    assert (second["identified"], second["unknown"]) == (2, 1), second
