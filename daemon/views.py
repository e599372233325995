"""What the API, the events and the sinks show of a download: rows to dicts, stored JSON scrubbed."""
import json

from .civitai import preview_image
from .models import ManifestRecord, db, iso
from .sidecars import find_preview
from .states import Status


def stored_info(text):
    """The stored Civitai version JSON as a dict, or None when absent or unreadable."""
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def nsfw_level(civitai_info):
    """Civitai's nsfwLevel of the version's preview image (1 PG, 2 PG-13, 4 R, 8 X, 16 XXX), or None."""
    info = stored_info(civitai_info)
    level = preview_image(info)[1] if info else None
    return level if isinstance(level, int) and not isinstance(level, bool) else None


def download_dict(row, progress=None, manifest=None):
    """The API/event shape of a download (docs/contract.md); `manifest` is its manifest's file name."""
    live = progress.get(row.id) if progress else None
    data = {
        "id": row.id, "state": row.state, "filename": row.filename, "path": row.path,
        "subdir": row.subdir, "url": row.url, "sha256": row.sha256,
        "expected_sha256": row.expected_sha256, "verified": bool(row.verified),
        "bytes": live["bytes"] if live else row.bytes, "total": (live or {}).get("total") or row.total,
        "speed": live["speed"] if live else 0.0, "eta": live["eta"] if live else None,
        "connections": live["connections"] if live else 0,
        "priority": row.priority, "manifest": manifest,
        "modelId": row.model_id, "modelVersionId": row.version_id,
        "model_name": row.model_name, "version_name": row.version_name,
        "base_model": row.base_model, "model_type": row.model_type,
        "error": row.error, "not_before": iso(row.not_before), "attempts": row.attempts,
        "retries": row.retries, "parent_id": row.parent_id,
        "created_at": iso(row.created_at), "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
    }
    data["preview"] = (f"api/downloads/{row.id}/preview"
                       if row.state == Status.COMPLETED and row.path and row.civitai_info
                       and find_preview(row.path) else None)  # only Civitai downloads get sidecars
    data["nsfw_level"] = nsfw_level(row.civitai_info)
    if live and live.get("segments"):
        data["segments"] = live["segments"]
    if row.state == Status.COMPLETED and row.duration is not None:
        data["duration"] = round(row.duration, 3)
        data["average_speed"] = round(row.bytes / row.duration, 1) if row.duration > 0 else None
    return data


class Views:
    """Download dicts with live progress and manifest names (a name never changes once recorded)."""

    def __init__(self, progress=None):
        self.progress = progress
        self._names = {}  # manifest id → inbox file name

    def remember_manifest(self, record):
        self._names[record.id] = record.name

    def download(self, row):
        """One download's dict."""
        return self.downloads([row])[0]

    def downloads(self, rows):
        """Many downloads' dicts; their manifests' names cost one query, not one per row."""
        self._load_names([r.manifest_id for r in rows])
        return [download_dict(r, self.progress, self._names.get(r.manifest_id)) for r in rows]

    def _load_names(self, ids):
        missing = [i for i in set(ids) if i is not None and i not in self._names]
        if not missing:
            return
        query = ManifestRecord.select(ManifestRecord.id, ManifestRecord.name).where(ManifestRecord.id.in_(missing))
        if db.is_closed():
            with db.connection_context():
                self._names.update(query.tuples())
        else:  # inside a caller's connection_context: do not close it under them
            self._names.update(query.tuples())
