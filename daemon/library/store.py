"""The library table: entries in and out, the API's shape, filters and counts."""
from typing import NamedTuple

import peewee

from ..errors import NotFound
from ..models import LibraryEntry, db, iso
from ..sidecars import find_preview
from ..views import nsfw_level

STATES = ("identified", "unknown", "missing")
FIELDS = ("path", "root", "size", "device", "inode", "mtime_ns", "sha256", "model_id", "version_id", "model_name",
          "version_name", "model_type", "base_model", "published_at", "source", "civitai_info", "missing",
          "download")
CHUNK = 200


def entry_dict(row):
    """An entry as the API shows it (docs/contract.md)."""
    return {"id": row.id, "path": row.path, "root": row.root, "size": row.size, "sha256": row.sha256,
            "modelId": row.model_id, "modelVersionId": row.version_id, "model_name": row.model_name,
            "version_name": row.version_name, "type": row.model_type, "base_model": row.base_model,
            "published_at": row.published_at, "source": row.source, "missing": bool(row.missing),
            "download_id": row.download_id, "first_seen": iso(row.first_seen),
            "preview": f"api/library/{row.id}/preview" if not row.missing and find_preview(row.path) else None,
            "nsfw_level": nsfw_level(row.civitai_info)}


class Known(NamedTuple):
    """What a rescan compares of an entry (no names, no version JSON: 20,000 of these per rescan)."""
    id: int
    size: int
    mtime_ns: int
    device: int
    inode: int
    sha256: str
    version_id: int
    missing: bool


def load_index():
    """{path: Known} for every entry: one plain query, so a rescan of 20,000 files compares in memory."""
    with db.connection_context():
        cursor = db.execute_sql('SELECT "path", "id", "size", "mtime_ns", "device", "inode", "sha256", '
                                '"version_id", "missing" FROM "library"')
        return {path: Known(i, size, mtime, dev, ino, sha, version, bool(missing))
                for path, i, size, mtime, dev, ino, sha, version, missing in cursor.fetchall()}


def load_rows(ids):
    """{id: LibraryEntry} for the entries a scan is about to change."""
    ids = list(ids)
    rows = {}
    with db.connection_context():
        for start in range(0, len(ids), CHUNK):
            rows.update((row.id, row) for row in LibraryEntry.select().where(
                LibraryEntry.id.in_(ids[start:start + CHUNK])))
    return rows


def twins(shas):
    """{sha256: (version JSON text, source)} of identified entries with these hashes."""
    shas = list(set(shas))
    found = {}
    with db.connection_context():
        for start in range(0, len(shas), CHUNK):
            for sha, info, source in (LibraryEntry.select(LibraryEntry.sha256, LibraryEntry.civitai_info,
                                                          LibraryEntry.source)
                                      .where(LibraryEntry.sha256.in_(shas[start:start + CHUNK])
                                             & LibraryEntry.version_id.is_null(False)
                                             & LibraryEntry.civitai_info.is_null(False)).tuples()):
                found.setdefault(sha, (info, source))
    return found


def save(rows):
    """Insert or update entries (LibraryEntry objects, new or loaded) in one transaction."""
    new = [r for r in rows if r.id is None]
    old = [r for r in rows if r.id is not None]
    with db.connection_context():
        with db.atomic():
            for start in range(0, len(new), CHUNK):
                # a path the adopter wrote since the scan loaded its index keeps the adopter's entry
                LibraryEntry.insert_many([{f: getattr(r, f if f != "download" else "download_id") for f in FIELDS}
                                          for r in new[start:start + CHUNK]]).on_conflict_ignore().execute()
            for row in old:
                row.save()


def mark_missing(ids, missing=True):
    ids = list(ids)
    with db.connection_context():
        with db.atomic():
            for start in range(0, len(ids), CHUNK):
                LibraryEntry.update(missing=missing).where(LibraryEntry.id.in_(ids[start:start + CHUNK])).execute()


def get(entry_id):
    with db.connection_context():
        row = LibraryEntry.get_or_none(LibraryEntry.id == entry_id)
    if row is None:
        raise NotFound(f"no library entry with id {entry_id}")
    return row


def _filtered(type_=None, q=None, state=None):
    query = LibraryEntry.select()
    if type_:
        query = query.where(peewee.fn.LOWER(LibraryEntry.model_type) == type_.lower())
    if q:  # peewee's contains() is a case-insensitive LIKE
        query = query.where(LibraryEntry.path.contains(q) | LibraryEntry.model_name.contains(q)
                            | LibraryEntry.version_name.contains(q) | (LibraryEntry.sha256 == q.lower()))
    if state == "missing":
        query = query.where(LibraryEntry.missing == True)  # noqa: E712
    elif state == "identified":
        query = query.where(LibraryEntry.version_id.is_null(False) & (LibraryEntry.missing == False))  # noqa: E712
    elif state == "unknown":
        query = query.where(LibraryEntry.version_id.is_null() & (LibraryEntry.missing == False))  # noqa: E712
    return query


def listing(type_=None, q=None, state=None, limit=50, offset=0):
    """(entries, total) newest first, filtered as GET /api/library says."""
    with db.connection_context():
        query = _filtered(type_, q, state)
        total = query.count()
        rows = list(query.order_by(LibraryEntry.id.desc()).limit(limit).offset(offset))
    return [entry_dict(r) for r in rows], total


def counts():
    """Present entries by type and by base model, plus identified/unknown/missing totals."""
    present = LibraryEntry.missing == False  # noqa: E712
    with db.connection_context():
        by_type = dict(LibraryEntry.select(LibraryEntry.model_type, peewee.fn.COUNT(LibraryEntry.id))
                       .where(present).group_by(LibraryEntry.model_type).tuples())
        by_base = dict(LibraryEntry.select(LibraryEntry.base_model, peewee.fn.COUNT(LibraryEntry.id))
                       .where(present).group_by(LibraryEntry.base_model).tuples())
        states = {state: _filtered(state=state).count() for state in STATES}
    return {"by_type": {k or "unknown": v for k, v in by_type.items()},
            "by_base_model": {k or "unknown": v for k, v in by_base.items()}, **states}
