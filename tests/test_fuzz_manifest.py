"""Hostile manifests, property-based (hypothesis): pure unit tests of daemon.manifest.

No input makes parsing raise anything but ManifestError, and no accepted
filename or subdir (nor a server-supplied name after sanitising) resolves
outside download_dir — checked with os.path.realpath against a temporary
download_dir that holds symlinks pointing inside, outside and at themselves.
"""
import json
import os
import tempfile
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from daemon.errors import ManifestError, PermanentError
from daemon.manifest import Item, filename_problem, parse_items, parse_manifest, sanitize_filename
from daemon.placement import Placement

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces an attacker would try: traversal, separators, drive letters, look-alikes, NUL, huge names.
NASTY = [
    "..", ".", "", " ..", ".. ", "...", "..\u200b", "\u2024\u2024", "\uff0e\uff0e", "%2e%2e", "%2f", "~", "$HOME",
    "C:", "c:", "C:\\", "\\\\server\\share", "\\", "/", "//", "\u2215", "\u2044", "\uff0f", "\u29f8", "\uff3c",
    "a\x00b", "\x00", "\n", "\r", "\t", "\x1b[31m", "\u202e", "\ufeff", "con", "NUL", "aux.txt", "x" * 255,
    "é" * 128, "x" * 300, "inside", "outside", "loop", "model.safetensors", "a b", "-rf",
]
segment = st.one_of(st.sampled_from(NASTY), st.text(min_size=0, max_size=12))
joiner = st.sampled_from(["/", "\\", "/./", "//", "\u2215"])


@st.composite
def paths(draw):
    parts = draw(st.lists(segment, min_size=1, max_size=5))
    sep = draw(joiner)
    prefix = draw(st.sampled_from(["", "", "", "/", "\\", "C:", "C:\\", "./", "../", "~/"]))
    return prefix + sep.join(parts)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                         st.text(max_size=20), st.sampled_from(NASTY))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=20)
item_keys = st.sampled_from(["url", "modelId", "modelVersionId", "air", "sha256", "filename", "priority",
                             "subdir", "extra", "items"])
item_values = st.one_of(json_values, paths(), st.sampled_from([
    "https://example.com/a.bin", "http://127.0.0.1/x", "file:///etc/passwd", "ftp://h/x", "javascript:alert(1)",
    "https://civitai.com/api/download/models/1", "urn:air:sdxl:lora:civitai:328553@368189", "a" * 64, "A" * 64,
    "http://[::1", "https://", "http://user:pass@host/x?token=abc", 1, 0, -1, 2**31, 2**63, 7,
]))
items = st.dictionaries(item_keys, item_values, max_size=6)
manifests = st.one_of(json_values, items, st.lists(items, max_size=4),
                      st.fixed_dictionaries({"items": st.one_of(st.lists(items, max_size=4), json_values)}))


def _check_items(result):
    assert isinstance(result, list) and result
    for item in result:
        assert isinstance(item, Item)
        assert item.url or item.model_id or item.version_id
        if item.url:
            assert item.url.lower().startswith(("http://", "https://"))
        if item.filename is not None:
            assert filename_problem(item.filename) is None
        if item.sha256 is not None:
            assert len(item.sha256) == 64 and item.sha256 == item.sha256.lower()


@FAST
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_parse_manifest_raw_input_only_raises_manifest_error(raw):
    try:
        result = parse_manifest(raw)
    except ManifestError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    _check_items(result)


@FAST
@given(manifests)
def test_parse_items_structures_only_raise_manifest_error(data):
    try:
        result = parse_items(data)
    except ManifestError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    _check_items(result)
    # The same through the text path.
    assert [i for i in parse_manifest(json.dumps(data))] == result


def test_pathological_json_only_raises_manifest_error():
    for text in ["[" * 100_000, "{\"items\": " * 50_000, "1" * 100_000, "\"\\ud800\"", "\ufeff{\"url\": 1}",
                 b"\xff\xfe{}", b"\x00" * 10, "{\"items\": [" + ",".join(["{}"] * 20_000) + "]}",
                 "NaN", "[Infinity]", "{\"url\": \"http://x/\", \"priority\": 1e400}"]:
        try:
            _check_items(parse_manifest(text))
        except ManifestError:
            pass


@pytest.fixture(scope="module")
def sandbox():
    """A download_dir holding symlinks to inside, to outside and to itself."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        download_dir = root / "downloads"
        (download_dir / "inside").mkdir(parents=True)
        (root / "outside").mkdir()
        (download_dir / "outside").symlink_to(root / "outside")
        (download_dir / "loop").symlink_to(download_dir / "loop")
        (download_dir / "up").symlink_to("..")
        yield download_dir


def _inside(download_dir, path):
    real_root = os.path.realpath(download_dir)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


def _resolve_folder(download_dir, subdir):
    """The worker's own folder check (the symlink guard lives there, not in the pure parser)."""
    settings = types.SimpleNamespace(download_dir=download_dir, library={"roots": []}, type_dirs={})
    row = types.SimpleNamespace(subdir=subdir)
    return Placement(settings, queue=None).folder(row, None)


@FAST
@given(subdir=paths(), filename=paths())
def test_accepted_paths_stay_inside_download_dir(sandbox, subdir, filename):
    try:
        [item] = parse_items({"url": "https://example.com/f.bin", "subdir": subdir, "filename": filename})
    except ManifestError:
        return
    assert "\x00" not in (item.subdir or "") + (item.filename or "")
    try:
        folder = _resolve_folder(sandbox, item.subdir)
    except PermanentError:
        return  # refused by the worker (a symlink leading out, a symlink loop)
    target = folder / item.filename
    assert _inside(sandbox, folder), (subdir, folder)
    assert _inside(sandbox, target), (subdir, filename, target)
    assert len(item.filename.encode()) <= 255


@FAST
@given(st.one_of(paths(), st.text(max_size=300)))
def test_server_names_are_sanitised_inside(sandbox, name):
    """Content-Disposition / URL names from a hostile server become plain names inside download_dir."""
    clean = sanitize_filename(name)
    if clean is None:
        return
    assert filename_problem(clean) is None, (name, clean)
    assert _inside(sandbox, sandbox / "inside" / clean)


@pytest.mark.parametrize("subdir", ["outside", "outside/x", "up", "up/downloads/../outside", "inside/../outside",
                                    "loop"])
def test_symlinked_subdirs_are_refused(sandbox, subdir):
    try:
        [item] = parse_items({"url": "https://example.com/f.bin", "subdir": subdir})
    except ManifestError:
        return
    with pytest.raises(PermanentError):
        _resolve_folder(sandbox, item.subdir)
