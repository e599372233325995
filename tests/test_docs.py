"""The README cannot drift from the code: settings, manifest example, routes, commands."""
import json
import re
from pathlib import Path

from daemon.events import CATALOGUE
from daemon.manifest import ITEM_FIELDS, parse_manifest
from daemon.config import default_config_text, load
from daemon.settings import NESTED, SETTINGS
from daemon.states import ManifestStatus, Status

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _config_rows():
    return set(re.findall(r"^\| `([a-z_.]+)` \|", README, re.M))


def test_readme_config_table_covers_every_setting():
    rows = _config_rows()
    expected = set()
    for setting in SETTINGS:
        if setting.name in NESTED:
            expected |= {f"{setting.name}.{key}" for key in NESTED[setting.name]}
        else:
            expected.add(setting.name)
    assert expected - rows == set(), "settings missing from the README table"
    assert {r for r in rows if "." in r or r.endswith(("_dir", "token"))} - expected - set(ITEM_FIELDS) == set()


def test_readme_lists_every_manifest_field():
    for field in ITEM_FIELDS:
        assert f"| `{field}` |" in README


def test_example_manifest_is_valid_and_shown_in_readme():
    text = (ROOT / "examples" / "manifest.json").read_text()
    items = parse_manifest(text)
    assert len(items) == 4
    assert json.loads(text)["items"][0] == {"modelVersionId": 130072}
    assert '{"modelVersionId": 130072}' in README


def test_readme_starts_with_the_two_commands():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["python3 install.py", "bash .ci/run"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 install.py --no-start" in ci and 'run --frozen pytest' in ci


def test_readme_lists_every_route():
    for route in ("/api/status", "/api/download", "/api/batch", "/api/downloads", "/api/completed",
                  "/api/metrics", "/api/manifests", "/api/updates", "/ws/downloads", "/healthz", "/metrics",
                  "/api/openapi.json", "/gui"):
        assert route in README, route


def test_default_config_loads_and_is_commented(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(default_config_text())
    settings = load(path)
    assert settings.active_port is None
    assert settings.download_dir == tmp_path / "downloads"
    assert default_config_text().count("\n# ") >= len(SETTINGS)


def test_docs_list_every_event_and_state():
    names = list(CATALOGUE) + [s.value for s in Status] + [s.value for s in ManifestStatus]
    for doc in (ROOT / "README.md", ROOT / "docs" / "contract.md"):
        text = doc.read_text()
        missing = [n for n in names if f"`{n}`" not in text]
        assert not missing, f"{doc.name} does not list {missing}"
