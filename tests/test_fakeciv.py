"""Self-test of the fake Civitai server (real HTTP through requests)."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import time
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))
from fakeciv import FakeCivitai  # noqa: E402

UA = {"User-Agent": "civitai-daemon/test"}
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126 Safari/537.36"}


@pytest.fixture
def fake(tmp_path):
    with FakeCivitai(tmp_path / "civ") as f:
        f.add_model(10, "Example Realism XL", "Checkpoint")
        f.add_version(10, 100, "v1.0", size=300_000)
        f.add_version(10, 101, "v2.0", size=3 * 1024 * 1024, base_model="SDXL 1.0")
        f.add_model(20, "Locked LoRA", "LORA", nsfw=True)
        f.add_version(20, 200, "v1", size=50_000, require_auth=True, filename="lóra_ü.safetensors")
        yield f


def test_redirect_range_and_416(fake):
    info = fake.version_info(101)
    r = requests.get(f"{fake.base_url}/api/download/models/101", headers=UA, allow_redirects=False, timeout=5)
    assert r.status_code == 307
    assert r.headers["Cache-Control"] == "no-store, max-age=0"
    loc = r.headers["Location"]
    assert loc.startswith(f"http://localhost:{fake.port}/storage/") and "X-Amz-Signature=" in loc
    assert r.text == loc

    full = requests.get(loc, headers=UA, timeout=5)
    assert full.status_code == 200
    assert int(full.headers["Content-Length"]) == info["size"] == len(full.content)
    assert hashlib.sha256(full.content).hexdigest() == info["sha256"]
    assert full.headers["Content-Disposition"] == f'attachment; filename="{info["filename"]}"'
    assert full.headers["Accept-Ranges"] == "bytes" and full.headers["ETag"]

    part = requests.get(loc, headers={**UA, "Range": "bytes=1000-"}, timeout=5)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 1000-{info['size'] - 1}/{info['size']}"
    assert part.content == full.content[1000:]

    stale = requests.get(loc, headers={**UA, "Range": "bytes=1000-", "If-Range": '"nope"'}, timeout=5)
    assert stale.status_code == 200 and len(stale.content) == info["size"]

    done = requests.get(loc, headers={**UA, "Range": f"bytes={info['size']}-"}, timeout=5)
    assert done.status_code == 416
    assert done.headers["Content-Range"] == f"bytes */{info['size']}"


def test_authorization_dropped_on_redirect_and_rejected_by_storage(fake):
    r = requests.get(f"{fake.base_url}/api/download/models/200", timeout=5,
                     headers={**UA, "Authorization": "Bearer good-token"})
    assert r.status_code == 200
    assert [h.status_code for h in r.history] == [307]
    api_req, storage_req = fake.requests[-2], fake.requests[-1]
    assert api_req.host == "api" and api_req.headers["Authorization"] == "Bearer good-token"
    assert storage_req.host == "storage" and "Authorization" not in storage_req.headers
    # raw UTF-8 bytes in filename="..."; requests shows them decoded as latin-1
    cd = r.headers["Content-Disposition"].encode("latin-1").decode("utf-8")
    assert cd == 'attachment; filename="lóra_ü.safetensors"'

    loc = r.history[0].headers["Location"]
    bad = requests.get(loc, headers={**UA, "Authorization": "Bearer good-token"}, timeout=5)
    assert bad.status_code == 400 and "x-amz-content-sha256" in bad.text


def test_auth_required_version(fake):
    url = f"{fake.base_url}/api/download/models/200"
    r = requests.get(url, headers=UA, allow_redirects=False, timeout=5)
    assert r.status_code == 401
    assert r.json() == {"error": "Unauthorized",
                        "message": "The creator of this asset requires you to be logged in to download it"}
    # an unknown token is anonymous; a bare header without a scheme word is anonymous
    for auth in ("Bearer wrong", "good-token"):
        r = requests.get(url, headers={**UA, "Authorization": auth}, allow_redirects=False, timeout=5)
        assert r.status_code == 401
    # the header wins over ?token=
    r = requests.get(url + "?token=good-token", headers={**UA, "Authorization": "Bearer hf_x"},
                     allow_redirects=False, timeout=5)
    assert r.status_code == 401
    r = requests.get(url + "?token=good-token", headers=UA, allow_redirects=False, timeout=5)
    assert r.status_code == 307
    r = requests.get(url, headers={**UA, "Authorization": "Bearer good-token"}, allow_redirects=False, timeout=5)
    assert r.status_code == 307


def test_browser_gets_login_page(fake):
    r = requests.get(f"{fake.base_url}/api/download/models/200", headers=BROWSER, allow_redirects=False, timeout=5)
    assert r.status_code == 307
    assert r.headers["Location"] == "/login?returnUrl=%2Fmodel-versions%2F200&reason=download-auth"
    r = requests.get(f"{fake.base_url}/api/download/models/200", headers=BROWSER, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "<html" in r.text and "Sign in" in r.text


def test_gating_flags(fake):
    fake.add_version(10, 102, "v3.0", size=1000, early_access_until="2999-01-01T00:00:00.000Z")
    r = requests.get(f"{fake.base_url}/api/download/models/102", headers=UA, allow_redirects=False, timeout=5)
    assert r.status_code == 403 and r.json()["error"] == "Early Access"
    fake.update_version(100, archived=True)
    r = requests.get(f"{fake.base_url}/api/download/models/100", headers=UA, allow_redirects=False, timeout=5)
    assert r.status_code == 410
    fake.update_version(101, deleted=True)
    r = requests.get(f"{fake.base_url}/api/download/models/101", headers=UA, allow_redirects=False, timeout=5)
    assert r.status_code == 404 and r.json() == {"error": "File not found"}


def test_drop_after_fault(fake):
    info = fake.version_info(101)
    fake.faults.drop_after = 100_000
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"{fake.base_url}/api/download/models/101", headers=UA, timeout=5).content
    r = requests.get(f"{fake.base_url}/api/download/models/101", headers=UA, timeout=5)  # counter spent
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == info["sha256"]


def test_corrupt_and_5xx_faults(fake):
    info = fake.version_info(100)
    fake.faults.corrupt_times = 1
    fake.faults.status_5xx = 1
    url = f"{fake.base_url}/api/download/models/100"
    assert requests.get(url, headers=UA, timeout=5).status_code == 503
    bad = requests.get(url, headers=UA, timeout=5)
    assert len(bad.content) == info["size"] and hashlib.sha256(bad.content).hexdigest() != info["sha256"]
    good = requests.get(url, headers=UA, timeout=5)
    assert hashlib.sha256(good.content).hexdigest() == info["sha256"]


def test_model_shapes_and_bulk(fake):
    m = requests.get(f"{fake.base_url}/api/v1/models/10", headers=UA, timeout=5).json()
    assert [v["id"] for v in m["modelVersions"]] == [101, 100]
    v0 = m["modelVersions"][0]
    assert "updatedAt" not in v0 and v0["files"][0]["primary"] is True
    info = fake.version_info(101)
    assert v0["files"][0]["hashes"]["SHA256"] == info["sha256"].upper()
    assert round(v0["files"][0]["sizeKB"] * 1024) == info["size"]
    assert requests.get(f"{fake.base_url}/api/v1/models/99", timeout=5).json() == {"error": "No model with id 99"}

    mv = requests.get(f"{fake.base_url}/api/v1/model-versions/101", timeout=5).json()
    assert mv["modelId"] == 10 and "updatedAt" in mv and mv["model"]["type"] == "Checkpoint"
    bh = requests.get(f"{fake.base_url}/api/v1/model-versions/by-hash/{info['sha256'][:10]}", timeout=5).json()
    assert bh["id"] == 101

    bulk = requests.get(f"{fake.base_url}/api/v1/models?ids=10,20&limit=100&nsfw=true", headers=UA, timeout=5)
    body = bulk.json()
    assert [i["id"] for i in body["items"]] == [10, 20] and "metadata" in body
    sfw = requests.get(f"{fake.base_url}/api/v1/models", params={"ids": [10, 20]}, timeout=5).json()
    assert [i["id"] for i in sfw["items"]] == [10]  # nsfw model hidden without nsfw=true
    assert len(fake.requests_to("api", "/api/v1/models?")) == 2

    fake.reorder(10, [100, 101])
    m = requests.get(f"{fake.base_url}/api/v1/models/10", timeout=5).json()
    assert [v["id"] for v in m["modelVersions"]] == [100, 101]


def test_generated_safetensors_parses(fake):
    r = requests.get(f"{fake.base_url}/api/download/models/100", headers=UA, timeout=5)
    data = r.content
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    start, end = header["w"]["data_offsets"]
    assert 8 + hlen + end == len(data) == 300_000
    assert header["w"]["shape"] == [end - start]


def test_reupload_changes_sha(fake):
    before = fake.version_info(100)
    after = fake.set_version_content(100)
    assert after["sha256"] != before["sha256"] and after["size"] == before["size"]
    mv = requests.get(f"{fake.base_url}/api/v1/model-versions/100", timeout=5).json()
    assert mv["files"][0]["hashes"]["SHA256"] == after["sha256"].upper()
    r = requests.get(f"{fake.base_url}/api/download/models/100", headers=UA, timeout=5)
    assert hashlib.sha256(r.content).hexdigest() == after["sha256"]


def test_files_route_and_expiry(fake):
    blob = fake.add_blob("plain.bin", size=10_000)
    r = requests.get(blob["url"], timeout=5)
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == blob["sha256"]
    assert fake.requests[-1].host == "files"
    fake.faults.expire_seconds = 0
    r = requests.get(f"{fake.base_url}/api/download/models/100", headers=UA, timeout=5)
    assert r.status_code == 403 and "ExpiredRequest" in r.text


# ---------------------------------------------------------------- segment faults


def _storage_url(fake, vid):
    r = requests.get(f"{fake.base_url}/api/download/models/{vid}", headers=UA, allow_redirects=False, timeout=5)
    return r.headers["Location"]


def _ranged(url, start, end=None, **headers):
    span = f"bytes={start}-" + ("" if end is None else str(end - 1))
    return requests.get(url, headers={**UA, "Range": span, **headers}, timeout=10)


def test_served_ranges_and_bytes_served_twice(fake):
    info = fake.version_info(101)
    url = _storage_url(fake, 101)
    assert _ranged(url, 0, 1000).status_code == 206
    assert _ranged(url, 500, 2000).status_code == 206
    assert fake.served_ranges(info["filename"]) == [(0, 1000), (500, 2000)]
    assert fake.bytes_served_twice(info["filename"]) == 500


def test_segment_drop_and_slow_segment(fake):
    info = fake.version_info(101)
    url = _storage_url(fake, 101)
    fake.faults.segment_drop_after = 10_000
    assert len(_ranged(url, 0, 50_000).content) == 50_000  # byte 0 on: not a segment
    with pytest.raises(requests.exceptions.RequestException):
        _ranged(url, 50_000).content
    assert fake.served_ranges(info["filename"])[-1] == (50_000, 60_000)
    fake.faults.slow_segment_rate = 100_000
    assert len(_ranged(url, 0, 20_000).content) == 20_000
    assert fake.faults.slow_segment_times == 1  # byte 0 on is not a segment: counter untouched
    r = _ranged(url, 60_000, 80_000)
    assert r.status_code == 206 and len(r.content) == 20_000
    assert fake.faults.slow_segment_times == 0  # that segment was the slow one


def test_segment_expire_after(fake):
    url = _storage_url(fake, 101)
    fake.faults.segment_expire_after = 20_000
    with pytest.raises(requests.exceptions.RequestException):
        _ranged(url, 100_000).content
    r = _ranged(url, 120_000)
    assert r.status_code == 403 and "ExpiredRequest" in r.text
    assert requests.get(url, headers=UA, timeout=5).status_code == 403  # the whole link, not one range
    fresh = _storage_url(fake, 101)
    assert _ranged(fresh, 120_000).status_code == 206


def test_etag_change_after(fake):
    url = _storage_url(fake, 101)
    first = _ranged(url, 0, 100_000)
    fake.faults.etag_change_after = 150_000
    _ranged(url, 100_000, 200_000)
    later = _ranged(url, 200_000, 300_000)
    assert later.headers["ETag"] != first.headers["ETag"]
    assert later.headers["Last-Modified"] != first.headers["Last-Modified"]
    stale = _ranged(url, 300_000, 400_000, **{"If-Range": first.headers["ETag"]})
    assert stale.status_code == 200  # If-Range with the old validator: the whole new body
    assert fake.faults.etag_change_after is None


def test_ignore_range_on_second_request_only(fake):
    info = fake.version_info(101)
    url = _storage_url(fake, 101)
    fake.faults.ignore_range_on = 2
    assert _ranged(url, 1000).status_code == 206
    second = _ranged(url, 2000)
    assert second.status_code == 200 and len(second.content) == info["size"]
    assert _ranged(url, 3000).status_code == 206


def test_most_at_once_counts_overlapping_bodies(fake):
    import threading
    info = fake.version_info(101)
    url = _storage_url(fake, 101)
    fake.faults.rate = 1_000_000  # 0.5 s for each 500 KB body
    threads = [threading.Thread(target=_ranged, args=(url, i * 500_000, (i + 1) * 500_000)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 5
    while any(not s.closed for s in fake.served) and time.monotonic() < deadline:
        time.sleep(0.01)  # the server notes the end just after the last byte went out
    assert fake.most_at_once(info["filename"]) == 3
    _ranged(url, 0, 1000)
    assert fake.most_at_once(info["filename"]) == 3
