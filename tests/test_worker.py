"""The worker's pipeline in process: `step()` called directly on the real parts (no daemon, no sleeps).

State machine, claims, cancel/pause races, the spool and retries, each driven one
step at a time against the fake Civitai (huey's style of testing a consumer).
"""
import json
import os

from conftest import sha
from daemon.errors import InvalidTransition
from daemon.manifest import parse_manifest

MB = 1 << 20


def enqueue(core, *entries, manifest=None):
    return core.queue.enqueue(parse_manifest(json.dumps({"items": list(entries)}).encode()), manifest=manifest)


def test_one_step_carries_a_download_to_completed(core, fake, recorder):
    parts = core()
    blob = fake.add_blob("a.bin", size=300_000)
    [download_id] = enqueue(parts, {"url": blob["url"], "sha256": blob["sha256"]})
    assert parts.pool.step() is True
    row = parts.queue.get(download_id)
    assert (row.state, row.sha256, bool(row.verified), row.bytes) == ("completed", blob["sha256"], True, blob["size"])
    assert sha(row.path) == blob["sha256"]
    assert recorder.names(download_id) == ["download.queued", "download.started", "download.completed"]
    assert parts.pool.step() is False  # nothing left: burst mode ends here
    assert parts.progress.snapshot() == []


def test_run_until_idle_claims_by_priority_then_age(core, fake, recorder):
    parts = core()
    urls = [fake.add_blob(f"{n}.bin", size=1000)["url"] for n in "abc"]
    low, high, low2 = enqueue(parts, {"url": urls[0]}, {"url": urls[1], "priority": 5}, {"url": urls[2]})
    assert parts.pool.run_until_idle() == 3
    started = [e.data["id"] for e in recorder.events if e.name == "download.started"]
    assert started == [high, low, low2]


def test_a_twin_waits_for_its_parent_then_links(core, fake):
    parts = core()
    blob = fake.add_blob("same.bin", size=50_000)
    first, second = enqueue(parts, {"url": blob["url"]}, {"url": blob["url"], "filename": "copy.bin"})
    assert parts.queue.get(second).parent_id == first
    # The child is not runnable while its parent is queued: the first claim takes the parent.
    assert parts.queue.claim().id == first
    assert parts.queue.claim() is None
    parts.queue.finish(first, "queued")
    assert parts.pool.run_until_idle() == 2
    parent, child = parts.queue.get(first), parts.queue.get(second)
    assert child.state == "completed" and child.sha256 == parent.sha256
    assert child.path.endswith("copy.bin") and sha(child.path) == blob["sha256"]


def test_a_completed_twin_whose_file_was_deleted_is_no_parent(core, fake, recorder):
    """Dropping the same manifest again after deleting the file downloads it afresh in one step
    (before, the new item became the deleted file's child, found it gone and queued itself again)."""
    parts = core()
    blob = fake.add_blob("again.bin", size=20_000)
    [first] = enqueue(parts, {"url": blob["url"], "sha256": blob["sha256"]})
    assert parts.pool.run_until_idle() == 1
    kept = enqueue(parts, {"url": blob["url"], "sha256": blob["sha256"], "filename": "kept.bin"})
    assert parts.queue.get(kept[0]).parent_id == first  # file still there: a link, no download
    assert parts.pool.run_until_idle() == 1
    os.unlink(parts.queue.get(first).path)
    os.unlink(parts.queue.get(kept[0]).path)
    [again] = enqueue(parts, {"url": blob["url"], "sha256": blob["sha256"]})
    assert parts.queue.get(again).parent_id is None
    assert parts.pool.run_until_idle() == 1  # one step: claimed once, fetched, verified
    row = parts.queue.get(again)
    assert row.state == "completed" and sha(row.path) == blob["sha256"]
    assert recorder.names(again) == ["download.queued", "download.started", "download.completed"]


def test_cancel_between_claim_and_fetch_removes_everything(core, fake, recorder):
    parts = core()
    blob = fake.add_blob("c.bin", size=200_000)
    [download_id] = enqueue(parts, {"url": blob["url"]})
    recorder.then("download.started", lambda e: parts.queue.action(e.data["id"], "cancel"))
    assert parts.pool.step() is True
    row = parts.queue.get(download_id)
    assert row.state == "cancelled"
    assert recorder.names(download_id).count("download.cancelled") == 1
    assert "download.completed" not in recorder.names(download_id)
    assert not list((parts.settings.download_dir).rglob("c.bin*"))


def test_pause_mid_download_keeps_the_part_and_resume_finishes_with_range(core, fake, recorder):
    parts = core()
    blob = fake.add_blob("p.bin", size=2 * MB)
    [download_id] = enqueue(parts, {"url": blob["url"], "sha256": blob["sha256"]})
    seen = []

    def pause_once(done, total, original=parts.progress.advance):
        original(download_id, done, total)
        if done >= 256 * 1024 and not seen:
            seen.append(done)
            parts.queue.action(download_id, "pause")

    parts.progress.advance = lambda _id, done, total: pause_once(done, total)
    assert parts.pool.step() is True
    assert parts.queue.get(download_id).state == "paused"
    parts_on_disk = list(parts.settings.download_dir.rglob("p.bin*.part"))
    assert parts_on_disk and parts_on_disk[0].stat().st_size >= 256 * 1024
    assert parts.pool.step() is False  # paused: not runnable
    parts.queue.action(download_id, "resume")
    parts.progress.advance = type(parts.progress).advance.__get__(parts.progress)
    assert parts.pool.step() is True
    row = parts.queue.get(download_id)
    assert row.state == "completed" and sha(row.path) == blob["sha256"]
    ranged = [r for r in fake.requests_to(prefix="/files/p.bin") if r.headers.get("Range")]
    assert ranged, "the resume asked for the rest with Range"


def test_retries_wait_through_the_injected_sleep(core, fake, sleeps):
    parts = core(retries=3, backoff=2, backoff_max=30)
    blob = fake.add_blob("r.bin", size=10_000)
    fake.faults.status_5xx = 2
    [download_id] = enqueue(parts, {"url": blob["url"]})
    assert parts.pool.step() is True
    row = parts.queue.get(download_id)
    assert row.state == "completed" and row.retries == 2
    assert len(sleeps.waits) == 2 and all(w >= 1 for w in sleeps.waits)  # real waits would be seconds long


def test_retries_exhausted_fail_with_what_to_do(core, fake, sleeps):
    parts = core(retries=2)
    blob = fake.add_blob("dead.bin", size=10_000)
    fake.faults.status_5xx = -1
    [download_id] = enqueue(parts, {"url": blob["url"]})
    assert parts.pool.step() is True
    row = parts.queue.get(download_id)
    assert row.state == "failed" and "gave up after 3 attempts" in row.error and len(sleeps.waits) == 2


def test_early_access_parks_the_item_until_its_date(core, fake, recorder):
    parts = core()
    fake.add_model(77, "Early")
    fake.add_version(77, 7701, "v1", size=1000, early_access_until="2999-01-01T00:00:00Z")
    [download_id] = enqueue(parts, {"modelVersionId": 7701})
    assert parts.pool.step() is True
    row = parts.queue.get(download_id)
    assert row.state == "queued" and row.not_before is not None and "early access" in row.error
    assert parts.pool.step() is False  # waiting: nothing runnable now


def test_the_spool_files_a_manifest_once_every_item_ended(core, fake, recorder):
    parts = core()
    good = fake.add_blob("good.bin", size=1000)
    record = parts.queue.create_manifest("m.json", items=2)
    (parts.spool.processing / "m.json").write_text("{}")
    ids = enqueue(parts, {"url": good["url"]}, {"url": f"{fake.base_url}/files/missing.bin"}, manifest=record)
    assert parts.pool.step() is True
    assert "manifest.failed" not in recorder.names() and "manifest.done" not in recorder.names()
    assert parts.pool.step() is True
    [event] = [e for e in recorder.events if e.name.startswith("manifest.")]
    assert event.name == "manifest.failed" and [i["status"] for i in event.data["items"]] == ["completed", "failed"]
    result = json.loads((parts.spool.failed / "m.result.json").read_text())
    assert [i["id"] for i in result["items"]] == ids and not (parts.spool.processing / "m.json").exists()


def test_shutdown_during_a_fetch_puts_it_back_in_the_queue(core, fake, recorder):
    parts = core()
    blob = fake.add_blob("s.bin", size=2 * MB)
    [download_id] = enqueue(parts, {"url": blob["url"]})

    def stop_midway(_id, done, total):
        if done >= 256 * 1024:
            parts.pool.stopping.set()
            for job in list(parts.pool._active.values()):
                job.interrupt()

    parts.progress.advance = stop_midway
    assert parts.pool.step() is True
    assert parts.queue.get(download_id).state == "queued"
    assert recorder.names(download_id)[-1] == "download.queued"
    assert list(parts.settings.download_dir.rglob("s.bin*.part")), "the part is kept for the resume"


def test_user_actions_follow_the_table(core, fake):
    parts = core()
    [download_id] = enqueue(parts, {"url": fake.add_blob("t.bin", size=10)["url"]})
    for action, bad in (("resume", "queued"), ("retry", "queued")):
        try:
            parts.queue.action(download_id, action)
        except InvalidTransition as exc:
            assert bad in str(exc)
        else:
            raise AssertionError(f"{action} from queued was accepted")
    assert parts.queue.action(download_id, "cancel")["state"] == "cancelled"
    assert parts.queue.action(download_id, "retry")["state"] == "queued"


def test_finishing_a_manifest_counts_pending_items_instead_of_loading_them(core, fake):
    """Issue 11 item 12: each item's end used to load every row of its manifest (quadratic for 10,000)."""
    parts = core()
    blob = fake.add_blob("many.bin", size=100)
    record = parts.queue.create_manifest("many.json", items=200)
    (parts.spool.processing / "many.json").write_text("{}")
    enqueue(parts, *[{"url": blob["url"], "filename": f"m{i}.bin"} for i in range(200)], manifest=record)
    loads = []
    original = parts.queue.manifest_items
    parts.queue.manifest_items = lambda manifest_id: loads.append(manifest_id) or original(manifest_id)
    assert parts.pool.run_until_idle() == 200
    assert loads == [record.id], "the rows are loaded once, to write the result"
    assert json.loads((parts.spool.done / "many.result.json").read_text())["status"] == "done"
