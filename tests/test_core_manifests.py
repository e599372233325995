"""The inbox watcher and the manifest folders, end to end (SPEC §5)."""
import collections
import json
import os
import sqlite3
import subprocess
import time
import uuid

import requests

from conftest import wait_for
from daemon.spoolfiles import claim_name


def ok_item(fake, name="m.bin", size=20_000):
    blob = fake.add_blob(name, size=size)
    return {"url": blob["url"], "sha256": blob["sha256"]}


def intake_caught_up(daemon, fake, name):
    """Drop a marker manifest and wait for its result: the intake then handled every earlier file event
    (hints are taken in order), which a fixed sleep only hoped for."""
    daemon.drop(name, ok_item(fake, name=f"{name}.bin"))
    assert daemon.result(name)[0] == "done"


def folder_names(daemon, folder):
    return sorted(p.name for p in (daemon.home / folder).iterdir())


# -- how files arrive ---------------------------------------------------------------


def test_manifest_written_slowly_in_place_is_taken_once_complete(make_daemon, fake):
    daemon = make_daemon()
    text = json.dumps({"items": [ok_item(fake)]})
    path = daemon.home / "inbox" / "slow.json"
    with open(path, "w") as handle:
        handle.write(text[: len(text) // 2])
        handle.flush()
        intake_caught_up(daemon, fake, "marker.json")
        # Half written: still in inbox/, not rejected.
        assert path.exists()
        assert folder_names(daemon, "failed") == []
        handle.write(text[len(text) // 2:])
    folder, result = daemon.result("slow.json")
    assert folder == "done", result
    assert folder_names(daemon, "failed") == []
    manifests = daemon.get("/api/manifests").json()["items"]
    assert sorted(m["manifest"] for m in manifests) == ["marker.json", "slow.json"]


def test_slow_writer_cut_inside_a_utf8_character_is_not_rejected(make_daemon, fake):
    daemon = make_daemon()
    item = ok_item(fake, name="ünïcödé.bin")
    data = json.dumps({"items": [dict(item, filename="ünïcödé.bin")]}, ensure_ascii=False).encode()
    cut = data.index("ü".encode()) + 1  # the first half ends inside a two-byte character
    path = daemon.home / "inbox" / "utf8.json"
    with open(path, "wb") as handle:
        handle.write(data[:cut])
        handle.flush()
        intake_caught_up(daemon, fake, "marker.json")
        assert folder_names(daemon, "failed") == []
        handle.write(data[cut:])
    folder, result = daemon.result("utf8.json")
    assert folder == "done", result
    assert result["items"][0]["path"].endswith("ünïcödé.bin")


def test_manifest_renamed_in(make_daemon, fake):
    daemon = make_daemon()
    daemon.drop("renamed.json", ok_item(fake))  # conftest's drop writes a dotfile, then renames
    assert daemon.result("renamed.json")[0] == "done"


def test_manifest_copied_in_with_cp(make_daemon, fake, tmp_path):
    daemon = make_daemon()
    source = tmp_path / "outside.json"
    source.write_text(json.dumps([ok_item(fake)]))
    subprocess.run(["cp", str(source), str(daemon.home / "inbox" / "copied.json")], check=True)
    assert daemon.result("copied.json")[0] == "done"


def test_tmp_then_rename_from_other_extension(make_daemon, fake):
    daemon = make_daemon()
    tmp = daemon.home / "inbox" / "x.json.tmp"
    tmp.write_text(json.dumps(ok_item(fake)))
    intake_caught_up(daemon, fake, "marker.json")
    assert tmp.exists()
    os.replace(tmp, daemon.home / "inbox" / "x.json")
    assert daemon.result("x.json")[0] == "done"


def test_dotfiles_and_other_extensions_are_ignored(make_daemon, fake):
    daemon = make_daemon()
    inbox = daemon.home / "inbox"
    ignored = [".hidden.json", "notes.txt", "x.json.tmp", "manifest.JSON.bak", "readme"]
    for name in ignored:
        (inbox / name).write_text(json.dumps(ok_item(fake, name=f"{name}.bin")))
    intake_caught_up(daemon, fake, "marker.json")  # the others' events came first
    assert sorted(p.name for p in inbox.iterdir()) == sorted(ignored)
    assert daemon.get("/api/downloads").json()["total"] == 1
    assert folder_names(daemon, "failed") == []


def test_never_valid_json_is_rejected_after_stability(make_daemon, fake):
    daemon = make_daemon()
    (daemon.home / "inbox" / "broken.json").write_text('{"items": [')
    (daemon.home / "inbox" / "latin1.json").write_bytes(b'{"url": "http://h/\xff"}')
    started = time.monotonic()
    for name, problem in (("broken.json", "manifest: not valid JSON"), ("latin1.json", "manifest: not UTF-8 text")):
        folder, result = daemon.result(name, timeout=40)
        assert folder == "failed"
        assert result["items"] == [] and result["status"] == "failed"
        assert len(result["errors"]) == 1 and result["errors"][0].startswith(problem)
    waited = time.monotonic() - started
    assert waited >= 8, waited  # a writer gets its 10 s of stability first
    assert daemon.get("/api/status").status_code == 200


def test_startup_takes_inbox_and_resumes_processing(make_daemon, fake):
    daemon = make_daemon(start=False)
    for folder in ("inbox", "processing"):
        (daemon.home / folder).mkdir(parents=True)
    (daemon.home / "inbox" / "waiting.json").write_text(json.dumps(ok_item(fake, "w.bin")))
    (daemon.home / "processing" / "orphan.json").write_text(json.dumps(ok_item(fake, "o.bin")))
    daemon.start()
    assert daemon.result("waiting.json")[0] == "done"
    assert daemon.result("orphan.json")[0] == "done"
    assert (daemon.home / "downloads" / "w.bin").exists()
    assert (daemon.home / "downloads" / "o.bin").exists()


def test_claims_a_crash_left_in_processing_are_taken_once_at_start(make_daemon, fake):
    """A crash between taking an inbox file (renamed to its claim) and placing it leaves a `.claim-*`:
    the next start files it under its own name, once, whatever step the crash fell on."""
    daemon = make_daemon(start=False)
    processing = daemon.home / "processing"
    processing.mkdir(parents=True)
    # taken, not placed: the claim is the only copy
    (processing / claim_name("crashed-host", "left.json")).write_text(json.dumps(ok_item(fake, "left.bin")))
    # placed (linked into processing/), the claim not yet unlinked: the same file under two names
    (processing / "placed.json").write_text(json.dumps(ok_item(fake, "placed.bin")))
    os.link(processing / "placed.json", processing / claim_name("crashed-host", "placed.json"))
    # the old claim form, which kept neither owner nor name
    old = processing / f".claim-{uuid.uuid4().hex}"
    old.write_text(json.dumps(ok_item(fake, "old.bin")))
    daemon.start()
    assert daemon.result("left.json")[0] == "done"
    assert daemon.result("placed.json")[0] == "done"
    recovered = f"recovered-{old.name[len('.claim-'):]}.json"
    assert daemon.result(recovered)[0] == "done"
    assert folder_names(daemon, "processing") == []
    assert sorted(n for n in folder_names(daemon, "done") if not n.endswith(".result.json")) == \
        sorted(["left.json", "placed.json", recovered])
    assert daemon.get("/api/downloads").json()["total"] == 3
    gets = collections.Counter(r.path for r in fake.requests_to("files"))
    assert len(gets) == 3 and set(gets.values()) == {1}
    assert "recovered from a claim" in daemon.logs()


# -- invalid manifests --------------------------------------------------------------


GOOD_SHA = "a" * 64


INVALID = [
    ("42", ["manifest: expected an object with 'items', a list of items, or one item object"]),
    ('"just a string"', ["manifest: expected"]),
    ('{"items": []}', ["items: the manifest lists no items"]),
    ("[]", ["items: the manifest lists no items"]),
    ('{"items": {"url": "http://x/y"}}', ["items: expected a list"]),
    (json.dumps({"items": [{"url": "ftp://example.com/a.bin"}]}), ["items[0].url: only http:// and https://"]),
    (json.dumps({"items": [{"url": "file:///etc/passwd"}]}), ["items[0].url: only http:// and https://"]),
    (json.dumps({"items": [{"url": "http://h/a", "sha256": GOOD_SHA}, {"url": "http://h/b", "sha256": "abcdef0123"}]}),
     ["items[1].sha256: expected 64 hex characters, got 10"]),
    (json.dumps({"items": [{"url": "http://h/a", "sha256": "g" * 64}]}),
     ["items[0].sha256: expected 64 hex characters"]),
    (json.dumps({"items": [{"url": "http://h/a", "filename": "a/b.bin"}]}), ["items[0].filename:"]),
    (json.dumps({"items": [{"url": "http://h/a", "filename": "a\\b.bin"}]}), ["items[0].filename:"]),
    (json.dumps({"items": [{"url": "http://h/a", "filename": ".."}]}), ["items[0].filename:"]),
    (json.dumps({"items": [{"url": "http://h/a", "filename": "."}]}), ["items[0].filename:"]),
    (json.dumps({"items": [{"url": "http://h/a", "filename": "a\u0000b"}]}), ["items[0].filename:"]),
    (json.dumps({"items": [{"url": "http://h/a", "filename": "é" * 128 + ".bin"}]}), ["items[0].filename:"]),
    (json.dumps({"items": [{"url": "http://h/a", "subdir": "/etc"}]}), ["items[0].subdir:"]),
    (json.dumps({"items": [{"url": "http://h/a", "subdir": "../up"}]}), ["items[0].subdir:"]),
    (json.dumps({"items": [{"url": "http://h/a", "subdir": "a/../../b"}]}), ["items[0].subdir:"]),
    (json.dumps({"items": [{"url": "http://h/a", "priority": "high"}]}), ["items[0].priority:"]),
    (json.dumps({"items": [{"url": "http://h/a", "priority": 1.5}]}), ["items[0].priority:"]),
    (json.dumps({"items": [{"url": "http://h/a", "priority": True}]}), ["items[0].priority:"]),
    (json.dumps({"items": [{"sha256": GOOD_SHA}]}), ["items[0]: needs a url"]),
    (json.dumps({"items": [{"air": "urn:air:sdxl:lora:hf:1@2"}]}), ["items[0].air:"]),
    (json.dumps({"items": [{"modelVersionId": "12"}]}), ["items[0].modelVersionId:"]),
    (json.dumps({"items": [{"url": "http://h/a"}, "not an item"]}), ["items[1]:"]),
]


def test_invalid_manifests_are_rejected_whole(make_daemon, fake):
    daemon = make_daemon()
    inbox = daemon.home / "inbox"
    for number, (body, _) in enumerate(INVALID):
        tmp = inbox / f".bad{number}.tmp"
        tmp.write_bytes(body if isinstance(body, bytes) else body.encode())
        os.replace(tmp, inbox / f"bad{number}.json")
    for number, (body, expected) in enumerate(INVALID):
        folder, result = daemon.result(f"bad{number}.json", timeout=40)
        assert folder == "failed", body
        assert result["manifest"] == f"bad{number}.json"
        assert result["status"] == "failed"
        assert result["items"] == []
        assert len(result["errors"]) == len(expected), (body, result["errors"])
        for error, prefix in zip(result["errors"], expected):
            assert error.startswith(prefix), (body, error, prefix)
    assert daemon.get("/api/downloads").json()["total"] == 0
    assert daemon.get("/api/status").status_code == 200
    assert daemon.proc.poll() is None
    assert folder_names(daemon, "inbox") == []
    assert folder_names(daemon, "processing") == []


def test_every_problem_is_listed(make_daemon, fake):
    daemon = make_daemon()
    manifest = {"items": [
        {"url": "http://h/fine.bin"},
        {"url": "http://h/a", "sha256": "abcdef0123"},
        {"url": "gopher://h/b", "filename": "x/y", "subdir": "/abs", "priority": "1"},
        {},
        {"air": "not an air", "colour": "red"},
    ]}
    daemon.drop("many.json", manifest)
    folder, result = daemon.result("many.json")
    assert folder == "failed" and result["items"] == []
    errors = result["errors"]
    assert "items[1].sha256: expected 64 hex characters, got 10" in errors
    for prefix in ("items[2].url:", "items[2].filename:", "items[2].subdir:", "items[2].priority:",
                   "items[3]: needs a url", "items[4].air:", "items[4].colour:"):
        assert any(e.startswith(prefix) for e in errors), (prefix, errors)
    assert not any(e.startswith("items[0]") for e in errors)
    assert daemon.get("/api/downloads").json()["total"] == 0


# -- names already taken ------------------------------------------------------------


def test_name_collisions_get_a_timestamp_suffix(make_daemon, fake):
    daemon = make_daemon()
    for folder in ("done", "failed"):
        (daemon.home / folder / "same.json").write_text('"old manifest"')
        (daemon.home / folder / "same.result.json").write_text('"old result"')
    daemon.drop("same.json", ok_item(fake))
    wait_for(lambda: len(list((daemon.home / "done").glob("same-*.result.json"))) == 1, 30,
             message="suffixed result in done/")
    daemon.drop("same.json", "not an item")
    wait_for(lambda: len(list((daemon.home / "failed").glob("same-*.result.json"))) == 1, 30,
             message="suffixed result in failed/")
    for folder, status in (("done", "done"), ("failed", "failed")):
        names = folder_names(daemon, folder)
        assert (daemon.home / folder / "same.json").read_text() == '"old manifest"'
        assert (daemon.home / folder / "same.result.json").read_text() == '"old result"'
        [suffixed] = [n for n in names if n.startswith("same-") and not n.endswith(".result.json")]
        stem = suffixed[:-5]
        assert f"{stem}.result.json" in names
        result = json.loads((daemon.home / folder / f"{stem}.result.json").read_text())
        assert result["manifest"] == suffixed and result["status"] == status
        assert stem[len("same-"):].isdigit() or "T" in stem


def test_restart_files_away_a_manifest_whose_items_all_ended(make_daemon, fake):
    # A crash after the last item completed but before the manifest moved: simulated by
    # putting the finished manifest back into processing/ and its record back to open.
    daemon = make_daemon()
    daemon.drop("gap.json", ok_item(fake))
    assert daemon.result("gap.json")[0] == "done"
    assert daemon.stop() == 0
    os.replace(daemon.home / "done" / "gap.json", daemon.home / "processing" / "gap.json")
    (daemon.home / "done" / "gap.result.json").unlink()
    with sqlite3.connect(daemon.home / "completed.db") as conn:
        conn.execute("UPDATE manifests SET status = 'processing', finished_at = NULL")
    daemon.start()
    folder, result = daemon.result("gap.json", timeout=20)
    assert folder == "done" and result["items"][0]["status"] == "completed"
    assert folder_names(daemon, "processing") == []
    assert len([r for r in fake.requests_to("files") if r.method == "GET"]) == 1


def test_fifo_and_directory_named_json_are_rejected_and_intake_goes_on(make_daemon, fake):
    """Issue 11 item 9: only regular files are read, without blocking; others go to failed/ with a reason."""
    daemon = make_daemon()
    inbox = daemon.home / "inbox"
    os.mkfifo(inbox / "pipe.json")
    (inbox / "folder.json").mkdir()
    daemon.drop("after.json", ok_item(fake, name="after.bin"))
    assert daemon.result("after.json")[0] == "done"  # a FIFO once blocked intake for ever
    for name, words in (("pipe.json", "not a regular file"), ("folder.json", "a directory")):
        folder, result = daemon.result(name)
        assert folder == "failed" and words in result["errors"][0], result
    assert daemon.get("/healthz").json() == {"ok": True}


def test_duplicate_keys_and_lone_surrogates_are_refused_with_a_reason(make_daemon, fake):
    """Issue 11 item 14 and the duplicate-key note: a clear rejection, never a traceback loop or a 500."""
    daemon = make_daemon()
    item = ok_item(fake, name="dup.bin")
    (daemon.home / "inbox" / "dup.json").write_text(
        '{"items": [{"url": "%s", "sha256": "%s", "sha256": null}]}' % (item["url"], item["sha256"]))
    (daemon.home / "inbox" / "sur.json").write_text('{"items": [{"url": "%s", "filename": "a\\ud800.bin"}]}'
                                                      % item["url"])
    folder, result = daemon.result("dup.json")
    assert folder == "failed" and "appears twice" in result["errors"][0], result
    folder, result = daemon.result("sur.json")
    assert folder == "failed" and "lone surrogate" in result["errors"][0], result
    for body in ('{"url": "http://127.0.0.1:9/\\ud800.bin"}', '{"url": "http://127.0.0.1:9/x", "url": "y"}'):
        response = requests.post(daemon.url + "/api/download", data=body.encode(), timeout=10,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["error"], response.text
    assert "Traceback" not in daemon.logs()
