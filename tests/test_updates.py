"""The model update check against the real daemon and the fake Civitai (SPEC §9)."""
from pathlib import Path


from conftest import sha, wait_for


def completed(d, manifest_name, manifest):
    d.drop(manifest_name, manifest)
    folder, result = d.result(manifest_name)
    assert folder == "done", result
    return result["items"]


def test_new_version_is_recorded_logged_notified_and_downloaded_beside_the_old(fake, make_daemon, hook):
    fake.add_model(4201, "Realistic Vision", "Checkpoint")
    fake.add_version(4201, 130072, "v5.1", size=100_000)
    d = make_daemon(webhook_url=hook.url)
    old = completed(d, "old.json", {"items": [{"modelVersionId": 130072, "subdir": "sd/realistic"}]})[0]

    assert "daily update check at 04:00 local time (next run" in d.logs()
    quiet = d.post("/api/updates/check").json()
    assert quiet["checked"] == 1 and quiet["updates"] == [] and quiet["problems"] == []

    new = fake.add_version(4201, 245598, "v6.0", size=110_000)
    summary = d.post("/api/updates/check").json()
    assert [(u["modelId"], u["modelVersionId"]) for u in summary["updates"]] == [(4201, 245598)]
    assert "model 4201 'Realistic Vision': version 130072 → 245598" in d.logs()

    event = wait_for(lambda: hook.events("model.update"), 10, message="model.update webhook")[0]
    assert event["data"]["modelId"] == 4201 and event["data"]["modelVersionId"] == 245598
    assert event["data"]["previous_version_id"] == 130072

    listed = d.get("/api/updates").json()
    assert listed["total"] == 1
    entry = listed["items"][0]
    assert (entry["modelId"], entry["modelVersionId"], entry["previous_version_id"]) == (4201, 245598, 130072)
    assert entry["model_name"] == "Realistic Vision" and entry["version_name"] == "v6.0" and entry["detected_at"]

    row = d.wait_state(entry["download_id"], {"completed", "failed"})
    assert row["state"] == "completed", row
    assert Path(row["path"]).parent == Path(old["path"]).parent  # same sub-folder as the version it replaces
    assert sha(row["path"]) == new["sha256"] and row["verified"]
    assert Path(old["path"]).exists()
    assert wait_for(lambda: [e for e in hook.events("download.completed") if e["data"]["id"] == row["id"]], 10)

    again = d.post("/api/updates/check").json()  # the new version is now downloaded: nothing more
    assert again["updates"] == []
    assert d.get("/api/updates").json()["total"] == 1


def test_reupload_with_new_sha256_is_detected(fake, make_daemon):
    fake.add_model(61, "Reuploaded", "LORA")
    first = fake.add_version(61, 610, "v1", size=80_000)
    d = make_daemon()
    old = completed(d, "r.json", {"modelVersionId": 610})[0]
    assert old["sha256"] == first["sha256"]
    fresh = fake.set_version_content(610)
    assert fresh["sha256"] != first["sha256"]
    summary = d.post("/api/updates/check").json()
    assert [(u["modelVersionId"], u["reason"]) for u in summary["updates"]] == [(610, "re-uploaded")]
    assert "model 61 'Reuploaded': version 610 → 610" in d.logs()
    download_id = summary["updates"][0]["download_id"]
    row = d.wait_state(download_id, {"completed", "failed"})
    assert row["state"] == "completed", row
    assert row["sha256"] == fresh["sha256"] and Path(row["path"]).parent == Path(old["path"]).parent
    assert sha(old["path"]) == first["sha256"]  # the old file is never overwritten


def test_auto_download_off_only_records(fake, make_daemon):
    fake.add_model(62, "Manual", "Checkpoint")
    fake.add_version(62, 620, "v1", size=70_000)
    d = make_daemon(update_check={"enabled": False, "time": "04:00", "auto_download": False})
    completed(d, "a.json", {"modelVersionId": 620})
    fake.add_version(62, 621, "v2", size=70_000)
    summary = d.post("/api/updates/check").json()
    assert [u["modelVersionId"] for u in summary["updates"]] == [621]
    assert d.get("/api/updates").json()["items"][0]["state"] == "pending"
    assert d.get("/api/downloads").json()["total"] == 1


def test_150_models_cost_two_bulk_calls_and_trouble_is_reported(fake, make_daemon):
    ids = list(range(1000, 1150))
    for model_id in ids:
        fake.add_model(model_id, f"Model {model_id}", "LORA", nsfw=model_id % 2 == 0)
        fake.add_version(model_id, model_id * 10, "v1", data=model_id.to_bytes(4, "big") * 256,
                         filename=f"m{model_id}.pt")
    d = make_daemon(workers=4)
    r = d.post("/api/batch", {"items": [{"modelVersionId": m * 10} for m in ids]})
    assert r.status_code == 202, r.text
    wait_for(lambda: d.get("/api/status").json()["counts"]["completed"] == 150, 60, message="150 downloads")

    fake.update_version(1003 * 10, deleted=True)   # its only version is gone: the model is gone
    fake.add_version(1007, 10071, "v2", data=b"new!" * 256, filename="m1007-v2.pt")
    fake.clear_requests()
    fake.faults.api_5xx = 1  # the first bulk call fails once; its retry must not lose anything
    summary = d.post("/api/updates/check").json()
    bulk = [x for x in fake.requests_to("api", "/api/v1/models?")]
    assert len([x for x in bulk if x.status == 200]) == 2, [x.path for x in bulk]
    for call in bulk:
        assert "nsfw=true" in call.path
    assert all(len(x.path.split("ids=")[1].split("&")[0].split("%2C")) <= 100 for x in bulk)
    assert [u["modelVersionId"] for u in summary["updates"]] == [10071]
    assert summary["checked"] == 149
    assert any("1003" in p for p in summary["problems"]), summary["problems"]
    assert "1003" in d.logs()
