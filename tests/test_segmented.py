"""Segmented transfers against the real daemon and the fake's segment faults (SPEC §12)."""
import hashlib
import json

from conftest import wait_for

MiB = 1 << 20
SEGMENTED = {"connections": 4, "segment_min": "1MiB"}


def sha_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def storage_gets(fake):
    return [r for r in fake.requests_to("storage") if r.method == "GET"]


def link_requests(fake, vid):
    return [r for r in fake.requests_to("api", f"/api/download/models/{vid}")]


def version(fake, vid, size):
    fake.add_model(vid // 10, f"Model {vid}", "Checkpoint")
    return fake.add_version(vid // 10, vid, f"v{vid}", size=size)


def download_done(daemon, name, info):
    folder, result = daemon.result(name, timeout=120)
    assert folder == "done", result
    item = result["items"][0]
    assert sha_of(item["path"]) == info["sha256"]
    return item


def test_segments_on_their_own_connections_and_in_the_api(make_daemon, fake):
    info = version(fake, 1001, 16 * MiB)
    fake.faults.rate = 2 * MiB  # per connection: the download takes about 2 s over four
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("seg.json", {"modelVersionId": 1001})
    seen = wait_for(lambda: [d for d in daemon.get("/api/downloads").json()["items"]
                             if d.get("segments") and d["connections"] >= 2], 60, message="a segmented download")
    live = seen[0]
    assert [(s["start"], s["end"]) for s in live["segments"]][0][0] == 0
    assert all(0 <= s["done"] <= s["end"] - s["start"] for s in live["segments"])
    download_done(daemon, "seg.json", info)
    ranged = [r for r in storage_gets(fake) if r.status == 206]
    assert len(ranged) >= 4
    assert all(r.headers["Range"].count("-") == 1 and not r.headers["Range"].endswith("-") for r in ranged)
    assert len({r.port for r in ranged}) >= 4  # each segment on its own TCP connection
    assert fake.most_at_once(info["filename"]) == 4
    assert fake.bytes_served_twice(info["filename"]) == 0
    assert not list((daemon.home / "downloads").rglob("*.ranges")), "the ranges file outlives the download"
    done = daemon.download(live["id"])
    assert done["state"] == "completed" and not done.get("segments")


def test_connections_1_downloads_in_one_stream(make_daemon, fake):
    info = version(fake, 1011, 8 * MiB)
    daemon = make_daemon(connections=1, segment_min="1MiB")
    daemon.drop("one.json", {"modelVersionId": 1011})
    download_done(daemon, "one.json", info)
    gets = storage_gets(fake)
    assert len(gets) == 1 and "Range" not in gets[0].headers and gets[0].status == 200


def test_server_answering_200_to_a_range_gets_one_connection(make_daemon, fake):
    info = version(fake, 1021, 8 * MiB)
    fake.faults.ignore_range = True
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("norange.json", {"modelVersionId": 1021})
    download_done(daemon, "norange.json", info)
    gets = storage_gets(fake)
    assert len(gets) == 1 and gets[0].status == 200  # the bounded first request came back whole: one stream


def test_server_without_accept_ranges_gets_one_connection(make_daemon, fake):
    blob = fake.add_blob("plain.bin", size=8 * MiB)
    fake.faults.no_accept_ranges = True
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("plain.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("plain.json")
    assert folder == "done", result
    gets = [r for r in fake.requests_to("files") if r.method == "GET"]
    assert len(gets) == 1 and "Range" not in gets[0].headers


def test_an_open_ended_first_answer_is_read_on_into_the_next_free_piece(make_daemon, fake):
    from pathlib import Path
    blob = fake.add_blob("open.bin", size=8 * MiB)  # a plain URL: no size known, the first GET has no Range
    daemon = make_daemon(max_connections_per_host=1, **SEGMENTED)  # four pieces, one connection granted
    daemon.drop("open.json", {"url": blob["url"], "sha256": blob["sha256"]})
    folder, result = daemon.result("open.json")
    assert folder == "done", result
    assert sha_of(result["items"][0]["path"]) == blob["sha256"]
    gets = [r for r in fake.requests_to("files") if r.method == "GET"]
    assert len(gets) == 1 and "Range" not in gets[0].headers  # no piece was asked for again
    assert fake.bytes_served_twice(Path(blob["path"]).name) == 0  # nothing in flight was dropped


def test_ranges_ignored_on_the_second_request_only(make_daemon, fake):
    info = version(fake, 1031, 16 * MiB)
    fake.faults.ignore_range_on = 2
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("second.json", {"modelVersionId": 1031})
    download_done(daemon, "second.json", info)
    statuses = [r.status for r in storage_gets(fake)]
    assert statuses[1] == 200 and statuses.count(206) >= 3


def test_a_dropped_segment_reconnects_where_it_stopped(make_daemon, fake):
    info = version(fake, 1041, 16 * MiB)
    fake.faults.segment_drop_after = 1 * MiB
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("drop.json", {"modelVersionId": 1041})
    download_done(daemon, "drop.json", info)
    starts = [int(r.headers["Range"].split("=")[1].split("-")[0]) for r in storage_gets(fake) if "Range" in r.headers]
    dropped = [s for s in starts if (s - 1 * MiB) in starts]
    assert dropped, starts  # some segment asked again from 1 MiB past its start
    assert fake.bytes_served_twice(info["filename"]) == 0


def test_an_expired_link_is_renewed_once_for_all_segments(make_daemon, fake):
    info = version(fake, 1051, 16 * MiB)
    fake.faults.segment_expire_after = 1 * MiB
    fake.faults.rate = 4 * MiB  # keep the other segments busy while the link expires
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("expire.json", {"modelVersionId": 1051})
    download_done(daemon, "expire.json", info)
    assert len(link_requests(fake, 1051)) == 2  # the first link and one fresh one
    assert any(r.status == 403 for r in storage_gets(fake))
    signatures = {r.path.split("X-Amz-Signature=")[1] for r in storage_gets(fake) if r.status == 206}
    assert len(signatures) == 2
    assert fake.bytes_served_twice(info["filename"]) == 0


def test_a_changed_etag_restarts_the_file_from_zero(make_daemon, fake):
    info = version(fake, 1061, 16 * MiB)
    fake.faults.rate = 4 * MiB
    fake.faults.etag_change_after = 2 * MiB
    fake.faults.segment_drop_after = 3 * MiB  # a segment asks again after the change and sees it
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("etag.json", {"modelVersionId": 1061})
    download_done(daemon, "etag.json", info)
    gets = storage_gets(fake)
    etags = {r.headers.get("If-Range") for r in gets if r.headers.get("If-Range")}
    assert len(etags) == 2  # segments of the old file, then of the new one
    firsts = [r for r in gets if r.headers.get("Range", "").startswith("bytes=0-")]
    assert len(firsts) >= 2  # started again from byte 0


def test_a_slow_segment_is_split_and_its_second_half_taken(make_daemon, fake):
    info = version(fake, 1071, 32 * MiB)
    fake.faults.slow_segment_rate = 512 << 10
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("slow.json", {"modelVersionId": 1071})
    download_done(daemon, "slow.json", info)
    ranged = [r for r in storage_gets(fake) if r.status == 206]
    planned = {i * 8 * MiB for i in range(4)}
    starts = [int(r.headers["Range"].split("=")[1].split("-")[0]) for r in ranged]
    assert set(starts) - planned, starts  # a segment began mid-way: the stolen half


def test_kill_9_mid_segments_then_restart_fetches_no_byte_twice(make_daemon, fake):
    size = 32 * MiB
    info = version(fake, 1081, size)
    fake.faults.stall_after = 3 * MiB  # every answer pauses after 3 MiB ...
    fake.faults.stall_times = -1
    fake.faults.stall_seconds = 120
    daemon = make_daemon(timeout=60, **SEGMENTED)
    daemon.drop("crash.json", {"modelVersionId": 1081})

    def persisted():
        files = list((daemon.home / "downloads").rglob("*.ranges"))
        if not files:
            return None
        done = sum(b - a for a, b in json.loads(files[0].read_text())["done"])
        served = sum(b - a for a, b in fake.served_ranges(info["filename"]))
        return done if done == served >= 4 * 3 * MiB else None
    # ... so the daemon has received and recorded everything that was sent before it is killed.
    try:
        wait_for(persisted, 60, message="every served byte in the ranges file")
    except AssertionError as exc:
        ranges = [p.read_text() for p in (daemon.home / "downloads").rglob("*.ranges")]
        raise AssertionError(f"{exc}: served {fake.served_ranges(info['filename'])}, ranges {ranges}") from None
    daemon.kill()
    fake.faults.reset()
    daemon.start()
    download_done(daemon, "crash.json", info)
    assert fake.bytes_served_twice(info["filename"]) == 0, fake.served_ranges(info["filename"])


def test_max_connections_per_host_caps_the_connections(make_daemon, fake):
    info = version(fake, 1091, 16 * MiB)
    fake.faults.rate = 4 * MiB
    daemon = make_daemon(max_connections_per_host=2, **SEGMENTED)
    daemon.drop("capped.json", {"modelVersionId": 1091})
    download_done(daemon, "capped.json", info)
    assert fake.most_at_once(info["filename"]) == 2
    assert len([r for r in storage_gets(fake) if r.status == 206]) == 4  # four segments over two connections


def test_pause_resume_and_cancel_of_a_segmented_download(make_daemon, fake):
    info = version(fake, 1101, 16 * MiB)
    fake.faults.rate = 1 * MiB
    daemon = make_daemon(**SEGMENTED)
    daemon.drop("pause.json", {"modelVersionId": 1101})
    folder = daemon.home / "downloads"

    def some_done():
        files = list(folder.rglob("*.ranges"))
        return files and json.loads(files[0].read_text())["done"]
    wait_for(some_done, 30, message="a segmented part with completed ranges")
    download_id = daemon.get("/api/downloads").json()["items"][0]["id"]
    assert daemon.post(f"/api/downloads/{download_id}/pause").status_code == 200
    daemon.wait_state(download_id, "paused")
    kept = json.loads(next(folder.rglob("*.ranges")).read_text())["done"]
    assert kept and list(folder.rglob("*.part"))  # paused: the part and its ranges stay
    fake.faults.rate = None
    before = len(storage_gets(fake))
    assert daemon.post(f"/api/downloads/{download_id}/resume").status_code == 200
    download_done(daemon, "pause.json", info)
    starts = [int(r.headers["Range"].split("=")[1].split("-")[0]) for r in storage_gets(fake)[before:]]
    assert starts and not any(a <= s < b for s in starts for a, b in kept)  # kept ranges are not asked again
    assert not list(folder.rglob("*.ranges")) and not list(folder.rglob("*.part"))

    fake.faults.rate = 1 * MiB
    other = version(fake, 1111, 16 * MiB)
    daemon.drop("cancel.json", {"modelVersionId": 1111})
    wait_for(lambda: list(folder.rglob("*.ranges")), 30, message="a segmented part")
    second = [d for d in daemon.get("/api/downloads").json()["items"] if d["modelVersionId"] == 1111][0]["id"]
    assert daemon.post(f"/api/downloads/{second}/cancel").status_code == 200
    daemon.wait_state(second, "cancelled")
    wait_for(lambda: not list(folder.rglob("*.ranges")) and not list(folder.rglob("*.part")), 20,
             message="part and ranges removed")
    assert other["sha256"] not in {sha_of(p) for p in folder.rglob("*") if p.is_file()}
