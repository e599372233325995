"""Identify files by SHA256 through Civitai's bulk lookups (SPEC §10).

`POST /api/v1/model-versions/by-hash/ids` (up to 10,000 hashes a call) says
which hashes Civitai knows; `POST /api/v1/model-versions/by-hash` (up to 100
a call) brings the version JSON of those, mapped back by files[].hashes.SHA256.
At most one call a second; a failed call is tried once more, then left out
without losing what the other calls found.
"""
import datetime
import logging
import threading
import time

from ..errors import DaemonError
from ..engines import param
from ..models import UnknownHash, db, utcnow
from .sidecars_in import version_hashes

log = logging.getLogger("daemon.library")

IDS_BATCH = 10_000
DETAIL_BATCH = 100
MIN_CALL_INTERVAL = 1.0
UNKNOWN_TTL = datetime.timedelta(days=7)


class Pacer:
    """At most one call per `interval` seconds, across threads."""

    def __init__(self, interval=MIN_CALL_INTERVAL, stop=None):
        self.interval = interval
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._last = 0.0

    def wait(self):
        with self._lock:
            delay = self._last + self.interval - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            self._last = time.monotonic()


class Identifier:
    """Bulk lookups with a call counter (`calls`) and the problems met (`problems`)."""

    def __init__(self, client, pacer=None):
        self.client = client
        self.pacer = pacer or Pacer()
        self.calls = 0
        self.problems = []

    def _call(self, path, body):
        for attempt in (1, 2):
            self.pacer.wait()
            self.calls += 1
            try:
                return self.client.post_once(path, body)
            except DaemonError as exc:
                log.warning("library: %s with %d hash(es) failed (attempt %d): %s", path, len(body), attempt, exc)
                last = exc
        self.problems.append(f"Civitai lookup {path} of {len(body)} hash(es) failed twice: {last}")
        return None

    def known_ids(self, hashes):
        """({sha256: (modelId, modelVersionId)}, set of hashes Civitai answered for) in calls of 10,000."""
        hashes = sorted(set(hashes))
        found, asked = {}, set()
        for start in range(0, len(hashes), IDS_BATCH):
            batch = hashes[start:start + IDS_BATCH]
            answer = self._call("model-versions/by-hash/ids", [h.upper() for h in batch])
            if not isinstance(answer, list):
                continue
            asked.update(batch)
            for row in answer:
                if not isinstance(row, dict):
                    continue
                sha = str(row.get("hash") or "").lower()
                if sha in asked and isinstance(row.get("modelVersionId"), int):
                    found[sha] = (row.get("modelId") if isinstance(row.get("modelId"), int) else None,
                                  row["modelVersionId"])
        return found, asked

    def versions(self, hashes):
        """{sha256: version JSON} for known hashes, in calls of 100."""
        hashes = sorted(set(hashes))
        found = {}
        for start in range(0, len(hashes), DETAIL_BATCH):
            batch = hashes[start:start + DETAIL_BATCH]
            answer = self._call("model-versions/by-hash", [h.upper() for h in batch])
            wanted = set(batch)
            for version in answer if isinstance(answer, list) else []:
                if isinstance(version, dict):
                    for sha in version_hashes(version) & wanted:
                        found[sha] = version
        return found


def fresh_unknowns():
    """The hashes Civitai did not know when asked within the last 7 days (not to be asked again yet).

    One plain query for the whole table: a rescan compares 20,000 files in
    memory. A hash that gets identified otherwise (our download, a sidecar) is
    forgotten there and then (`remember_unknown(known=…)`, the adopter).
    """
    with db.connection_context():
        cursor = db.execute_sql(f'SELECT "sha256" FROM "unknown_hashes" WHERE "asked_at" > {param()}',
                                (UnknownHash.asked_at.db_value(utcnow() - UNKNOWN_TTL),))
        return {sha for (sha,) in cursor.fetchall()}


def remember_unknown(hashes, known=()):
    """Record `hashes` as unknown now; forget any that turned out to be known."""
    now = utcnow()
    rows = [(sha, now) for sha in set(hashes)]
    known = list(known)
    with db.connection_context():
        with db.atomic():
            for start in range(0, len(rows), 300):
                (UnknownHash.insert_many(rows[start:start + 300], fields=[UnknownHash.sha256, UnknownHash.asked_at])
                 .on_conflict_replace().execute())
            for start in range(0, len(known), 300):
                UnknownHash.delete().where(UnknownHash.sha256.in_(known[start:start + 300])).execute()
