"""The GUI's Library view in a real Chromium against the real daemon (SPEC §10)."""
import os
from pathlib import Path

from conftest import ROOT
from test_gui import Page, expect  # noqa: F401  (the shared page wrapper and expect)
from test_library import content, put

SCREENSHOT = ROOT / "docs" / "library.png" if os.environ.get("UPDATE_SCREENSHOTS") else None


def test_library_view_scan_progress_counts_search_and_previews(fake, make_daemon, browser, tmp_path):
    root = tmp_path / "models"
    for m in range(1, 9):
        fake.add_model(m, f"Portrait Model {m}" if m % 2 else f"Detail LoRA {m}", "Checkpoint" if m % 2 else "LORA")
        data = content(f"gui-{m}")
        fake.add_version(m, m * 10, f"v{m}.0", data=data, base_model="SDXL 1.0" if m % 2 else "SD 1.5")
        put(root / ("Stable-diffusion" if m % 2 else "Lora") / f"model{m}.safetensors", data)
    for u in range(3):
        put(root / "Other" / f"mystery{u}.ckpt", content(f"mystery-{u}"))
    # A big sparse file (no disk used) keeps the scan running long enough to watch its progress bar.
    with open(root / "Other" / "huge.safetensors", "wb") as handle:
        handle.truncate(3 << 30)
    d = make_daemon(library={"roots": [str(root)], "scan_on_start": False, "hash_threads": 1})
    view = Page(browser, d, width=1280, height=900)
    try:
        page = view.page
        page.goto(d.url + "/gui#library")
        expect(page.locator("#conn-state")).to_have_text("live")
        expect(page.locator('[data-view="library"]')).to_be_visible()
        page.click("#library-scan-now")
        expect(page.locator("#library-scan")).to_be_visible(timeout=20_000)
        expect(page.locator("#library-scan-text")).to_contain_text("files", timeout=20_000)
        expect(page.locator("#library-scan-text")).to_contain_text("/s")  # the rate, from the feed
        expect(page.locator("#library-scan")).to_be_hidden(timeout=120_000)
        expect(page.locator("#library-scan-result")).to_contain_text("Last scan done: 12 files")
        rows = page.locator("#library-table tbody tr")
        expect(rows).to_have_count(12)
        expect(page.locator("#library-summary")).to_contain_text("8 identified · 4 unknown")
        expect(page.locator('#library-counts [data-type="LORA"]')).to_have_text("LORA 4")
        expect(page.locator('#library-counts [data-base="SDXL 1.0"]')).to_have_text("SDXL 1.0 4")

        first = page.locator('#library-table tr:has-text("model3.safetensors")')
        expect(first.locator(".cell-model")).to_have_text("Portrait Model 3 · v3.0")
        expect(first.locator(".cell-type")).to_have_text("Checkpoint")
        expect(first.locator(".cell-base")).to_have_text("SDXL 1.0")
        expect(first.locator(".cell-source")).to_have_text("civitai")
        img = first.locator("img.preview-thumb")
        expect(img).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
        assert "/api/library/" in img.get_attribute("src")

        page.fill("#library-q", "Detail LoRA 4")
        expect(rows).to_have_count(1)
        expect(rows.first.locator(".entry-name")).to_have_text("model4.safetensors")
        page.fill("#library-q", "")
        page.select_option("#library-state", "unknown")
        expect(rows).to_have_count(4)
        expect(rows.locator(".cell-source")).to_have_text(["unknown"] * 4)
        page.select_option("#library-state", "")
        page.click('#library-counts [data-type="LORA"]')
        expect(rows).to_have_count(4)
        page.select_option("#library-type", "")
        expect(rows).to_have_count(12)
        if SCREENSHOT:
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        view.assert_clean()
        assert not view.console_errors, view.console_errors
    finally:
        view.close()
    assert Path(root / "Other" / "huge.safetensors").stat().st_size == 3 << 30
