"""Enqueue meets the library: an item whose file the user already has is not downloaded (SPEC §10)."""
import os
from urllib.parse import parse_qs, urlsplit

from ..civitai import FILE_PARAMS
from ..models import LibraryEntry, db


def _picks_a_file(url):
    """A download URL asking for a non-primary file (?type=, ?fp=, ?fileId= …): a version id is not enough."""
    return any(key in FILE_PARAMS for key in parse_qs(urlsplit(url or "").query))


def match(row):
    """The present library entry holding this download's content (by SHA256, else by version), or None."""
    if row.expected_sha256:
        clause = LibraryEntry.sha256 == row.expected_sha256.lower()
    elif row.version_id and not _picks_a_file(row.url):
        clause = LibraryEntry.version_id == row.version_id
    else:
        return None
    with db.connection_context():
        candidates = list(LibraryEntry.select().where(clause & (LibraryEntry.missing == False))  # noqa: E712
                          .order_by(LibraryEntry.id))
    for entry in candidates:
        try:
            if os.stat(entry.path).st_size == entry.size:
                return entry
        except OSError:
            continue
    return None
