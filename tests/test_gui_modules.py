"""The GUI's ES modules in node's test runner (tests/js): format.js and states.js alone, no import side effects."""
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

JS_TESTS = ROOT / "tests" / "js"


def node() -> str:
    found = shutil.which("node") or shutil.which("nodejs")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("node is missing (CI is set): apt-get install nodejs")
    pytest.skip("node is not installed")


def test_gui_modules_in_node() -> None:
    files = sorted(str(path) for path in JS_TESTS.glob("*.test.mjs"))
    assert files, f"no *.test.mjs under {JS_TESTS}"
    # detect-module: the GUI's .js files are ES modules without a package.json saying so.
    result = subprocess.run([node(), "--experimental-detect-module", "--test", *files], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", report, re.M)
    failed = re.search(r"^# fail (\d+)$", report, re.M)
    assert passed and int(passed.group(1)) >= len(files), report
    assert failed and failed.group(1) == "0", report
