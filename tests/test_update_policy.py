"""Update all, with a policy (SPEC §11), against the real daemon, the fake Civitai and a real library."""
import datetime
import hashlib
import subprocess
import sys
from pathlib import Path

import requests

from conftest import ROOT, sha, wait_for
from test_library import content, put, snapshot

FUTURE = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=5)).strftime(
    "%Y-%m-%dT%H:%M:%S.000Z")


def contents(root):
    """The SHA256 of every model file under root (wherever it is now)."""
    return {digest for digest, _ in snapshot(root).values()}


def build(fake, root):
    """One model per situation; the library holds version 1 of each (known to Civitai by hash)."""
    situations = {1: "newer", 2: "same", 3: "reupload", 4: "base", 5: "early", 6: "paid", 7: "ignored", 8: "replace"}
    for m, kind in situations.items():
        fake.add_model(m, f"Model {kind}", "LORA")
        data = content(f"policy-{m}")
        fake.add_version(m, m * 10, "v1", data=data, base_model="SD 1.5")
        put(root / "Lora" / f"m{m}.safetensors", data)
    fake.add_version(1, 11, "v2", size=5000)
    fake.add_version(4, 41, "v2 XL", size=5000, base_model="SDXL 1.0")
    fake.add_version(5, 51, "v2 early", size=5000, early_access_until=FUTURE)
    fake.add_version(6, 61, "v2 paid", size=5000, paid_permanent=True)
    fake.add_version(7, 71, "v2", size=5000)
    fake.add_version(8, 81, "v2", size=5000)
    return situations


def put_json(d, path, body):
    return requests.put(d.url + path, json=body, headers=d.headers(), timeout=10)


def by_model(d):
    return {u["modelId"]: u for u in d.get("/api/updates", params={"limit": 100}).json()["items"]}


def test_one_check_records_each_situation_and_apply_all_takes_exactly_the_right_ones(fake, make_daemon, tmp_path,
                                                                                     hook):
    root = tmp_path / "library"
    build(fake, root)
    d = make_daemon(library={"roots": [str(root)]}, webhook_url=hook.url,
                    update_check={"enabled": False, "time": "04:00", "auto_download": True, "policy": "notify"})
    wait_for(lambda: d.get("/api/library/scan").json()["state"] == "done", 60, message="first scan")
    before = contents(root)
    fake.set_version_content(30, size=6000)  # model 3: the same version re-uploaded with new bytes
    assert put_json(d, "/api/library/models/7/policy", {"policy": "ignore"}).status_code == 200
    assert put_json(d, "/api/library/models/8/policy", {"policy": "replace"}).json() == {"modelId": 8,
                                                                                         "policy": "replace"}
    assert put_json(d, "/api/library/models/8/policy", {"policy": "sometimes"}).status_code == 400

    check = requests.post(d.url + "/api/updates/check", timeout=120).json()
    assert check["summary"] == {"checked": 8, "found": 7, "applied": 1, "waiting": 1, "problems": 0,
                                "skipped": {"notify": 2, "base model changed": 1, "paid access": 1, "ignored": 1}}
    updates = by_model(d)
    assert 2 not in updates
    assert {m: (u["state"], u["reason"]) for m, u in updates.items()} == {
        1: ("pending", "new version"), 3: ("pending", "re-uploaded"), 4: ("pending", "base model changed"),
        5: ("waiting", "early access"), 6: ("paid", "paid access"), 7: ("ignored", "new version"),
        8: ("queued", "new version")}
    assert updates[5]["not_before"][:10] == FUTURE[:10]
    assert updates[8]["policy"] == "replace" and updates[8]["mode"] == "replace"
    summary = wait_for(lambda: hook.events("updates.summary"), 10, message="updates.summary webhook")
    assert summary[0]["data"]["found"] == 7 and summary[0]["data"]["skipped"]["ignored"] == 1

    # The replace: the new file is published first, then the old one and its sidecars move aside.
    replaced = wait_for(lambda: (u := by_model(d)[8])["state"] == "applied" and u, 60, message="replace applied")
    new = d.download(replaced["download_id"])
    assert new["state"] == "completed" and Path(new["path"]).parent == root / "Lora"
    day = datetime.date.today().isoformat()
    aside = root / ".replaced" / day / "Lora"
    assert replaced["replaced_to"] == str(aside / "m8.safetensors")
    assert sha(aside / "m8.safetensors") == hashlib.sha256(content("policy-8")).hexdigest()
    assert (aside / "m8.civitai.info").exists() and (aside / "m8.preview.png").exists()
    assert not (root / "Lora" / "m8.safetensors").exists() and not (root / "Lora" / "m8.civitai.info").exists()

    # Apply all: the pending ones, not the base-model change, the waiting, the paid or the ignored one.
    applied = d.post("/api/updates/apply", {"all": True})
    assert applied.status_code == 202, applied.text
    assert sorted(applied.json()["updates"]) == sorted([updates[1]["id"], updates[3]["id"]])
    for download_id in applied.json()["ids"]:
        row = d.wait_state(download_id, {"completed", "failed"})
        assert row["state"] == "completed" and Path(row["path"]).parent == root / "Lora", row
    wait_for(lambda: [by_model(d)[m]["state"] for m in (1, 3)] == ["applied", "applied"], 30, message="applied")
    assert (root / "Lora" / "m1.safetensors").exists() and (root / "Lora" / "m3.safetensors").exists()
    assert {m: by_model(d)[m]["state"] for m in (4, 5, 6, 7)} == {4: "pending", 5: "waiting", 6: "paid",
                                                                  7: "ignored"}

    # Named explicitly: the base-model change goes; the paid one is refused; unknown ids are a 404.
    named = d.post("/api/updates/apply", {"ids": [updates[4]["id"], updates[6]["id"]], "mode": "alongside"}).json()
    assert len(named["ids"]) == 1 and named["skipped"][0]["id"] == updates[6]["id"]
    assert "paid" in named["skipped"][0]["reason"]
    assert d.post("/api/updates/apply", {"ids": [99999]}).status_code == 404
    assert d.post("/api/updates/apply", {"ids": "all"}).status_code == 400
    assert d.post("/api/updates/apply", {"all": True, "mode": "delete"}).status_code == 400
    d.wait_state(named["ids"][0], {"completed"})
    # A waiting one applied by id parks in the queue until its date (SPEC §9).
    parked = d.post("/api/updates/apply", {"ids": [updates[5]["id"]]}).json()["ids"][0]
    row = wait_for(lambda: (r := d.download(parked))["not_before"] and r, 30, message="parked download")
    assert row["state"] == "queued" and row["not_before"][:10] == FUTURE[:10] and "early access" in row["error"]

    # Nothing the user had was deleted: every original file's bytes still exist somewhere.
    assert before <= contents(root), before - contents(root)


def test_replace_finishes_after_kill_9_between_download_and_move(fake, make_daemon, tmp_path):
    """A crash after the new version is downloaded, before the old file is moved aside: the next start
    moves it. The crash point is made real without a hook in the daemon: a file where `.replaced/` goes
    makes the move fail (the download stays completed, its update unsettled), then kill -9."""
    root = tmp_path / "library"
    fake.add_model(1, "Replaced", "Checkpoint")
    old = content("replace-me")
    fake.add_version(1, 10, "v1", data=old)
    put(root / "Stable-diffusion" / "sub" / "r.safetensors", old)
    (root / "Stable-diffusion" / "sub" / "r.sha256").write_text(hashlib.sha256(old).hexdigest())
    blocker = root / ".replaced"
    blocker.write_text("in the way of the move")
    d = make_daemon(library={"roots": [str(root)]},
                    update_check={"enabled": False, "time": "04:00", "auto_download": True, "policy": "replace"})
    wait_for(lambda: d.get("/api/library/scan").json()["state"] == "done", 60, message="scan")
    fake.add_version(1, 11, "v2", size=7000)
    check = requests.post(d.url + "/api/updates/check", timeout=60).json()
    download_id = check["updates"][0]["download_id"]
    assert d.wait_state(download_id, "completed")["state"] == "completed"
    wait_for(lambda: f"update for download {download_id}: could not settle it" in d.logs(), 30,
             message="the move refused by the file in the way")
    assert d.get("/api/updates").json()["items"][0]["state"] == "queued"  # downloaded, not yet applied
    d.kill()
    folder = root / "Stable-diffusion" / "sub"
    new_files = [p for p in folder.iterdir() if p.suffix == ".safetensors" and p.name != "r.safetensors"]
    assert len(new_files) == 1 and (folder / "r.safetensors").exists()  # both files, nothing moved yet
    assert (folder / "r.sha256").exists()

    blocker.unlink()
    d.start()  # the start finishes the move
    entry = wait_for(lambda: (u := d.get("/api/updates").json()["items"][0])["state"] == "applied" and u, 30,
                     message="update applied after restart")
    assert entry["download_id"] == download_id
    aside = root / ".replaced" / datetime.date.today().isoformat() / "Stable-diffusion" / "sub"
    assert sha(aside / "r.safetensors") == hashlib.sha256(old).hexdigest() and (aside / "r.sha256").exists()
    assert not (folder / "r.safetensors").exists() and new_files[0].exists()
    assert "finished 1 update(s) whose download ended while the daemon was down" in d.logs()
    # The next scan does not adopt what is in .replaced/.
    again = requests.post(d.url + "/api/library/scan", timeout=10)
    assert again.status_code in (202, 409)
    wait_for(lambda: d.get("/api/library/scan").json()["state"] == "done", 60, message="rescan")
    paths = [e["path"] for e in d.get("/api/library").json()["items"] if not e["missing"]]
    assert paths == [str(new_files[0])]


def test_update_all_cli(fake, make_daemon, tmp_path):
    root = tmp_path / "library"
    fake.add_model(1, "CLI", "LORA")
    fake.add_version(1, 10, "v1", data=content("cli-1"))
    put(root / "m.safetensors", content("cli-1"))
    d = make_daemon(library={"roots": [str(root)]},
                    update_check={"enabled": False, "time": "04:00", "auto_download": False})
    wait_for(lambda: d.get("/api/library/scan").json()["state"] == "done", 60, message="scan")
    fake.add_version(1, 11, "v2", size=3000)
    assert requests.post(d.url + "/api/updates/check", timeout=60).json()["summary"]["skipped"] == {"notify": 1}
    cli = [sys.executable, "-m", "daemon.cli", "update-all", "--replace", "--config", str(d.config_path)]
    done = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and "1 update(s) queued" in done.stdout, done.stderr
    wait_for(lambda: d.get("/api/updates").json()["items"][0]["state"] == "applied", 60, message="applied")
    assert not (root / "m.safetensors").exists()
    assert list((root / ".replaced").rglob("m.safetensors"))


def test_telegram_gets_one_summary_per_check_by_default_not_one_message_per_update(fake, make_daemon, tmp_path,
                                                                                   make_hook):
    root = tmp_path / "library"
    for m in range(1, 6):
        fake.add_model(m, f"Many {m}", "LORA")
        fake.add_version(m, m * 10, "v1", data=content(f"many-{m}"))
        put(root / f"m{m}.safetensors", content(f"many-{m}"))
    bot = make_hook(reply={"ok": True, "result": {"message_id": 1}})
    d = make_daemon(library={"roots": [str(root)]}, telegram={"bot_token": "123:bot-secret", "chat_id": 7},
                    telegram_api_base=bot.url,
                    update_check={"enabled": False, "time": "04:00", "auto_download": False})
    wait_for(lambda: d.get("/api/library/scan").json()["state"] == "done", 60, message="scan")
    for m in range(1, 6):
        fake.add_version(m, m * 10 + 1, "v2", size=3000)
    assert requests.post(d.url + "/api/updates/check", timeout=60).json()["summary"]["found"] == 5
    messages = wait_for(lambda: bot.json_posts(), 10, message="the Telegram summary")
    assert d.stop() == 0
    assert len(bot.json_posts()) == 1, [m["text"] for m in bot.json_posts()]
    text = messages[0]["text"]
    assert text.startswith("🔎 Update check: 5 update(s) found") and "• 5 not applied: notify" in text
