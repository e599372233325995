"""Pure unit tests of daemon/manifest.py, daemon/settings.py and daemon/config.py."""
import dataclasses
import json

import pytest

from daemon import config, settings
from daemon.errors import ConfigError, ManifestError
from daemon.manifest import (Item, civitai_ids_from_url, filename_problem, parse_air, parse_manifest,
                             sanitize_filename, subdir_problem)

SHA = "0123456789abcdef" * 4


def problems(text):
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    return info.value.problems


# -- manifest shapes ----------------------------------------------------------------


def test_three_top_level_shapes_give_the_same_items():
    item = {"url": "https://example.com/a.safetensors", "sha256": SHA.upper(), "priority": 3}
    for text in (json.dumps({"items": [item]}), json.dumps([item]), json.dumps(item)):
        [parsed] = parse_manifest(text)
        assert parsed == Item(index=0, url=item["url"], sha256=SHA, priority=3)


def test_items_are_frozen_and_indexed():
    items = parse_manifest(b'\xef\xbb\xbf[{"url": "http://h/a"}, {"url": "http://h/b", "subdir": "./x//y/"}]')
    assert [i.index for i in items] == [0, 1]
    assert items[1].subdir == "x/y"
    with pytest.raises(dataclasses.FrozenInstanceError):
        items[0].url = "http://other"


def test_civitai_references():
    [a, b, c, d] = parse_manifest(json.dumps([
        {"modelVersionId": 368189},
        {"modelId": 328553},
        {"air": "urn:air:sdxl:lora:civitai:328553@368189"},
        {"url": "https://civitai.com/api/download/models/368189?type=Model"},
    ]))
    assert (a.model_id, a.version_id, a.url) == (None, 368189, None)
    assert (b.model_id, b.version_id) == (328553, None)
    assert (c.model_id, c.version_id) == (328553, 368189)
    assert d.version_id == 368189
    assert civitai_ids_from_url("https://civitai.com/models/1/x?modelVersionId=2") == (1, 2)
    assert civitai_ids_from_url("https://example.com/models/1") == (None, None)
    assert parse_air("urn:air:sd1:checkpoint:civitai:4201") == (4201, None)
    with pytest.raises(ValueError):
        parse_air("urn:air:sdxl:lora:huggingface:1@2")


@pytest.mark.parametrize("text, expected", [
    ("", "manifest: not valid JSON"),
    ("{", "manifest: not valid JSON"),
    (b"\xff\xfe", "manifest: not UTF-8 text"),
    ("null", "manifest: expected an object"),
    ("3", "manifest: expected an object"),
    ('{"items": []}', "items: the manifest lists no items"),
    ('{"items": "x"}', "items: expected a list"),
    ('[{"url": "ftp://h/a"}]', "items[0].url: only http:// and https:// URLs are allowed"),
    ('[{"url": "http:///nohost"}]', "items[0].url: only http:// and https://"),
    ('[{"url": 5}]', "items[0].url: expected a string"),
    ('[{"url": "http://h/a", "sha256": "abcdef0123"}]', "items[0].sha256: expected 64 hex characters, got 10"),
    ('[{"url": "http://h/a", "sha256": 5}]', "items[0].sha256: expected 64 hex characters, got int"),
    ('[{"url": "http://h/a", "priority": "1"}]', "items[0].priority: expected an integer"),
    ('[{"url": "http://h/a", "priority": 2.0}]', "items[0].priority: expected an integer"),
    ('[{"url": "http://h/a", "priority": false}]', "items[0].priority: expected an integer"),
    ('[{"modelId": 0}]', "items[0].modelId: expected an integer from 1"),
    ('[{"modelVersionId": "5"}]', "items[0].modelVersionId: expected an integer"),
    ('[{"filename": "a.bin"}]', "items[0]: needs a url, a modelVersionId, a modelId or an air"),
    ('[{"url": "http://h/a", "extra": 1}]', "items[0].extra: unknown field"),
    ('[{"air": "nope"}]', "items[0].air: expected a Civitai AIR"),
    ('[7]', "items[0]: expected an object, got int"),
])
def test_single_problem_messages(text, expected):
    found = problems(text)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_sha256_message_form_from_the_spec():
    text = json.dumps({"items": [{"url": "http://h/a", "sha256": SHA}, {"url": "http://h/b", "sha256": "a" * 10}]})
    assert problems(text) == ["items[1].sha256: expected 64 hex characters, got 10"]


def test_every_problem_is_listed_with_its_place():
    text = json.dumps({"items": [
        {"url": "http://h/ok"},
        {"url": "mailto:x@y", "filename": "../x", "subdir": "/abs", "priority": "high", "sha256": "z"},
        {},
    ]})
    found = problems(text)
    places = [p.split(":")[0] for p in found]
    assert places == ["items[1].url", "items[1].sha256", "items[1].filename", "items[1].priority",
                      "items[1].subdir", "items[2]"]


@pytest.mark.parametrize("name", ["a/b", "a\\b", ".", "..", "a\x00b", "a\nb", "é" * 128, "x" * 256,
                                  " lead", "trail ", "C:evil", ""])
def test_bad_filenames(name):
    assert filename_problem(name) is not None
    assert any(p.startswith("items[0].filename:") for p in problems(json.dumps([{"url": "http://h/a",
                                                                                  "filename": name}])))


@pytest.mark.parametrize("name", ["model.safetensors", "ünïcode lora v1.safetensors", "x" * 255, "..hidden.bin",
                                  "a..b"])
def test_good_filenames(name):
    assert filename_problem(name) is None


@pytest.mark.parametrize("subdir", ["/etc", "\\\\server\\share", "C:/x", "..", "a/../..", "a/..", "a\\b",
                                    "a/\x00/b", "x/" + "y" * 256])
def test_bad_subdirs(subdir):
    assert subdir_problem(subdir) is not None


@pytest.mark.parametrize("subdir", ["Lora", "Lora/sdxl", "./a", "a//b/", "ünï/cödé"])
def test_good_subdirs(subdir):
    assert subdir_problem(subdir) is None


@pytest.mark.parametrize("raw, expected", [
    ("model.safetensors", "model.safetensors"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Windows\\evil.dll", "evil.dll"),
    ("a\x00b\nc", "a_b_c"),
    ("...", None),
    ("", None),
    (None, None),
])
def test_sanitize_filename(raw, expected):
    assert sanitize_filename(raw) == expected


def test_sanitize_filename_keeps_extension_within_255_bytes():
    name = sanitize_filename("é" * 300 + ".safetensors")
    assert len(name.encode()) <= 255 and name.endswith(".safetensors")


# -- settings -----------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (0, 0), (5_000_000, 5_000_000), ("20MB", 20_000_000), ("5M", 5_000_000), ("1.5MiB", int(1.5 * 2**20)),
    ("10KiB", 10_240), ("2G", 2 * 10**9), ("3GiB/s", 3 * 2**30), ("100", 100), ("100B", 100), ("7kb", 7000),
])
def test_parse_rate(value, expected):
    assert settings.parse_rate(value) == expected


@pytest.mark.parametrize("value", ["fast", "-5MB", "5 TB", True, -1, "MB"])
def test_parse_rate_rejects(value):
    with pytest.raises(ValueError):
        settings.parse_rate(value)


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_when_empty_and_paths_relative_to_the_file(tmp_path):
    loaded = config.load(write(tmp_path, "# nothing\n"))
    assert loaded.workers == 2 and loaded.retries == 5 and loaded.timeout == 30 and loaded.throttle == 0
    assert loaded.backoff == 1 and loaded.backoff_max == 60 and loaded.active_port is None
    assert loaded.host == "127.0.0.1" and loaded.log_level == "INFO" and loaded.sidecars is True
    assert loaded.inbox_dir == tmp_path / "inbox" and loaded.database == tmp_path / "completed.db"
    assert loaded.type_dirs["LORA"] == "Lora" and loaded.type_dirs["Checkpoint"] == "Stable-diffusion"
    assert loaded.update_check == {"enabled": True, "time": "04:00", "auto_download": True,
                                    "policy": "alongside"}


def test_default_config_text_covers_every_setting_and_loads(tmp_path):
    text = config.default_config_text()
    for setting in settings.SETTINGS:
        assert f"\n{setting.name}:" in text
    loaded = config.load(write(tmp_path, text))
    for setting in settings.SETTINGS:
        if not setting.path and setting.name not in settings.NESTED and setting.name != "type_dirs":
            assert getattr(loaded, setting.name) == setting.check(setting.default), setting.name


def test_missing_file_is_created(tmp_path):
    path = tmp_path / "deep" / "config.yaml"
    loaded = config.load(path)
    assert path.read_text() == config.default_config_text()
    assert loaded.workers == 2


@pytest.mark.parametrize("text, key", [
    ("colour: 1\n", "'colour'"),
    ("workers: 0\n", "'workers'"),
    ("workers: 1.5\n", "'workers'"),
    ("workers: true\n", "'workers'"),
    ("timeout: 0\n", "'timeout'"),
    ("backoff: -1\n", "'backoff'"),
    ("log_level: LOUD\n", "'log_level'"),
    ("host: ''\n", "'host'"),
    ("webhook_url: not-a-url\n", "'webhook_url'"),
    ("sidecars: yes please\n", "'sidecars'"),
    ("active_port: 70000\n", "'active_port'"),
    ("type_dirs: {LORA: /abs}\n", "'type_dirs'"),
    ("telegram: {chat_id: [1]}\n", "'telegram.chat_id'"),
    ("telegram: {events: [download.exploded]}\n", "'telegram.events'"),
    ("update_check: {time: '25:00'}\n", "'update_check.time'"),
    ("update_check: {enabled: 1}\n", "'update_check.enabled'"),
    ("update_check: yes\n", "'update_check'"),
    ("- a\n- b\n", "top level"),
    ("workers: [\n", "not valid YAML"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_env_token_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("CIVITAI_API_TOKEN", "from-env")
    loaded = config.load(write(tmp_path, "civitai_token: from-file\n"))
    assert loaded.civitai_token == "from-env"
    assert "from-env" in loaded.secrets()


def test_write_active_port_keeps_comments_and_order(tmp_path):
    text = ("# top comment\n"
            "workers: 3   # inline\n"
            "\n"
            "# the port\n"
            "active_port: null\n"
            "throttle: \"20MB\"\n"
            "update_check:\n"
            "  time: \"05:30\"  # early\n")
    path = write(tmp_path, text)
    config.write_active_port(path, 8123)
    assert path.read_text() == text.replace("active_port: null", "active_port: 8123")
    assert config.load(path).active_port == 8123


def test_write_active_port_adds_a_missing_key(tmp_path):
    path = write(tmp_path, "# only a comment\nworkers: 1\n")
    config.write_active_port(path, 8150)
    loaded = config.load(path)
    assert loaded.active_port == 8150 and loaded.workers == 1
    assert path.read_text().startswith("# only a comment\nworkers: 1\n")


@pytest.mark.parametrize("text", ["", "# only comments\n# and more\n"])
def test_write_active_port_into_an_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    config.write_active_port(path, 8160)
    assert config.load(path).active_port == 8160
    assert path.read_text().startswith(text)


def test_write_active_port_keeps_file_permissions(tmp_path):
    path = write(tmp_path, "civitai_token: secret\nactive_port: null\n")
    path.chmod(0o600)
    config.write_active_port(path, 8170)
    assert path.stat().st_mode & 0o777 == 0o600
