"""GUI screenshots for the docs: `shoot(page, "gui")` saves docs/gui.png with UPDATE_SCREENSHOTS=1.

Any browser test can take one of its view (a Library tab, an update list, a row with
segments): open the page, bring it into the state worth showing, then

    from screenshots import shoot
    shoot(page, "library", tmp_path, view="library")   # docs/library.png when refreshing

Without UPDATE_SCREENSHOTS the picture goes to tmp_path, so a test run never dirties
the checkout but still proves the page renders (a blank page is a few KB). Refresh
them all: UPDATE_SCREENSHOTS=1 bash .ci/run tests/test_gui.py tests/test_previews.py
"""
import os
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def target(name, tmp_path):
    """Where the picture `name` goes: docs/<name>.png when refreshing, else under tmp_path."""
    folder = DOCS if os.environ.get("UPDATE_SCREENSHOTS") else Path(tmp_path)
    return folder / f"{name}.png"


def open_view(page, view):
    """Open a view's tab (main.js's registry: `[data-tab=<id>]`) and wait for its panel."""
    from playwright.sync_api import expect

    tab = page.locator(f'#view-tabs [data-tab="{view}"]')
    if tab.count() and tab.is_visible():   # the tab bar is hidden while there is one view only
        tab.click()
    expect(page.locator(f'[data-view="{view}"]')).to_be_visible()


def shoot(page, name, tmp_path, view=None, full_page=True, min_bytes=20_000, **options):
    """Save a PNG of the page (of `view`'s tab when given) and check it shows something; returns the path."""
    if view:
        open_view(page, view)
    path = target(name, tmp_path)
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", **options)
    size = path.stat().st_size
    assert size > min_bytes, f"{path} is {size} bytes: the page looks empty"
    return path
