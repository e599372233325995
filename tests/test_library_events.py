"""The library's timing rules against the real daemon (SPEC §10): the rescan before the scheduled update check,
and scan progress on the WebSocket at most 4 a second with the done event always last."""
import collections
import datetime

import requests

from conftest import wait_for
from test_library import content, put
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
    scan = d.get("/api/library/scan").json()
    assert (scan["state"], scan["new"], scan["identified"]) == ("done", 1, 1), scan
    assert scan["started_at"] >= at.astimezone(datetime.timezone.utc).isoformat(timespec="seconds")[:19]
    assert scan["finished_at"] <= updates[0]["detected_at"]


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
