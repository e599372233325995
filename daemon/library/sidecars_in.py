"""Read what other tools left beside a model file (research/peers-2026-12.md).

`<stem>.civitai.info` (Civitai Helper: the version JSON), `<stem>.cm-info.json`
(Stability Matrix), `<stem>.metadata.json` (LoRA Manager) and `<stem>.sha256`
(a hex digest). Sidecars are only read here, never changed.
"""
import dataclasses
import json
import os
import re
import stat

MAX_SIDECAR = 4 << 20
_HEX64 = re.compile(r"\b([0-9a-fA-F]{64})\b")


@dataclasses.dataclass
class Sidecar:
    kind: str
    path: str
    mtime_ns: int
    hashes: frozenset = frozenset()   # SHA256s (lower) the sidecar vouches for
    version_id: int = None
    model_id: int = None
    version: dict = None              # a full version JSON when the sidecar holds one
    fields: dict = dataclasses.field(default_factory=dict)  # model_name, version_name, model_type, base_model

    def accepts(self, sha256, file_mtime_ns):
        """Whether this sidecar describes a file with this hash (SPEC §10's rules)."""
        if self.hashes:
            return sha256 in self.hashes  # a hash that matches wins even over an older sidecar
        return self.mtime_ns >= file_mtime_ns  # no hash to check: only a sidecar newer than the file


def stem_of(path):
    name = os.path.basename(path)
    return os.path.join(os.path.dirname(path), name.rsplit(".", 1)[0] if "." in name else name)


def _int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _sha(value):
    return value.lower() if isinstance(value, str) and len(value) == 64 and _HEX64.fullmatch(value) else None


def version_hashes(version):
    found = set()
    files = version.get("files")
    for file in files if isinstance(files, list) else []:
        hashes = file.get("hashes") if isinstance(file, dict) else None
        for key, value in (hashes if isinstance(hashes, dict) else {}).items():
            if key.upper() == "SHA256" and _sha(value):
                found.add(value.lower())
    return found


def version_fields(version):
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    return {"model_name": model.get("name"), "version_name": version.get("name"),
            "model_type": model.get("type"), "base_model": version.get("baseModel")}


def _civitai_info(data):
    if not isinstance(data, dict) or not _int(data.get("id")):
        return None  # Civitai Helper writes {} for a file Civitai did not know
    return dict(hashes=frozenset(version_hashes(data)), version_id=_int(data["id"]),
                model_id=_int(data.get("modelId")), version=data, fields=version_fields(data))


def _cm_info(data):
    if not isinstance(data, dict):
        return None
    hashes = data.get("Hashes") if isinstance(data.get("Hashes"), dict) else {}
    sha = next((_sha(v) for k, v in hashes.items() if k.upper() == "SHA256" and _sha(v)), None)
    return dict(hashes=frozenset([sha] if sha else []), version_id=_int(data.get("VersionId")),
                model_id=_int(data.get("ModelId")),
                fields={"model_name": data.get("ModelName"), "version_name": data.get("VersionName"),
                        "model_type": data.get("ModelType"), "base_model": data.get("BaseModel")})


def _lm_metadata(data):
    if not isinstance(data, dict):
        return None
    civitai = data.get("civitai") if isinstance(data.get("civitai"), dict) else {}
    sha = _sha(data.get("sha256"))
    version = civitai if _int(civitai.get("id")) and civitai.get("files") else None
    fields = version_fields(civitai) if civitai else {}
    fields["model_name"] = fields.get("model_name") or data.get("model_name")
    fields["base_model"] = fields.get("base_model") or data.get("base_model")
    return dict(hashes=frozenset([sha] if sha else []), version_id=_int(civitai.get("id")),
                model_id=_int(civitai.get("modelId")), version=version, fields=fields)


def _sha256_file(text):
    match = _HEX64.search(text)
    return dict(hashes=frozenset([match.group(1).lower()])) if match else None


KINDS = ((".civitai.info", "civitai.info", _civitai_info, True), (".cm-info.json", "cm-info", _cm_info, True),
         (".metadata.json", "metadata.json", _lm_metadata, True), (".sha256", "sha256", _sha256_file, False))


SUFFIXES = tuple(suffix for suffix, *_ in KINDS)


def read(model_path):
    """Every readable sidecar of a model file (unreadable or malformed ones are skipped)."""
    stem = stem_of(model_path)
    found = []
    for suffix, kind, parse, is_json in KINDS:
        path = stem + suffix
        try:
            # O_NONBLOCK: a FIFO under a sidecar's name must not hang the scan in open()
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), encoding="utf-8-sig",
                      errors="replace") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SIDECAR:
                    continue
                text = handle.read(MAX_SIDECAR)
        except OSError:
            continue
        try:
            parsed = parse(json.loads(text) if is_json else text)
        except (ValueError, RecursionError, AttributeError, TypeError):  # a file of the wrong shape is skipped
            parsed = None
        if parsed:
            found.append(Sidecar(kind=kind, path=path, mtime_ns=info.st_mtime_ns, **parsed))
    return found


def has_any(model_path):
    stem = stem_of(model_path)
    return any(os.path.exists(stem + suffix) for suffix in SUFFIXES)
