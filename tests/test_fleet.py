"""Fleet mode (SPEC §14): several real daemon processes on one private PostgreSQL.

The daemons stand for machines: each has its own folder, config and port; they
share the database URL and, where the test says so, the download folder or the
manifest folders.
"""
import collections
import json
import os
import signal
import time

import psycopg

from conftest import sha, wait_for
from daemon.spoolfiles import claim_name


def _blob(fake, name, size):
    """A plain file at the fake whose served ranges are recorded under its own name."""
    disposition = f'attachment; filename="{name}"'
    return dict(fake.add_blob(name, size=size, content_disposition=disposition), disposition=disposition)


def _query(url, sql, *args):
    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def _fleet(make_daemon, tmp_path, pg_url, count=3, shared_manifests=False, **config):
    downloads = tmp_path / "shared-models"
    shared = {}
    if shared_manifests:
        shared = {f"{k}_dir": str(tmp_path / "shared" / k) for k in ("inbox", "processing", "done", "failed")}
    return [make_daemon(database=pg_url, node=f"node-{i}", download_dir=str(downloads), **shared, **config)
            for i in range(count)]


def test_one_daemon_on_postgres_downloads_and_lists_itself(make_daemon, fake, pg_url):
    blob = fake.add_blob("one.bin", size=300_000)
    daemon = make_daemon(database=pg_url, node="alpha")
    ids = daemon.post("/api/batch", {"items": [{"url": blob["url"], "sha256": blob["sha256"]}]}).json()["ids"]
    row = daemon.wait_state(ids[0], "completed")
    assert row["verified"] and sha(row["path"]) == blob["sha256"]
    nodes = daemon.get("/api/nodes").json()
    assert [n["node"] for n in nodes["items"]] == ["alpha"] and nodes["items"][0]["last_heartbeat"]
    assert nodes["total"] == 1 and nodes["items"][0]["active"] == []


def test_three_daemons_share_thirty_items_each_file_fetched_once(make_daemon, fake, pg_url, tmp_path):
    fake.faults.rate = 4_000_000  # each body takes a moment, so the daemons overlap
    blobs = [_blob(fake, f"f{i:02d}.safetensors.bin", 200_000 + i) for i in range(30)]
    fleet = _fleet(make_daemon, tmp_path, pg_url)
    ids = []
    for n, daemon in enumerate(fleet):  # each machine queues a third; any machine may run any item
        items = [{"url": b["url"], "sha256": b["sha256"], "filename": f"m{i:02d}.bin"}
                 for i, b in enumerate(blobs) if i % 3 == n]
        ids += daemon.post("/api/batch", {"items": items}).json()["ids"]
    assert len(set(ids)) == 30  # download ids are fleet-wide
    rows = [fleet[0].wait_state(i, ("completed", "failed"), timeout=90) for i in ids]
    assert all(r["state"] == "completed" and r["verified"] for r in rows), [r["error"] for r in rows]
    for blob in blobs:
        gets = [r for r in fake.requests_to("files") if r.path.startswith("/files/" + blob["url"].rsplit("/", 1)[1])]
        assert len(gets) == 1, (blob["url"], len(gets))
        assert fake.bytes_served_twice(blob["disposition"]) == 0
    for r in rows:
        assert sha(r["path"]) == r["sha256"]
    by_node = dict(_query(pg_url, "SELECT node, count(*) FROM downloads GROUP BY node"))
    assert len(by_node) >= 2 and sum(by_node.values()) == 30, by_node  # the fleet shared the work
    nodes = fleet[2].get("/api/nodes").json()
    assert sorted(n["node"] for n in nodes["items"]) == ["node-0", "node-1", "node-2"]


def test_killed_daemon_item_is_finished_by_another_from_its_part(make_daemon, fake, pg_url, tmp_path):
    fake.faults.rate = 400_000
    blob = _blob(fake, "big.bin", 4_000_000)
    first, second = _fleet(make_daemon, tmp_path, pg_url, count=2, lease=5, workers=1)
    second.stop()  # only `first` may claim it
    [download_id] = first.post("/api/batch", {"items": [{"url": blob["url"], "sha256": blob["sha256"],
                                                         "filename": "big.bin"}]}).json()["ids"]
    part = tmp_path / "shared-models" / f"big.bin.{download_id}.part"  # the download's own part
    wait_for(lambda: part.exists() and part.stat().st_size > 600_000, 60, message="a third of the part")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    have = part.stat().st_size
    assert 0 < have < blob["size"]
    second.proc = None
    second.start()
    row = second.wait_state(download_id, ("completed", "failed"), timeout=60)
    assert row["state"] == "completed" and row["verified"] and sha(row["path"]) == blob["sha256"], row
    resumes = [r for r in fake.requests_to("files") if r.headers.get("Range")]
    assert [r.headers["Range"] for r in resumes] == [f"bytes={have}-"]  # from the part, not from zero
    served = fake.served_ranges(blob["disposition"])
    assert served[-1] == (have, blob["size"]), served  # the taker fetched only what the part lacked
    owner = _query(pg_url, "SELECT node FROM downloads WHERE id = %s", download_id)
    assert owner == [("node-1",)]
    logs = second.logs()  # taken over by the heartbeat, or at start when the lease had already run out
    assert "lease of node node-0 ran out" in logs or "recovered 1 interrupted download" in logs


def test_civitai_api_pacing_holds_for_the_fleet(make_daemon, fake, pg_url, tmp_path):
    fake.add_model(500, "Paced Model", "LORA")
    versions = [fake.add_version(500, 5000 + i, f"v{i}", size=20_000 + i) for i in range(6)]
    fleet = _fleet(make_daemon, tmp_path, pg_url)
    fake.clear_requests()
    ids = []
    for n, daemon in enumerate(fleet):
        ids += daemon.post("/api/batch", {"items": [{"modelVersionId": 5000 + i} for i in range(6)
                                                    if i % 3 == n]}).json()["ids"]
    rows = [fleet[0].wait_state(i, ("completed", "failed"), timeout=90) for i in ids]
    assert all(r["state"] == "completed" and r["verified"] for r in rows), [r["error"] for r in rows]
    assert {r["sha256"] for r in rows} == {v["sha256"] for v in versions}
    calls = sorted(r.time for r in fake.requests_to("api", "/api/v1/"))
    assert len(calls) >= 6
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    # One call a second for the three daemons together, as Civitai sees them arrive: a daemon's turn
    # ends when its call was answered, the next call goes a second after that, so nothing (load, a
    # late caller, a request waiting in a socket) can bring two arrivals closer; 0.99 for clock slew.
    assert min(gaps) >= 0.99, gaps


def test_shared_inbox_each_of_100_manifests_taken_once(make_daemon, fake, pg_url, tmp_path):
    fleet = _fleet(make_daemon, tmp_path, pg_url, shared_manifests=True)
    inbox = tmp_path / "shared" / "inbox"
    blobs = [_blob(fake, f"s{i:03d}.bin", 2_000 + i) for i in range(100)]
    for i, blob in enumerate(blobs):
        tmp = inbox / f".m{i:03d}.tmp"
        tmp.write_text(json.dumps({"items": [{"url": blob["url"], "sha256": blob["sha256"],
                                              "filename": f"s{i:03d}.bin"}]}))
        os.replace(tmp, inbox / f"m{i:03d}.json")
    done = tmp_path / "shared" / "done"
    expected = {f"m{i:03d}.json" for i in range(100)}

    def all_done():
        names = {p.name for p in done.iterdir() if not p.name.endswith(".result.json")}
        return names >= expected and names
    names = wait_for(all_done, 120, interval=0.2, message="100 manifests in done/")
    assert names == expected  # no second copy under a -<timestamp> name
    assert not [p for p in (tmp_path / "shared" / "failed").iterdir()]
    assert not [p for p in (tmp_path / "shared" / "processing").iterdir()]
    for name in expected:
        result = json.loads((done / f"{name[:-5]}.result.json").read_text())
        assert result["status"] == "done" and len(result["items"]) == 1
    records = _query(pg_url, "SELECT name, node FROM manifests")
    assert collections.Counter(n for n, _ in records) == collections.Counter(expected)
    assert all(node in {"node-0", "node-1", "node-2"} for _, node in records)
    assert _query(pg_url, "SELECT count(*) FROM downloads") == [(100,)]
    gets = collections.Counter(r.path for r in fake.requests_to("files"))
    assert len(gets) == 100 and set(gets.values()) == {1}


def test_claims_left_in_a_shared_processing_go_to_one_daemon_when_their_owner_is_gone(make_daemon, fake, pg_url,
                                                                                       tmp_path):
    """A `.claim-*` (an inbox file taken, not placed) whose node died is taken by a live daemon's heartbeat;
    a live node's fresh claim is left alone until it is older than the lease; a restarted node takes its
    own claims at start. A placed file not yet recorded is adopted only once older than the lease. Each
    manifest is filed once, by one daemon."""
    lease = 12
    first, second, third = _fleet(make_daemon, tmp_path, pg_url, shared_manifests=True, lease=lease)
    processing, done = tmp_path / "shared" / "processing", tmp_path / "shared" / "done"

    def plant(node, name):
        blob = _blob(fake, f"{name}.bin", 3_000)
        tmp = processing / f".{name}.tmp"
        tmp.write_text(json.dumps({"items": [{"url": blob["url"], "sha256": blob["sha256"]}]}))
        claim = processing / claim_name(node, f"{name}.json")
        os.rename(tmp, claim)  # as a claim is made: a rename (which sets its ctime)
        return claim

    def recorded(name):
        return _query(pg_url, "SELECT count(*) FROM manifests WHERE name = %s", f"{name}.json") != [(0,)]

    third.proc.send_signal(signal.SIGKILL)  # node-2 dies with a claim in hand; its heartbeat is fresh
    third.proc.wait()
    dead = plant("node-9", "dead")          # a node that stopped long ago
    alive = plant("node-1", "alive")        # second is running: a claim it is placing right now
    own = plant("node-2", "own")
    # placed, not yet recorded: what a live daemon's intake looks like for a few milliseconds
    os.rename(plant("node-0", "placed"), processing / "placed.json")
    planted = time.monotonic()
    wait_for(lambda: not dead.exists(), lease, interval=0.1, message="the dead node's claim taken by a heartbeat")
    assert time.monotonic() - planted < lease and alive.exists() and not recorded("placed")
    third.proc = None
    third.start()  # node-2 is back within the lease: at start it takes its own claim, nobody else may yet
    wait_for(lambda: not own.exists(), lease, interval=0.1, message="node-2's own claim taken at its start")
    # a starting daemon leaves a fresh unrecorded file alone too: its placer may be about to record it
    assert time.monotonic() - planted < lease and not recorded("placed")
    names = ("alive", "dead", "own", "placed")  # the last two once they are older than the lease
    for name in names:
        wait_for(lambda: (done / f"{name}.json").exists(), 60, interval=0.2, message=f"{name}.json in done/")
    assert sorted(p.name for p in processing.iterdir()) == []
    assert sorted(p.name for p in done.iterdir()) == sorted(f"{n}.{s}" for n in names for s in ("json", "result.json"))
    owners = dict(_query(pg_url, "SELECT name, node FROM manifests"))
    assert owners["own.json"] == "node-2" and owners["dead.json"] in {"node-0", "node-1"}
    assert len(owners) == 4 and _query(pg_url, "SELECT count(*) FROM downloads") == [(4,)]
    assert all(json.loads((done / f"{n}.result.json").read_text())["status"] == "done" for n in names)
    gets = collections.Counter(r.path for r in fake.requests_to("files"))
    assert len(gets) == 4 and set(gets.values()) == {1}


def test_the_database_password_stays_secret(make_daemon, fake, pg_url, postgres):
    import pgserver
    daemon = make_daemon(database=pg_url, node="quiet", log_level="DEBUG")
    blob = fake.add_blob("s.bin", size=50_000)
    [download_id] = daemon.post("/api/batch", {"items": [{"url": blob["url"]}]}).json()["ids"]
    daemon.wait_state(download_id, "completed")
    answers = [daemon.get(path).text for path in ("/api/status", "/api/nodes", "/api/downloads", "/healthz")]
    daemon.stop()
    seen = "".join(answers) + daemon.logs() + daemon.read_stderr()
    assert pgserver.PASSWORD not in seen
    # A wrong password: exit 2 with a message that says what to do and hides what was given.
    wrong = pg_url.replace(pgserver.PASSWORD, "not-the-pass-word")
    bad = make_daemon(database=wrong, start=False)
    bad.write_config()
    bad.start(wait=False)
    assert bad.proc.wait(30) == 2
    message = bad.read_stderr()
    assert "check the URL in 'database'" in message and "not-the-pass-word" not in message, message
