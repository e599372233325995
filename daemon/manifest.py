"""Pure manifest parsing: text in, frozen items out, or every problem listed (SPEC §5)."""
import dataclasses
import json
import re
from urllib.parse import urlsplit

from .errors import ManifestError
from .filenames import (CIVITAI_HOSTS, DRIVE, MAX_NAME_BYTES, civitai_ids, filename_problem, has_control,  # noqa: F401
                        reserved_problem, sanitize_filename)  # re-exported: the web layer and tests read them here

ITEM_FIELDS = ("url", "modelId", "modelVersionId", "air", "sha256", "filename", "priority", "subdir")
MAX_ITEMS = 100_000
MAX_PRIORITY = 1_000_000

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_AIR = re.compile(r"^urn:air:[^:]+:[^:]+:civitai:(\d+)(?:@(\d+))?(?:\.[A-Za-z0-9]+)?$")


@dataclasses.dataclass(frozen=True)
class Item:
    """One file to download, as the manifest asked for it."""
    index: int
    url: str | None = None
    model_id: int | None = None
    version_id: int | None = None
    sha256: str | None = None
    filename: str | None = None
    priority: int = 0
    subdir: str | None = None
    source: str | None = None    # where a workflow or image named it (SPEC §13), e.g. "nodes[3].properties.models[0]"
    present: str | None = None   # already on disk at this path: recorded completed, never fetched
    error: str | None = None     # a reference that cannot be resolved: recorded failed with this reason


def subdir_problem(subdir):
    """Why `subdir` is not a safe relative folder, or None when it is."""
    if not isinstance(subdir, str):
        return "expected a string"
    if subdir.startswith("/") or DRIVE.match(subdir) or subdir.startswith("\\"):
        return "must be relative to download_dir, not absolute"
    if "\\" in subdir:
        return "use / as the folder separator"
    if has_control(subdir):
        return "must not contain NUL or control characters"
    parts = [p for p in subdir.split("/") if p not in ("", ".")]
    for part in parts:
        if part.strip() == "..":
            return "must not contain .."
        problem = filename_problem(part)
        if problem:
            return f"folder {part!r} {problem}"
    return None


def normalise_subdir(subdir):
    """The clean relative form of an accepted subdir ('' for the root)."""
    return "/".join(p for p in subdir.split("/") if p not in ("", "."))


def parse_air(air):
    """(modelId, modelVersionId or None) from a Civitai AIR, or raise ValueError."""
    match = _AIR.match(air.strip()) if isinstance(air, str) else None
    if not match:
        raise ValueError("expected a Civitai AIR such as urn:air:sdxl:lora:civitai:328553@368189")
    ids = int(match.group(1)), (int(match.group(2)) if match.group(2) else None)
    if any(i is not None and not 1 <= i <= 2**31 - 1 for i in ids):
        raise ValueError("model and version ids must be from 1 to 2147483647")
    return ids


def civitai_ids_from_url(url):
    """(modelId, modelVersionId) named by a civitai.com / civitai.red URL, else (None, None)."""
    return civitai_ids(url, CIVITAI_HOSTS)


def _int_field(value, problems, where, minimum=1, maximum=2**31 - 1):
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: expected an integer, got {json.dumps(value)[:40]}")
        return None
    if not minimum <= value <= maximum:
        problems.append(f"{where}: expected an integer from {minimum} to {maximum}, got {value}")
        return None
    return value


def _parse_item(raw, index, problems):
    where = f"items[{index}]"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected an object, got {type(raw).__name__}")
        return None
    before = len(problems)
    for key in raw:
        if key not in ITEM_FIELDS:
            problems.append(f"{where}.{key}: unknown field (allowed: {', '.join(ITEM_FIELDS)})")
    fields = {}
    url = raw.get("url")
    if url is not None:
        if not isinstance(url, str):
            problems.append(f"{where}.url: expected a string")
        else:
            try:
                parts = urlsplit(url) if len(url) < 8192 else None
                if parts is not None:
                    parts.port  # noqa: B018 - raises ValueError for a port out of range
            except ValueError:  # e.g. "http://[::1/x" (unbalanced bracket) or "http://host:99999999/"
                parts = None
            if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                problems.append(f"{where}.url: only http:// and https:// URLs are allowed, got {url[:60]!r}")
            else:
                fields["url"] = url
    for key, target in (("modelId", "model_id"), ("modelVersionId", "version_id")):
        if raw.get(key) is not None:
            fields[target] = _int_field(raw[key], problems, f"{where}.{key}")
    if raw.get("air") is not None:
        try:
            model_id, version_id = parse_air(raw["air"])
            fields.setdefault("model_id", model_id)
            if version_id is not None:
                fields.setdefault("version_id", version_id)
        except ValueError as exc:
            problems.append(f"{where}.air: {exc}")
    if "url" in fields and not fields.get("version_id"):
        model_id, version_id = civitai_ids_from_url(fields["url"])
        if version_id:
            fields["version_id"] = version_id
        if model_id and not fields.get("model_id"):
            fields["model_id"] = model_id
    if not any(fields.get(k) for k in ("url", "model_id", "version_id")) and len(problems) == before:
        problems.append(f"{where}: needs a url, a modelVersionId, a modelId or an air")
    if raw.get("sha256") is not None:
        sha = raw["sha256"]
        if not isinstance(sha, str) or not _HEX64.match(sha):
            got = f"{len(sha)}" if isinstance(sha, str) else type(sha).__name__
            problems.append(f"{where}.sha256: expected 64 hex characters, got {got}")
        else:
            fields["sha256"] = sha.lower()
    if raw.get("filename") is not None:
        problem = filename_problem(raw["filename"]) or reserved_problem(raw["filename"])
        if problem:
            problems.append(f"{where}.filename: {problem}")
        else:
            fields["filename"] = raw["filename"]
    if raw.get("priority") is not None:
        value = _int_field(raw["priority"], problems, f"{where}.priority", -MAX_PRIORITY, MAX_PRIORITY)
        fields["priority"] = value or 0
    if raw.get("subdir") is not None:
        problem = subdir_problem(raw["subdir"])
        if problem:
            problems.append(f"{where}.subdir: {problem}")
        else:
            fields["subdir"] = normalise_subdir(raw["subdir"])
    if len(problems) > before:
        return None
    return Item(index=index, **fields)


def parse_items(data):
    """Items from already-decoded JSON (object with items, list, or one item)."""
    if isinstance(data, dict) and "items" in data:
        raw_items = data["items"]
        if not isinstance(raw_items, list):
            raise ManifestError(["items: expected a list of item objects"])
    elif isinstance(data, list):
        raw_items = data
    elif isinstance(data, dict):
        raw_items = [data]
    else:
        raise ManifestError(["manifest: expected an object with 'items', a list of items, or one item object"])
    if not raw_items:
        raise ManifestError(["items: the manifest lists no items"])
    if len(raw_items) > MAX_ITEMS:
        raise ManifestError([f"items: at most {MAX_ITEMS} items per manifest, got {len(raw_items)}"])
    problems = []
    items = [_parse_item(raw, index, problems) for index, raw in enumerate(raw_items)]
    if problems:
        raise ManifestError(problems)
    return items


def parse_manifest(text):
    """Items from manifest text, or ManifestError listing every problem."""
    return parse_items(decode_json(text))


def decode_json(text):
    """The JSON value of manifest text (bytes or str), or ManifestError saying why not."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ManifestError(["manifest: not UTF-8 text"]) from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _Refused as exc:
        raise ManifestError([f"manifest: {exc}"]) from None
    except (ValueError, RecursionError) as exc:
        raise ManifestError([f"manifest: not valid JSON ({exc})"]) from None
    return data


class _Refused(Exception):
    """Valid JSON the daemon still refuses: a duplicate key or a lone surrogate."""


def _text_problem(value):
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return (f"the text {value[:40]!r} holds a lone surrogate (an escape such as \\ud800 without its pair), "
                "which is not Unicode; fix the program that wrote it")
    return None


def _unique_keys(pairs):
    """json's object hook: refuse duplicate keys (the last would silently win, e.g. a later
    "sha256": null cancelling a hash) and strings that are not Unicode text."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _Refused(f"the key {key[:40]!r} appears twice in one object; write each key once")
        for text in (key, value) if isinstance(value, str) else (key,):
            problem = _text_problem(text)
            if problem:
                raise _Refused(problem)
        if isinstance(value, list):
            for entry in value:
                problem = isinstance(entry, str) and _text_problem(entry)
                if problem:
                    raise _Refused(problem)
        seen[key] = value
    return seen


def strict_json(text):
    """json.loads with the manifest rules (no duplicate keys, only Unicode text); ManifestError otherwise.
    Plain syntax errors stay ValueError for the caller's own wording."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _Refused as exc:
        raise ManifestError([f"body: {exc}"]) from None
