"""The hash cache: SHA256 by (device, inode), trusted while size and mtime_ns are unchanged.

A renamed or moved file keeps its inode and mtime, so it keeps its hash; a
rewritten one changes size or mtime and is hashed again.
"""
from ..models import HashCache, db

CHUNK = 300  # rows per statement (SQLite's variable limit)


def load_all():
    """{(device, inode): (size, mtime_ns, sha256)} for the whole cache (one query, plain tuples)."""
    with db.connection_context():
        cursor = db.execute_sql('SELECT "device", "inode", "size", "mtime_ns", "sha256" FROM "hash_cache"')
        return {(d, i): (s, m, h) for d, i, s, m, h in cursor.fetchall()}


def lookup(cache, found):
    """The cached SHA256 of a Found, or None when absent or stale."""
    hit = cache.get(found.key)
    if hit and hit[0] == found.size and hit[1] == found.mtime_ns:
        return hit[2]
    return None


def store(rows):
    """Remember [(device, inode, size, mtime_ns, sha256)], replacing stale rows."""
    rows = list(rows)
    with db.connection_context():
        with db.atomic():
            for start in range(0, len(rows), CHUNK):
                (HashCache.insert_many(rows[start:start + CHUNK],
                                       fields=[HashCache.device, HashCache.inode, HashCache.size,
                                               HashCache.mtime_ns, HashCache.sha256])
                 .on_conflict_replace().execute())
