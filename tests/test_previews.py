"""Preview images, NSFW blur and the detail view (issue "Extensions"): served by the daemon from the
`.preview.*` sidecar on disk, never hot-linked, shown in a real headless Chromium."""
import json
import shutil
import struct
import zlib
from pathlib import Path
from urllib.parse import urlsplit

from screenshots import shoot
from test_gui import Page, expect

TOKEN = "preview-admin-token"


def png(width, height, colour):
    """A small gradient PNG (so the screenshot shows something better than the fake's 2×2 image)."""
    r0, g0, b0 = colour
    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (
        min(255, r0 + x // 2), min(255, g0 + y // 2), min(255, b0 + (x + y) // 3))) for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def sidecar_of(download):
    from daemon.sidecars import find_preview
    return find_preview(download["path"])


def completed(daemon, body):
    download_id = daemon.post("/api/download", body).json()["id"]
    return daemon.wait_state(download_id, "completed", 30)


def test_preview_and_info_served_from_disk(make_daemon, fake):
    fake.add_model(9001, "Preview Model", "LORA")
    fake.add_version(9001, 90011, "v1.0", size=3000, trained_words=("pv_trigger", "second word"),
                     description="<p>Hello <b>world</b></p><script>alert(1)</script>")
    daemon = make_daemon(api_token=TOKEN)
    d = completed(daemon, {"modelVersionId": 90011})
    assert d["preview"] == f"api/downloads/{d['id']}/preview" and d["nsfw_level"] == 1
    sidecar = sidecar_of(d)
    assert sidecar is not None and sidecar.name.endswith(".preview.png")

    r = daemon.get(f"/api/downloads/{d['id']}/preview")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.content == sidecar.read_bytes()
    # a new file on disk is what the route serves: it reads the sidecar, nothing cached or hot-linked
    sidecar.write_bytes(png(8, 8, (10, 20, 30)))
    assert daemon.get(f"/api/downloads/{d['id']}/preview").content == sidecar.read_bytes()

    import requests
    url = f"{daemon.url}/api/downloads/{d['id']}/preview"
    assert requests.get(url, params={"token": TOKEN}, timeout=10).content == sidecar.read_bytes()
    for params in ({}, {"token": "wrong"}):
        refused = requests.get(url, params=params, timeout=10)
        assert refused.status_code == 401 and "error" in refused.json()
    assert requests.get(f"{daemon.url}/api/status", params={"token": TOKEN}, timeout=10).status_code == 401

    info = daemon.get(f"/api/downloads/{d['id']}/info")
    assert info.status_code == 200 and info.headers["Content-Type"] == "application/json"
    info = info.json()
    assert info["id"] == 90011 and info["modelId"] == 9001 and "pv_trigger" in info["trainedWords"]
    assert TOKEN not in json.dumps(info)

    blob = fake.add_blob("plain.bin", size=1000)
    plain = completed(daemon, {"url": blob["url"]})
    assert plain["preview"] is None and plain["nsfw_level"] is None
    for path, status in [(f"/api/downloads/{plain['id']}/preview", 404), (f"/api/downloads/{plain['id']}/info", 404),
                         ("/api/downloads/424242/preview", 404), ("/api/downloads/424242/info", 404),
                         ("/api/downloads/..%2F..%2Fetc%2Fpasswd/preview", 404), ("/api/downloads/x.png/preview", 400),
                         ("/api/downloads/abc/info", 400)]:
        r = daemon.get(path)
        assert r.status_code == status and r.headers["Content-Type"] == "application/json", (path, r.status_code)
        assert r.json()["error"]

    sidecar.unlink()
    assert daemon.get(f"/api/downloads/{d['id']}/preview").status_code == 404
    assert daemon.download(d["id"])["preview"] is None



def test_a_download_found_in_place_adds_missing_sidecars_and_replaces_none(make_daemon, fake):
    """SPEC §10 for downloads too: a model the user already has where a download puts it keeps a hand-edited
    `.civitai.info` (its missing preview is added) and a preview of its own (its missing info is added)."""
    fake.add_model(9101, "Kept Model", "LORA")
    kept = fake.add_version(9101, 91011, "v1.0", size=3000)
    fake.add_model(9102, "Pictured Model", "LORA")
    pictured = fake.add_version(9102, 91021, "v1.0", size=3000)
    daemon = make_daemon(start=False, library={"scan_on_start": False})  # no adoption: the worker finds them
    lora = daemon.home / "downloads" / "Lora"
    lora.mkdir(parents=True)
    for info in (kept, pictured):
        shutil.copyfile(info["path"], lora / info["filename"])
    kept_info = lora / f"{Path(kept['filename']).stem}.civitai.info"
    hand = '{"id": 91011, "note": "edited by hand"}\n'
    kept_info.write_text(hand)
    own_preview = lora / f"{Path(pictured['filename']).stem}.preview.png"
    own_image = png(4, 4, (1, 2, 3))
    own_preview.write_bytes(own_image)
    daemon.start()
    first, second = completed(daemon, {"modelVersionId": 91011}), completed(daemon, {"modelVersionId": 91021})
    assert [first["path"], second["path"]] == [str(lora / kept["filename"]), str(lora / pictured["filename"])]
    assert "already in place" in daemon.logs()
    assert kept_info.read_text() == hand
    added = sidecar_of(first)
    assert added is not None and added.read_bytes().startswith(b"\x89PNG")
    assert own_preview.read_bytes() == own_image and sidecar_of(second) == own_preview
    assert sorted(p.name for p in lora.glob(f"{Path(pictured['filename']).stem}.preview.*")) == [own_preview.name]
    written = json.loads((lora / f"{Path(pictured['filename']).stem}.civitai.info").read_text())
    assert written["id"] == 91021


def test_newer_metadata_refreshes_only_the_daemons_own_info_sidecar(make_daemon, fake):
    """The update check's metadata refresh rewrites `.civitai.info` while it holds what the daemon wrote for
    that download; once the user has edited it, the edit stays (the database still learns the new name)."""
    fake.add_model(9201, "Renamed Model", "LORA")
    fake.add_version(9201, 92011, "first name", size=3000)
    daemon = make_daemon()
    download = completed(daemon, {"modelVersionId": 92011})
    info_path = Path(download["path"]).with_name(f"{Path(download['path']).stem}.civitai.info")
    assert json.loads(info_path.read_text())["name"] == "first name"
    fake.update_version(92011, name="second name")
    assert daemon.post("/api/updates/check").json()["problems"] == []
    assert json.loads(info_path.read_text())["name"] == "second name"
    edited = json.loads(info_path.read_text())
    edited["name"] = "my own name"
    info_path.write_text(json.dumps(edited))
    fake.update_version(92011, name="third name")
    assert daemon.post("/api/updates/check").json()["problems"] == []
    assert json.loads(info_path.read_text())["name"] == "my own name"
    assert daemon.download(download["id"])["version_name"] == "third name"


def open_gui(browser, daemon, token):
    view = Page(browser, daemon, width=1280, height=900)
    view.requests = []
    view.page.on("request", lambda r: view.requests.append(r.url))
    view.context.add_init_script(f"localStorage.setItem('civitai-daemon-token', {json.dumps(token)})")
    view.open()
    return view


def loaded(page, selector):
    page.wait_for_function("s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0 }",
                           arg=selector, timeout=10_000)
    return page.eval_on_selector(selector, "i => i.naturalWidth")


def test_previews_nsfw_blur_and_detail_modal_in_chromium(make_daemon, fake, browser, tmp_path):
    fake.add_model(9101, "Golden Hour Portraits", "LORA", description="<p>Model notes.</p>")
    fake.add_version(9101, 91011, "v2.0", size=4000, base_model="SDXL 1.0", trained_words=("goldenhour", "bokeh"),
                     description="<h2>About</h2><p>Warm <b>portrait</b> light &amp; soft "
                                 "<a href='https://example.com'>bokeh</a>.</p><img src='https://example.com/x.png'>"
                                 "<script>document.title='pwned'</script><p>Trained on four hundred portraits "
                                 "shot in the last hour before sunset, so faces get a low, golden side light and "
                                 "the background melts into round highlights.</p><ul><li>weight 0.6–0.8 works "
                                 "best</li><li>pairs well with film-grain LoRAs</li></ul><p>Use the trigger word "
                                 "at the start of the prompt; add bokeh for stronger background blur. Version 2 "
                                 "fixes the orange cast of v1 on darker skin tones.</p>")
    fake.add_model(9102, "Moody Noir", "Checkpoint", nsfw=True)
    fake.add_version(9102, 91021, "v1", size=4000, image_nsfw_level=8, trained_words=("noir",))
    daemon = make_daemon(api_token=TOKEN)
    blob = fake.add_blob("plain-file.bin", size=2000)
    plain = completed(daemon, {"url": blob["url"]})
    nsfw = completed(daemon, {"modelVersionId": 91021})
    sfw = completed(daemon, {"modelVersionId": 91011})
    assert nsfw["nsfw_level"] == 8 and sfw["nsfw_level"] == 1
    sidecar_of(sfw).write_bytes(png(96, 96, (200, 120, 40)))
    sidecar_of(nsfw).write_bytes(png(96, 96, (40, 60, 160)))

    view = open_gui(browser, daemon, TOKEN)
    page = view.page
    row = page.locator(f'#downloads tr[data-id="{sfw["id"]}"]')
    thumb = f'#downloads tr[data-id="{sfw["id"]}"] img.preview-thumb'
    assert loaded(page, thumb) == 96  # the file on disk, through the daemon
    src = page.eval_on_selector(thumb, "i => i.src")
    parts = urlsplit(src)
    assert f"{parts.scheme}://{parts.netloc}" == daemon.url and parts.path == f"/api/downloads/{sfw['id']}/preview"
    expect(row.locator(".cell-model")).to_contain_text("Golden Hour Portraits · v2.0")
    expect(row.locator(".cell-model")).to_contain_text("SDXL 1.0")
    expect(row.locator(".cell-model")).to_contain_text("LORA")
    expect(page.locator(thumb)).not_to_have_class("preview-thumb nsfw-blur")
    expect(page.locator(f'#downloads tr[data-id="{plain["id"]}"] img')).to_have_count(0)

    # NSFW (level 8 ≥ R): blurred until clicked; the switch shows or hides all of them, remembered
    noir = f'#downloads tr[data-id="{nsfw["id"]}"] img.preview-thumb'
    assert loaded(page, noir) == 96
    expect(page.locator(noir)).to_have_class("preview-thumb nsfw-blur")
    assert page.eval_on_selector(noir, "i => getComputedStyle(i).filter").startswith("blur(")
    page.click(noir)
    expect(page.locator(noir)).to_have_class("preview-thumb")
    expect(page.locator("#detail-modal")).to_be_hidden()  # the first click only un-blurs
    page.reload()
    expect(page.locator(noir)).to_have_class("preview-thumb nsfw-blur")
    page.click("#nsfw-toggle")
    expect(page.locator(noir)).to_have_class("preview-thumb")
    assert page.evaluate("localStorage.getItem('civitai-daemon-show-nsfw')") == "1"
    page.reload()
    expect(page.locator("#nsfw-toggle")).to_be_checked()
    expect(page.locator(noir)).to_have_class("preview-thumb")
    page.click("#nsfw-toggle")
    expect(page.locator(noir)).to_have_class("preview-thumb nsfw-blur")

    # the detail view: stored metadata, text only
    page.evaluate("window.shown = new Promise(done => document.getElementById('detail-modal')"
                  ".addEventListener('shown.bs.modal', done, {once: true})); 0")
    row.locator('button[data-action="details"]').click()
    modal = page.locator("#detail-modal")
    expect(modal).to_be_visible()
    expect(page.locator("#detail-title")).to_have_text("Golden Hour Portraits · v2.0")
    expect(page.locator("#detail-trained-words")).to_contain_text("goldenhour")
    expect(page.locator("#detail-trained-words")).to_contain_text("bokeh")
    expect(page.locator("#detail-sha256")).to_have_text(sfw["sha256"])
    expect(page.locator("#detail-path")).to_have_text(sfw["path"])
    expect(page.locator("#detail-link")).to_have_attribute(
        "href", "https://civitai.com/models/9101?modelVersionId=91011")
    description = page.locator("#detail-description")
    expect(description).to_contain_text("About Warm portrait light & soft bokeh.")
    text = description.inner_text()
    assert "<" not in text and len(text) <= 301 and text.endswith("…"), text
    assert modal.locator("script, b, a[href^='https://example'], h2 + p img").count() == 0
    assert page.title() != "pwned"
    assert loaded(page, "#detail-preview-box img") == 96
    expect(modal.locator(".badge", has_text="SDXL 1.0")).to_be_visible()
    expect(modal.locator(".badge", has_text="LORA")).to_be_visible()
    page.evaluate("shown")  # the end of the modal's fade-in, for the screenshot
    shoot(page, "previews", tmp_path, full_page=False)

    modal.locator(".btn-close").click()
    expect(modal).to_be_hidden()
    page.click(f'#downloads tr[data-id="{plain["id"]}"] button[data-action="details"]')
    expect(modal).to_be_visible()
    expect(page.locator("#detail-sha256")).to_have_text(plain["sha256"])
    expect(page.locator("#detail-note")).to_contain_text("No Civitai metadata")

    view.assert_clean(allow_failed=(f"/api/downloads/{plain['id']}/info",))
    off_site = [u for u in view.requests if not u.startswith(daemon.url + "/") and not u.startswith("data:")]
    assert not off_site, off_site
    assert not any(u.startswith(fake.base_url) for u in view.requests)
    assert [e for e in view.console_errors if "404" not in e] == [], view.console_errors
