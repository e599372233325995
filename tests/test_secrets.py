"""Secrets in URLs (issue 11: items 4, 16, 17, 21): matched by exact name, stored sealed, never shown."""
import json
import logging

from conftest import wait_for
from daemon import logs, redact, service
from daemon.manifest import parse_manifest

TOKEN = "tok3n-" + "a1b2c3d4" * 4
PASSWORD = "Pa55w0rd-" + "e5f6" * 6


def enqueue(parts, *entries):
    return parts.queue.enqueue(parse_manifest(json.dumps({"items": list(entries)}).encode()))


def test_secret_parameters_are_matched_by_exact_name():
    public, secret = redact.split_url("https://h.example/f.bin?monkey=1&author=me&key=one&Signature=s&x=2")
    assert public == "https://h.example/f.bin?monkey=1&author=me&x=2"
    assert redact.join_url(public, secret) == "https://h.example/f.bin?monkey=1&author=me&key=one&Signature=s&x=2"
    assert redact.split_url("https://h.example/a?page=3") == ("https://h.example/a?page=3", "")


def test_urls_differing_only_in_a_secret_are_two_downloads(core, fake):
    parts = core()
    url = fake.add_blob("two.bin", size=1000)["url"]
    first, second = enqueue(parts, {"url": f"{url}?key=one"}, {"url": f"{url}?key=two", "filename": "b.bin"})
    rows = parts.queue.get(first), parts.queue.get(second)
    assert [r.parent_id for r in rows] == [None, None], "two different URLs were merged into one download"
    assert [parts.queue.private_url(r) for r in rows] == [f"{url}?key=one", f"{url}?key=two"]
    assert rows[0].url == rows[1].url == url  # what the API shows: no secret


def test_the_full_url_survives_a_restart_but_the_database_never_holds_the_token(core, fake, tmp_path):
    parts = core()
    url = fake.add_blob("tok.bin", size=1000)["url"] + f"?token={TOKEN}&v=1"
    [download_id] = enqueue(parts, {"url": url})
    # A restart: new parts over the same database and key file, nothing kept in memory.
    again = service.build_core(parts.settings)
    row = again.queue.get(download_id)
    assert again.queue.private_url(row) == url
    assert TOKEN not in row.url and TOKEN not in (row.url_secret or "")
    for path in tmp_path.glob("queue.db*"):
        if not path.name.endswith(".key"):
            assert TOKEN.encode() not in path.read_bytes(), path
    assert again.pool.run_until_idle() == 1
    assert again.queue.get(download_id).state == "completed"
    assert any(TOKEN in r.path for r in fake.requests_to(prefix="/files/tok.bin")), "fetched with its token"


def test_same_url_with_and_without_sha256_downloads_once(core, fake):
    parts = core(retries=0)
    blob, blob2 = fake.add_blob("once.bin", size=2000), fake.add_blob("once2.bin", size=3000)
    hashed, plain = enqueue(parts, {"url": blob["url"], "sha256": blob["sha256"]},
                            {"url": blob["url"], "filename": "plain.bin"})
    plain_first, hashed_later = enqueue(parts, {"url": blob2["url"]},
                                        {"url": blob2["url"], "sha256": blob2["sha256"], "filename": "h2.bin"})
    assert parts.queue.get(plain).parent_id == hashed
    assert parts.queue.get(hashed_later).parent_id == plain_first
    # Different hashes named for one URL are different content: no merge.
    other = enqueue(parts, {"url": blob["url"], "sha256": "0" * 64, "filename": "other.bin"})[0]
    assert parts.queue.get(other).parent_id is None
    assert parts.pool.run_until_idle() == 5
    gets = lambda name: [r for r in fake.requests_to(prefix=f"/files/{name}") if r.method == "GET"]  # noqa: E731
    assert (len(gets("once.bin")), len(gets("once2.bin"))) == (2, 1)  # `other` is fetched (and fails its hash)
    assert [parts.queue.get(i).state for i in (hashed, plain, plain_first, hashed_later, other)] == [
        "completed", "completed", "completed", "completed", "failed"]


def test_a_twin_whose_parent_has_another_hash_downloads_on_its_own(core, fake):
    parts = core()
    blob = fake.add_blob("twin.bin", size=2000)
    parent, child = enqueue(parts, {"url": blob["url"]}, {"url": blob["url"], "sha256": "1" * 64, "filename": "c.bin"})
    assert parts.queue.get(child).parent_id == parent
    parts.pool.run_until_idle()
    row = parts.queue.get(child)
    assert row.state == "failed" and "SHA256" in row.error.upper(), row.error  # checked, never linked blindly


def test_signed_url_secrets_never_reach_the_debug_log():
    redactor = logs.Redactor()
    line = ("GET /f.bin?Signature=abcSIG&Policy=abcPOL&sig=abcAZ&X-Goog-Signature=abcGOOG&access_token=abcAT"
            "&Key-Pair-Id=abcKP&monkey=kept HTTP/1.1")
    record = logging.LogRecord("urllib3", logging.DEBUG, __file__, 1, line, None, None)
    redactor.filter(record)
    for secret in ("abcSIG", "abcPOL", "abcAZ", "abcGOOG", "abcAT", "abcKP"):
        assert secret not in record.msg, record.msg
    assert "monkey=kept" in record.msg


def test_password_in_a_url_never_leaks(make_daemon, fake, hook):
    d = make_daemon(webhook_url=hook.url, retries=0)
    url = f"http://user:{PASSWORD}@127.0.0.1:9/model.bin?access_token={TOKEN}"
    download_id = d.post("/api/download", {"url": url}).json()["id"]
    row = d.wait_state(download_id, "failed", timeout=30)
    d.drop("pw.json", {"items": [{"url": url.replace("model.bin", "m2.bin")}]})
    folder, result = d.result("pw.json", timeout=30)
    wait_for(lambda: hook.events("manifest.failed"), 20, message="the webhook got the manifest")
    d.stop()
    seen = {
        "api": json.dumps(row), "result": json.dumps(result),
        "webhook": json.dumps(hook.json_posts()),
        "logs": d.logs() + (d.home / "logs" / "error.log").read_text(), "stderr": d.read_stderr(),
    }
    for path in d.home.rglob("*"):
        # The user's own manifest is filed as it came; everything the daemon wrote is checked.
        if path.is_file() and not path.name.endswith(".key") and path != d.home / "failed" / "pw.json":
            seen[str(path)] = path.read_bytes().decode("utf-8", "replace")
    for where, text in seen.items():
        assert PASSWORD not in text, where
        assert TOKEN not in text, where
    assert row["url"] == "http://127.0.0.1:9/model.bin"
