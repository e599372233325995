"""The peewee models: the schema of every table (SPEC §14). Engines are engines.py; opening and
migrating the database is database.py."""
import datetime

import peewee

from .engines import db
from .states import ManifestStatus, Status


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(value):
    """ISO 8601 text for a stored datetime (stored as UTC), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BaseModel(peewee.Model):
    class Meta:
        database = db


class ManifestRecord(BaseModel):
    name = peewee.CharField(index=True)         # file name as it was in inbox/
    status = peewee.CharField(default=ManifestStatus.PROCESSING.value, index=True)
    items = peewee.IntegerField(default=0)
    errors = peewee.TextField(default="[]")     # JSON list
    received_at = peewee.DateTimeField(default=utcnow)
    finished_at = peewee.DateTimeField(null=True)
    final_name = peewee.CharField(null=True)    # name in done/ or failed/ (may carry a suffix)
    node = peewee.CharField(null=True)          # fleet mode: the daemon that took it (and finishes it)

    class Meta:
        table_name = "manifests"


class Download(BaseModel):
    state = peewee.CharField(default=Status.QUEUED.value, index=True)
    url = peewee.TextField(null=True)           # secrets removed
    url_secret = peewee.TextField(null=True)    # the removed secret part, sealed (redact.Sealer)
    url_key = peewee.CharField(null=True, index=True)  # keyed hash of the full URL: the dedupe key
    filename = peewee.CharField(null=True)
    subdir = peewee.CharField(null=True)
    path = peewee.TextField(null=True)
    sha256 = peewee.CharField(null=True, index=True)  # the hash of the bytes we have (indexed: enqueue's dedupe)
    expected_sha256 = peewee.CharField(null=True, index=True)
    verified = peewee.BooleanField(default=False)
    bytes = peewee.BigIntegerField(default=0)
    total = peewee.BigIntegerField(null=True)
    priority = peewee.IntegerField(default=0)
    manifest = peewee.ForeignKeyField(ManifestRecord, null=True, backref="downloads", on_delete="SET NULL")
    manifest_index = peewee.IntegerField(null=True)
    model_id = peewee.IntegerField(null=True, index=True)
    version_id = peewee.IntegerField(null=True, index=True)
    model_name = peewee.CharField(null=True)
    version_name = peewee.CharField(null=True)
    base_model = peewee.CharField(null=True)
    model_type = peewee.CharField(null=True)
    api_size = peewee.BigIntegerField(null=True)
    civitai_info = peewee.TextField(null=True)  # the version's API JSON, for sidecars
    error = peewee.TextField(null=True)
    not_before = peewee.DateTimeField(null=True)
    attempts = peewee.IntegerField(default=0)
    retries = peewee.IntegerField(default=0)
    hash_mismatches = peewee.IntegerField(default=0)
    parent = peewee.ForeignKeyField("self", null=True, backref="children", on_delete="SET NULL")
    created_at = peewee.DateTimeField(default=utcnow)
    started_at = peewee.DateTimeField(null=True)
    finished_at = peewee.DateTimeField(null=True)
    duration = peewee.FloatField(null=True)
    source = peewee.CharField(null=True)        # where a workflow or image named it (SPEC §13)
    node = peewee.CharField(null=True)          # the daemon that claimed it last
    lease_until = peewee.DateTimeField(null=True)  # fleet mode: the claim lapses after this unless renewed

    class Meta:
        table_name = "downloads"
        indexes = ((("state", "priority", "id"), False),)


class ModelUpdate(BaseModel):
    model_id = peewee.IntegerField(index=True)
    version_id = peewee.IntegerField()
    model_name = peewee.CharField(null=True)
    version_name = peewee.CharField(null=True)
    previous_version_id = peewee.IntegerField(null=True)
    sha256 = peewee.CharField(null=True)
    reason = peewee.CharField(default="new version")
    detected_at = peewee.DateTimeField(default=utcnow)
    state = peewee.CharField(default="pending")  # states.UpdateState
    download = peewee.ForeignKeyField(Download, null=True, on_delete="SET NULL")
    not_before = peewee.DateTimeField(null=True)          # when a waiting update can start
    base_model = peewee.CharField(null=True)
    previous_base_model = peewee.CharField(null=True)
    size = peewee.BigIntegerField(null=True)              # the new file's bytes (API size)
    previous_path = peewee.TextField(null=True)           # the file the update replaces (replace mode)
    subdir = peewee.TextField(null=True)                  # where the new version goes
    filename = peewee.CharField(null=True)
    mode = peewee.CharField(null=True)                    # alongside | replace, once applied
    replace_state = peewee.CharField(null=True)           # null | moving | done (intent recorded first)
    replaced_to = peewee.TextField(null=True)             # where the old file went in .replaced/

    class Meta:
        table_name = "updates"
        indexes = ((("model_id", "version_id", "sha256"), True),)


class LibraryEntry(BaseModel):
    """One model file under a library root (SPEC §10): one row per path."""
    path = peewee.TextField(unique=True)          # absolute, as found under its root
    root = peewee.TextField()
    size = peewee.BigIntegerField(default=0)
    device = peewee.BigIntegerField(null=True)
    inode = peewee.BigIntegerField(null=True)
    mtime_ns = peewee.BigIntegerField(null=True)
    sha256 = peewee.CharField(null=True, index=True)
    model_id = peewee.IntegerField(null=True, index=True)
    version_id = peewee.IntegerField(null=True, index=True)
    model_name = peewee.CharField(null=True)
    version_name = peewee.CharField(null=True)
    model_type = peewee.CharField(null=True)
    base_model = peewee.CharField(null=True)
    published_at = peewee.CharField(null=True)    # the version's publishedAt (else createdAt), ISO text
    source = peewee.CharField(default="unknown")  # downloaded | sidecar | civitai | unknown
    civitai_info = peewee.TextField(null=True)    # the version JSON, for sidecars and the update check
    missing = peewee.BooleanField(default=False)
    download = peewee.ForeignKeyField(Download, null=True, on_delete="SET NULL")
    first_seen = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "library"


class HashCache(BaseModel):
    """SHA256 by (device, inode), valid while size and mtime_ns match: renames keep it."""
    device = peewee.BigIntegerField()
    inode = peewee.BigIntegerField()
    size = peewee.BigIntegerField()
    mtime_ns = peewee.BigIntegerField()
    sha256 = peewee.CharField()

    class Meta:
        table_name = "hash_cache"
        primary_key = peewee.CompositeKey("device", "inode")


class UnknownHash(BaseModel):
    """A SHA256 Civitai did not know when last asked (asked again after 7 days)."""
    sha256 = peewee.CharField(primary_key=True)
    asked_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "unknown_hashes"


class LibraryScan(BaseModel):
    state = peewee.CharField(default="running")
    summary = peewee.TextField(default="{}")      # the GET /api/library/scan body when it ended
    started_at = peewee.DateTimeField(default=utcnow)
    finished_at = peewee.DateTimeField(null=True)

    class Meta:
        table_name = "library_scans"


class ModelPolicy(BaseModel):
    """A per-model update policy override (SPEC §11): notify, alongside, replace or ignore."""
    model_id = peewee.IntegerField(primary_key=True)
    policy = peewee.CharField()

    class Meta:
        table_name = "model_policies"


class RpcTask(BaseModel):
    """What an aria2 client sent for a download (SPEC §13), so it finds its task again by dir + out."""
    download = peewee.ForeignKeyField(Download, primary_key=True, on_delete="CASCADE")
    dir = peewee.TextField(null=True)           # as the client sent it
    out = peewee.TextField(null=True)
    hidden = peewee.BooleanField(default=False)  # aria2.removeDownloadResult: off the RPC's stopped list

    class Meta:
        table_name = "rpc_tasks"


class Node(BaseModel):
    """A daemon of the fleet and when it was last alive (GET /api/nodes)."""
    name = peewee.CharField(unique=True)
    started_at = peewee.DateTimeField(default=utcnow)
    last_heartbeat = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "nodes"


class Pace(BaseModel):
    """A fleet-wide schedule: the next free slot (epoch seconds, the database's clock) per key."""
    key = peewee.CharField(primary_key=True)
    next_at = peewee.DoubleField(default=0.0)

    class Meta:
        table_name = "pacing"


class DailyRun(BaseModel):
    """A job run once per day for the fleet: the first daemon to insert (job, day) runs it."""
    job = peewee.CharField()
    day = peewee.CharField()
    node = peewee.CharField(null=True)
    started_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "daily_runs"
        indexes = ((("job", "day"), True),)


TABLES = [ManifestRecord, Download, ModelUpdate, RpcTask, LibraryEntry, HashCache, UnknownHash, LibraryScan,
          ModelPolicy, Node, Pace, DailyRun]
