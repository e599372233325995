"""What a library entry knows of its Civitai identity: from a version JSON, from our own download, or nothing."""
import json

from ..redact import scrub
from . import sidecars_in

IDENTITY = ("model_id", "version_id", "model_name", "version_name", "model_type", "base_model", "published_at",
            "civitai_info", "download")


def apply_version(row, version, source):
    """Copy a Civitai version JSON's identity and names onto an entry."""
    fields = sidecars_in.version_fields(version)
    row.version_id = version.get("id")
    row.model_id = version.get("modelId") or row.model_id
    row.model_name = fields["model_name"] or row.model_name
    row.version_name = fields["version_name"] or row.version_name
    row.model_type = fields["model_type"] or row.model_type
    row.base_model = fields["base_model"] or row.base_model
    row.published_at = version.get("publishedAt") or version.get("createdAt") or row.published_at
    row.civitai_info = json.dumps(scrub(version), separators=(",", ":"))  # no URL token into the DB or sidecar
    row.source = source


def clear_identity(row):
    for field in IDENTITY:
        setattr(row, field, None)
    row.source = "unknown"


def from_download(row, d):
    """Identify an entry as our download `d` (anything with a Download's id, names and civitai_info)."""
    if d.civitai_info:
        apply_version(row, json.loads(d.civitai_info), "downloaded")
    row.source = "downloaded"
    row.model_id, row.version_id = d.model_id, d.version_id
    row.model_name, row.version_name = d.model_name or row.model_name, d.version_name or row.version_name
    row.model_type, row.base_model = d.model_type or row.model_type, d.base_model or row.base_model
    row.download = d.id
