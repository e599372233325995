"""Enqueue meets the library: an item whose file the user already has is not downloaded (SPEC §10)."""
import os
from urllib.parse import parse_qs, urlsplit

from ..civitai import FILE_PARAMS
from ..engines import hand_sql
from ..models import LibraryEntry, db


def _picks_a_file(url):
    """A download URL asking for a non-primary file (?type=, ?fp=, ?fileId= …): a version id is not enough."""
    return any(key in FILE_PARAMS for key in parse_qs(urlsplit(url or "").query))


def match(row):
    """The present library entry holding this download's content (by SHA256, else by version), or None."""
    if row.expected_sha256:
        column, value = "sha256", row.expected_sha256.lower()
    elif row.version_id and not _picks_a_file(row.url):
        column, value = "version_id", row.version_id
    else:
        return None
    # Hand-written: every download asks this before it starts, and peewee's query building was 6 % of a
    # burst's Python (bench, ingest); the whole entry is loaded only for a match.
    with db.connection_context():
        candidates = db.execute_sql(hand_sql(f'SELECT "id", "path", "size" FROM "{LibraryEntry._meta.table_name}" '
                                             f'WHERE "{column}" = ? AND NOT "missing" ORDER BY "id"'),
                                    (value,)).fetchall()
        for entry_id, path, size in candidates:
            try:
                if os.stat(path).st_size == size:
                    return LibraryEntry.get_by_id(entry_id)
            except (OSError, LibraryEntry.DoesNotExist):
                continue
    return None
