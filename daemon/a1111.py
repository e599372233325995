"""The models an A1111/Forge `parameters` text names (SPEC §13): pure, text in, references out.

The last line of the text is `Key: value, Key: value, …`. Civitai's own
`Civitai resources: [...]` (with `modelVersionId`) is the most exact and wins;
else the hashes: `Hashes: {...}` (JSON), `Model hash:` and `Lora hashes:
"name: hash, …"`. A hash is AutoV2 (10 hex), AutoV3 (12 hex) or SHA256 (64).
"""
import dataclasses
import json
import re

_HASH = re.compile(r"^[0-9a-fA-F]{10}$|^[0-9a-fA-F]{12}$|^[0-9a-fA-F]{64}$")
_MODEL_HASH = re.compile(r"(?:^|,\s*)Model hash:\s*([0-9a-fA-F]+)")
_LORA_HASHES = re.compile(r"(?:^|,\s*)Lora hashes:\s*\"([^\"]*)\"")


@dataclasses.dataclass(frozen=True)
class Wanted:
    """One model the image was made with: by Civitai version id, or by a hash to look up."""
    source: str
    version_id: int | None = None
    hash: str | None = None
    label: str | None = None   # the name the text gives it
    error: str | None = None


def _json_after(text, key):
    """The JSON value following `key: ` in the text, or None."""
    at = text.rfind(f"{key}: ")
    if at < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text, at + len(key) + 2)
    except ValueError:
        return None
    return value


def _by_hash(source, value, label):
    if not isinstance(value, str) or not _HASH.match(value.strip()):
        return Wanted(source, label=label, error=f"{source}: {str(value)[:70]!r} is not an AutoV2, AutoV3 or "
                                                 "SHA256 hash")
    return Wanted(source, hash=value.strip().lower(), label=label)


def parameters_refs(text):
    """What an A1111/Forge `parameters` chunk asks for, in the order the text gives it."""
    resources = _json_after(text, "Civitai resources")
    if isinstance(resources, list):
        wanted = []
        for index, resource in enumerate(resources):
            version = resource.get("modelVersionId") if isinstance(resource, dict) else None
            if isinstance(version, int) and not isinstance(version, bool) and version > 0:
                wanted.append(Wanted(f"Civitai resources[{index}]", version_id=version,
                                     label=resource.get("modelName") or resource.get("type")))
        if wanted:
            return wanted
    wanted, seen = [], set()

    def add(item):
        if item.hash is None or item.hash not in seen:
            seen.add(item.hash)
            wanted.append(item)

    hashes = _json_after(text, "Hashes")
    if isinstance(hashes, dict):
        for key, value in hashes.items():
            add(_by_hash(f"Hashes[{key}]", value, str(key)))
    model = _MODEL_HASH.search(text)
    if model:
        add(_by_hash("Model hash", model.group(1), "model"))
    loras = _LORA_HASHES.search(text)
    if loras:
        for pair in loras.group(1).split(","):
            name, _, value = pair.rpartition(":")
            if pair.strip():
                add(_by_hash(f"Lora hashes[{name.strip()}]", value, name.strip()))
    return wanted
