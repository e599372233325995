"""The GUI's "Update all" in a real Chromium: check boxes, counts before confirming, policy, progress (SPEC §11)."""
import datetime
import os

import requests

from conftest import ROOT, wait_for
from test_gui import Page, expect
from test_library import content, put

SCREENSHOT = ROOT / "docs" / "update-all.png" if os.environ.get("UPDATE_SCREENSHOTS") else None


def test_update_all_with_check_boxes_counts_confirm_and_progress(fake, make_daemon, browser, tmp_path):
    root = tmp_path / "library"
    for m, name in ((1, "Newer"), (2, "Base change"), (3, "Replace me")):
        fake.add_model(m, name, "LORA")
        fake.add_version(m, m * 10, "v1", data=content(f"gui-update-{m}"), base_model="SD 1.5")
        put(root / "Lora" / f"u{m}.safetensors", content(f"gui-update-{m}"))
    d = make_daemon(library={"roots": [str(root)]},
                    update_check={"enabled": False, "time": "04:00", "auto_download": True, "policy": "notify"})
    wait_for(lambda: d.get("/api/library/scan").json()["state"] == "done", 60, message="scan")
    fake.add_version(1, 11, "v2", size=5000)
    fake.add_version(2, 21, "v2 XL", size=5000, base_model="SDXL 1.0")
    fake.add_version(3, 31, "v2", size=5000)
    assert requests.post(d.url + "/api/updates/check", timeout=60).json()["summary"]["found"] == 3

    view = Page(browser, d, width=1280, height=800)
    try:
        page = view.page
        page.goto(d.url + "/gui#updates")
        expect(page.locator("#conn-state")).to_have_text("live")
        rows = page.locator("#update-list tbody tr")
        expect(rows).to_have_count(3)
        base = page.locator('#update-list tr:has-text("Base change")')
        expect(base.locator(".update-pick")).not_to_be_checked()  # never picked for you
        expect(base).to_contain_text("SD 1.5 → SDXL 1.0")
        expect(page.locator("#update-selection")).to_contain_text("2 files, 10.0 KB, 0 replaced")

        page.locator('#update-list tr:has-text("Replace me") .update-policy').select_option("replace")
        expect(page.locator("#update-all-result")).to_contain_text("Policy of model #3: replace")
        expect(page.locator("#update-selection")).to_contain_text("2 files, 10.0 KB, 1 replaced")
        assert d.get("/api/updates", params={"limit": 10}).json()["items"][0]["policy"] == "replace"

        page.click("#update-all")
        expect(page.locator("#update-plan")).to_be_visible()
        expect(page.locator("#update-plan-text")).to_contain_text("Download 2 files (10.0 KB); 1 old files")
        assert d.get("/api/downloads").json()["total"] == 0  # nothing happens before the confirmation
        if SCREENSHOT:
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.click("#update-confirm")
        expect(page.locator("#update-all-result")).to_contain_text("2 update(s) queued")
        for name in ("Newer", "Replace me"):
            expect(page.locator(f'#update-list tr:has-text("{name}") .cell-update-state')).to_have_text(
                "applied", timeout=30_000)
        expect(base.locator(".cell-update-state")).to_have_text("pending")
        view.assert_clean()
        assert not view.console_errors, view.console_errors
    finally:
        view.close()
    day = datetime.date.today().isoformat()
    assert (root / ".replaced" / day / "Lora" / "u3.safetensors").exists()
    assert (root / "Lora" / "u1.safetensors").exists() and (root / "Lora" / "u2.safetensors").exists()
