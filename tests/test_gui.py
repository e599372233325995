"""The Bootstrap GUI in a real Chromium against the real daemon process (SPEC §8, GET /gui)."""
import re
import time
from urllib.parse import urlsplit

import pytest

from conftest import wait_for
from screenshots import shoot


class Page:
    """A page plus a record of every request that failed or left the daemon's host."""

    def __init__(self, browser, daemon, width=1280, height=900):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.page = self.context.new_page()
        self.daemon = daemon
        self.failed = []
        self.external = []
        self.console_errors = []
        self.navigations = 0
        self._navigating = False  # a main-frame navigation was requested and has not committed yet
        self._started = {}  # request → (navigations before it started, whether one was pending then)
        self.page.on("request", self._request)
        self.page.on("requestfailed", self._failed)
        self.page.on("framenavigated", self._committed)
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))

    def _failed(self, request):
        # A reload or navigation by the test aborts the page's requests still in flight: not the GUI's fault.
        # That includes requests the old page still sent after the reload began, before the new page
        # committed (seen once in CI: /api/updates aborted with the navigation already counted).
        started, pending = self._started.get(request, (self.navigations, False))
        if request.failure == "net::ERR_ABORTED" and (self.navigations > started or pending):
            return
        self.failed.append((request.url, request.failure))

    def _request(self, request):
        # A navigation's own request starts before the old page's requests are aborted.
        if request.is_navigation_request() and request.frame.parent_frame is None:
            self.navigations += 1
            self._navigating = True
        self._started[request] = (self.navigations, self._navigating and not request.is_navigation_request())
        host = urlsplit(request.url).hostname
        if request.url.startswith(("data:", "blob:")):
            return
        if host not in ("127.0.0.1", "localhost"):
            self.external.append(request.url)

    def _committed(self, frame):
        if frame.parent_frame is None:
            self._navigating = False

    def open(self):
        self.page.goto(self.daemon.url + "/gui")
        return self.page

    def close(self):
        self.context.close()

    def assert_clean(self, allow_failed=()):
        failed = [f for f in self.failed if not any(a in f[0] for a in allow_failed)]
        assert not self.external, f"requests to other hosts: {self.external}"
        assert not failed, f"failed requests: {failed}"


@pytest.fixture
def gui(browser):
    pages = []

    def factory(daemon, **kwargs):
        page = Page(browser, daemon, **kwargs)
        pages.append(page)
        return page

    yield factory
    for page in pages:
        page.close()


def expect(locator):
    from playwright.sync_api import expect as pw_expect
    return pw_expect(locator)


def test_add_watch_progress_and_cancel(make_daemon, fake, gui):
    daemon = make_daemon()
    blob = fake.add_blob("gui-slow.safetensors", size=4_000_000, safetensors=True)
    fake.faults.rate = 300_000
    view = gui(daemon)
    page = view.open()
    expect(page.locator("#conn-state")).to_have_text("live")
    expect(page.locator("#conn-banner")).to_be_hidden()
    # Bootstrap comes from the daemon itself: styles and scripts applied with no internet
    assert page.evaluate("typeof bootstrap.Modal") == "function"
    assert page.eval_on_selector("#add-submit", "b => getComputedStyle(b).backgroundColor") == "rgb(13, 110, 253)"

    page.fill("#add-target", blob["url"])
    page.click("#add-submit")
    expect(page.locator("#add-result")).to_contain_text("Queued as download #")
    download_id = int(re.search(r"#(\d+)", page.locator("#add-result").inner_text()).group(1))
    row = page.locator(f'#downloads tr[data-id="{download_id}"]')
    expect(row.locator(".cell-state")).to_have_text("downloading", timeout=10_000)

    progress = row.locator(".progress-text")
    expect(progress).to_contain_text("%", timeout=10_000)
    first = progress.inner_text()
    expect(progress).not_to_have_text(first, timeout=10_000)  # it moves by itself (WebSocket progress)
    second = progress.inner_text()
    assert _percent(second) > _percent(first), (first, second)
    expect(row.locator(".cell-speed")).to_contain_text("/s")

    row.locator("button[data-action=cancel]").click()
    expect(row.locator(".cell-state")).to_have_text("cancelled", timeout=10_000)
    expect(row.locator("button[data-action=retry]")).to_be_visible()
    assert daemon.download(download_id)["state"] == "cancelled"
    view.assert_clean()
    assert not view.console_errors, view.console_errors


def _percent(text):
    match = re.search(r"\((\d+)%\)", text)
    return int(match.group(1)) if match else -1


def test_token_prompt(make_daemon, fake, gui):
    daemon = make_daemon(api_token="gui-token")
    blob = fake.add_blob("tokened.bin", size=5000)
    download_id = daemon.post("/api/download", {"url": blob["url"]}).json()["id"]
    daemon.wait_state(download_id, "completed", 20)
    view = gui(daemon)
    page = view.open()
    expect(page.locator("#token-modal")).to_be_visible()
    page.fill("#token-input", "gui-token")
    page.click("#token-save")
    expect(page.locator("#token-modal")).to_be_hidden()
    row = page.locator(f'#downloads tr[data-id="{download_id}"]')
    expect(row.locator(".cell-state")).to_have_text("completed")
    expect(page.locator("#conn-state")).to_have_text("live")
    expect(page.locator("#metric-completed")).to_have_text("1")
    assert page.evaluate("localStorage.getItem('civitai-daemon-token')") == "gui-token"
    # the refused first attempts (401 before the token was entered) are answers, not failed requests
    view.assert_clean(allow_failed=("/ws/downloads",))


def test_history_metrics_updates_and_paging(make_daemon, fake, gui):
    daemon = make_daemon()
    blobs = [fake.add_blob(f"many{i}.bin", size=500) for i in range(55)]
    daemon.drop("gui-batch.json", {"items": [{"url": b["url"]} for b in blobs]})
    folder, _ = daemon.result("gui-batch.json", 60)
    assert folder == "done"
    view = gui(daemon)
    page = view.open()
    expect(page.locator("#page-info")).to_have_text("1–50 of 55 total")
    expect(page.locator("#downloads tr[data-id]")).to_have_count(50)
    expect(page.locator("#downloads tr[data-id]").first).to_have_attribute("data-id", "55")
    page.click("#page-next")
    expect(page.locator("#page-info")).to_have_text("51–55 of 55 total")
    expect(page.locator("#downloads tr[data-id]")).to_have_count(5)
    page.click("#page-prev")
    expect(page.locator("#page-info")).to_have_text("1–50 of 55 total")
    page.select_option("#state-filter", "failed")
    expect(page.locator("#downloads tbody")).to_contain_text("No failed downloads.")
    page.select_option("#state-filter", "completed")
    expect(page.locator("#page-info")).to_have_text("1–50 of 55 total")

    expect(page.locator("#metric-completed")).to_have_text("55")
    expect(page.locator("#metric-failed")).to_have_text("0")
    expect(page.locator("#metric-success")).to_have_text("100.0%")
    expect(page.locator("#manifests")).to_contain_text("gui-batch.json")
    expect(page.locator("#manifests .manifest-status")).to_have_text("done")
    expect(page.locator("#updates")).to_contain_text("No updates detected.")
    page.click("#check-updates")
    expect(page.locator("#updates-result")).to_contain_text("Check finished")
    view.assert_clean()
    assert not view.console_errors, view.console_errors


def test_disconnected_banner(make_daemon, gui):
    daemon = make_daemon()
    view = gui(daemon)
    page = view.open()
    expect(page.locator("#conn-state")).to_have_text("live")
    expect(page.locator("#conn-banner")).to_be_hidden()
    assert daemon.stop() == 0
    expect(page.locator("#conn-banner")).to_be_visible(timeout=10_000)
    expect(page.locator("#conn-banner")).to_contain_text("Disconnected")
    expect(page.locator("#conn-state")).to_have_text("offline")
    view.assert_clean(allow_failed=("/ws/downloads", "/api/"))


def test_screenshot_with_downloads_in_flight(make_daemon, fake, gui, tmp_path):
    """The GUI at 1280 px with slow Civitai downloads running (UPDATE_SCREENSHOTS=1 saves docs/gui.png)."""
    daemon = make_daemon(workers=3)
    models = [(4201, "Realistic Vision", "Checkpoint", 130072, "V5.1", 90_000, "SD 1.5"),
              (58390, "Detail Tweaker", "LORA", 62833, "v1.0", 40_000, "SD 1.5"),
              (133005, "Juggernaut XL", "Checkpoint", 357609, "v9 + RunDiffusionPhoto 2", 30_000_000, "SDXL 1.0"),
              (122359, "Add More Details", "LORA", 135867, "XL v1", 20_000_000, "SDXL 1.0"),
              (132632, "epiCPhotoGasm", "Checkpoint", 429454, "Ultimate Fidelity", 25_000_000, "SD 1.5"),
              (276200, "ControlNet Depth", "Controlnet", 311410, "SDXL", 8_000_000, "SDXL 1.0")]
    for model_id, name, kind, version_id, version, size, base in models:
        fake.add_model(model_id, name, kind)
        fake.add_version(model_id, version_id, version, size=size, base_model=base)
    daemon.drop("sd15-starter.json", {"items": [{"modelVersionId": m[3]} for m in models[:2]]})
    assert daemon.result("sd15-starter.json", 30)[0] == "done"
    fake.faults.rate = 250_000
    ids = daemon.post("/api/batch", {"items": [{"modelVersionId": m[3], "priority": 10 - i}
                                               for i, m in enumerate(models[2:])]}).json()["ids"]
    view = gui(daemon, width=1280, height=900)
    page = view.open()
    for download_id in ids[:3]:
        expect(page.locator(f'#downloads tr[data-id="{download_id}"] .cell-speed')).to_contain_text(
            "/s", timeout=15_000)
    expect(page.locator("#metric-completed")).to_have_text("2")
    shoot(page, "gui", tmp_path, view="downloads")
    for download_id in ids:
        daemon.post(f"/api/downloads/{download_id}/cancel")
    view.assert_clean()


def test_states_and_tabs_come_from_the_page_modules(make_daemon, gui):
    """The state filter and count badges list the server's states; each view has a tab, Downloads first."""
    daemon = make_daemon()
    status = daemon.get("/api/status").json()
    states = status.get("states") or list(status["counts"])
    view = gui(daemon)
    page = view.open()
    expect(page.locator("#conn-state")).to_have_text("live")
    expect(page.locator("#state-filter option")).to_have_count(len(states) + 1)
    assert page.eval_on_selector_all("#state-filter option", "os => os.map(o => o.value)") == ["", *states]
    assert page.eval_on_selector_all("#counts [data-state]", "bs => bs.map(b => b.dataset.state)") == states
    expect(page.locator("#view-tabs [data-tab]")).to_have_text(["Downloads", "Library", "Updates"])
    expect(page.locator('[data-view="downloads"]')).to_be_visible()
    expect(page.locator('[data-view="library"]')).to_be_hidden()
    assert not view.console_errors, view.console_errors


def test_retry_all_failed_button(make_daemon, fake, gui):
    """Issue 11 note: after an outage one click retries every failed row."""
    daemon = make_daemon(retries=0)
    blobs = [fake.add_blob(f"gui-outage{i}.bin", size=700) for i in range(2)]
    fake.faults.status_5xx = -1
    ids = [daemon.post("/api/download", {"url": b["url"]}).json()["id"] for b in blobs]
    for download_id in ids:
        daemon.wait_state(download_id, "failed")
    fake.faults.status_5xx = 0
    view = gui(daemon)
    page = view.open()
    page.click("#retry-failed")
    expect(page.locator("#retry-failed")).to_have_text("Retried 2")
    for download_id in ids:
        assert daemon.wait_state(download_id, {"completed", "failed"})["state"] == "completed"
    expect(page.locator("#metric-completed")).to_have_text("2")


def _segmented_daemon(make_daemon, fake, rate=1 << 20):
    daemon = make_daemon(connections=4, segment_min="1MiB")
    fake.add_model(77, "Segmented", "Checkpoint")
    fake.add_version(77, 770, "v1", size=16 << 20)
    fake.faults.rate = rate  # per connection: 16 MiB over four at 1 MiB/s takes about 4 s
    return daemon


def test_segmented_row_shows_its_connections_and_segments(make_daemon, fake, gui):
    daemon = _segmented_daemon(make_daemon, fake)
    view = gui(daemon)
    page = view.open()
    expect(page.locator("#conn-state")).to_have_text("live")
    daemon.drop("seg.json", {"modelVersionId": 770})
    row = page.locator("#downloads tr[data-state=downloading]")
    expect(row.locator(".segment-count")).to_have_text("4 connections", timeout=20_000)
    expect(row.locator(".segment")).to_have_count(4)
    done = row.locator(".segment-done").first
    expect(done).not_to_have_attribute("style", "width: 0%;", timeout=10_000)
    page.locator('#downloads tr[data-state=completed]').wait_for(timeout=60_000)
    expect(page.locator(".cell-segments")).to_have_count(0)  # gone once the file is complete
    view.assert_clean()
    assert not view.console_errors, view.console_errors


def test_a_page_answer_older_than_the_feed_keeps_the_rows_the_feed_drew(make_daemon, fake, gui):
    # The page's api/downloads answers come on their own connection: one the daemon wrote before a
    # download existed can be read after that download's events. Held here until the download runs
    # with its segments, such an answer must not wipe the row (the flake of the test above).
    daemon = _segmented_daemon(make_daemon, fake, rate=1 << 19)  # about 8 s: time to look at the row
    view = gui(daemon)
    held, holding = [], [True]

    def hold(route):
        if not holding[0]:
            route.continue_()
            return
        held.append((route, route.fetch()))  # the daemon answers now; the page reads it on release

    view.page.route(re.compile(r"/api/downloads\?"), hold)
    page = view.open()
    expect(page.locator("#conn-state")).to_have_text("live")
    deadline = time.monotonic() + 10
    while len(held) < 2 and time.monotonic() < deadline:  # the start's load and the snapshot's
        page.wait_for_timeout(50)
    assert len(held) == 2, held
    holding[0] = False
    assert held[-1][1].json()["items"] == []
    daemon.drop("seg.json", {"modelVersionId": 770})
    download_id = wait_for(lambda: (items := daemon.get("/api/downloads").json()["items"]) and items[0]["id"],
                           message="the download")
    wait_for(lambda: daemon.download(download_id).get("segments"), message="its segments")
    row = page.locator(f'#downloads tr[data-id="{download_id}"]')
    expect(row.locator(".segment-count")).to_have_text("4 connections")  # drawn from the feed
    page.evaluate("id => { window.drawn = document.querySelector(`#downloads tr[data-id='${id}']`); }", download_id)
    for route, answer in held:
        route.fulfill(response=answer)
    page.wait_for_function("() => !window.drawn.isConnected")  # the newest answer replaced the rows
    expect(row).to_have_attribute("data-state", "downloading")
    expect(row.locator(".segment")).to_have_count(4)
    expect(page.locator("#page-info")).to_have_text("1–1 of 1 total")
    page.locator(f'#downloads tr[data-id="{download_id}"][data-state=completed]').wait_for(timeout=60_000)
    expect(page.locator(".cell-segments")).to_have_count(0)
    assert not view.console_errors, view.console_errors
